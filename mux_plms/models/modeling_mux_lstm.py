"""MUX-LSTM: a bidirectional multi-layer LSTM backbone that runs once for N multiplexed inputs.

The backbone of the follow-up "Beyond DataMUX" (a 12-layer BiLSTM, 384 units per direction): it shows the
multiplexer / demultiplexer design is backbone-independent, since only ``embed`` and ``encode`` are
LSTM-specific; grouping, prefixes, multiplexing, demultiplexing, losses and task forwards are the shared
mixins of :mod:`modeling_mux_utils`.

**Padding.** The mixture of a mux group is packed (``pack_padded_sequence``) up to its last position that
any instance attends (prefix included): positions padded in every instance *at the end* are never read,
so they cannot influence the other positions (the union mask of MUX-BERT), and their states are zeros
before demultiplexing. Padding *inside* the union span (one instance shorter than another) is read like
any token, as the mixture there still carries the longer instances. Internal padding rows (a batch that is
not a multiple of N) are all-padding instances, exactly like explicit all-padding rows.

Classes: :class:`MuxLstmModel`, :class:`MuxLstmForMaskedLM` (MLM + token retrieval; stage 1 with
``task_loss_coeff = 0``), :class:`MuxLstmForSequenceClassification`, :class:`MuxLstmForTokenClassification`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_mux_lstm import MuxLstmConfig
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

_WORD_EMBEDDINGS = "lstm.embeddings.word_embeddings.weight"


class MuxLstmEmbeddings(nn.Module):
    """Word (+ token-type) embeddings, LayerNorm, dropout. No positions: the LSTM reads them in order."""

    def __init__(self, config: MuxLstmConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if token_type_ids is None:
            token_type_ids = torch.zeros(embeddings.shape[:2], dtype=torch.long, device=embeddings.device)
        embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


class MuxLstmPreTrainedModel(MuxPreTrainedMixin, PreTrainedModel):
    config: MuxLstmConfig
    config_class = MuxLstmConfig
    base_model_prefix = "lstm"
    _no_split_modules = ["MuxLstmEmbeddings"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # LSTMs: Xavier-uniform weights, zero biases
        if isinstance(module, VocabularyHead):
            init.zeros_(module.decoder.bias)
        init_mux_module(module, self.config.initializer_range)


class MuxLstmModel(MultiplexedBaseModelMixin, MuxLstmPreTrainedModel):
    """Multiplexed BiLSTM returning demultiplexed per-instance states ``(batch, seq_len, hidden)``.

    Rows ``kN .. kN+N-1`` of a batch share one backbone pass; any batch size works."""

    def __init__(self, config: MuxLstmConfig):
        super().__init__(config)
        self.embeddings = MuxLstmEmbeddings(config)
        self.multiplexer = build_multiplexer(config)
        h = config.hidden_size
        self.layers = nn.ModuleList(
            nn.LSTM(h, h // 2, batch_first=True, bidirectional=True) for _ in range(config.num_hidden_layers)
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.demultiplexer = build_demultiplexer(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def embed(self, input_ids, token_type_ids, position_ids, inputs_embeds):
        if position_ids is not None:
            raise ValueError("position_ids are not used by MUX-LSTM (an LSTM reads positions in order); drop them")
        return self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds)

    def encode(self, mixture, attention_mask, output_hidden_states=False):
        """Run the BiLSTM over each mixture up to its last attended position (packed sequences)."""
        total = mixture.shape[1]
        positions = torch.arange(1, total + 1, device=mixture.device)
        lengths = (attention_mask.bool() * positions).amax(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(mixture, lengths, batch_first=True, enforce_sorted=False)
        all_hidden = [mixture] if output_hidden_states else None
        for index, lstm in enumerate(self.layers):
            if index:
                packed = packed._replace(data=self.dropout(packed.data))
            packed, _ = lstm(packed)
            if all_hidden is not None:
                all_hidden.append(pad_packed_sequence(packed, batch_first=True, total_length=total)[0])
        hidden = pad_packed_sequence(packed, batch_first=True, total_length=total)[0]
        return hidden, tuple(all_hidden) if all_hidden is not None else None


class MuxLstmTaskModel(MuxTaskModelMixin, MuxLstmPreTrainedModel):
    """Common constructor of the task models: the base model plus the token-retrieval head."""

    _tied_weights_keys = {"retrieval_head.decoder.weight": _WORD_EMBEDDINGS}

    def __init__(self, config: MuxLstmConfig):
        super().__init__(config)
        self.lstm = MuxLstmModel(config)
        self.retrieval_head = self.vocabulary_head(config)

    @property
    def mux_base(self) -> MuxLstmModel:
        return self.lstm


class MuxLstmForMaskedLM(MuxMaskedLMMixin, MuxLstmTaskModel):
    """MLM over the demultiplexed states plus the auxiliary token-retrieval loss; with
    ``task_loss_coeff = 0`` the stage-1 retrieval warm-up model."""

    _tied_weights_keys = {
        "retrieval_head.decoder.weight": _WORD_EMBEDDINGS,
        "lm_head.decoder.weight": _WORD_EMBEDDINGS,
    }


class MuxLstmForSequenceClassification(MuxSequenceClassificationMixin, MuxLstmTaskModel):
    """Sequence classification / regression on each instance's demultiplexed first-token state (its
    backward direction has read the whole sequence)."""


class MuxLstmForTokenClassification(MuxTokenClassificationMixin, MuxLstmTaskModel):
    """Token classification (NER, POS) on every demultiplexed token state."""


__all__ = [
    "MuxLstmPreTrainedModel",
    "MuxLstmModel",
    "MuxLstmForMaskedLM",
    "MuxLstmForSequenceClassification",
    "MuxLstmForTokenClassification",
]
