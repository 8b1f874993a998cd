"""Multiplexed image classifiers: DataMUX's MLP and CNN, on the shared multiplexers and demultiplexers.

An image is to these models what a token sequence is to MUX-BERT::

    N images -> "embed" (per instance) -> multiplexer -> backbone (once per mixture) -> demultiplexer
             -> per-instance states -> (mean over positions) -> shared classifier

* :class:`MuxMlpForImageClassification`: the instance is the flattened image (one position); the N images
  are mixed at pixel width, then dense layers run once on the mixture (DataMUX's multiplexed MLP).
* :class:`MuxCnnForImageClassification`: a per-instance convolutional stem gives feature maps; each pixel
  is a position whose channels the multiplexer mixes (one key per instance, shared by every pixel), then
  residual convolutions run once on the mixture.

Both are returned by :class:`MuxVisionForImageClassification` (the class registered with
``AutoModelForImageClassification``) according to ``config.backbone``.

Grouping and padding follow MUX-BERT: rows ``kN .. kN+N-1`` form mux group k; a batch that is not a
multiple of N is padded internally with all-zero images, so internal padding and explicit all-zero rows
give the same outputs. The optional retrieval loss (``retrieval_loss_coeff > 0``) asks each
demultiplexed state to reconstruct its own instance's input pixels (mean squared error).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import MSELoss
from transformers import PreTrainedModel
from transformers.activations import ACT2FN

from .configuration_mux_vision import VISION_BACKBONES, MuxVisionConfig, validate_vision_fields
from .demultiplexing import build_demultiplexer
from .heads import SequenceClassificationHead
from .modeling_mux_utils import MuxPreTrainedMixin, MuxTaskMixin, init_mux_module, pad_rows
from .modeling_outputs import MuxTaskOutput
from .multiplexing import build_multiplexer


class MuxVisionPreTrainedModel(MuxPreTrainedMixin, PreTrainedModel):
    config: MuxVisionConfig
    config_class = MuxVisionConfig
    base_model_prefix = "mux_vision"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        init_mux_module(module, self.config.initializer_range)


class MuxVisionForImageClassification(MuxTaskMixin, MuxVisionPreTrainedModel):
    """Multiplexed image classifier; ``MuxVisionForImageClassification(config)`` builds the subclass named by
    ``config.backbone`` (:class:`MuxMlpForImageClassification` or :class:`MuxCnnForImageClassification`).

    ``forward(pixel_values (batch, channels, size, size), labels (batch,) optional)`` returns a
    `MuxTaskOutput`: ``logits`` ``(batch, num_labels)``, ``loss = task_loss_coeff * cross-entropy +
    retrieval_loss_coeff * reconstruction MSE``, and, when the retrieval loss is computed,
    ``retrieval_logits``: each instance's reconstruction of its own pixels ``(batch, positions, values)``.
    """

    backbone_type: str | None = None  # set by the subclasses

    def __new__(cls, config=None, *args, **kwargs):
        if cls is MuxVisionForImageClassification and getattr(config, "backbone", None) in _BACKBONE_CLASSES:
            cls = _BACKBONE_CLASSES[config.backbone]
        return super().__new__(cls)

    def __init__(self, config: MuxVisionConfig):
        super().__init__(config)
        if self.backbone_type is None:
            raise ValueError(
                f"config.backbone must be one of {', '.join(VISION_BACKBONES)} to build a "
                f"MuxVisionForImageClassification; got {config.backbone!r}"
            )
        if config.backbone is None:
            config.backbone = self.backbone_type
            validate_vision_fields(config)
        elif config.backbone != self.backbone_type:
            raise ValueError(
                f"{type(self).__name__} needs config.backbone={self.backbone_type!r}, got {config.backbone!r}: use "
                f"{_BACKBONE_CLASSES[config.backbone].__name__} or MuxVisionForImageClassification"
            )
        self.num_labels = config.num_labels
        self.act = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.multiplexer = build_multiplexer(config, hidden_size=config.mux_width)
        self.build_backbone(config)
        self.demultiplexer = build_demultiplexer(config)
        self.classifier = SequenceClassificationHead(config)
        self.retrieval_head = nn.Linear(config.hidden_size, self.values_per_position)
        self.post_init()

    # -- backbone-specific parts, implemented by the subclasses ----------------------------------------
    values_per_position: int

    def build_backbone(self, config: MuxVisionConfig) -> None:
        raise NotImplementedError

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Per-instance embedding ``(rows, positions, mux_width)``."""
        raise NotImplementedError

    def encode(self, mixture: torch.Tensor, output_hidden_states: bool):
        """Backbone on the mixtures ``(groups, positions, mux_width)`` -> ``((groups, positions, hidden), all | None)``."""
        raise NotImplementedError

    def reconstruction_targets(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Each instance's pixels laid out like the retrieval head's output ``(rows, positions, values)``."""
        raise NotImplementedError

    # -- shared forward ------------------------------------------------------------------------------
    @property
    def mux_base(self):
        return self

    def check_pixel_values(self, pixel_values: torch.Tensor | None) -> torch.Tensor:
        c, s = self.config.num_channels, self.config.image_size
        if pixel_values is None or pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (c, s, s):
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError(
                f"pixel_values must have shape (batch, {c}, {s}, {s}) (num_channels, image_size); got {shape}"
            )
        return pixel_values.to(self.classifier.dense.weight.dtype)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MuxTaskOutput | tuple:
        r"""
        pixel_values: ``(batch, num_channels, image_size, image_size)`` images (any normalisation; the
            benchmark uses [0, 1] intensities).
        labels: ``(batch,)`` class ids (or floats for regression / multi-label, as for MUX-BERT).
        """
        pixel_values = self.check_pixel_values(pixel_values)
        n, batch_size = self.config.num_instances, pixel_values.shape[0]
        padded = pad_rows(pixel_values, (-batch_size) % n, 0.0)
        embedded = self.embed(padded)  # (rows, positions, width)
        rows, positions = embedded.shape[:2]
        groups = rows // n
        # Every instance, internal padding included, is a (possibly all-zero) image: the mask is all ones.
        mask = torch.ones(groups, n, positions, dtype=torch.long, device=embedded.device)
        mixture = self.multiplexer(embedded.view(groups, n, positions, -1), mask)
        mixed, hidden_states = self.encode(mixture, bool(output_hidden_states))
        states = self.demultiplexer(mixed).reshape(rows, positions, -1)[:batch_size]
        logits = self.classifier(states.mean(dim=1))
        task_loss = self.sequence_classification_loss(logits, labels) if labels is not None else None
        retrieval_loss = reconstructions = None
        if self.wants_retrieval_loss(labels, None):
            reconstructions = self.retrieval_head(states)
            retrieval_loss = MSELoss()(reconstructions, self.reconstruction_targets(pixel_values))
        output = MuxTaskOutput(
            loss=self.combine_losses(task_loss, retrieval_loss),
            logits=logits,
            task_loss=task_loss,
            retrieval_loss=retrieval_loss,
            retrieval_logits=reconstructions,
            hidden_states=hidden_states,
        )
        return output if return_dict is not False else output.to_tuple()

    @torch.no_grad()
    def forward_ensemble(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Ensembled inference: each image visits each of the N slots of its mux group once (N passes,
        about one un-multiplexed pass per image); its N logits are averaged. Returns ``(batch, num_labels)``."""
        n, batch_size = self.config.num_instances, pixel_values.shape[0]
        groups = -(-batch_size // n)
        padded = pad_rows(pixel_values, groups * n - batch_size, 0.0)
        base = torch.arange(groups, device=padded.device)[:, None] * n
        total = None
        for shift in range(n):
            order = (base + (torch.arange(n, device=padded.device) + shift) % n).reshape(-1)
            logits = self(pixel_values=padded[order]).logits
            restored = torch.empty_like(logits)
            restored[order] = logits
            total = restored if total is None else total + restored
        return (total / n)[:batch_size]


class MuxMlpForImageClassification(MuxVisionForImageClassification):
    """DataMUX's multiplexed MLP: N flattened images are mixed at pixel width, ``num_hidden_layers`` dense
    layers (width ``hidden_size``) run once on the mixture, then demultiplexing and a shared classifier."""

    backbone_type = "mlp"

    def build_backbone(self, config):
        widths = [config.num_pixels] + [config.hidden_size] * config.num_hidden_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.values_per_position = config.num_pixels

    def embed(self, pixel_values):
        return pixel_values.flatten(1)[:, None, :]  # one position: the whole image

    def encode(self, mixture, output_hidden_states):
        hidden = mixture
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.layers:
            hidden = self.dropout(self.act(layer(hidden)))
            if all_hidden is not None:
                all_hidden.append(hidden)
        return hidden, tuple(all_hidden) if all_hidden is not None else None

    def reconstruction_targets(self, pixel_values):
        return pixel_values.flatten(1)[:, None, :]


class MuxCnnForImageClassification(MuxVisionForImageClassification):
    """Multiplexed CNN: a per-instance convolutional stem, channel-wise multiplexing of the feature maps at
    every pixel, ``num_hidden_layers`` residual convolutions once per mixture, per-pixel demultiplexing,
    mean pooling per instance and a shared classifier."""

    backbone_type = "cnn"

    def build_backbone(self, config):
        h, k = config.hidden_size, config.kernel_size
        self.stem = nn.Conv2d(config.num_channels, h, k, padding=k // 2)
        self.layers = nn.ModuleList(nn.Conv2d(h, h, k, padding=k // 2) for _ in range(config.num_hidden_layers))
        self.norms = nn.ModuleList(
            nn.GroupNorm(1, h, eps=config.layer_norm_eps) for _ in range(config.num_hidden_layers)
        )
        self.values_per_position = config.num_channels

    def embed(self, pixel_values):
        maps = self.act(self.stem(pixel_values))  # (rows, hidden, size, size)
        return maps.flatten(2).transpose(1, 2)  # (rows, size * size, hidden): one position per pixel

    def encode(self, mixture, output_hidden_states):
        groups, positions, width = mixture.shape
        size = self.config.image_size
        hidden = mixture.transpose(1, 2).reshape(groups, width, size, size)
        all_hidden = [mixture] if output_hidden_states else None
        for conv, norm in zip(self.layers, self.norms):
            hidden = hidden + self.dropout(self.act(conv(norm(hidden))))
            if all_hidden is not None:
                all_hidden.append(hidden.flatten(2).transpose(1, 2))
        return hidden.flatten(2).transpose(1, 2), tuple(all_hidden) if all_hidden is not None else None

    def reconstruction_targets(self, pixel_values):
        return pixel_values.flatten(2).transpose(1, 2)  # (rows, pixels, channels)


_BACKBONE_CLASSES = {"mlp": MuxMlpForImageClassification, "cnn": MuxCnnForImageClassification}

__all__ = [
    "MuxVisionPreTrainedModel",
    "MuxVisionForImageClassification",
    "MuxMlpForImageClassification",
    "MuxCnnForImageClassification",
]
