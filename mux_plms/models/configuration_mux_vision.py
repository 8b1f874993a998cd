"""Configuration of the multiplexed image classifiers (DataMUX's MLP and CNN on images)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_mux_utils import (
    MUX_KEYS_TO_IGNORE_AT_INFERENCE,
    CheckpointOverrideGuard,
    MultiplexingConfigMixin,
    validate_multiplexing_fields,
)
from .demultiplexing import DEMULTIPLEXERS, demuxing_variants

VISION_BACKBONES = ("mlp", "cnn")


def vision_demuxing_variants() -> tuple[str, ...]:
    """The registered demultiplexers that work on images: those that prepend no token ids."""
    return tuple(name for name in demuxing_variants() if not DEMULTIPLEXERS[name].needs_input_ids)


VISION_DEMUXING_VARIANTS = vision_demuxing_variants()  # the built-in ones


@strict
class MuxVisionConfig(CheckpointOverrideGuard, PreTrainedConfig, MultiplexingConfigMixin):
    r"""Configuration of a multiplexed image classifier: :class:`MuxMlpForImageClassification` or
    :class:`MuxCnnForImageClassification` (DataMUX, section "MLPs and CNNs").

    Images play the part of token sequences:

    * **mlp**: the flattened image (``num_channels * image_size**2`` values, one "position") is the
      instance. The multiplexer mixes the N raw images at pixel width (DataMUX multiplexes the inputs of
      the MLP), the backbone is ``num_hidden_layers`` dense layers of width ``hidden_size``.
    * **cnn**: a per-instance convolutional stem (the "embedding") turns each image into ``hidden_size``
      feature maps; every pixel is a position and the multiplexer mixes the N feature maps channel-wise,
      with the same instance key at every pixel (as a token key is shared by every position). The backbone
      is ``num_hidden_layers`` residual convolutions on the mixture.

    Then both demultiplex (``rsa`` or ``mlp``) and share one classifier; the CNN mean-pools each
    instance's demultiplexed pixel states first. The ``prefix`` demultiplexer needs token ids and is not
    available for images.

    Args:
        backbone: ``"mlp"`` or ``"cnn"``; None lets the model class fill it in.
        image_size: height = width of the input images (scikit-learn digits: 8, MNIST: 28).
        num_channels: channels of the input images.
        hidden_size: width of the dense layers (mlp) or number of feature maps (cnn).
        num_hidden_layers: dense layers (mlp) or residual convolutions (cnn) run once per mixture.
        kernel_size: odd convolution kernel size (cnn).
        hidden_act, hidden_dropout_prob, layer_norm_eps, initializer_range, classifier_dropout: as in BERT.
        num_attention_heads, intermediate_size, attention_probs_dropout_prob: sizes of the two Transformer
            layers of the ``contextual`` multiplexer (unused by the other multiplexers).
        Multiplexing fields: those of :class:`MultiplexingConfigMixin` (``num_instances``, ``muxing_variant``
            ``random_ortho`` (default) | ``gaussian_hadamard`` | ``binary_hadamard`` | ``contextual``,
            ``demuxing_variant`` ``mlp`` (default, DataMUX's) | ``rsa``, ``retrieval_loss_coeff``, ...).
            With ``retrieval_loss_coeff > 0`` the auxiliary retrieval loss asks every demultiplexed state to
            reconstruct its own input pixels (mean squared error), the image analogue of token retrieval.

    Example:

    ```python
    >>> from mux_plms import MuxVisionConfig, MuxMlpForImageClassification
    >>> config = MuxVisionConfig(image_size=8, num_instances=2, num_labels=10)
    >>> model = MuxMlpForImageClassification(config)
    ```
    """

    model_type = "mux_vision"
    keys_to_ignore_at_inference = MUX_KEYS_TO_IGNORE_AT_INFERENCE

    backbone: str | None = None
    image_size: int = 28
    num_channels: int = 1
    hidden_size: int = 256
    num_hidden_layers: int = 2
    kernel_size: int = 3
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    classifier_dropout: float | int | None = None
    num_attention_heads: int = 4
    intermediate_size: int = 512
    attention_probs_dropout_prob: float | int = 0.0
    is_decoder: bool = False  # read by the contextual multiplexer's BERT layers
    add_cross_attention: bool = False
    # Random orthogonal mixing keeps every pixel of every instance recoverable; on real digits it beats
    # Gaussian Hadamard mixing at N >= 2 (benchmarks/results/backbones/README.md). DataMUX's MLP demux.
    muxing_variant: str = "random_ortho"
    demuxing_variant: str = "mlp"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.demuxing_variant in DEMULTIPLEXERS and self.demuxing_variant not in vision_demuxing_variants():
            raise ValueError(
                f"demuxing_variant must be one of {', '.join(vision_demuxing_variants())} for images (the "
                f"{self.demuxing_variant} demultiplexer needs token ids); got {self.demuxing_variant!r}"
            )
        validate_multiplexing_fields(self)
        validate_vision_fields(self)

    @property
    def num_pixels(self) -> int:
        """Values per flattened image: ``num_channels * image_size ** 2``."""
        return self.num_channels * self.image_size**2

    @property
    def mux_width(self) -> int:
        """Width at which the multiplexer mixes: the flattened image (mlp) or the feature maps (cnn)."""
        return self.num_pixels if self.backbone == "mlp" else self.hidden_size


def validate_vision_fields(config: MuxVisionConfig) -> None:
    """Checks specific to images; raise `ValueError` naming the field and what is allowed."""
    if config.backbone is not None and config.backbone not in VISION_BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(VISION_BACKBONES)} (or None); got {config.backbone!r}")
    for name in ("image_size", "num_channels", "hidden_size", "num_hidden_layers"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if config.kernel_size < 1 or config.kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 1 (same-size convolutions), got {config.kernel_size}")
    if config.muxing_variant == "contextual" and config.backbone is not None:
        if config.mux_width % config.num_attention_heads != 0:
            raise ValueError(
                f"The contextual multiplexer runs attention at width {config.mux_width} (backbone "
                f"{config.backbone!r}), which must be a multiple of num_attention_heads={config.num_attention_heads}"
            )
    if config.muxing_variant == "binary_hadamard" and config.backbone is not None:
        if config.mux_width < config.num_instances:
            raise ValueError(
                f"binary_hadamard gives each instance its own chunk of the {config.mux_width} mixed dimensions; "
                f"num_instances={config.num_instances} is too large"
            )


__all__ = ["MuxVisionConfig", "VISION_BACKBONES", "VISION_DEMUXING_VARIANTS"]
