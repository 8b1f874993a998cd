"""Fine-tuning on the shipped task sets through `transformers.Trainer`: the path of the demo and of the quality
experiments (``benchmarks/quality/``), the same one the examples take.

* :func:`load_task_data`: the polarity sentences or WNUT-2016 tweets, tokenised (word-aligned labels for NER);
* :func:`evaluate_task`: accuracy / F1 (polarity) or word-level seqeval F1 (WNUT) of a model on a split;
* :func:`finetune_task`: `Trainer` (or `DistillationTrainer` with an N=1 teacher) for a fixed number of steps,
  optionally evaluating every ``eval_every`` steps (a quality-vs-training-time curve; evaluation time is not
  counted as training time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("polarity", "wnut16")
TASK_METRIC = {"polarity": "accuracy", "wnut16": "f1"}
TRAIN_COLUMNS = ("input_ids", "token_type_ids", "attention_mask", "labels")


@dataclass
class TaskData:
    task: str
    train: Any  # datasets.Dataset, tokenised
    valid: Any
    label_names: list[str]

    @property
    def metric(self) -> str:
        return TASK_METRIC[self.task]


def load_task_data(task: str, tokenizer, train_count: int, eval_count: int, max_length: int, seed: int) -> TaskData:
    """`train_count` shuffled training examples and the first `eval_count` validation examples of `task`."""
    from ..data import corpora
    from .finetune import align_word_labels

    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    raw = corpora.polarity() if task == "polarity" else corpora.wnut16()
    train = raw["train"].shuffle(seed=seed).select(range(min(train_count, len(raw["train"]))))
    valid = raw["validation"].select(range(min(eval_count, len(raw["validation"]))))
    features = raw["train"].features
    label_names = features["label"].names if task == "polarity" else features["ner_tags"].feature.names

    if task == "polarity":

        def encode(batch):
            encoded = tokenizer(batch["sentence"], truncation=True, max_length=max_length)
            encoded["labels"] = batch["label"]
            return encoded
    else:

        def encode(batch):
            encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
            word_ids = [encoded.word_ids(i) for i in range(len(batch["tokens"]))]
            encoded["labels"] = [align_word_labels(w, tags) for w, tags in zip(word_ids, batch["ner_tags"])]
            encoded["word_ids"] = [[-1 if x is None else x for x in w] for w in word_ids]
            encoded["word_labels"] = batch["ner_tags"]  # truncated sentences score their kept words only
            return encoded

    def tokenize(dataset):
        return dataset.map(encode, batched=True, remove_columns=dataset.column_names)

    return TaskData(task, tokenize(train), tokenize(valid), list(label_names))


def collator_for(task: str, tokenizer):
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer) if task == "polarity" else DataCollatorForTokenClassification(tokenizer)


def evaluate_task(model, data: TaskData, tokenizer, batch_size: int, desc: str | None = None) -> dict[str, float]:
    """Validation metrics of `model` (in input order, mux groups of consecutive examples), plus
    ``eval_instances_per_second`` of the evaluation loop."""
    import numpy as np
    from transformers import DataCollatorWithPadding

    from .finetune import classification_metrics, evaluate_logits, seqeval_metrics, word_level_predictions

    was_training = model.training
    model.eval()
    result = evaluate_logits(model, data.valid, DataCollatorWithPadding(tokenizer), batch_size, desc=desc)
    if was_training:
        model.train()
    if data.task == "polarity":
        predicted = result.stacked().argmax(-1)
        references = np.asarray(data.valid["labels"])
        metrics = classification_metrics(["accuracy", "f1"], predicted, references)
        n = getattr(model.config, "num_instances", 1) or 1
        if n > 1:  # accuracy of each instance slot (examples i with i mod N = slot share a slot)
            slots = np.arange(len(references)) % n
            for slot in range(n):
                metrics[f"accuracy_slot{slot}"] = float((predicted[slots == slot] == references[slots == slot]).mean())
    else:
        predictions, references = [], []
        for logits, word_ids, gold in zip(result.logits, data.valid["word_ids"], data.valid["word_labels"]):
            words = word_level_predictions(logits, word_ids)
            predictions.append([data.label_names[p] for p in words])
            references.append([data.label_names[g] for g in gold[: len(words)]])
        metrics = seqeval_metrics(predictions, references)
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics["eval_instances_per_second"] = float(result.instances_per_second)
    return metrics


class SingleInstanceCurriculum:
    """A curriculum over N: for the first `single_steps` steps every mux group holds one real instance and N - 1
    empty ones (all padding, labels -100), so the model first learns each instance alone; then the batches are
    the plain ones. With a batch of B examples a single-instance step uses B / N of them (the same backbone rows)."""

    def __init__(self, collator, num_instances: int, single_steps: int, pad_token_id: int):
        self.collator, self.n, self.single_steps, self.pad = collator, num_instances, single_steps, pad_token_id
        self.step = 0

    def __call__(self, features):
        batch = self.collator(features)
        if self.step >= self.single_steps:
            return batch
        import torch

        rows = batch["input_ids"].shape[0] // self.n
        out = {}
        for key, value in batch.items():
            value = value[:rows]
            filler = {"input_ids": self.pad, "labels": -100}.get(key, 0)
            empty = value.new_full((rows, self.n - 1, *value.shape[1:]), filler)
            out[key] = torch.cat([value[:, None], empty], dim=1).reshape(rows * self.n, *value.shape[1:])
        return out


# Modules a warm start creates fresh (the backbone's own weights are the rest).
NEW_MODULES = ("multiplexer", "demultiplexer", "classifier", "retrieval_head")


def scaled_optimizer(model, learning_rate: float, scale: float):
    """AdamW with `learning_rate` for the backbone and ``learning_rate * scale`` for the modules a warm start
    creates (:data:`NEW_MODULES`); no weight decay on biases and norms, 0.01 elsewhere (Trainer's rule)."""
    import torch

    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        new = any(part in name.split(".") for part in NEW_MODULES)
        decay = parameter.ndim >= 2 and "norm" not in name.lower()
        groups.setdefault((new, decay), []).append(parameter)
    return torch.optim.AdamW(
        [
            {"params": params, "lr": learning_rate * (scale if new else 1.0), "weight_decay": 0.01 if decay else 0.0}
            for (new, decay), params in groups.items()
        ],
        lr=learning_rate,
    )


@dataclass
class FinetuneResult:
    metrics: dict[str, float]
    train_seconds: float
    final_train_loss: float | None
    curve: list[dict] = field(default_factory=list)  # {"step", "train_seconds", metric...} every eval_every steps
    distillation: dict | None = None


def finetune_task(
    model,
    tokenizer,
    data: TaskData,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    output_dir: str | Path,
    teacher=None,
    distill_alpha: float = 0.5,
    distill_temperature: float = 2.0,
    eval_every: int = 0,
    eval_batch_size: int | None = None,
    new_module_lr_scale: float = 1.0,
    single_instance_fraction: float = 0.0,
    cache_teacher_logits: bool = True,
    desc: str = "finetune",
) -> FinetuneResult:
    """Fine-tune `model` on ``data.train`` for `steps` optimizer steps of `batch_size` examples (AdamW, 10% linear
    warm-up then linear decay, weight decay 0.01, clipping at 1) with `Trainer`; with a `teacher`, with
    `DistillationTrainer` (``alpha * CE + (1 - alpha) * T^2 * KL`` to the teacher's logits on the same batch)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    eval_batch_size = eval_batch_size or batch_size
    columns = [c for c in TRAIN_COLUMNS if c in data.train.column_names]
    train = data.train.select_columns(columns)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=0.01,
        warmup_steps=max(1, steps // 10),
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        dataloader_drop_last=True,  # every step sees full mux groups
        disable_tqdm=False,
    )
    curve: list[dict] = []
    clock = {"eval": 0.0, "start": None}

    class Curve(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["start"] = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            if curriculum is not None:
                curriculum.step = state.global_step

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if eval_every and state.global_step % eval_every == 0 and state.global_step < steps:
                started = time.perf_counter()
                trained = started - clock["start"] - clock["eval"]
                metrics = evaluate_task(model, data, tokenizer, eval_batch_size)
                clock["eval"] += time.perf_counter() - started
                curve.append({"step": state.global_step, "train_seconds": round(trained, 2), **metrics})

    collator = collator_for(data.task, tokenizer)
    if teacher is not None and cache_teacher_logits:
        from transformers import DataCollatorWithPadding

        from .distillation import TeacherLogitsCollator, add_teacher_logits

        train = add_teacher_logits(train, teacher, DataCollatorWithPadding(tokenizer), desc=f"teacher logits {desc}")
        collator = TeacherLogitsCollator(collator)
    n = getattr(model.config, "num_instances", 1)
    curriculum = None
    if single_instance_fraction > 0 and n > 1:
        curriculum = SingleInstanceCurriculum(
            collator, n, int(single_instance_fraction * steps), tokenizer.pad_token_id
        )
        collator = curriculum
    kwargs: dict[str, Any] = {
        "model": model,
        "args": args,
        "train_dataset": train,
        "data_collator": collator,
        "processing_class": tokenizer,
        "callbacks": [Curve()],
    }
    if new_module_lr_scale != 1.0:
        kwargs["optimizers"] = (scaled_optimizer(model, learning_rate, new_module_lr_scale), None)
    if teacher is not None:
        from .distillation import DistillationTrainer

        trainer = DistillationTrainer(
            teacher_model=teacher, distill_alpha=distill_alpha, distill_temperature=distill_temperature, **kwargs
        )
    else:
        trainer = Trainer(**kwargs)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started - clock["eval"]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics = evaluate_task(model, data, tokenizer, eval_batch_size, desc=f"evaluate {desc}")
    curve.append({"step": steps, "train_seconds": round(train_seconds, 2), **metrics})
    distillation = trainer.distillation_summary() if teacher is not None else None
    return FinetuneResult(metrics, train_seconds, losses[-1] if losses else None, curve, distillation)


__all__ = ["TASKS", "TASK_METRIC", "TaskData", "load_task_data", "evaluate_task", "finetune_task", "FinetuneResult"]
