"""Task-level knowledge distillation through the Hugging Face `Trainer`.

:class:`DistillationTrainer` is a `transformers.Trainer` whose ``compute_loss`` mixes the student's own task
loss with a soft loss to a frozen teacher run on the same batch:

    loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

* **sequence classification**: the KL divergence over the classes of every example, averaged over the batch;
* **regression** (``num_labels == 1`` or ``problem_type == "regression"``): the mean squared error between the
  student's and the teacher's outputs replaces the KL term (no temperature, no ``T^2``); the task term is the
  model's own MSE to the labels;
* **token classification**: the KL divergence per token, only at the positions whose label is not ``-100``
  (the word-level alignment of the labels: with the default alignment, the first word piece of every word),
  averaged over those positions;
* a MUX student with an auxiliary retrieval loss (``retrieval_loss_coeff > 0``) adds it with its coefficient,
  exactly as the model's own ``loss`` does (``combine_losses``): the task term above takes the place of the
  model's task loss. With ``alpha = 1`` the loss is therefore the model's own loss.

"CE" is the student's own task loss (what the model returns for the labels: cross entropy for classification).
The teacher (an N = 1 fine-tuned model, vanilla or MUX; a MUX teacher gets the same batch and pads it to its
own N internally) is put in eval mode, frozen (``requires_grad = False``), moved to the student's device and
never saved nor optimised: it is an attribute of the trainer, not of the model. A teacher whose number of
labels, label names or vocabulary (``config.vocab_size``; the tokenizers' vocabularies when both are known)
differ from the student's is refused with a `ValueError` when the trainer is built.

Teacher logits can be precomputed once per training example (:func:`add_teacher_logits`, a ``teacher_logits``
column, with :class:`TeacherLogitsCollator`): the trainer then reads them instead of running the teacher on every
batch (the same values: the teacher is frozen and in eval mode).

The components are logged next to ``loss`` (``distill_ce``, ``distill_kl`` or ``distill_mse`` for regression,
``distill_retrieval`` when the student has a retrieval loss), and their means over the run end up in the
metrics that ``train()`` returns (``train_distill_*``), with the teacher and the coefficients.

    from transformers import TrainingArguments
    from mux_plms.training import DistillationTrainer

    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, distill_alpha=0.5, distill_temperature=2.0,
        args=TrainingArguments("out", max_steps=100), train_dataset=train, processing_class=tokenizer,
    )
    trainer.train()
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

logger = logging.getLogger(__name__)

# Inputs of the student's batch that are targets, never given to the teacher.
TARGET_KEYS = ("labels", "retrieval_instance_ids", "num_items_in_batch", "return_loss")
TEACHER_HEADS = ("sequence", "token")
_GENERIC_LABEL = re.compile(r"LABEL_\d+")


@dataclass
class DistillationArguments:
    """Task-level distillation from a fine-tuned teacher (``examples/run_glue.py``, ``examples/run_ner.py``)."""

    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A fine-tuned teacher (folder or Hub id): an N=1 model (BERT / ELECTRA / RoBERTa / ALBERT "
            "sequence or token classifier) or a MUX model. Unset: plain fine-tuning."
        },
    )
    distill_alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the task loss; 1 - alpha weighs the soft loss to the teacher (0 <= alpha <= 1)"},
    )
    distill_temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature T of the KL term (scaled by T^2); > 0"}
    )

    def __post_init__(self) -> None:
        check_coefficients(self.distill_alpha, self.distill_temperature)

    @property
    def enabled(self) -> bool:
        """A teacher was given."""
        return bool(self.teacher_model_name_or_path)

    def trainer_class_and_kwargs(
        self, head: str, do_train: bool, cache_dir: str | None = None, max_seq_length: int | None = None
    ) -> tuple[type, dict[str, Any]]:
        """What the examples build: ``(Trainer, {})`` without a teacher (or without training, where the teacher
        is unused: a warning says so), else ``(DistillationTrainer, its teacher keyword arguments)`` with the
        teacher loaded for `head` (``sequence`` / ``token``)."""
        if not self.enabled:
            return Trainer, {}
        if not do_train:
            logger.warning("--teacher_model_name_or_path is only used for training (--do_train): ignored")
            return Trainer, {}
        teacher, teacher_tokenizer = load_teacher(self.teacher_model_name_or_path, head, cache_dir, max_seq_length)
        logger.info("Teacher: %s (%s)", type(teacher).__name__, self.teacher_model_name_or_path)
        return DistillationTrainer, self.trainer_kwargs(teacher, teacher_tokenizer)

    def trainer_kwargs(self, teacher: nn.Module, teacher_tokenizer: Any | None = None) -> dict[str, Any]:
        """The keyword arguments of :class:`DistillationTrainer` for `teacher` and these coefficients."""
        return {
            "teacher_model": teacher,
            "teacher_tokenizer": teacher_tokenizer,
            "distill_alpha": self.distill_alpha,
            "distill_temperature": self.distill_temperature,
        }


def check_coefficients(alpha: float, temperature: float) -> None:
    """Raise a `ValueError` unless ``0 <= alpha <= 1`` and ``temperature > 0``."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"distill_alpha must be in [0, 1], got {alpha}")
    if not float(temperature) > 0.0:
        raise ValueError(f"distill_temperature must be > 0, got {temperature}")


