"""Configuration fields and checks shared by every multiplexed backbone.

:class:`MultiplexingConfigMixin` declares the multiplexing fields once; each family's configuration class is
``CheckpointOverrideGuard, <transformers config>, MultiplexingConfigMixin`` and calls
:func:`validate_multiplexing_fields` in its ``__post_init__``. Options that only one family has (MUX-BERT's
``legacy_*`` options for converted original checkpoints) live in that family's configuration module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .demultiplexing import demuxing_variants
from .multiplexing import muxing_variants

# The built-in variants. A configuration accepts whatever the registries hold (`register_multiplexer`,
# `register_demultiplexer`), plug-ins included: validation reads `muxing_variants()` / `demuxing_variants()`.
MUXING_VARIANTS = muxing_variants()
DEMUXING_VARIANTS = demuxing_variants()
SEQUENCE_POOLINGS = ("first", "mean")
POSITION_MIXINGS = ("keyed", "shared")

# Outputs that `Trainer.predict` must not collect next to the logits.
MUX_KEYS_TO_IGNORE_AT_INFERENCE = [
    "task_loss",
    "retrieval_loss",
    "retrieval_logits",
    "mixed_hidden_state",
    "hidden_states",
    "attentions",
]


@dataclass(repr=False)
class MultiplexingConfigMixin:
    """Fields shared by every multiplexed backbone.

    Args:
        num_instances: N, the number of inputs mixed into one backbone row (>= 1).
        muxing_variant: how N embedded sequences are mixed: a name registered with ``register_multiplexer``
            (built in: ``MUXING_VARIANTS``).
        demuxing_variant: how the mixed hidden states are split back: a name registered with
            ``register_demultiplexer`` (built in: ``DEMUXING_VARIANTS``).
        num_hidden_demux_layers: depth of the demultiplexer MLP (>= 1).
        gaussian_hadamard_norm: L2 norm of each Gaussian instance key.
        binary_hadamard_epsilon: overlap (fraction of a chunk, in [0, 1]) of the binary keys.
        learn_muxing: train the multiplexer's instance keys (otherwise they are fixed buffers).
        retrieval_loss_coeff: weight of the auxiliary token-retrieval loss.
        task_loss_coeff: weight of the task loss (0 gives the stage-1 token-retrieval model).
        muxing_seed: seed of the fixed instance keys (they are saved in the checkpoint as well).
        sequence_pooling: what a sequence classification head reads for each instance: ``"first"`` (the
            demultiplexed first-token state, the papers' choice; only that position is demultiplexed) or
            ``"mean"`` (the mean of the instance's demultiplexed token states over its own tokens, padding
            excluded; every position is demultiplexed, as for token classification). ``"mean"`` suits
            warm starts from encoders trained with mean pooling (sentence-transformers such as MiniLM) and
            models whose token states were trained by retrieval / MLM but whose first token was not.
        instance_layers: the first k backbone layers run on every instance separately, before mixing ("combine
            first", as in RevMUX's prefilling): the mixture then enters layer k. Costs k x N layer passes per mux
            group instead of k, so the throughput bound is ``L N / (k N + L - k)`` for L layers; 0 (default)
            mixes the embeddings, as MUX-PLMs does. MUX-BERT only.
        position_mixing: what the instance keys multiply. ``"keyed"`` (default, as MUX-PLMs): each instance's
            full embedding (word + position + token type, after the embedding LayerNorm) is keyed and mixed.
            ``"shared"``: only the instances' word embeddings are keyed and mixed; the position embeddings, the
            instances' mean token-type embedding, the embedding LayerNorm and dropout are then applied once to
            the mixture, so the backbone reads positions exactly as it was pre-trained to (the instances of a
            group are aligned position by position anyway). Measured on a MiniLM warm start in
            benchmarks/results/quality/. MUX-BERT only; not with ``instance_layers`` or ``legacy_embed_mixture``.
        prefix_filler_token_id: vocabulary id of the filler token of the `prefix` demultiplexer.
        prefix_index_token_ids: vocabulary ids of the N index tokens (default: ids 2 .. N+1, the
            `[unused*]` tokens of the BERT vocabulary).
    """

    num_instances: int = 2
    muxing_variant: str = "contextual"
    demuxing_variant: str = "prefix"
    num_hidden_demux_layers: int = 2
    gaussian_hadamard_norm: float | int = 1.0
    binary_hadamard_epsilon: float | int = 0.0
    learn_muxing: bool = False
    retrieval_loss_coeff: float | int = 0.0
    task_loss_coeff: float | int = 1.0
    muxing_seed: int = 0
    sequence_pooling: str = "first"
    instance_layers: int = 0
    position_mixing: str = "keyed"
    prefix_filler_token_id: int = 1
    prefix_index_token_ids: list[int] | None = None
    # A family whose configuration declares the ``legacy_*`` options sets this (MUX-BERT); every other
    # family refuses them (a config.json field with a non-default value) instead of ignoring them.
    supports_legacy_options = False

    def validate_multiplexing(self) -> None:
        """Raise `ValueError` naming the field and the allowed values."""
        validate_multiplexing_fields(self)

    @property
    def resolved_prefix_index_token_ids(self) -> list[int]:
        if self.prefix_index_token_ids is not None:
            return list(self.prefix_index_token_ids)
        return list(range(2, 2 + self.num_instances))


def validate_multiplexing_fields(config) -> None:
    """Check every multiplexing field of `config`; raise `ValueError` on the first bad one."""
    n = config.num_instances
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_instances must be an integer >= 1, got {n!r}")
    if config.muxing_variant not in muxing_variants():
        raise ValueError(f"muxing_variant must be one of {', '.join(muxing_variants())}; got {config.muxing_variant!r}")
    if config.demuxing_variant not in demuxing_variants():
        raise ValueError(
            f"demuxing_variant must be one of {', '.join(demuxing_variants())}; got {config.demuxing_variant!r}"
        )
    pooling = getattr(config, "sequence_pooling", "first")
    if pooling not in SEQUENCE_POOLINGS:
        raise ValueError(f"sequence_pooling must be one of {', '.join(SEQUENCE_POOLINGS)}; got {pooling!r}")
    if config.num_hidden_demux_layers < 1:
        raise ValueError(f"num_hidden_demux_layers must be >= 1, got {config.num_hidden_demux_layers}")
    k = getattr(config, "instance_layers", 0)
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0 or (k > 0 and layers is not None and k >= layers):
        raise ValueError(
            f"instance_layers must be an integer in [0, num_hidden_layers - 1] = [0, {(layers or 1) - 1}], got {k!r}"
        )
    mixing = getattr(config, "position_mixing", "keyed")
    if mixing not in POSITION_MIXINGS:
        raise ValueError(f"position_mixing must be one of {', '.join(POSITION_MIXINGS)}; got {mixing!r}")
    if mixing == "shared" and k:
        raise ValueError(
            "position_mixing='shared' mixes word embeddings, but instance_layers > 0 runs layers on each "
            "instance's full embeddings before mixing: use one or the other"
        )
    if mixing == "shared" and getattr(config, "legacy_embed_mixture", False):
        raise ValueError("position_mixing='shared' cannot be combined with legacy_embed_mixture")
    if not 0.0 <= config.binary_hadamard_epsilon <= 1.0:
        raise ValueError(f"binary_hadamard_epsilon must lie in [0, 1], got {config.binary_hadamard_epsilon}")
    if config.gaussian_hadamard_norm <= 0:
        raise ValueError(f"gaussian_hadamard_norm must be > 0, got {config.gaussian_hadamard_norm}")
    if config.retrieval_loss_coeff < 0 or config.task_loss_coeff < 0:
        raise ValueError(
            "retrieval_loss_coeff and task_loss_coeff must be >= 0, got "
            f"{config.retrieval_loss_coeff} and {config.task_loss_coeff}"
        )
    if config.retrieval_loss_coeff == 0 and config.task_loss_coeff == 0:
        raise ValueError("retrieval_loss_coeff and task_loss_coeff cannot both be 0: the loss would be empty")
    if config.demuxing_variant == "prefix":
        ids = config.resolved_prefix_index_token_ids
        if len(ids) != n:
            raise ValueError(f"prefix_index_token_ids must hold num_instances={n} ids, got {len(ids)}: {ids}")
        vocab = config.vocab_size
        special = {"prefix_filler_token_id": [config.prefix_filler_token_id], "prefix_index_token_ids": ids}
        cls_token_id = getattr(config, "legacy_prefix_cls_token_id", None)
        if cls_token_id is not None:
            special["legacy_prefix_cls_token_id"] = [cls_token_id]
        for name, values in special.items():
            bad = [v for v in values if not 0 <= v < vocab]
            if bad:
                raise ValueError(
                    f"{name} must be vocabulary ids in [0, vocab_size={vocab}); got {bad}. "
                    "Pick ids of tokens inside the vocabulary (for BERT vocabularies, the [unused*] ids)."
                )
        if config.prefix_filler_token_id in ids:
            raise ValueError("prefix_filler_token_id must differ from every prefix_index_token_ids entry")
    if not config.supports_legacy_options:
        refuse_legacy_options(config)


def refuse_legacy_options(config) -> None:
    """Refuse ``legacy_*`` options given to a family that does not declare them (only MUX-BERT reproduces
    the original implementation's quirks). A saved config.json of an earlier version may hold them at their
    off values (``False`` / ``None``): those are accepted."""
    legacy = {
        name: value
        for name, value in vars(config).items()
        if name.startswith("legacy_") and value is not None and value is not False
    }
    if legacy:
        raise ValueError(
            f"The legacy_* options reproduce quirks of the original MUX-BERT code and are not supported by "
            f"{config.model_type}; leave them at their defaults (got {legacy})"
        )


# Multiplexing fields a checkpoint fixes: its instance keys, demultiplexer and weights exist for these values.
CHECKPOINT_FIXED_FIELDS = (
    "num_instances",
    "muxing_variant",
    "demuxing_variant",
    "num_hidden_demux_layers",
    "muxing_seed",
)


def check_checkpoint_overrides(config_dict: dict, overrides: dict) -> None:
    """Refuse `overrides` of :data:`CHECKPOINT_FIXED_FIELDS` that contradict a multiplexed checkpoint's
    `config_dict` (every contradicting field is named). A vanilla checkpoint (no ``num_instances``) is free:
    that is a warm start, whose multiplexing modules are new."""
    if config_dict.get("num_instances") is None:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(MultiplexingConfigMixin)}
    conflicts = {
        name: (config_dict.get(name, defaults[name]), overrides[name])
        for name in CHECKPOINT_FIXED_FIELDS
        if name in overrides and overrides[name] != config_dict.get(name, defaults[name])
    }
    if conflicts:
        saved = ", ".join(f"{name}={old!r}" for name, (old, _) in conflicts.items())
        asked = ", ".join(f"{name}={new!r}" for name, (_, new) in conflicts.items())
        raise ValueError(
            f"The checkpoint was trained with {saved}, but {asked} was requested. A multiplexed checkpoint only "
            "works with the multiplexing it was trained with (its instance keys, demultiplexer and weights are "
            "built for it; ignore_mismatched_sizes would silently re-draw them): drop the override, or load a "
            "checkpoint trained with these settings (or a vanilla one, to warm-start a new MUX model)."
        )


class CheckpointOverrideGuard:
    """First base of every MUX config class: ``from_dict`` (behind ``from_pretrained`` of the config, the
    model and every Auto class) refuses multiplexing overrides that contradict the checkpoint."""

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        check_checkpoint_overrides(config_dict, kwargs)
        return super().from_dict(config_dict, **kwargs)
