"""Configuration of MUX-RoBERTa: every `RobertaConfig` field plus the multiplexing fields."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import RobertaConfig

from .configuration_mux_utils import (
    MUX_KEYS_TO_IGNORE_AT_INFERENCE,
    CheckpointOverrideGuard,
    MultiplexingConfigMixin,
    validate_multiplexing_fields,
)


@strict
class MuxRobertaConfig(CheckpointOverrideGuard, RobertaConfig, MultiplexingConfigMixin):
    r"""Configuration of a multiplexed RoBERTa (the backbone of DataMUX's T-MUX and of its follow-up).

    All `RobertaConfig` fields plus those of :class:`MultiplexingConfigMixin` (same defaults and validation
    as `MuxBertConfig`). RoBERTa numbers positions from ``pad_token_id + 1``, so at most
    ``max_position_embeddings - pad_token_id - 1`` positions (prefix included) fit.

    The ``prefix`` demultiplexer's default ids (filler 1, index tokens 2 .. N+1) are BERT's ``[unused*]``
    convention; in a RoBERTa vocabulary 1 is ``<pad>`` (a filler that embeds as nothing, at the padding
    position) and 2 .. N+1 are ``</s>``, ``<unk>`` and frequent tokens. That works, since the index
    embeddings are learned, but pick ``prefix_index_token_ids`` explicitly when warm-starting a checkpoint.

    Example:

    ```python
    >>> from mux_plms import MuxRobertaConfig, MuxRobertaForSequenceClassification
    >>> config = MuxRobertaConfig(num_instances=2, muxing_variant="gaussian_hadamard", demuxing_variant="prefix")
    >>> model = MuxRobertaForSequenceClassification(config)
    ```
    """

    model_type = "mux_roberta"
    keys_to_ignore_at_inference = MUX_KEYS_TO_IGNORE_AT_INFERENCE

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        validate_multiplexing_fields(self)


__all__ = ["MuxRobertaConfig"]
