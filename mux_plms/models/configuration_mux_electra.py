"""Configuration of MUX-ELECTRA: every `ElectraConfig` field plus the multiplexing fields."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import ElectraConfig

from .configuration_mux_utils import (
    MUX_KEYS_TO_IGNORE_AT_INFERENCE,
    CheckpointOverrideGuard,
    MultiplexingConfigMixin,
    validate_multiplexing_fields,
)


@strict
class MuxElectraConfig(CheckpointOverrideGuard, ElectraConfig, MultiplexingConfigMixin):
    r"""Configuration of a multiplexed ELECTRA (MUX-ELECTRA): discriminator, generator or fine-tuned model.

    All `ElectraConfig` fields plus those of :class:`MultiplexingConfigMixin` (same defaults and validation
    as `MuxBertConfig`: ``contextual`` multiplexer, ``prefix`` demultiplexer, N = 2).

    **Where the multiplexer sits.** ELECTRA embeds tokens at ``embedding_size`` (E) and, when E differs from
    ``hidden_size`` (H; ELECTRA-small has E = 128, H = 256), projects them with ``embeddings_project``
    before the encoder. MUX-ELECTRA multiplexes *before* that projection, at width E, as the original
    MUX-PLMs MUX-ELECTRA does::

        N instances -> embeddings (E) -> multiplexer (E) -> embeddings_project (E -> H) -> encoder (H) -> demux (H)
        '------------- per instance -------------'      '------------------ per mixture ------------------'

    Cost model (FLOPs per token, ELECTRA-small shapes, 12 layers):

    * per instance: the embedding lookup + LayerNorm at E, and the multiplexer at E. The fixed-key
      multiplexers are one elementwise product (or an E x E product for ``random_ortho``); the
      ``contextual`` multiplexer runs two Transformer layers per instance, which at E = 128 costs about
      2 x 0.33 M multiply-adds instead of 2 x 0.79 M at H = 256 (the largest per-instance term).
    * per mixture (divided by N): ``embeddings_project`` (E x H = 33 k) and the encoder (12 x 0.79 M).
      Projecting after the multiplexer runs the projection once per mixture instead of once per instance.
    * per instance again: the demultiplexer and the task head, at H.

    The price is capacity: the mixture lives in the E-dimensional embedding space (rank <= E after the
    projection), whereas mixing after the projection could spread N instances over up to min(N E, H)
    dimensions. We accept it because the backbone is the same either way, the per-instance cost of
    the contextual multiplexer drops by ~2.4x at small size, the instance keys have the original
    checkpoints' shape (E), and for ELECTRA-base and -large (E = H) the two placements coincide.

    Example:

    ```python
    >>> from mux_plms import MuxElectraConfig, MuxElectraForPreTraining
    >>> config = MuxElectraConfig(num_instances=2, muxing_variant="gaussian_hadamard", demuxing_variant="rsa")
    >>> discriminator = MuxElectraForPreTraining(config)
    ```
    """

    model_type = "mux_electra"
    keys_to_ignore_at_inference = MUX_KEYS_TO_IGNORE_AT_INFERENCE

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        validate_multiplexing_fields(self)
        validate_electra_multiplexing_fields(self)


def validate_electra_multiplexing_fields(config) -> None:
    """Checks specific to multiplexing at the embedding width; raise `ValueError` naming the field."""
    if config.embedding_size < 1 or config.hidden_size < 1:
        raise ValueError(
            f"embedding_size and hidden_size must be >= 1, got {config.embedding_size} and {config.hidden_size}"
        )
    if config.muxing_variant == "contextual" and config.embedding_size % config.num_attention_heads != 0:
        raise ValueError(
            f"The contextual multiplexer runs attention at embedding_size={config.embedding_size}, which must be "
            f"a multiple of num_attention_heads={config.num_attention_heads}"
        )


__all__ = ["MuxElectraConfig"]
