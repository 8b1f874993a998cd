"""MUX-RoBERTa: a RoBERTa backbone that runs once for N multiplexed inputs.

Building blocks are transformers' RoBERTa (`RobertaEmbeddings`, `RobertaEncoder`) under ``roberta.``, so a
vanilla RoBERTa checkpoint's backbone loads (warm start); multiplexing, demultiplexing, losses and task
forwards are the shared mixins of :mod:`modeling_mux_utils`. This file only builds modules.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.roberta.modeling_roberta import RobertaEmbeddings, RobertaEncoder

from .configuration_mux_roberta import MuxRobertaConfig
from .demultiplexing import build_demultiplexer
from .heads import VocabularyHead
from .modeling_mux_utils import (
    MultiplexedBaseModelMixin,
    MuxMaskedLMMixin,
    MuxPreTrainedMixin,
    MuxSequenceClassificationMixin,
    MuxTaskModelMixin,
    MuxTokenClassificationMixin,
    init_mux_module,
)
from .multiplexing import build_multiplexer

_WORD_EMBEDDINGS = "roberta.embeddings.word_embeddings.weight"


class MuxRobertaPreTrainedModel(MuxPreTrainedMixin, PreTrainedModel):
    config: MuxRobertaConfig
    config_class = MuxRobertaConfig
    base_model_prefix = "roberta"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["RobertaEmbeddings", "RobertaLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VocabularyHead):
            init.zeros_(module.decoder.bias)
        elif isinstance(module, RobertaEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        init_mux_module(module, self.config.initializer_range)


class MuxRobertaModel(MultiplexedBaseModelMixin, MuxRobertaPreTrainedModel):
    """Multiplexed RoBERTa encoder returning demultiplexed per-instance states ``(batch, seq_len, hidden)``."""

    def __init__(self, config: MuxRobertaConfig):
        super().__init__(config)
        self.embeddings = RobertaEmbeddings(config)
        self.multiplexer = build_multiplexer(config)
        self.encoder = RobertaEncoder(config)
        self.demultiplexer = build_demultiplexer(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def prepare_mux_batch(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds):
        """MUX-BERT's checks, plus RoBERTa's position offset (positions start at ``pad_token_id + 1``)."""
        reference = input_ids if input_ids is not None else inputs_embeds
        limit = self.config.max_position_embeddings - self.config.pad_token_id - 1
        total = (reference.shape[1] if reference is not None else 0) + self.demultiplexer.prefix_length()
        if position_ids is None and total > limit:
            raise ValueError(
                f"Sequence length {reference.shape[1]} needs {total} positions (prefix included), but RoBERTa numbers "
                f"positions from pad_token_id + 1 and max_position_embeddings={self.config.max_position_embeddings} "
                f"leaves {limit}. Truncate the inputs to at most {limit - self.demultiplexer.prefix_length()} tokens."
            )
        return super().prepare_mux_batch(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)

    def embed(self, input_ids, token_type_ids, position_ids, inputs_embeds):
        return self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )

    def encode(self, mixture, attention_mask, output_hidden_states=False):
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=mixture, attention_mask=attention_mask)
        hidden = mixture
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.encoder.layer:
            hidden = layer(hidden, mask)
            if all_hidden is not None:
                all_hidden.append(hidden)
        return hidden, tuple(all_hidden) if all_hidden is not None else None


class MuxRobertaTaskModel(MuxTaskModelMixin, MuxRobertaPreTrainedModel):
    """Common constructor of the task models: the base model plus the token-retrieval head."""

    _tied_weights_keys = {"retrieval_head.decoder.weight": _WORD_EMBEDDINGS}

    def __init__(self, config: MuxRobertaConfig):
        super().__init__(config)
        self.roberta = MuxRobertaModel(config)
        self.retrieval_head = self.vocabulary_head(config)

    @property
    def mux_base(self) -> MuxRobertaModel:
        return self.roberta


class MuxRobertaForMaskedLM(MuxMaskedLMMixin, MuxRobertaTaskModel):
    """MLM + token retrieval (stage 1 with ``task_loss_coeff = 0``); decoders tied to the word embeddings."""

    _tied_weights_keys = {
        "retrieval_head.decoder.weight": _WORD_EMBEDDINGS,
        "lm_head.decoder.weight": _WORD_EMBEDDINGS,
    }


class MuxRobertaForSequenceClassification(MuxSequenceClassificationMixin, MuxRobertaTaskModel):
    """Sequence classification / regression on each instance's demultiplexed ``<s>`` state."""


class MuxRobertaForTokenClassification(MuxTokenClassificationMixin, MuxRobertaTaskModel):
    """Token classification on every demultiplexed token state."""


__all__ = [
    "MuxRobertaPreTrainedModel",
    "MuxRobertaModel",
    "MuxRobertaForMaskedLM",
    "MuxRobertaForSequenceClassification",
    "MuxRobertaForTokenClassification",
]
