"""Configuration of MUX-ALBERT: every `AlbertConfig` field plus the multiplexing fields."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AlbertConfig

from .configuration_mux_electra import validate_electra_multiplexing_fields
from .configuration_mux_utils import (
    MUX_KEYS_TO_IGNORE_AT_INFERENCE,
    CheckpointOverrideGuard,
    MultiplexingConfigMixin,
    validate_multiplexing_fields,
)


@strict
class MuxAlbertConfig(CheckpointOverrideGuard, AlbertConfig, MultiplexingConfigMixin):
    r"""Configuration of a multiplexed ALBERT (the follow-up's second backbone).

    All `AlbertConfig` fields plus those of :class:`MultiplexingConfigMixin`. Like ELECTRA-small, ALBERT
    embeds at ``embedding_size`` (E) < ``hidden_size`` (H) and projects with the encoder's
    ``embedding_hidden_mapping_in``; the multiplexer sits where MUX-ELECTRA puts it, at width E *before*
    that projection (see `MuxElectraConfig` for the cost model): the projection and the shared layers run
    once per mixture.

    ``classifier_dropout`` (read by the shared heads) is an alias of ALBERT's ``classifier_dropout_prob``.

    Example:

    ```python
    >>> from mux_plms import MuxAlbertConfig, MuxAlbertForSequenceClassification
    >>> config = MuxAlbertConfig(embedding_size=128, hidden_size=768, num_attention_heads=12, intermediate_size=3072)
    >>> model = MuxAlbertForSequenceClassification(config)
    ```
    """

    model_type = "mux_albert"
    keys_to_ignore_at_inference = MUX_KEYS_TO_IGNORE_AT_INFERENCE
    attribute_map = {"classifier_dropout": "classifier_dropout_prob"}

    is_decoder: bool = False  # read by the contextual multiplexer's BERT layers
    add_cross_attention: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        validate_multiplexing_fields(self)
        validate_electra_multiplexing_fields(self)
        if self.num_hidden_groups < 1 or self.num_hidden_layers % self.num_hidden_groups:
            raise ValueError(
                f"num_hidden_groups must divide num_hidden_layers={self.num_hidden_layers}, got {self.num_hidden_groups}"
            )


__all__ = ["MuxAlbertConfig"]