def load_teacher(
    name_or_path: str, head: str, cache_dir: str | None = None, max_seq_length: int | None = None
) -> tuple[nn.Module, Any | None]:
    """Load a fine-tuned teacher with the Auto classes (``import mux_plms`` registers the MUX types) and its
    tokenizer (None when the checkpoint has none).

    `head` is ``sequence`` (``AutoModelForSequenceClassification``) or ``token``
    (``AutoModelForTokenClassification``). Refused with a `ValueError`: a checkpoint that would leave weights
    of that head randomly initialised (a bare encoder, or a model fine-tuned for the other head), an original
    MUX-PLMs checkpoint (to be converted first), and, with `max_seq_length`, a teacher whose position table
    is too short for the inputs. The teacher is returned in eval mode, frozen."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    from .finetune import MuxModelArguments, check_max_seq_length, inspect_checkpoint

    if head not in TEACHER_HEADS:
        raise ValueError(f"head must be one of {', '.join(TEACHER_HEADS)}; got {head!r}")
    try:
        info = inspect_checkpoint(MuxModelArguments(model_name_or_path=name_or_path, cache_dir=cache_dir))
        if max_seq_length is not None:
            check_max_seq_length(max_seq_length, info)
    except ValueError as error:
        raise ValueError(f"--teacher_model_name_or_path {name_or_path}: {error}") from error
    auto = AutoModelForSequenceClassification if head == "sequence" else AutoModelForTokenClassification
    teacher, loading = auto.from_pretrained(name_or_path, cache_dir=cache_dir, output_loading_info=True)
    missing = sorted(loading.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise ValueError(
            f"The teacher {name_or_path} is not a fine-tuned {head} classification model: loading it as "
            f"{type(teacher).__name__} leaves {len(missing)} weights randomly initialised ({shown}). Pass a model "
            f"fine-tuned for this task (e.g. the output_dir of an N=1 run of this script)."
        )
    tokenizer = None  # without tokenizer files the vocabulary is checked through config.vocab_size alone
    if _has_tokenizer_files(name_or_path, cache_dir):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, cache_dir=cache_dir)
    freeze(teacher)
    return teacher, tokenizer


def _has_tokenizer_files(name_or_path: str, cache_dir: str | None = None) -> bool:
    """Whether a checkpoint (folder or Hub id) ships a tokenizer. Needed because transformers 5.x's
    ``AutoTokenizer.from_pretrained`` on a folder without one returns an empty tokenizer of the model type
    (special tokens only) instead of failing."""
    from transformers.utils import cached_file

    for filename in ("tokenizer_config.json", "tokenizer.json"):
        try:
            found = cached_file(
                name_or_path, filename, cache_dir=cache_dir, _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )  # fmt: skip
        except OSError:
            found = None
        if found:
            return True
    return False


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad = False`` on every parameter; returns `model`."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _label_names(config) -> list[str] | None:
    """The label names of a config, or None when they are the generic ``LABEL_i``."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    return None if not names or all(_GENERIC_LABEL.fullmatch(name) for name in names) else names


