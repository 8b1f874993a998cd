"""Task heads shared by every multiplexed backbone. They see per-instance (demultiplexed) states."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class VocabularyHead(nn.Module):
    """Transform (dense, activation, LayerNorm) then a projection onto the vocabulary.

    Used for token retrieval (predict instance i's input token at position j) and for MLM. The
    decoder weight is tied to the word embeddings (declared by the models, never hand-tied).
    `embedding_size` may differ from `hidden_size` (ELECTRA)."""

    def __init__(self, config, embedding_size: int | None = None):
        super().__init__()
        embedding_size = embedding_size or config.hidden_size
        self.dense = nn.Linear(config.hidden_size, embedding_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(embedding_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(embedding_size, config.vocab_size, bias=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.act(self.dense(hidden_states))))


class SequenceClassificationHead(nn.Module):
    """Pooler-style head on each instance's first-token state: dense, tanh, dropout, projection."""

    def __init__(self, config):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, first_token_states: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(torch.tanh(self.dense(first_token_states))))


class TokenClassificationHead(nn.Module):
    """Dropout then a projection on every per-instance token state."""

    def __init__(self, config):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, token_states: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(token_states))


class ReplacedTokenDetectionHead(nn.Module):
    """ELECTRA's discriminator head: one logit per token (replaced vs original)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.dense_prediction = nn.Linear(config.hidden_size, 1)

    def forward(self, token_states: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(self.act(self.dense(token_states))).squeeze(-1)


class LegacyUntransformedVocabularyHead(VocabularyHead):
    """``legacy_untransformed_vocab_head``: the original `index` MLM / retrieval head projects the
    demultiplexed state straight onto the vocabulary (no dense, activation or LayerNorm)."""

    def __init__(self, config, embedding_size: int | None = None):
        nn.Module.__init__(self)  # none of VocabularyHead's transform layers
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(hidden_states)


class LegacyLinearClassificationHead(TokenClassificationHead):
    """``legacy_linear_classifier``: the original sequence classifier, dropout then one linear layer on the
    demultiplexed first-token state (no dense + tanh pooler)."""


def build_vocabulary_head(config, embedding_size: int | None = None) -> VocabularyHead:
    """The MLM / retrieval head of `config` (the legacy untransformed one for converted `index` checkpoints)."""
    if getattr(config, "legacy_untransformed_vocab_head", False):
        return LegacyUntransformedVocabularyHead(config, embedding_size)
    return VocabularyHead(config, embedding_size)


def build_sequence_classification_head(config) -> nn.Module:
    """The sequence classification head of `config` (the legacy linear one for converted checkpoints)."""
    if getattr(config, "legacy_linear_classifier", False):
        return LegacyLinearClassificationHead(config)
    return SequenceClassificationHead(config)


__all__ = [
    "VocabularyHead",
    "SequenceClassificationHead",
    "TokenClassificationHead",
    "ReplacedTokenDetectionHead",
    "build_vocabulary_head",
    "build_sequence_classification_head",
]
