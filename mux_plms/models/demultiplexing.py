"""Demultiplexers: split the backbone's mixed hidden states back into N per-instance states.

A demultiplexer receives the mixed states ``(G, P + L, H)`` (P = :meth:`prefix_length` extra
positions it asked for in front of every sequence) and returns, for the positions asked for,

* every instance's state: ``(G, N, L_sel, H)`` (:meth:`Demultiplexer.forward`), or
* one chosen instance per group and position: ``(G, L_sel, H)`` (:meth:`Demultiplexer.select`),
  which is what the token-retrieval loss needs and costs 1/N of the full demultiplexing.

Variants are registered by name in :data:`DEMULTIPLEXERS`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

DEMULTIPLEXERS: dict[str, type[Demultiplexer]] = {}
LEGACY_PREFIX = "legacy_"  # registered names built only by the legacy options of converted checkpoints


def register_demultiplexer(name: str):
    """Class decorator adding a demultiplexer to :data:`DEMULTIPLEXERS` under `name`. A registered name is a
    valid ``demuxing_variant`` of every configuration (names starting with ``legacy_`` are built only by the
    legacy options of converted checkpoints). The class's ``description`` (one sentence) goes into model cards."""

    def wrap(cls):
        cls.variant = name
        DEMULTIPLEXERS[name] = cls
        return cls

    return wrap


def demuxing_variants() -> tuple[str, ...]:
    """The ``demuxing_variant`` values a configuration accepts: every registered demultiplexer but the legacy ones."""
    return tuple(name for name in DEMULTIPLEXERS if not name.startswith(LEGACY_PREFIX))


def demultiplexer_class(config) -> type[Demultiplexer]:
    """The demultiplexer class ``config.demuxing_variant`` names (its legacy variant for converted checkpoints)."""
    name = config.demuxing_variant
    if getattr(config, "legacy_demux", None) is not None:
        name = f"legacy_{name}"  # a converted original checkpoint (LegacyRSADemultiplexer)
    try:
        return DEMULTIPLEXERS[name]
    except KeyError:
        raise ValueError(
            f"demuxing_variant must be one of {', '.join(demuxing_variants())}; got {config.demuxing_variant!r}"
        ) from None


def build_demultiplexer(config) -> Demultiplexer:
    """Instantiate the demultiplexer named by ``config.demuxing_variant``."""
    return demultiplexer_class(config)(config)


def prefix_length(config) -> int:
    """Positions the demultiplexer of `config` prepends to every input, without building it: the one
    formula (:meth:`Demultiplexer.prefix_length_for`) behind the model's own length checks, pre-training,
    the fine-tuning scripts, the cost model and the model card. `config` is a config object or anything
    with its attributes (``num_instances``, ``demuxing_variant``, the ``legacy_*`` options)."""
    return demultiplexer_class(config).prefix_length_for(config)


