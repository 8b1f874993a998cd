#!/usr/bin/env python
"""Fine-tune a MUX-BERT / MUX-ELECTRA model (or a vanilla BERT warm-started into one) on sentence
classification: the nine GLUE tasks, the shipped polarity sentences, or your own csv / json files.

Same shape as transformers' `examples/pytorch/text-classification/run_glue.py`: argument dataclasses
parsed by `HfArgumentParser`, `Trainer` for training (so `torchrun` / `accelerate launch` work), then
an evaluation loop that reports the metric next to the evaluation throughput (instances / s) and can
ensemble (`--ensemble`) or group inputs by length (`--group_by_length_eval`).

    python examples/run_glue.py --model_name_or_path MODEL_DIR --dataset_name polarity \\
        --do_train --do_eval --do_predict --max_seq_length 64 --output_dir out/polarity
    python examples/run_glue.py --model_name_or_path BERT_DIR --num_instances 2 \\
        --muxing_variant gaussian_hadamard --demuxing_variant rsa --task_name sst2 --do_train --do_eval ...

With `--teacher_model_name_or_path` (a fine-tuned N=1 model, or a MUX model), training distils it
(`mux_plms.training.DistillationTrainer`: `--distill_alpha` weighs the task loss, `1 - alpha` the
temperature-`--distill_temperature` KL to the teacher's logits on the same batch).

With `--do_train`, the output folder also gets `training_record.json` (`mux_plms.records`): the stages of
the source checkpoint's record, the fine-tuning settings, the evaluation metrics and instances / s, and with
`--baseline_results N1_OUTPUT_DIR` (an N=1 run on the same evaluation data) the speed-up and the cost in
points against it. `mux-plms card` / `mux-plms push` render it into the model card.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import transformers
from transformers import (
    AutoTokenizer,
    DataCollatorWithPadding,
    default_data_collator,
    set_seed,
)

from mux_plms.data import tasks
from mux_plms.training.finetune import (
    FinetuningRecorder,
    check_eval_arguments,
    check_max_seq_length,
    classification_metrics,
    describe_data,
    evaluate_logits,
    evaluation_settings,
    inspect_checkpoint,
    load_model,
    metric_prefix,
    parse_arguments,
    train_and_save,
    write_predictions,
)
from mux_plms.utils.runtime import configure_threads, local_process_count

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on, and how to tokenize it."""

    task_name: str | None = field(default=None, metadata={"help": f"GLUE task: {', '.join(tasks.GLUE_TASKS)}"})
    dataset_name: str | None = field(
        default=None, metadata={"help": f"Shipped data set: {', '.join(tasks.SHIPPED_SEQUENCE_TASKS)}"}
    )
    train_file: str | None = field(default=None, metadata={"help": "csv / json training file"})
    validation_file: str | None = field(default=None, metadata={"help": "csv / json validation file"})
    test_file: str | None = field(default=None, metadata={"help": "csv / json test file (labels optional)"})
    text_columns: str | None = field(default=None, metadata={"help": "One or two comma-separated text columns"})
    label_column_name: str = field(default="label", metadata={"help": "The label column"})
    label_type: str | None = field(
        default=None,
        metadata={
            "help": "classification or regression (default: from the label column: integers and strings are "
            "classes, floats with a fraction are scores; floats that are all whole numbers must be told)",
            "choices": list(tasks.LABEL_TYPES),
        },
    )
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per input after truncation"})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every input to max_seq_length"})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation examples"})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Keep the first N test examples"})
    drop_empty_examples: bool = field(
        default=False, metadata={"help": "Drop rows with an empty text from train / validation instead of failing"}
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, eval_args, distill_args, training_args = parse_arguments(DataTrainingArguments, argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    configure_threads(local_process_count(), logger=logger, flag=None)  # torchrun ranks share the cores

    # Everything that can be wrong is checked before the model is loaded or trained.
    info = inspect_checkpoint(model_args)
    check_eval_arguments(eval_args, info, training_args.per_device_eval_batch_size)
    check_max_seq_length(data_args.max_seq_length, info)
    set_seed(training_args.seed)
    raw, task = tasks.load_sequence_data(
        data_args.task_name, data_args.dataset_name, data_args.train_file, data_args.validation_file,
        data_args.test_file, model_args.cache_dir,
    )  # fmt: skip
    label_column = task.label_column if task else data_args.label_column_name
    eval_splits = list(task.eval_splits if task else ["validation"]) if training_args.do_eval else []
    test_splits = list(task.test_splits if task else ["test"]) if training_args.do_predict else []
    train_splits = ["train"] if training_args.do_train else []
    labelled = train_splits + eval_splits
    tasks.check_splits(raw, labelled + test_splits, "--do_train / --do_eval / --do_predict")
    if not labelled:
        raise ValueError("Nothing to do: pass --do_train and/or --do_eval (and --do_predict)")
    limits = {"train": data_args.max_train_samples}
    limits.update({s: data_args.max_eval_samples for s in eval_splits})
    tasks.limit_splits(raw, {**limits, **{s: data_args.max_predict_samples for s in test_splits}})
    if data_args.text_columns:
        text_columns = tuple(c.strip() for c in data_args.text_columns.split(",") if c.strip())
        if not 1 <= len(text_columns) <= 2:
            raise ValueError(f"--text_columns must name one or two columns, got {data_args.text_columns!r}")
    elif task:
        text_columns = task.text_columns
    else:
        text_columns = tasks.infer_text_columns(raw[labelled[0]].column_names, label_column)
    tasks.check_columns(raw, [label_column], labelled, "label", "--label_column_name")
    tasks.check_columns(raw, text_columns, labelled + test_splits, "text", "--text_columns")
    if data_args.drop_empty_examples:
        for split, count in tasks.drop_empty_texts(raw, text_columns, labelled).items():
            if count:
                logger.warning("Dropped %d rows with an empty text from the %s split", count, split)
    tasks.check_no_empty_texts(raw, text_columns, labelled + test_splits)
    test_with_labels = [s for s in test_splits if label_column in raw[s].column_names]
    regression = task.is_regression if task else None
    if data_args.label_type is not None:
        if data_args.label_type not in tasks.LABEL_TYPES:
            raise ValueError(
                f"--label_type must be one of {', '.join(tasks.LABEL_TYPES)}; got {data_args.label_type!r}"
            )
        wanted = data_args.label_type == "regression"
        if task is not None and wanted != task.is_regression:
            raise ValueError(f"--label_type {data_args.label_type} contradicts the task {task.name}")
        regression = wanted
    labels = tasks.sequence_labels(raw, label_column, labelled[0], labelled + test_with_labels, regression=regression)

    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    id2label = None if labels.is_regression else dict(enumerate(labels.names))
    model = load_model(model_args, info, "sequence", labels.num_labels, id2label)
    logger.info("Model: %s, N=%d (%s)", type(model).__name__, info.num_instances, model_args.model_name_or_path)

    def tokenize(batch):
        texts = [batch[c] for c in text_columns]
        padding = "max_length" if data_args.pad_to_max_length else False
        encoded = tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length, padding=padding)
        if label_column in batch:
            encoded["labels"] = [labels.to_id(v) for v in batch[label_column]]
        return encoded

    data = {}
    for split in labelled + test_splits:
        with training_args.main_process_first(desc=f"tokenizing {split}"):
            data[split] = raw[split].map(
                tokenize, batched=True, remove_columns=raw[split].column_names, desc=f"Tokenizing {split}"
            )
    collator = default_data_collator if data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer)

    def compute_metrics(prediction):  # Trainer's own evaluation during training (--eval_strategy)
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = np.squeeze(logits) if labels.is_regression else np.argmax(logits, axis=-1)
        return classification_metrics(metric_names, predicted, prediction.label_ids)

    metric_names = task.metrics if task else (("pearson", "spearmanr") if labels.is_regression else ("accuracy",))
    # training_record.json of the fine-tuned model; reads the source record and --baseline_results now
    recorder = FinetuningRecorder(
        model_args, eval_args, training_args, task_type="text-classification", metric_names=metric_names,
        data=describe_data(task, data_args.train_file, data_args.validation_file),
        max_seq_length=data_args.max_seq_length, eval_split=eval_splits[0] if eval_splits else None,
        eval_examples=len(data[eval_splits[0]]) if eval_splits else None,
        teacher=distill_args.teacher_model_name_or_path,
    )  # fmt: skip
    # With a teacher, DistillationTrainer: its soft labels join the training loss
    trainer_class, distillation = distill_args.trainer_class_and_kwargs(
        "sequence", training_args.do_train, model_args.cache_dir, data_args.max_seq_length
    )
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=data.get("train"),
        eval_dataset=data[eval_splits[0]] if eval_splits else None,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        **distillation,
    )
    all_metrics: dict[str, float] = {}
    if training_args.do_train:
        all_metrics.update(train_and_save(trainer, len(data["train"])))

    settings = evaluation_settings(eval_args)

    def predict(split: str):
        result = evaluate_logits(
            trainer.model, data[split], collator, training_args.per_device_eval_batch_size, desc=split, **settings
        )
        logits = result.stacked()
        predicted = logits[:, 0] if labels.is_regression else logits.argmax(-1)
        readable = [float(p) for p in predicted] if labels.is_regression else [labels.names[p] for p in predicted]
        return result, predicted, readable

    for split in eval_splits + test_splits:
        prefix = metric_prefix(split, "eval" if split in eval_splits else "predict")
        result, predicted, readable = predict(split)
        metrics = result.metrics(prefix)
        references = data[split]["labels"] if "labels" in data[split].column_names else []
        keep = [i for i, r in enumerate(references) if r is not None]  # unlabelled test rows are skipped
        if keep:
            scores = classification_metrics(metric_names, predicted[keep], np.asarray([references[i] for i in keep]))
            metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)
        if trainer.is_world_process_zero():
            kind = "eval_predictions" if split in eval_splits else "predict_results"
            write_predictions(os.path.join(training_args.output_dir, f"{kind}_{split}.txt"), readable)
        all_metrics.update(metrics)
    recorder.write(trainer, all_metrics)
    return all_metrics


if __name__ == "__main__":
    main()