def check_teacher(student: nn.Module, teacher: nn.Module, student_tokenizer=None, teacher_tokenizer=None) -> None:
    """Raise a `ValueError` when `teacher` cannot teach `student`: a different number of labels, different
    label names (when both models name their labels), a different ``config.vocab_size``, or tokenizers with
    different vocabularies (when both are given)."""
    if teacher is student:
        raise ValueError("teacher_model is the student itself: pass a separate (frozen) teacher")
    student_config, teacher_config = getattr(student, "config", None), getattr(teacher, "config", None)
    if student_config is None or teacher_config is None:
        raise ValueError("The student and the teacher must be transformers models (with a .config)")
    if student_config.num_labels != teacher_config.num_labels:
        raise ValueError(
            f"The teacher has {teacher_config.num_labels} labels and the student {student_config.num_labels}: "
            "distillation needs a teacher fine-tuned on the same labels"
        )
    student_names, teacher_names = _label_names(student_config), _label_names(teacher_config)
    if student_names is not None and teacher_names is not None and student_names != teacher_names:
        raise ValueError(
            f"The teacher's labels {teacher_names} differ from the student's {student_names} (names or order): "
            "its logits would be compared to the wrong classes"
        )
    student_vocab = getattr(student_config, "vocab_size", None)
    teacher_vocab = getattr(teacher_config, "vocab_size", None)
    if student_vocab is not None and teacher_vocab is not None and student_vocab != teacher_vocab:
        raise ValueError(
            f"The teacher's vocabulary has {teacher_vocab} tokens and the student's {student_vocab}: the teacher "
            "must use the student's tokenizer (it reads the same input_ids)"
        )
    if hasattr(student_tokenizer, "get_vocab") and hasattr(teacher_tokenizer, "get_vocab"):
        student_tokens, teacher_tokens = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        if student_tokens != teacher_tokens:
            differing = sum(teacher_tokens.get(token) != index for token, index in student_tokens.items())
            raise ValueError(
                f"The teacher's tokenizer differs from the student's ({len(teacher_tokens)} vs {len(student_tokens)} "
                f"tokens; {differing} of the student's tokens have another id or none in the teacher's): the "
                "teacher must use the student's tokenizer"
            )


