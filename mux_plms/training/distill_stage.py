"""Hidden-state distillation of an N=1 encoder into a MUX model (the ``distill`` pre-training stage).

The teacher is a vanilla encoder (BERT, ELECTRA discriminator, RoBERTa, ALBERT: anything ``AutoModel`` loads that
is not itself multiplexed), frozen and in eval mode; it reads every instance on its own. The student is the MUX
model; it reads the same instances multiplexed N at a time. The loss compares, at every real token of every
instance, the student's demultiplexed final state with the teacher's final state:

* ``mse``: mean squared error to the teacher state standardised per token (zero mean, unit variance over the
  hidden dimension, as a LayerNorm without weights would give), so every token weighs the same whatever the
  teacher's scale;
* ``cosine``: one minus the cosine similarity of the two (the teacher's standardised: both terms have the
  same optimum);
* ``mse_cosine`` (default): their sum.

Optional auxiliary terms, each with its coefficient: token retrieval (``--distill_retrieval_coeff``) and MLM on
masked inputs (``--distill_mlm_coeff``; the student then reads the masked text, the teacher the original).
Every component is returned (and logged by the pre-training loop), plus ``pooled_cosine``: the cosine between
the student's and the (standardised) teacher's mean-pooled sentence states, a readable measure of how close
they are.

:class:`DistillationPair` holds the student as its only sub-module; the teacher is kept outside the module tree,
so it is never saved, checkpointed, given to the optimizer or wrapped by DDP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers.utils import ModelOutput

from .stages.distill import DISTILL_LOSSES


def standardize(states: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each vector of `states` (last dimension) shifted to mean 0 and scaled to unit variance."""
    mean = states.mean(dim=-1, keepdim=True)
    var = states.var(dim=-1, keepdim=True, unbiased=False)
    return (states - mean) / torch.sqrt(var + eps)


