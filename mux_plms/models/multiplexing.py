"""Multiplexers: mix N embedded sequences into one.

Every multiplexer maps embeddings of shape ``(G, N, L, D)`` (G mux groups of N instances) and the
instances' attention masks ``(G, N, L)`` to one mixture of shape ``(G, L, D)``. Variants are small
classes registered by name in :data:`MULTIPLEXERS`; models look them up with
:func:`build_multiplexer` instead of branching on the variant.

Fixed instance keys are drawn from a generator seeded with ``config.muxing_seed``: they are
persistent buffers (saved in the checkpoint), re-drawn identically by ``reset_keys`` when a model is
built on the meta device, and trainable parameters only when ``config.learn_muxing`` is set.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertLayer

MULTIPLEXERS: dict[str, type[Multiplexer]] = {}
LEGACY_PREFIX = "legacy_"  # registered names built only by the legacy options of converted checkpoints


def register_multiplexer(name: str):
    """Class decorator adding a multiplexer to :data:`MULTIPLEXERS` under `name`. A registered name is a valid
    ``muxing_variant`` of every configuration (names starting with ``legacy_`` are built only by the legacy
    options of converted checkpoints). The class's ``description`` (one sentence) goes into model cards."""

    def wrap(cls):
        cls.variant = name
        MULTIPLEXERS[name] = cls
        return cls

    return wrap


def muxing_variants() -> tuple[str, ...]:
    """The ``muxing_variant`` values a configuration accepts: every registered multiplexer but the legacy ones."""
    return tuple(name for name in MULTIPLEXERS if not name.startswith(LEGACY_PREFIX))


def build_multiplexer(config, hidden_size: int | None = None) -> Multiplexer:
    """Instantiate the multiplexer named by ``config.muxing_variant`` working at width `hidden_size`."""
    name = config.muxing_variant
    if getattr(config, "legacy_contextual", None) is not None:
        name = f"legacy_{name}"  # a converted original checkpoint (LegacyContextualMultiplexer)
    try:
        cls = MULTIPLEXERS[name]
    except KeyError:
        raise ValueError(
            f"muxing_variant must be one of {', '.join(muxing_variants())}; got {config.muxing_variant!r}"
        ) from None
    return cls(config, hidden_size or config.hidden_size)


def fix_empty_rows(mask: torch.Tensor) -> torch.Tensor:
    """Let rows with no real token attend everywhere (avoids NaN softmax; their outputs are padding)."""
    mask = mask.bool()
    return mask | ~mask.any(dim=-1, keepdim=True)