class DistillationTrainer(Trainer):
    """`Trainer` that distils a frozen, fine-tuned `teacher_model` into the student `model` (see the module
    docstring for the loss). Every other argument is `Trainer`'s, with stock `TrainingArguments`.

    Args:
        teacher_model: the teacher (keyword only). Put in eval mode, frozen and moved to the student's device.
        distill_alpha: weight of the student's task loss; ``1 - distill_alpha`` weighs the soft loss.
        distill_temperature: temperature T of the KL term (the KL is scaled by ``T^2``).
        teacher_tokenizer: the teacher's tokenizer, compared with ``processing_class`` when both are given.

    Gradient accumulation: every term is a mean over the micro-batch, so ``loss_is_scaled_for_ga`` is False
    (`Trainer` divides the loss by the accumulation steps); ``num_items_in_batch`` is accepted and not used.
    """

    # Every term of the loss is a per-batch mean: Trainer divides it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        teacher_model: nn.Module,
        distill_alpha: float = 0.5,
        distill_temperature: float = 2.0,
        teacher_tokenizer: Any | None = None,
        **kwargs: Any,
    ) -> None:
        if teacher_model is None:
            raise ValueError("DistillationTrainer needs a teacher_model (use Trainer for plain fine-tuning)")
        check_coefficients(distill_alpha, distill_temperature)
        super().__init__(*args, **kwargs)
        if self.compute_loss_func is not None:
            raise ValueError("DistillationTrainer computes its own loss: compute_loss_func cannot be used with it")
        if self.label_smoother is not None:
            raise ValueError(
                "DistillationTrainer does not combine with label_smoothing_factor > 0: the teacher's soft targets "
                "already smooth the labels (lower distill_alpha instead)"
            )
        check_teacher(self.model, teacher_model, self.processing_class, teacher_tokenizer)
        self.teacher_model = freeze(teacher_model)
        self.distill_alpha = float(distill_alpha)
        self.distill_temperature = float(distill_temperature)
        device = next(self.model.parameters()).device
        self.teacher_model.to(device)
        self._teacher_inputs = _forward_arguments(self.teacher_model)
        self._window: dict[str, list] = {}  # component -> [sum tensor, count] since the last logged step
        self._run: dict[str, list] = {}  # component -> [sum tensor, count] over the whole run

    # ---- loss ----------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """``alpha * task + (1 - alpha) * soft`` (+ the student's weighted retrieval loss) in training; see the
        module docstring. `num_items_in_batch` is not used: every term is a mean over this batch.

        Outside training (``model.training`` False: `Trainer`'s evaluation) the loss is the student's own, as
        with `Trainer`: ``eval_loss`` stays comparable with plain fine-tuning, and no teacher pass is run."""
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        cached = inputs.pop(TEACHER_LOGITS_KEY, None)
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError("DistillationTrainer needs labels in every training batch (the student's task loss)")
        outputs = model(**inputs)
        student = self.accelerator.unwrap_model(model)
        task_loss, logits, retrieval_loss = _student_terms(outputs)
        if task_loss is None:
            raise ValueError(f"The student {type(student).__name__} returned no task loss for the labels")
        teacher_logits = self.teacher_logits(inputs) if cached is None else cached.to(logits.device)
        if teacher_logits.shape != logits.shape:
            raise ValueError(
                f"The teacher's logits {tuple(teacher_logits.shape)} and the student's {tuple(logits.shape)} differ "
                "in shape: the teacher must be fine-tuned for the same kind of task (sequence or token "
                "classification) and labels"
            )
        kind = _soft_kind(student.config, logits)
        if kind == "mse":
            soft = F.mse_loss(logits.float(), teacher_logits.float())
        else:
            token_labels = labels if kind == "token" else None
            soft = distillation_kl(logits, teacher_logits, self.distill_temperature, token_labels)
        alpha = self.distill_alpha
        terms = ([alpha * task_loss] if alpha > 0 else []) + ([(1.0 - alpha) * soft] if alpha < 1 else [])
        distilled = sum(terms)
        combine = getattr(student, "combine_losses", None)
        loss = combine(distilled, retrieval_loss) if combine is not None else distilled
        if loss is None:  # combine_losses drops a task term whose coefficient is 0
            raise ValueError("The student's task_loss_coeff is 0: there is no task loss to distil")
        self._accumulate("distill_ce", task_loss)
        self._accumulate("distill_mse" if kind == "mse" else "distill_kl", soft)
        if retrieval_loss is not None:
            self._accumulate("distill_retrieval", retrieval_loss)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def teacher_logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The teacher's logits on the model inputs of the student's batch (targets left out), under no_grad."""
        teacher = self.teacher_model
        if teacher.training:
            teacher.eval()
        batch = {k: v for k, v in inputs.items() if k not in TARGET_KEYS and k not in self.label_names}
        if self._teacher_inputs is not None:
            batch = {k: v for k, v in batch.items() if k in self._teacher_inputs}
        reference = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
        if reference is not None and next(teacher.parameters()).device != reference.device:
            teacher.to(reference.device)
        outputs = teacher(**batch)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return logits.detach()

    def _set_signature_columns_if_needed(self):
        # Keep precomputed teacher logits (a dataset column the student's forward does not take).
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and TEACHER_LOGITS_KEY not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, TEACHER_LOGITS_KEY]

    # ---- logging -------------------------------------------------------------------------------

    def _accumulate(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        for store in (self._window, self._run):
            entry = store.setdefault(name, [torch.zeros((), device=value.device), 0])
            entry[0] = entry[0] + value
            entry[1] += 1

    def _means(self, store: dict[str, list]) -> dict[str, float]:
        from transformers.trainer_pt_utils import nested_gather

        means = {}
        for name, (total, count) in store.items():
            mean = total / max(count, 1)
            means[name] = round(nested_gather(mean, self.args.parallel_mode).mean().item(), 6)
        return means

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the distillation components to the training logs: their means since the last logged step
        next to ``loss``, their means over the run next to ``train_loss``."""
        if "loss" in logs and self._window:
            logs.update(self._means(self._window))
            self._window = {}
        if "train_loss" in logs and self._run:
            logs.update({f"train_{k}": v for k, v in self._means(self._run).items()})
        super().log(logs, *args, **kwargs)

    def distillation_summary(self) -> dict[str, Any]:
        """The teacher and the coefficients, as ``train_distill_*`` metrics (what ``train()`` returns)."""
        teacher = self.teacher_model
        config = getattr(teacher, "config", None)
        name = getattr(teacher, "name_or_path", "") or getattr(config, "_name_or_path", "") or type(teacher).__name__
        return {
            "train_distill_teacher": str(name),
            "train_distill_teacher_class": type(teacher).__name__,
            "train_distill_teacher_num_instances": int(getattr(config, "num_instances", 1) or 1),
            "train_distill_alpha": self.distill_alpha,
            "train_distill_temperature": self.distill_temperature,
        }

    def train(self, *args: Any, **kwargs: Any):
        """`Trainer.train`; the returned metrics also hold :meth:`distillation_summary` and the components'
        means over the run (``train_distill_ce``, ``train_distill_kl`` / ``train_distill_mse``, ...)."""
        self._window, self._run = {}, {}
        output = super().train(*args, **kwargs)
        if self._run:
            output.metrics.update({f"train_{k}": v for k, v in self._means(self._run).items()})
        output.metrics.update(self.distillation_summary())
        return output


TEACHER_LOGITS_KEY = "teacher_logits"


@torch.no_grad()
def add_teacher_logits(dataset, teacher: nn.Module, collator, batch_size: int = 32, desc: str = "teacher logits"):
    """`dataset` with a ``teacher_logits`` column: the teacher's logits on every example, computed once (eval
    mode, so they equal the logits of any batch holding the example, up to float rounding from padding).
    `DistillationTrainer` then reads them instead of running the teacher on every batch (with N = 5 the teacher
    costs N times the student's backbone rows); pair it with :class:`TeacherLogitsCollator`. Token logits are
    stored per example, cut to the example's own length."""
    from tqdm.auto import tqdm

    teacher.eval()
    inputs = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in dataset.column_names]
    rows = []
    for start in tqdm(range(0, len(dataset), batch_size), desc=desc):
        features = [{k: dataset[i][k] for k in inputs} for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collator(features)
        batch = {k: v.to(next(teacher.parameters()).device) for k, v in batch.items() if k in inputs}
        logits = teacher(**batch).logits.float().cpu()
        for feature, row in zip(features, logits):
            rows.append(row[: len(feature["input_ids"])].tolist() if row.dim() == 2 else row.tolist())
    return dataset.add_column(TEACHER_LOGITS_KEY, rows)


class TeacherLogitsCollator:
    """Wrap a data collator: collate the other fields with it, and pad the ``teacher_logits`` of token tasks
    to the batch's sequence length (zeros where padding: those positions carry label -100 and never count)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        if not features or TEACHER_LOGITS_KEY not in features[0]:
            return self.collator(features)
        logits = [torch.tensor(f[TEACHER_LOGITS_KEY], dtype=torch.float32) for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k != TEACHER_LOGITS_KEY} for f in features])
        if logits[0].dim() == 1:
            batch[TEACHER_LOGITS_KEY] = torch.stack(logits)
            return batch
        length = batch["input_ids"].shape[1]
        padded = torch.zeros(len(logits), length, logits[0].shape[-1])
        for row, value in enumerate(logits):
            padded[row, : value.shape[0]] = value[:length]
        batch[TEACHER_LOGITS_KEY] = padded
        return batch


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over the last dimension (the classes).

    Without `labels`: the mean over all rows (sequence classification, ``(batch, classes)``). With `labels`
    ``(batch, seq_len)``: the mean over the token positions whose label is not -100 (0 when there is none)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_row = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    if labels is None:
        kl = per_row.mean()
    else:
        mask = labels.to(per_row.device) != -100
        if mask.shape != per_row.shape:
            raise ValueError(f"labels {tuple(mask.shape)} do not match the token logits {tuple(per_row.shape)}")
        kl = per_row[mask].sum() / mask.sum().clamp(min=1)
    return kl * temperature**2


def _student_terms(outputs) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(task loss, logits, retrieval loss) of a student's output: a `MuxTaskOutput` (``task_loss``,
    ``retrieval_loss``), another `ModelOutput` / dict (``loss`` is the task loss) or a ``(loss, logits, ...)``
    tuple."""
    if isinstance(outputs, dict):
        if "task_loss" in outputs or "retrieval_loss" in outputs:
            return outputs.get("task_loss"), outputs["logits"], outputs.get("retrieval_loss")
        return outputs.get("loss"), outputs["logits"], None
    return outputs[0], outputs[1], None


def _soft_kind(config, logits: torch.Tensor) -> str:
    """``sequence`` / ``token`` (KL) or ``mse`` (regression) from the student's config and logits."""
    problem_type = getattr(config, "problem_type", None)
    if problem_type == "multi_label_classification":
        raise ValueError("DistillationTrainer supports single-label classification, regression and token tasks")
    if problem_type == "regression" or (problem_type is None and config.num_labels == 1):
        return "mse"
    return "token" if logits.dim() == 3 else "sequence"


def _forward_arguments(model: nn.Module) -> set[str] | None:
    """The named arguments of ``model.forward`` (None when it cannot be inspected)."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    named = {p.name for p in parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named or None


__all__ = [
    "DistillationArguments",
    "DistillationTrainer",
    "TeacherLogitsCollator",
    "add_teacher_logits",
    "check_coefficients",
    "check_teacher",
    "distillation_kl",
    "freeze",
    "load_teacher",
]
