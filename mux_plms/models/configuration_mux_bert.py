"""Configuration of MUX-BERT: every `BertConfig` field plus the multiplexing fields (shared by every family,
:mod:`.configuration_mux_utils`) plus the ``legacy_*`` options that reproduce the original implementation
(converted checkpoints; MUX-BERT only).
"""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import BertConfig

from .configuration_mux_utils import (  # noqa: F401  (re-exported: the names' earlier home)
    CHECKPOINT_FIXED_FIELDS,
    DEMUXING_VARIANTS,
    MUX_KEYS_TO_IGNORE_AT_INFERENCE,
    MUXING_VARIANTS,
    POSITION_MIXINGS,
    SEQUENCE_POOLINGS,
    CheckpointOverrideGuard,
    MultiplexingConfigMixin,
    check_checkpoint_overrides,
    validate_multiplexing_fields,
)


@dataclass(repr=False)
class LegacyOptionsMixin:
    """The options of converted original checkpoints (``mux_plms.convert_legacy_checkpoint``).

    Args:
        legacy_*: reproduce quirks of the original implementation (princeton-nlp/datamux-pretraining).
            Set by ``mux_plms.convert_legacy_checkpoint``, all off by default, never useful for new models
            (docs/legacy-checkpoints.md):

            - ``legacy_embed_mixture``: the mixture re-enters the embedding layer (position and
              token-type embeddings and the embedding LayerNorm applied a second time) and the encoder
              runs without an attention mask.
            - ``legacy_demux``: the original `index_pos` demultiplexer (needs ``demuxing_variant="rsa"``,
              ``num_hidden_demux_layers >= 2``): ``"pretraining"`` is the path of the original MLM /
              retrieval head (key first, ``dense_1 → gelu → layer_norm_1 → dense_2 → gelu →
              layer_norm_2``); ``"finetuning"`` the path of its task models (``dense_k → gelu →
              dropout``, residual from the second layer on, for k < ``num_hidden_demux_layers``, then
              ``pre_decoder → gelu → pre_decoder_layer_norm`` plus a residual). The retrieval loss
              always takes the pre-training path.
            - ``legacy_contextual``: the original `gaussian_attention_v2` multiplexer's masks (needs
              ``muxing_variant="contextual"``): additive masks in which a fully padded row attends
              uniformly; the cross-instance layer runs without a mask in ``"cross_unmasked"`` (the
              original MLM and token-classification models) and with one in ``"cross_masked"`` (its
              sequence-classification model). ``"mlm"`` and ``"task"``, written by earlier versions,
              are read as ``"cross_unmasked"`` and ``"cross_masked"``.
            - ``legacy_prefix_cls_token_id``: the `prefix` demultiplexer appends this token ([CLS] 101
              in the original) after the N index slots, and sequence classification reads the
              state at that slot.
            - ``legacy_prefix_truncate``: the original MLM model keeps the length of its inputs when
              it prepends the prefix, dropping their last ``prefix length`` tokens (their states,
              logits and labels are ignored; the states are returned as zeros).
            - ``legacy_rsa_cls_token_id``: the original `index_pos` models overwrite position 0 of
              every input with this token ([CLS] 101).
            - ``legacy_ignore_token_type_ids``: the original classification models ignore
              ``token_type_ids`` (every position gets type 0).
            - ``legacy_linear_classifier``: sequence classification is one linear layer (after
              dropout) on the demultiplexed state, without the dense + tanh pooler.
            - ``legacy_untransformed_vocab_head``: the vocabulary heads (MLM, retrieval) project the
              demultiplexed state straight onto the vocabulary, without dense + activation + LayerNorm
              (the original `index` heads).
    """

    # All off by default (docs/legacy-checkpoints.md, docs/design.md).
    legacy_embed_mixture: bool = False
    legacy_demux: str | None = None
    legacy_contextual: str | None = None
    legacy_prefix_cls_token_id: int | None = None
    legacy_prefix_truncate: bool = False
    legacy_rsa_cls_token_id: int | None = None
    legacy_ignore_token_type_ids: bool = False
    legacy_linear_classifier: bool = False
    legacy_untransformed_vocab_head: bool = False


