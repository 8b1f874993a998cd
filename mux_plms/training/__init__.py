"""Training: arguments, the Accelerate pre-training loop (stage 1 token retrieval, stage 2 MLM or ELECTRA),
the MUX-ELECTRA generator/discriminator pairing and task-level distillation through `Trainer`
(:class:`DistillationTrainer`).

Submodules are imported on first attribute access, so ``import mux_plms.training.electra`` does not pull in the
pre-training loop and vice versa.
"""

from __future__ import annotations

import importlib

from .arguments import PretrainingArguments

_LAZY = {
    "run_pretraining": "pretrain",
    "train_stage": "pretrain",
    "evaluate": "pretrain",
    "STAGE_REGISTRY": "pretrain",
    "TrainingProgress": "pretrain",
    "MuxElectraPretrainingPair": "electra",
    "load_electra_preset": "electra",
    "DistillationTrainer": "distillation",
    "DistillationArguments": "distillation",
    "load_teacher": "distillation",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PretrainingArguments", *_LAZY]
