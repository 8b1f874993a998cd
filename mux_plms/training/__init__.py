"""Training: arguments, the Accelerate pre-training loop (stages retrieval, distill, mlm, electra), the
MUX-ELECTRA generator/discriminator pairing, hidden-state distillation of an N=1 encoder
(:class:`DistillationPair`, the ``distill`` stage), task-level distillation through `Trainer`
(:class:`DistillationTrainer`) and the task fine-tuning of the demo (:func:`finetune_task`).

Submodules are imported on first attribute access, so ``import mux_plms.training.electra`` does not pull in the
pre-training loop and vice versa.
"""

from __future__ import annotations

import importlib

from .arguments import PretrainingArguments

_LAZY = {
    "run_pretraining": "pretrain",
    "train_stage": "pretrain",
    "evaluate": "metrics",
    "STAGE_REGISTRY": "stages",
    "get_stage": "stages",
    "TrainingProgress": "checkpoints",
    "MuxElectraPretrainingPair": "electra",
    "load_electra_preset": "electra",
    "DistillationTrainer": "distillation",
    "DistillationArguments": "distillation",
    "load_teacher": "distillation",
    "add_teacher_logits": "distillation",
    "TeacherLogitsCollator": "distillation",
    "DistillationPair": "distill_stage",
    "hidden_distillation_loss": "distill_stage",
    "finetune_task": "task_finetune",
    "load_task_data": "task_finetune",
    "evaluate_task": "task_finetune",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PretrainingArguments", *_LAZY]