class Demultiplexer(nn.Module):
    variant: str = ""
    #: One sentence for model cards: how the per-instance states are recovered.
    description: str = ""
    #: True when the variant prepends token ids (it cannot read ``inputs_embeds`` or images).
    needs_input_ids: bool = False

    def __init__(self, config):
        super().__init__()
        self.num_instances = config.num_instances
        self.hidden_size = config.hidden_size

    @classmethod
    def prefix_length_for(cls, config) -> int:
        """Number of positions this demultiplexer prepends to every instance under `config`."""
        return 0

    def prefix_length(self) -> int:
        """Number of positions this demultiplexer prepends to every instance."""
        return 0

    def prefix_ids(self, device) -> torch.Tensor | None:
        """``(N, prefix_length)`` token ids prepended to instance i (row i), or None."""
        return None

    def forward(self, mixed: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """All instances' states ``(G, N, L_sel, H)`` at `positions` (indices into the non-prefix part)."""
        raise NotImplementedError

    def select(self, mixed: torch.Tensor, instance_ids: torch.Tensor) -> torch.Tensor:
        """The state ``(G, L, H)`` of instance ``instance_ids[g, j]`` at every non-prefix position j."""
        states = self.forward(mixed)  # (G, N, L, H)
        index = instance_ids[:, None, :, None].expand(-1, 1, -1, states.shape[-1])
        return states.gather(1, index).squeeze(1)

    def sequence_position(self) -> int:
        """The position sequence classification reads, as an index into the non-prefix part: 0, the
        first input token. A negative index points into the prefix (the legacy prefix's [CLS] slot)."""
        return 0

    def _body(self, mixed: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        p = self.prefix_length()
        return mixed[:, p:] if positions is None else mixed[:, p + positions]


class KeyConditionedDemultiplexer(Demultiplexer):
    """``state_i(j) = MLP([h_j ; key_i])``: the shared machinery of `rsa` and `prefix`.

    The first layer is a ``Linear(2H, H)`` on the concatenation, stored as its two halves and applied
    as ``W_h h_j + W_k key_i``: the hidden part is computed once per mixture position and the key part
    once per instance, instead of N full ``2H x H`` products.
    """

    def __init__(self, config):
        super().__init__(config)
        h = config.hidden_size
        self.act = ACT2FN[config.hidden_act]
        # The first layer acts on the concatenation [h_j ; key_i]; it is stored as its two halves.
        self.hidden_proj = nn.Linear(h, h)
        self.key_proj = nn.Linear(h, h, bias=False)
        self.input_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(nn.Linear(h, h) for _ in range(config.num_hidden_demux_layers - 1))
        self.norms = nn.ModuleList(
            nn.LayerNorm(h, eps=config.layer_norm_eps) for _ in range(config.num_hidden_demux_layers - 1)
        )

    def instance_keys_for(self, mixed: torch.Tensor) -> torch.Tensor:
        """Keys ``(G or 1, N, H)``."""
        raise NotImplementedError

    def _project(self, hidden: torch.Tensor, keys: torch.Tensor):
        return self.hidden_proj(hidden), self.key_proj(keys)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(self.act(x))
        for layer, norm in zip(self.layers, self.norms):
            x = norm(x + self.act(layer(x)))
        return x

    def forward(self, mixed, positions=None):
        hidden_part, key_part = self._project(self._body(mixed, positions), self.instance_keys_for(mixed))
        return self._finish(hidden_part[:, None, :, :] + key_part[:, :, None, :])

    def select(self, mixed, instance_ids):
        hidden_part, key_part = self._project(self._body(mixed, None), self.instance_keys_for(mixed))
        key_part = key_part.expand(mixed.shape[0], -1, -1)
        chosen = key_part.gather(1, instance_ids[..., None].expand(-1, -1, key_part.shape[-1]))
        return self._finish(hidden_part + chosen)


@register_demultiplexer("rsa")
class RSADemultiplexer(KeyConditionedDemultiplexer):
    """RSA demultiplexing: a learned private key per instance (``instance_keys``, ``(N, H)``)."""

    description = (
        "a learned private key per instance is concatenated with the mixed hidden state and an MLP turns "
        "the pair into that instance's hidden state"
    )

    def __init__(self, config):
        super().__init__(config)
        self.instance_keys = nn.Parameter(torch.empty(config.num_instances, config.hidden_size))

    def instance_keys_for(self, mixed):
        return self.instance_keys[None].to(mixed.dtype)


@register_demultiplexer("prefix")
class PrefixDemultiplexer(KeyConditionedDemultiplexer):
    """Prefix demultiplexing (MUX-PLMs): instance i is prefixed with N tokens, all fillers except its
    own index token in slot i. In the mixture, slot i therefore carries only instance i's index token,
    and the backbone's hidden state at slot i is instance i's key."""

    description = (
        "every instance is prefixed with N tokens (fillers, with its own index token in its own slot); "
        "the backbone's output at that slot is the instance's key, combined with the mixed states by an MLP"
    )
    needs_input_ids = True

    def __init__(self, config):
        super().__init__(config)
        self.config = config
        self.register_buffer("prefix_token_ids", self.make_prefix_ids(), persistent=False)

    @classmethod
    def prefix_length_for(cls, config) -> int:
        """N slots, one per instance, plus the [CLS] slot of ``legacy_prefix_cls_token_id`` (converted checkpoints)."""
        return config.num_instances + (getattr(config, "legacy_prefix_cls_token_id", None) is not None)

    def make_prefix_ids(self) -> torch.Tensor:
        """``(N, P)``: row i is instance i's prefix (fillers, its index token in slot i)."""
        n = self.num_instances
        ids = torch.full((n, n), self.config.prefix_filler_token_id, dtype=torch.long, device="cpu")
        ids[torch.arange(n), torch.arange(n)] = torch.tensor(self.config.resolved_prefix_index_token_ids)
        cls_token_id = getattr(self.config, "legacy_prefix_cls_token_id", None)
        if cls_token_id is not None:
            cls_ids = torch.full((n, 1), cls_token_id, dtype=torch.long, device="cpu")
            ids = torch.cat([ids, cls_ids], dim=1)
        return ids

    def prefix_length(self):
        return self.prefix_length_for(self.config)

    def prefix_ids(self, device):
        return self.prefix_token_ids.to(device)

    def sequence_position(self):
        # legacy_prefix_cls_token_id: the original reads the [CLS] slot that ends its prefix
        return -1 if getattr(self.config, "legacy_prefix_cls_token_id", None) is not None else 0

    def instance_keys_for(self, mixed):
        return mixed[:, : self.num_instances]


@register_demultiplexer("mlp")
class MLPDemultiplexer(Demultiplexer):
    """DataMUX's MLP demultiplexing: a private MLP per instance (weights batched as ``(N, H, H)``)."""

    description = "DataMUX's demultiplexer: a private MLP per instance reads the mixed hidden state"

    def __init__(self, config):
        super().__init__(config)
        n, h, depth = config.num_instances, config.hidden_size, config.num_hidden_demux_layers
        self.act = ACT2FN[config.hidden_act]
        self.weight = nn.Parameter(torch.empty(depth, n, h, h))
        self.bias = nn.Parameter(torch.empty(depth, n, h))
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps)

    def forward(self, mixed, positions=None):
        x = self._body(mixed, positions)
        x = torch.einsum("glh,nkh->gnlk", x, self.weight[0]) + self.bias[0][None, :, None, :]
        x = self.act(x)
        for w, b in zip(self.weight[1:], self.bias[1:]):
            x = self.act(torch.einsum("gnlh,nkh->gnlk", x, w) + b[None, :, None, :])
        return self.norm(x)


@register_demultiplexer("legacy_rsa")
class LegacyRSADemultiplexer(Demultiplexer):
    """The original `index_pos` demultiplexer, built instead of `rsa` when ``config.legacy_demux`` is set
    (converted checkpoints). A learned key per instance is concatenated *before* the hidden state, then:

    * ``"pretraining"`` path (the original MLM / retrieval head, also used here by :meth:`select`, i.e. the
      retrieval loss): ``layers[0] → gelu → norms[0] → layers[1] → gelu → norms[1]``;
    * ``"finetuning"`` path (the original task models): ``layers[k] → gelu → dropout`` for
      ``k < num_hidden_demux_layers - 1`` with a residual from the second layer on, then
      ``pre_decoder → gelu → pre_decoder_norm`` plus a residual.

    The original's ``dense_{k+1}`` is ``layers[k]``, ``layer_norm_{k+1}`` is ``norms[k]``; the layers no path
    runs (``dense_k`` for k > max(D - 1, 2), ``layer_norm_k`` for k > 2, D = num_hidden_demux_layers) are not kept.
    """

    def __init__(self, config):
        super().__init__(config)
        h, eps = config.hidden_size, config.layer_norm_eps
        self.finetuning_path = config.legacy_demux == "finetuning"
        self.finetuning_depth = config.num_hidden_demux_layers - 1
        self.instance_keys = nn.Parameter(torch.empty(config.num_instances, h))
        widths = [2 * h] + [h] * (max(self.finetuning_depth, 2) - 1)
        self.layers = nn.ModuleList(nn.Linear(width, h) for width in widths)
        self.norms = nn.ModuleList(nn.LayerNorm(h, eps=eps) for _ in range(2))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.pre_decoder = nn.Linear(h, h)
        self.pre_decoder_norm = nn.LayerNorm(h, eps=eps)

    def _pretraining(self, x: torch.Tensor) -> torch.Tensor:
        for layer, norm in zip(self.layers, self.norms):
            x = norm(nn.functional.gelu(layer(x)))
        return x

    def _finetuning(self, x: torch.Tensor) -> torch.Tensor:
        for k, layer in enumerate(self.layers[: self.finetuning_depth]):
            y = self.dropout(nn.functional.gelu(layer(x)))
            x = y if k == 0 else x + y
        return self.pre_decoder_norm(nn.functional.gelu(self.pre_decoder(x))) + x

    def forward(self, mixed, positions=None):
        body = self._body(mixed, positions)  # (G, L, H)
        g, length, h = body.shape
        keys = self.instance_keys.to(body.dtype)[None, :, None, :].expand(g, -1, length, -1)
        x = torch.cat([keys, body[:, None].expand(-1, self.num_instances, -1, -1)], dim=-1)
        return self._finetuning(x) if self.finetuning_path else self._pretraining(x)

    def select(self, mixed, instance_ids):
        body = self._body(mixed, None)
        keys = self.instance_keys.to(body.dtype)[instance_ids]  # (G, L, H)
        return self._pretraining(torch.cat([keys, body], dim=-1))


__all__ = [
    "DEMULTIPLEXERS",
    "Demultiplexer",
    "register_demultiplexer",
    "build_demultiplexer",
    "demultiplexer_class",
    "demuxing_variants",
    "prefix_length",
]