def hidden_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "mse_cosine",
    token_coeff: float = 1.0,
    pooled_coeff: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Distillation terms over the real tokens (``mask`` 1) of ``(B, L, H)`` student and teacher states.

    ``loss = token_coeff * <kind> + pooled_coeff * (1 - pooled_cosine)``: the per-token term `kind` and the cosine
    distance of the mean-pooled sentence states (what a sentence encoder such as MiniLM outputs; a far smaller
    target than every token's state). Returns ``{"loss", "mse", "cosine", "pooled_cosine"}``, the last three
    detached for logging. Positions with mask 0 never count; a batch without any real token gives a zero loss
    that still depends on the student (so every rank runs the same backward)."""
    if kind not in DISTILL_LOSSES:
        raise ValueError(f"distillation loss must be one of {', '.join(DISTILL_LOSSES)}, got {kind!r}")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student states {tuple(student.shape)} and teacher states {tuple(teacher.shape)} differ: the teacher "
            "must have the student's hidden size"
        )
    real = mask.bool()
    if not real.any():
        zero = student.sum() * 0.0
        return {"loss": zero, "mse": zero.detach(), "cosine": zero.detach(), "pooled_cosine": zero.detach()}
    target = standardize(teacher.float())
    s, t = student[real].float(), target[real]
    mse = F.mse_loss(s, t)
    cosine = (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()
    token = {"mse_cosine": mse + cosine, "mse": mse, "cosine": cosine}[kind]
    weights = mask.to(student.dtype).unsqueeze(-1)
    counts = weights.sum(dim=1).clamp(min=1.0)
    pooled_s = (student * weights).sum(dim=1) / counts
    pooled_t = (target.to(student.dtype) * weights).sum(dim=1) / counts
    has_tokens = mask.bool().any(dim=1)
    pooled = F.cosine_similarity(pooled_s[has_tokens].float(), pooled_t[has_tokens].float(), dim=-1).mean()
    loss = token_coeff * token + pooled_coeff * (1.0 - pooled) if pooled_coeff else token_coeff * token
    return {"loss": loss, "mse": mse.detach(), "cosine": cosine.detach(), "pooled_cosine": pooled.detach()}


@dataclass
class DistillationOutput(ModelOutput):
    """What :class:`DistillationPair` returns. ``task_loss`` is the auxiliary MLM loss, ``logits`` its logits at
    the labelled positions (``(num_labelled, vocab)``), as the MLM stage returns them."""

    loss: torch.Tensor | None = None
    distill_loss: torch.Tensor | None = None
    distill_mse: torch.Tensor | None = None
    distill_cosine: torch.Tensor | None = None
    distill_pooled_cosine: torch.Tensor | None = None
    task_loss: torch.Tensor | None = None
    retrieval_loss: torch.Tensor | None = None
    retrieval_logits: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def check_teacher(teacher_config, student_config, tokenizer=None, teacher_tokenizer=None, source: str = "") -> None:
    """Refuse a teacher that cannot teach this student: a multiplexed teacher, another hidden size, or another
    vocabulary (its token ids would mean other words)."""
    where = f" ({source})" if source else ""
    if getattr(teacher_config, "num_instances", None) is not None:
        raise ValueError(
            f"The distillation teacher{where} is a multiplexed model (num_instances="
            f"{teacher_config.num_instances}); the teacher must be a vanilla N=1 encoder (e.g. the warm-start source)"
        )
    if teacher_config.hidden_size != student_config.hidden_size:
        raise ValueError(
            f"The distillation teacher{where} has hidden_size {teacher_config.hidden_size}, the student "
            f"{student_config.hidden_size}: distil from an encoder of the student's width"
        )
    if teacher_config.vocab_size != student_config.vocab_size:
        raise ValueError(
            f"The distillation teacher{where} has a vocabulary of {teacher_config.vocab_size} tokens, the student "
            f"{student_config.vocab_size}: teacher and student must share one tokenizer"
        )
    if (
        tokenizer is not None
        and teacher_tokenizer is not None
        and teacher_tokenizer.get_vocab() != tokenizer.get_vocab()
    ):
        raise ValueError(
            f"The distillation teacher's tokenizer{where} differs from the student's: teacher and student must "
            "share one tokenizer (same vocabulary, same ids)"
        )


def load_teacher(source: str, student_config, tokenizer=None) -> nn.Module:
    """The frozen, eval-mode teacher encoder at `source` (``AutoModel``), checked against the student."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        teacher_config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"--teacher_name_or_path {source}: no readable config.json ({error})") from error
    teacher_tokenizer = None
    folder = Path(source)
    if (folder / "tokenizer_config.json").is_file() or (folder / "vocab.txt").is_file():
        teacher_tokenizer = AutoTokenizer.from_pretrained(source)
    check_teacher(teacher_config, student_config, tokenizer, teacher_tokenizer, source)
    # BERT / RoBERTa encoders carry a pooler the distillation never reads: not built, not loaded.
    extra = {"add_pooling_layer": False} if teacher_config.model_type in ("bert", "roberta") else {}
    from ..utils.runtime import load_pretrained

    # one summary line instead of transformers' table of the unused weights (the pooler, an MLM head)
    teacher = load_pretrained(AutoModel, source, logger=logging.getLogger(__name__), **extra)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class DistillationPair(nn.Module):
    """The MUX student (a masked-LM task model: its retrieval and MLM heads serve the auxiliary terms) and the
    frozen teacher. Only the student is a sub-module (see the module docstring)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: str = "mse_cosine",
        retrieval_coeff: float = 0.0,
        mlm_coeff: float = 0.0,
        token_coeff: float = 1.0,
        pooled_coeff: float = 0.0,
    ):
        super().__init__()
        if loss not in DISTILL_LOSSES:
            raise ValueError(f"--distill_loss must be one of {', '.join(DISTILL_LOSSES)}, got {loss!r}")
        self.student = student
        self._teacher = [teacher]  # a list: not registered as a sub-module
        self.loss_kind = loss
        self.retrieval_coeff = float(retrieval_coeff)
        self.mlm_coeff = float(mlm_coeff)
        self.token_coeff = float(token_coeff)
        self.pooled_coeff = float(pooled_coeff)
        self.frozen_heads = self._freeze_unused_heads()

    def _freeze_unused_heads(self) -> list[str]:
        """Heads whose term has weight 0 get no gradient (DDP would reject them) and no optimizer state; weights
        tied to the input embeddings stay trainable."""
        embeddings = self.student.get_input_embeddings().weight
        frozen = []
        for head, coeff in (("lm_head", self.mlm_coeff), ("retrieval_head", self.retrieval_coeff)):
            if coeff > 0 or not hasattr(self.student, head):
                continue
            for name, parameter in getattr(self.student, head).named_parameters():
                if parameter is not embeddings:
                    parameter.requires_grad_(False)
                    frozen.append(f"{head}.{name}")
        return frozen

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    @property
    def config(self):
        return self.student.config

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # always: no dropout in the targets
        return self

    def _apply(self, fn, *args, **kwargs):
        # .to(device) / .half() of the pair reach the teacher too, although it is not a sub-module.
        super()._apply(fn, *args, **kwargs)
        self._teacher[0] = self.teacher._apply(fn, *args, **kwargs)
        return self

    @torch.no_grad()
    def teacher_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.teacher(input_ids=input_ids, attention_mask=attention_mask)
        return output.last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        retrieval_instance_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> DistillationOutput:
        student = self.student
        base = student.mux_base
        # The teacher reads the original text: where MLM corrupted a token, its label holds the original.
        original = input_ids if labels is None else torch.where(labels != -100, labels, input_ids)
        targets = self.teacher_states(original, attention_mask)
        mixed, batch, _ = base.multiplex_encode(input_ids, attention_mask)
        states = base.demultiplex(mixed, batch)  # (B, L, H)
        terms = hidden_distillation_loss(states, targets.to(states.dtype), attention_mask, self.loss_kind,
                                         self.token_coeff, self.pooled_coeff)  # fmt: skip
        loss = terms["loss"]
        task_loss = logits = retrieval_loss = retrieval_logits = None
        if self.mlm_coeff > 0 and labels is not None:
            selected = labels != -100
            logits = student.lm_head(states[selected])
            task_loss = CrossEntropyLoss()(logits, labels[selected]) if selected.any() else logits.sum() * 0.0
            loss = loss + self.mlm_coeff * task_loss
        if self.retrieval_coeff > 0:
            retrieval_loss, retrieval_logits = student.retrieval_loss(mixed, batch, retrieval_instance_ids)
            loss = loss + self.retrieval_coeff * retrieval_loss
        return DistillationOutput(
            loss=loss,
            distill_loss=terms["loss"].detach(),
            distill_mse=terms["mse"],
            distill_cosine=terms["cosine"],
            distill_pooled_cosine=terms["pooled_cosine"],
            task_loss=task_loss,
            retrieval_loss=retrieval_loss,
            retrieval_logits=retrieval_logits,
            logits=logits,
        )


__all__ = [
    "DISTILL_LOSSES",
    "DistillationOutput",
    "DistillationPair",
    "check_teacher",
    "hidden_distillation_loss",
    "load_teacher",
    "standardize",
]
