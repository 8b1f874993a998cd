"""Configuration of MUX-LSTM: a bidirectional multi-layer LSTM backbone with the shared multiplexing fields."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_mux_utils import (
    MUX_KEYS_TO_IGNORE_AT_INFERENCE,
    CheckpointOverrideGuard,
    MultiplexingConfigMixin,
    validate_multiplexing_fields,
)


@strict
class MuxLstmConfig(CheckpointOverrideGuard, PreTrainedConfig, MultiplexingConfigMixin):
    r"""Configuration of a multiplexed LSTM (the backbone of "Beyond DataMUX": ALBERT and LSTM backbones).

    Token (+ token-type) embeddings of width ``hidden_size``, then ``num_hidden_layers`` bidirectional LSTM
    layers with ``hidden_size / 2`` units per direction (the follow-up's 12 layers x 384 x 2 = 768), so the
    backbone's output has the same width as a Transformer's and every multiplexer, demultiplexer and head of
    MUX-BERT applies unchanged. Defaults follow the follow-up: Gaussian Hadamard multiplexing and index
    (``prefix``) demultiplexing, N = 2.

    Args:
        vocab_size, hidden_size, num_hidden_layers, hidden_act, hidden_dropout_prob, type_vocab_size,
            initializer_range, layer_norm_eps, pad_token_id, classifier_dropout: as in `BertConfig`
            (``hidden_dropout_prob`` is also the dropout between LSTM layers).
        max_position_embeddings: longest input accepted, prefix positions included. An LSTM has no
            position table; this only guards against accidentally long inputs (MUX-BERT's length check).
        num_attention_heads, intermediate_size, attention_probs_dropout_prob: sizes of the two Transformer
            layers of the ``contextual`` multiplexer (unused by the other multiplexers).
        Multiplexing fields: see :class:`MultiplexingConfigMixin`.

    Example:

    ```python
    >>> from mux_plms import MuxLstmConfig, MuxLstmForSequenceClassification
    >>> config = MuxLstmConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_instances=2)
    >>> model = MuxLstmForSequenceClassification(config)
    ```
    """

    model_type = "mux_lstm"
    keys_to_ignore_at_inference = MUX_KEYS_TO_IGNORE_AT_INFERENCE

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    classifier_dropout: float | int | None = None
    tie_word_embeddings: bool = True
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    attention_probs_dropout_prob: float | int = 0.1
    is_decoder: bool = False  # read by the contextual multiplexer's BERT layers
    add_cross_attention: bool = False
    muxing_variant: str = "gaussian_hadamard"
    demuxing_variant: str = "prefix"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        validate_multiplexing_fields(self)
        if self.hidden_size < 2 or self.hidden_size % 2:
            raise ValueError(
                f"hidden_size must be an even integer >= 2 (hidden_size / 2 LSTM units per direction), got {self.hidden_size}"
            )
        if self.num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be >= 1, got {self.num_hidden_layers}")
        if self.muxing_variant == "contextual" and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"The contextual multiplexer needs hidden_size={self.hidden_size} to be a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )


__all__ = ["MuxLstmConfig"]