LEGACY_DEMUX_PATHS = ("pretraining", "finetuning")
LEGACY_CONTEXTUAL_MODES = ("cross_unmasked", "cross_masked")
# Values written by earlier versions of the converter, read with their original meaning.
LEGACY_CONTEXTUAL_ALIASES = {"mlm": "cross_unmasked", "task": "cross_masked"}


def validate_legacy_fields(config) -> None:
    """Check the ``legacy_*`` options: allowed values and the variants each one belongs to."""
    if config.legacy_demux is not None:
        if config.legacy_demux not in LEGACY_DEMUX_PATHS:
            raise ValueError(
                f"legacy_demux must be None or one of {', '.join(LEGACY_DEMUX_PATHS)}; got {config.legacy_demux!r}"
            )
        if config.demuxing_variant != "rsa" or config.num_hidden_demux_layers < 2:
            raise ValueError(
                "legacy_demux reproduces the original `index_pos` demultiplexer: it needs demuxing_variant='rsa' "
                f"and num_hidden_demux_layers >= 2, got {config.demuxing_variant!r} and {config.num_hidden_demux_layers}"
            )
    if config.legacy_contextual is not None:
        if config.legacy_contextual not in (*LEGACY_CONTEXTUAL_MODES, *LEGACY_CONTEXTUAL_ALIASES):
            raise ValueError(
                f"legacy_contextual must be None or one of {', '.join(LEGACY_CONTEXTUAL_MODES)}; "
                f"got {config.legacy_contextual!r}"
            )
        if config.muxing_variant != "contextual":
            raise ValueError(f"legacy_contextual needs muxing_variant='contextual', got {config.muxing_variant!r}")
    if config.demuxing_variant != "prefix" and (
        config.legacy_prefix_cls_token_id is not None or config.legacy_prefix_truncate
    ):
        raise ValueError(
            "legacy_prefix_cls_token_id and legacy_prefix_truncate belong to the `prefix` demultiplexer; "
            f"demuxing_variant is {config.demuxing_variant!r}"
        )
    if config.legacy_rsa_cls_token_id is not None:
        if config.demuxing_variant != "rsa":
            raise ValueError(f"legacy_rsa_cls_token_id needs demuxing_variant='rsa', got {config.demuxing_variant!r}")
        if not 0 <= config.legacy_rsa_cls_token_id < config.vocab_size:
            raise ValueError(
                f"legacy_rsa_cls_token_id must be a vocabulary id in [0, vocab_size={config.vocab_size}); "
                f"got {config.legacy_rsa_cls_token_id}"
            )


@strict
class MuxBertConfig(CheckpointOverrideGuard, BertConfig, MultiplexingConfigMixin, LegacyOptionsMixin):
    r"""Configuration of a multiplexed BERT (MUX-BERT).

    All `BertConfig` fields plus those of :class:`MultiplexingConfigMixin` and :class:`LegacyOptionsMixin`. The default pairing is the
    design card's: the ``contextual`` multiplexer with the ``prefix`` demultiplexer, at N = 2.

    Example:

    ```python
    >>> from mux_plms import MuxBertConfig, MuxBertForSequenceClassification
    >>> config = MuxBertConfig(num_instances=5, muxing_variant="gaussian_hadamard", demuxing_variant="rsa")
    >>> model = MuxBertForSequenceClassification(config)
    ```
    """

    model_type = "mux_bert"
    supports_legacy_options = True  # the LegacyOptionsMixin fields
    keys_to_ignore_at_inference = MUX_KEYS_TO_IGNORE_AT_INFERENCE

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        validate_multiplexing_fields(self)
        validate_legacy_fields(self)


__all__ = [
    "MuxBertConfig",
    "MultiplexingConfigMixin",
    "LegacyOptionsMixin",
    "CheckpointOverrideGuard",
    "MUXING_VARIANTS",
    "DEMUXING_VARIANTS",
]