class Multiplexer(nn.Module):
    """Base class: ``forward(embeddings (G, N, L, D), attention_mask (G, N, L)) -> (G, L, D)``.

    A *streaming* multiplexer (``streaming = True``: the mixture is a sum of per-instance terms) also
    accepts one instance slot at a time, ``forward(slot (G, L, D), None, index=i, mixture=running)``,
    so the model can embed and mix slot by slot and never hold the N-fold embeddings. Both calls go
    through ``nn.Module.__call__``, so forward hooks (profiling, user hooks) see either path."""

    variant: str = ""
    #: One sentence for model cards: how the N instances are mixed.
    description: str = ""

    def __init__(self, config, hidden_size: int):
        super().__init__()
        self.num_instances = config.num_instances
        self.hidden_size = hidden_size

    def reset_keys(self) -> None:
        """Re-draw the fixed keys from the seed (called by the model's ``_init_weights``)."""

    def forward(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    #: True when the mixture is a sum of per-instance terms: the model may then embed and mix one
    #: instance slot at a time (:meth:`accumulate`), never holding the N-fold embeddings.
    streaming: bool = False

    def accumulate(self, mixture: torch.Tensor | None, embedded: torch.Tensor, index: int) -> torch.Tensor:
        """Add instance slot `index`'s embeddings ``(G, L, D)`` to the running `mixture` (None at first);
        after the last slot the result equals ``forward`` of the stacked embeddings."""
        raise NotImplementedError


class KeyedMultiplexer(Multiplexer):
    """A multiplexer with one fixed (or learnable) key per instance, stored as ``instance_keys``."""

    def __init__(self, config, hidden_size: int):
        super().__init__(config, hidden_size)
        self.seed = config.muxing_seed
        self.config = config
        keys = self.make_keys(self._generator())
        if config.learn_muxing:
            self.instance_keys = nn.Parameter(keys)
        else:
            self.register_buffer("instance_keys", keys, persistent=True)

    def _generator(self) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(self.seed)

    def make_keys(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def reset_keys(self) -> None:
        if getattr(self.instance_keys, "_is_hf_initialized", False):
            return  # loaded from a checkpoint: never re-drawn
        keys = self.make_keys(self._generator())
        self.instance_keys.copy_(keys.to(self.instance_keys.device, self.instance_keys.dtype))


def gaussian_keys(n: int, d: int, norm: float, generator: torch.Generator) -> torch.Tensor:
    keys = torch.randn(n, d, generator=generator, device="cpu")
    return keys / keys.norm(dim=1, keepdim=True) * norm


@register_multiplexer("gaussian_hadamard")
class GaussianHadamardMultiplexer(KeyedMultiplexer):
    """Elementwise product with a fixed Gaussian key of norm ``gaussian_hadamard_norm``, then the mean."""

    description = (
        "each instance's embeddings are multiplied elementwise by a fixed random Gaussian key "
        "(one key per instance) and the N products are averaged"
    )

    def make_keys(self, generator):
        return gaussian_keys(self.num_instances, self.hidden_size, self.config.gaussian_hadamard_norm, generator)

    streaming = True

    def forward(self, embeddings, attention_mask, *, index=None, mixture=None):
        if index is not None:  # one slot (G, L, D) added to the running mixture
            return self.accumulate(mixture, embeddings, index)
        mixture = None
        for slot in range(self.num_instances):
            mixture = self.accumulate(mixture, embeddings[:, slot], slot)
        return mixture

    def accumulate(self, mixture, embedded, index):
        # One fused multiply-add per instance: reads each embedding once and never builds the N-fold
        # product (an einsum over "gnld,nd->gld" lowers to a permuted copy plus a degenerate bmm on CPU,
        # 40x slower at N=10).
        key = self.instance_keys[index].to(embedded.dtype) / self.num_instances
        return embedded * key if mixture is None else mixture.addcmul(embedded, key)


@register_multiplexer("binary_hadamard")
class BinaryHadamardMultiplexer(GaussianHadamardMultiplexer):
    """Each instance keeps its own chunk of the hidden dimensions (chunks overlap by ``epsilon``)."""

    description = (
        "each instance's embeddings are multiplied elementwise by a fixed binary key that keeps "
        "its own chunk of the hidden dimensions, and the N products are averaged"
    )

    def make_keys(self, generator):
        n, d = self.num_instances, self.hidden_size
        chunk = d // n
        overlap = int(self.config.binary_hadamard_epsilon / 2 * chunk)
        keys = torch.zeros(n, d)
        for i in range(n):
            start = max(i * chunk - overlap, 0)
            end = d if i == n - 1 else min((i + 1) * chunk + overlap, d)
            keys[i, start:end] = 1.0
        return keys


@register_multiplexer("random_ortho")
class RandomOrthogonalMultiplexer(KeyedMultiplexer):
    """A fixed random orthogonal matrix per instance; the mixture is the sum divided by sqrt(N)."""

    description = (
        "each instance's embeddings are rotated by a fixed random orthogonal matrix (one per "
        "instance) and the N results are summed and scaled by 1/sqrt(N)"
    )

    def make_keys(self, generator):
        d = self.hidden_size
        gaussian = torch.randn(self.num_instances, d, d, generator=generator, device="cpu", dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        # Sign correction makes Q Haar-distributed (and deterministic for a given seed).
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
        return q.float()

    def forward(self, embeddings, attention_mask):
        keys = self.instance_keys.to(embeddings.dtype)
        return torch.einsum("nde,gnle->gld", keys, embeddings) / math.sqrt(self.num_instances)


@register_multiplexer("contextual")
class ContextualMultiplexer(GaussianHadamardMultiplexer):
    """The MUX-PLMs contextual multiplexer.

    1. a Transformer layer within each instance (over positions), plus a residual;
    2. Hadamard product with the instance's Gaussian key;
    3. a Transformer layer across the N instances at each position, plus a residual;
    4. the mean over instances.
    """

    description = (
        "the MUX-PLMs contextual multiplexer: a Transformer layer within each instance, a Hadamard "
        "product with the instance's key, a Transformer layer across the N instances at each position, then the mean"
    )

    def __init__(self, config, hidden_size: int):
        super().__init__(config, hidden_size)
        # Share the model's config (so attention-implementation switches reach these layers) unless
        # the multiplexer works at another width (e.g. ELECTRA's embedding size).
        if hidden_size == config.hidden_size:
            layer_config = config
        else:
            layer_config = copy.deepcopy(config)
            layer_config.hidden_size = hidden_size
        self.layer_config = layer_config
        self.instance_layer = BertLayer(layer_config)
        self.cross_instance_layer = BertLayer(layer_config)

    def instance_mask(self, flat: torch.Tensor, mask: torch.Tensor):
        """Mask of the within-instance layer over `flat` ``(G*N, L, D)`` from the padding `mask` ``(G*N, L)``.
        A row with no real entry (an empty instance) attends everywhere: its output is padding."""
        return create_bidirectional_mask(
            config=self.layer_config, inputs_embeds=flat, attention_mask=fix_empty_rows(mask)
        )

    def cross_instance_mask(self, across: torch.Tensor, mask: torch.Tensor):
        """Mask of the cross-instance layer over `across` ``(G*L, N, D)`` from `mask` ``(G*L, N)``: the same rule."""
        return self.instance_mask(across, mask)

    streaming = False  # the cross-instance layer needs every instance at once
    empty_instances_read_the_group = True  # (the original implementation's: False, see the legacy class)

    def forward(self, embeddings, attention_mask):
        # Both layers run in N chunks, each the size of one mixture, so their activations (attention
        # scores, the 4H feed-forward states) are never N-fold: peak memory per instance falls with N.
        g, n, length, d = embeddings.shape
        keys = self.instance_keys.to(embeddings.dtype)
        # 1-2. Within each instance, one instance slot (G rows) at a time, written straight into the
        # (G, L, N, D) layout the cross-instance layer reads (no permuted copy).
        across = embeddings.new_empty(g, length, n, d)
        # An empty instance (the filler of an incomplete group) reads its group's real positions, so that
        # its share of the mixture, and with it every partner's output, ignores padded positions.
        union = attention_mask.bool().any(dim=1)
        for index in range(n):
            x = embeddings[:, index]
            own = attention_mask[:, index]
            if self.empty_instances_read_the_group:
                own = torch.where(own.bool().any(dim=-1, keepdim=True), own.bool(), union)
            contextual = self.instance_layer(x, self.instance_mask(x, own)) + x
            across[:, :, index] = contextual * keys[index]
        # 3-4. Across the instances at every position, in N chunks of about G*L/N positions.
        across = across.view(g * length, n, d)
        across_padding = attention_mask.permute(0, 2, 1).reshape(g * length, n)
        chunk = -(-g * length // n)
        mixed = []
        for start in range(0, g * length, chunk):
            part = across[start : start + chunk]
            mask = self.cross_instance_mask(part, across_padding[start : start + chunk])
            mixed.append((self.cross_instance_layer(part, mask) + part).mean(dim=1))
        return torch.cat(mixed).view(g, length, d)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The original implementation's attention mask: ``(1 - mask) * dtype_min``, shape ``(rows, 1, 1, len)``.
    A row with no real entry attends uniformly to all of them (every score is shifted by the same amount)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@register_multiplexer("legacy_contextual")
class LegacyContextualMultiplexer(ContextualMultiplexer):
    """The original `gaussian_attention_v2` multiplexer, built instead of `contextual` when
    ``config.legacy_contextual`` is set (converted checkpoints). Same weights and computation; only the
    masks differ: additive masks throughout, and with ``legacy_contextual="cross_unmasked"`` the
    cross-instance layer runs without any mask, padding included: the original MLM and token-classification
    models call it without one, its sequence-classification model (``"cross_masked"``) with the instances'
    padding mask. (``"mlm"`` / ``"task"``: the same two modes under the names of earlier versions.)"""

    def __init__(self, config, hidden_size: int):
        super().__init__(config, hidden_size)
        self.mask_across_instances = config.legacy_contextual in ("cross_masked", "task")

    empty_instances_read_the_group = False  # an empty instance attends uniformly to every position

    def instance_mask(self, flat, mask):
        return additive_mask(mask, flat.dtype)

    def cross_instance_mask(self, across, mask):
        return additive_mask(mask, across.dtype) if self.mask_across_instances else None


__all__ = ["MULTIPLEXERS", "Multiplexer", "register_multiplexer", "build_multiplexer", "muxing_variants"]
