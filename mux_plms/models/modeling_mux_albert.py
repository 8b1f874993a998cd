"""MUX-ALBERT: an ALBERT backbone (shared layers, factorised embeddings) run once for N multiplexed inputs.

Building blocks are transformers' ALBERT (`AlbertEmbeddings`, `AlbertTransformer`) under ``albert.``, so a
vanilla ALBERT checkpoint's backbone loads (warm start). As in MUX-ELECTRA, the multiplexer mixes at the
embedding width E, before the encoder's ``embedding_hidden_mapping_in`` (E -> H); the retrieval and MLM
heads project back to E, their decoders tied to the word embeddings. This file only builds modules.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.albert.modeling_albert import AlbertEmbeddings, AlbertTransformer

from .configuration_mux_albert import MuxAlbertConfig
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

_WORD_EMBEDDINGS = "albert.embeddings.word_embeddings.weight"


class MuxAlbertPreTrainedModel(MuxPreTrainedMixin, PreTrainedModel):
    config: MuxAlbertConfig
    config_class = MuxAlbertConfig
    base_model_prefix = "albert"
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["AlbertEmbeddings", "AlbertLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VocabularyHead):
            init.zeros_(module.decoder.bias)
        elif isinstance(module, AlbertEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        init_mux_module(module, self.config.initializer_range)


class MuxAlbertModel(MultiplexedBaseModelMixin, MuxAlbertPreTrainedModel):
    """Multiplexed ALBERT encoder returning demultiplexed per-instance states ``(batch, seq_len, hidden)``:
    ``embeddings (E) -> multiplexer (E) -> embedding_hidden_mapping_in (E -> H) -> shared layers -> demux``."""

    def __init__(self, config: MuxAlbertConfig):
        super().__init__(config)
        self.embeddings = AlbertEmbeddings(config)
        self.multiplexer = build_multiplexer(config, hidden_size=config.embedding_size)
        self.encoder = AlbertTransformer(config)
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
        hidden = self.encoder.embedding_hidden_mapping_in(mixture)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        all_hidden = [hidden] if output_hidden_states else None
        layers_per_group = self.config.num_hidden_layers // self.config.num_hidden_groups
        for index in range(self.config.num_hidden_layers):
            hidden = self.encoder.albert_layer_groups[index // layers_per_group](hidden, mask)
            if all_hidden is not None:
                all_hidden.append(hidden)
        return hidden, tuple(all_hidden) if all_hidden is not None else None


class MuxAlbertTaskModel(MuxTaskModelMixin, MuxAlbertPreTrainedModel):
    """Common constructor of the task models: the base model plus the token-retrieval head (at width E)."""

    vocabulary_width_field = "embedding_size"  # the vocabulary heads work at the embedding width

    _tied_weights_keys = {"retrieval_head.decoder.weight": _WORD_EMBEDDINGS}

    def __init__(self, config: MuxAlbertConfig):
        super().__init__(config)
        self.albert = MuxAlbertModel(config)
        self.retrieval_head = self.vocabulary_head(config)

    @property
    def mux_base(self) -> MuxAlbertModel:
        return self.albert


class MuxAlbertForMaskedLM(MuxMaskedLMMixin, MuxAlbertTaskModel):
    """MLM + token retrieval (stage 1 with ``task_loss_coeff = 0``); decoders tied to the word embeddings."""

    _tied_weights_keys = {
        "retrieval_head.decoder.weight": _WORD_EMBEDDINGS,
        "lm_head.decoder.weight": _WORD_EMBEDDINGS,
    }


class MuxAlbertForSequenceClassification(MuxSequenceClassificationMixin, MuxAlbertTaskModel):
    """Sequence classification / regression on each instance's demultiplexed ``[CLS]`` state."""


class MuxAlbertForTokenClassification(MuxTokenClassificationMixin, MuxAlbertTaskModel):
    """Token classification on every demultiplexed token state."""


__all__ = [
    "MuxAlbertPreTrainedModel",
    "MuxAlbertModel",
    "MuxAlbertForMaskedLM",
    "MuxAlbertForSequenceClassification",
    "MuxAlbertForTokenClassification",
]
