"""MUX-BERT: a BERT backbone that runs once for N multiplexed inputs.

Building blocks come from transformers' BERT (embeddings, layers); the multiplexing machinery, losses and
task forwards are the shared, backbone-agnostic mixins of :mod:`modeling_mux_utils`: this file builds
modules and says how BERT embeds and encodes. Classes: :class:`MuxBertModel` (per-instance features),
:class:`MuxBertForMaskedLM` (MLM + token retrieval; stage 1 and 2),
:class:`MuxBertForSequenceClassification`, :class:`MuxBertForTokenClassification`.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertEmbeddings, BertEncoder

from .configuration_mux_bert import MuxBertConfig
from .demultiplexing import build_demultiplexer
from .heads import (
    VocabularyHead,
)
from .modeling_mux_utils import (
    LegacyInputRewrite,
    MultiplexedBaseModelMixin,
    MuxMaskedLMMixin,
    MuxPreTrainedMixin,
    MuxSequenceClassificationMixin,
    MuxTaskModelMixin,
    MuxTokenClassificationMixin,
    init_mux_module,
)
from .multiplexing import build_multiplexer

_WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


class MuxBertPreTrainedModel(MuxPreTrainedMixin, PreTrainedModel):
    config: MuxBertConfig
    config_class = MuxBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["BertEmbeddings", "BertLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VocabularyHead):
            init.zeros_(module.decoder.bias)
        elif isinstance(module, BertEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
            init.zeros_(module.token_type_ids)
        init_mux_module(module, self.config.initializer_range)


class MuxBertModel(MultiplexedBaseModelMixin, MuxBertPreTrainedModel):
    """Multiplexed BERT encoder returning demultiplexed per-instance states ``(batch, seq_len, hidden)``.

    Rows ``kN .. kN+N-1`` of a batch share one backbone pass. Any batch size works: a batch that is
    not a multiple of N is padded internally with empty instances whose outputs are dropped.
    """

    def __init__(self, config: MuxBertConfig):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.multiplexer = build_multiplexer(config)
        self.encoder = BertEncoder(config)
        self.demultiplexer = build_demultiplexer(config)
        self.legacy_inputs = LegacyInputRewrite.from_config(config, self.demultiplexer.prefix_length())
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def embed(self, input_ids, token_type_ids, position_ids, inputs_embeds):
        return self.embeddings(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds
        )

    def embed_words(self, input_ids, token_type_ids, position_ids, inputs_embeds):
        """``position_mixing="shared"``: each instance contributes its word embeddings only."""
        return self.embeddings.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds

    def embed_shared(self, mixture, token_type_ids, position_ids, num_instances: int):
        """``position_mixing="shared"``: add the position embeddings and the group's mean token-type embedding
        to the mixed word embeddings ``(G, L, D)``, then the embedding LayerNorm and dropout (once per group)."""
        embeddings = self.embeddings
        groups, length = mixture.shape[:2]
        if position_ids is None:
            position_ids = embeddings.position_ids[:, :length]
        elif position_ids.shape[0] != 1:
            grouped = position_ids.view(groups, num_instances, length)
            if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
                raise ValueError(
                    "position_mixing='shared' gives every instance of a mux group the same positions; "
                    "got position_ids that differ within a group"
                )
            position_ids = grouped[:, 0]
        if token_type_ids is None:
            types = embeddings.token_type_embeddings(embeddings.token_type_ids[:, :length])
        else:
            types = embeddings.token_type_embeddings(token_type_ids).view(groups, num_instances, length, -1).mean(1)
        hidden = mixture + types + embeddings.position_embeddings(position_ids)
        return embeddings.dropout(embeddings.LayerNorm(hidden))

    def run_layers(self, hidden, attention_mask, start: int, end: int):
        """Backbone layers ``start .. end-1`` on `hidden` ``(rows, L, H)`` with the padding mask ``(rows, L)``
        (``instance_layers``: the layers each instance runs on its own before mixing)."""
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in self.encoder.layer[start:end]:
            hidden = layer(hidden, mask)
        return hidden

    def encode(self, mixture, attention_mask, output_hidden_states=False, first_layer: int = 0):
        if self.config.legacy_embed_mixture:
            # Original implementation: the mixture re-enters the embedding layer (positions, token
            # types and LayerNorm applied twice) and the encoder runs without an attention mask.
            mixture = self.embeddings(inputs_embeds=mixture)
            attention_mask = None
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=mixture, attention_mask=attention_mask)
        hidden = mixture
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.encoder.layer[first_layer:]:
            hidden = layer(hidden, mask)
            if all_hidden is not None:
                all_hidden.append(hidden)
        return hidden, tuple(all_hidden) if all_hidden is not None else None


class MuxBertTaskModel(MuxTaskModelMixin, MuxBertPreTrainedModel):
    """Common constructor of the task models: the base model plus the token-retrieval head."""

    _tied_weights_keys = {"retrieval_head.decoder.weight": _WORD_EMBEDDINGS}

    def __init__(self, config: MuxBertConfig):
        super().__init__(config)
        self.bert = MuxBertModel(config)
        self.retrieval_head = self.vocabulary_head(config)

    @property
    def mux_base(self) -> MuxBertModel:
        return self.bert


class MuxBertForMaskedLM(MuxMaskedLMMixin, MuxBertTaskModel):
    """MLM over the demultiplexed states plus the auxiliary token-retrieval loss.

    With ``task_loss_coeff = 0`` it is the stage-1 token-retrieval model (no MLM head computed)."""

    _tied_weights_keys = {
        "retrieval_head.decoder.weight": _WORD_EMBEDDINGS,
        "lm_head.decoder.weight": _WORD_EMBEDDINGS,
    }


class MuxBertForSequenceClassification(MuxSequenceClassificationMixin, MuxBertTaskModel):
    """Sequence classification / regression on each instance's demultiplexed first-token state (or, with
    ``config.sequence_pooling="mean"``, the mean of its demultiplexed token states)."""


class MuxBertForTokenClassification(MuxTokenClassificationMixin, MuxBertTaskModel):
    """Token classification (NER, POS) on every demultiplexed token state."""


__all__ = [
    "MuxBertPreTrainedModel",
    "MuxBertModel",
    "MuxBertForMaskedLM",
    "MuxBertForSequenceClassification",
    "MuxBertForTokenClassification",
]
