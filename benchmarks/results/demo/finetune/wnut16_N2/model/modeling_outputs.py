"""Output types of the multiplexed models. Task outputs start with `loss`, then `logits`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class MuxModelOutput(ModelOutput):
    """Output of a multiplexed base model.

    Args:
        last_hidden_state: demultiplexed per-instance states ``(batch, seq_len, hidden)``, row b for
            input b (a drop-in for `BertModel`'s ``last_hidden_state``).
        mixed_hidden_state: the backbone's output on the mixtures ``(batch / N, P + seq_len, hidden)``,
            P being the demultiplexer's prefix length.
        hidden_states, attentions: the backbone's, on the mixtures, when asked for.
    """

    last_hidden_state: torch.FloatTensor | None = None
    mixed_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MuxTaskOutput(ModelOutput):
    """Output of a multiplexed task model.

    Args:
        loss: ``task_loss_coeff * task_loss + retrieval_loss_coeff * retrieval_loss`` (when computed).
        logits: the task logits, one row per input.
        task_loss: the task loss alone (MLM, classification, replaced-token detection).
        retrieval_loss: the token-retrieval loss alone.
        retrieval_logits: ``(batch / N, seq_len, vocab)`` retrieval logits of the instance asked at each
            position, when the retrieval loss was computed.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    task_loss: torch.FloatTensor | None = None
    retrieval_loss: torch.FloatTensor | None = None
    retrieval_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


MuxMaskedLMOutput = MuxTaskOutput
MuxSequenceClassifierOutput = MuxTaskOutput
MuxTokenClassifierOutput = MuxTaskOutput
