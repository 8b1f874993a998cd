"""MUX-ELECTRA: an ELECTRA backbone that runs once for N multiplexed inputs.

Building blocks come from transformers' ELECTRA (`ElectraEmbeddings`, `ElectraEncoder`, the
``embeddings_project`` of models whose ``embedding_size`` differs from ``hidden_size``), with the
module names of `ElectraModel` under ``electra.``, so a vanilla ELECTRA checkpoint's backbone loads
(warm start). Multiplexing, demultiplexing, losses and task forwards are the shared, backbone-agnostic
mixins of :mod:`modeling_mux_utils`; this file only builds modules. The multiplexer works at the
embedding width, before ``embeddings_project`` (see :class:`MuxElectraConfig` for why).

Classes: :class:`MuxElectraModel` (per-instance features), :class:`MuxElectraForPreTraining` (the
multiplexed discriminator: replaced-token detection + token retrieval), :class:`MuxElectraForMaskedLM`
(the generator), :class:`MuxElectraForSequenceClassification`, :class:`MuxElectraForTokenClassification`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.electra.modeling_electra import ElectraEmbeddings, ElectraEncoder

from .configuration_mux_electra import MuxElectraConfig
from .demultiplexing import build_demultiplexer
from .heads import (
    ReplacedTokenDetectionHead,
    VocabularyHead,
)
from .modeling_mux_utils import (
    MultiplexedBaseModelMixin,
    MuxMaskedLMMixin,
    MuxPreTrainedMixin,
    MuxSequenceClassificationMixin,
    MuxTaskModelMixin,
    MuxTokenClassificationMixin,
    init_mux_module,
)
from .modeling_outputs import MuxTaskOutput
from .multiplexing import build_multiplexer

_WORD_EMBEDDINGS = "electra.embeddings.word_embeddings.weight"


class MuxElectraPreTrainedModel(MuxPreTrainedMixin, PreTrainedModel):
    config: MuxElectraConfig
    config_class = MuxElectraConfig
    base_model_prefix = "electra"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["ElectraEmbeddings", "ElectraLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VocabularyHead):
            init.zeros_(module.decoder.bias)
        elif isinstance(module, ElectraEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        init_mux_module(module, self.config.initializer_range)


class MuxElectraModel(MultiplexedBaseModelMixin, MuxElectraPreTrainedModel):
    """Multiplexed ELECTRA encoder returning demultiplexed per-instance states ``(batch, seq_len, hidden)``.

    ``embeddings (E) -> multiplexer (E) -> embeddings_project (E -> H, only when E != H) -> encoder ->
    demultiplexer``. Rows ``kN .. kN+N-1`` share one backbone pass; any batch size works (internal padding
    with empty instances whose outputs are dropped).
    """

    def __init__(self, config: MuxElectraConfig):
        super().__init__(config)
        self.embeddings = ElectraEmbeddings(config)
        self.multiplexer = build_multiplexer(config, hidden_size=config.embedding_size)
        if config.embedding_size != config.hidden_size:
            self.embeddings_project = nn.Linear(config.embedding_size, config.hidden_size)
        self.encoder = ElectraEncoder(config)
        self.demultiplexer = build_demultiplexer(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def embed(self, input_ids, token_type_ids, position_ids, inputs_embeds):
        return self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )

    def encode(self, mixture, attention_mask, output_hidden_states=False):
        hidden = self.embeddings_project(mixture) if hasattr(self, "embeddings_project") else mixture
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.encoder.layer:
            hidden = layer(hidden, mask)
            if all_hidden is not None:
                all_hidden.append(hidden)
        return hidden, tuple(all_hidden) if all_hidden is not None else None


class MuxElectraTaskModel(MuxTaskModelMixin, MuxElectraPreTrainedModel):
    """Common constructor of the task models: the base model plus the token-retrieval head (at the
    embedding width, its decoder tied to the word embeddings)."""

    vocabulary_width_field = "embedding_size"  # the vocabulary heads work at the embedding width

    _tied_weights_keys = {"retrieval_head.decoder.weight": _WORD_EMBEDDINGS}

    def __init__(self, config: MuxElectraConfig):
        super().__init__(config)
        self.electra = MuxElectraModel(config)
        self.retrieval_head = self.vocabulary_head(config)

    @property
    def mux_base(self) -> MuxElectraModel:
        return self.electra


class MuxElectraForPreTraining(MuxElectraTaskModel):
    """The multiplexed ELECTRA discriminator: one replaced-token-detection logit per instance and token
    (positive = replaced), plus the auxiliary token-retrieval loss.

    The head's module names match `ElectraForPreTraining` (``discriminator_predictions.dense``,
    ``.dense_prediction``), so a vanilla discriminator checkpoint loads its head as well."""

    def __init__(self, config: MuxElectraConfig):
        super().__init__(config)
        self.discriminator_predictions = ReplacedTokenDetectionHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        retrieval_instance_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MuxTaskOutput | tuple:
        r"""
        labels: ``(batch, seq_len)``: 1 where the token was replaced, 0 where it is original, -100 where no
            prediction is asked. Padding positions (``attention_mask == 0``) never count either.
        retrieval_instance_ids: ``(ceil(batch / N), seq_len)``: the instance asked at each position by the
            retrieval loss (default: ``(group + position) mod N``).

        Returns `MuxTaskOutput` with ``logits`` ``(batch, seq_len)`` and ``task_loss`` the replaced-token
        detection loss (binary cross-entropy, mean over the positions asked).
        """
        mixed, batch, hidden_states = self._run(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_hidden_states
        )
        logits = self.discriminator_predictions(self.electra.demultiplex(mixed, batch))
        task_loss = None
        if labels is not None:
            self.check_token_labels(labels, logits.shape)
            asked = labels != -100
            if attention_mask is not None:
                asked &= attention_mask.to(device=asked.device).bool()
            if asked.any():
                task_loss = BCEWithLogitsLoss()(logits[asked], labels[asked].to(logits.dtype))
            else:
                task_loss = logits.sum() * 0.0
        return self._output(logits, task_loss, mixed, batch, labels, retrieval_instance_ids, hidden_states, return_dict)


class MuxElectraForMaskedLM(MuxMaskedLMMixin, MuxElectraTaskModel):
    """The ELECTRA generator: MLM over the demultiplexed states (projected back to the embedding width,
    decoder tied to the word embeddings) plus the auxiliary token-retrieval loss."""

    _tied_weights_keys = {
        "retrieval_head.decoder.weight": _WORD_EMBEDDINGS,
        "lm_head.decoder.weight": _WORD_EMBEDDINGS,
    }


class MuxElectraForSequenceClassification(MuxSequenceClassificationMixin, MuxElectraTaskModel):
    """Sequence classification / regression on each instance's demultiplexed first-token state."""


class MuxElectraForTokenClassification(MuxTokenClassificationMixin, MuxElectraTaskModel):
    """Token classification (NER, POS) on every demultiplexed token state."""


__all__ = [
    "MuxElectraPreTrainedModel",
    "MuxElectraModel",
    "MuxElectraForPreTraining",
    "MuxElectraForMaskedLM",
    "MuxElectraForSequenceClassification",
    "MuxElectraForTokenClassification",
]
