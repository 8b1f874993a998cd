"""Configuration of MUX-BERT: every `BertConfig` field plus the multiplexing fields.

The multiplexing fields live in :class:`MultiplexingConfigMixin` so that every backbone
(BERT, ELECTRA, ...) declares and validates them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import BertConfig

MUXING_VARIANTS = ("gaussian_hadamard", "binary_hadamard", "random_ortho", "contextual")
DEMUXING_VARIANTS = ("rsa", "prefix", "mlp")

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
        muxing_variant: how N embedded sequences are mixed: one of ``MUXING_VARIANTS``.
        demuxing_variant: how the mixed hidden states are split back: one of ``DEMUXING_VARIANTS``.
        num_hidden_demux_layers: depth of the demultiplexer MLP (>= 1).
        gaussian_hadamard_norm: L2 norm of each Gaussian instance key.
        binary_hadamard_epsilon: overlap (fraction of a chunk, in [0, 1]) of the binary keys.
        learn_muxing: train the multiplexer's instance keys (otherwise they are fixed buffers).
        retrieval_loss_coeff: weight of the auxiliary token-retrieval loss.
        task_loss_coeff: weight of the task loss (0 gives the stage-1 token-retrieval model).
        muxing_seed: seed of the fixed instance keys (they are saved in the checkpoint as well).
        prefix_filler_token_id: vocabulary id of the filler token of the `prefix` demultiplexer.
        prefix_index_token_ids: vocabulary ids of the N index tokens (default: ids 2 .. N+1, the
            `[unused*]` tokens of the BERT vocabulary).
        legacy_*: reproduce quirks of the original implementation (princeton-nlp/datamux-pretraining);
            set by the checkpoint converter, never useful for new models.
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
    prefix_filler_token_id: int = 1
    prefix_index_token_ids: list[int] | None = None
    # Legacy options (DESIGN.md section 4); all off by default.
    legacy_embed_mixture: bool = False
    legacy_demux: bool = False
    legacy_prefix_cls_token_id: int | None = None
    legacy_rsa_cls_token_id: int | None = None

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
    if config.muxing_variant not in MUXING_VARIANTS:
        raise ValueError(
            f"muxing_variant must be one of {', '.join(MUXING_VARIANTS)}; got {config.muxing_variant!r}"
        )
    if config.demuxing_variant not in DEMUXING_VARIANTS:
        raise ValueError(
            f"demuxing_variant must be one of {', '.join(DEMUXING_VARIANTS)}; got {config.demuxing_variant!r}"
        )
    if config.num_hidden_demux_layers < 1:
        raise ValueError(f"num_hidden_demux_layers must be >= 1, got {config.num_hidden_demux_layers}")
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
            raise ValueError(
                f"prefix_index_token_ids must hold num_instances={n} ids, got {len(ids)}: {ids}"
            )
        vocab = config.vocab_size
        special = {"prefix_filler_token_id": [config.prefix_filler_token_id], "prefix_index_token_ids": ids}
        if config.legacy_prefix_cls_token_id is not None:
            special["legacy_prefix_cls_token_id"] = [config.legacy_prefix_cls_token_id]
        for name, values in special.items():
            bad = [v for v in values if not 0 <= v < vocab]
            if bad:
                raise ValueError(
                    f"{name} must be vocabulary ids in [0, vocab_size={vocab}); got {bad}. "
                    "Pick ids of tokens inside the vocabulary (for BERT vocabularies, the [unused*] ids)."
                )
        if config.prefix_filler_token_id in ids:
            raise ValueError("prefix_filler_token_id must differ from every prefix_index_token_ids entry")


@strict
class MuxBertConfig(BertConfig, MultiplexingConfigMixin):
    r"""Configuration of a multiplexed BERT (MUX-BERT).

    All `BertConfig` fields plus those of :class:`MultiplexingConfigMixin`. The default pairing is the
    design card's: the ``contextual`` multiplexer with the ``prefix`` demultiplexer, at N = 2.

    Example:

    ```python
    >>> from mux_plms import MuxBertConfig, MuxBertForSequenceClassification
    >>> config = MuxBertConfig(num_instances=5, muxing_variant="gaussian_hadamard", demuxing_variant="rsa")
    >>> model = MuxBertForSequenceClassification(config)
    ```
    """

    model_type = "mux_bert"
    keys_to_ignore_at_inference = MUX_KEYS_TO_IGNORE_AT_INFERENCE

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        validate_multiplexing_fields(self)


__all__ = ["MuxBertConfig", "MultiplexingConfigMixin", "MUXING_VARIANTS", "DEMUXING_VARIANTS"]
