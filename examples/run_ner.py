#!/usr/bin/env python
"""Fine-tune a MUX-BERT / MUX-ELECTRA model (or a vanilla BERT warm-started into one) on token
classification: NER (CoNLL-2003, or the shipped WNUT-2016 tweets) and POS tagging (UD en_ewt), or
your own json-lines / CoNLL-style files.

Same shape and model / evaluation options as `run_glue.py`. Words are split into word pieces; the
first piece of a word carries its label and the others are ignored (-100), or labelled too with
`--label_all_tokens` (a ``B-x`` becomes ``I-x`` on the later pieces). Evaluation always scores one
prediction per word (its first piece): seqeval entity-level precision / recall / F1 for NER, word
accuracy for POS. Words cut off by `--max_seq_length` get no prediction: they are left out of the
scores (counted in ``*_truncated_examples``) and written as ``O`` (the first label) in the
prediction files.

    python examples/run_ner.py --model_name_or_path MODEL_DIR --dataset_name wnut16 \\
        --do_train --do_eval --do_predict --max_seq_length 64 --output_dir out/wnut16

With `--teacher_model_name_or_path` (a fine-tuned N=1 token classifier, or a MUX one), training distils
it per token at the labelled word pieces (the positions whose label is not -100; see `run_glue.py`).
Like `run_glue.py`, a training run writes `training_record.json` (main metric: entity F1 for NER, word
accuracy for POS), compared with an N=1 run with `--baseline_results`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import transformers
from transformers import (
    AutoTokenizer,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    set_seed,
)

from mux_plms.data import tasks
from mux_plms.training.finetune import (
    FinetuningRecorder,
    align_word_labels,
    check_eval_arguments,
    check_max_seq_length,
    continuation_label_ids,
    describe_data,
    evaluate_logits,
    evaluation_settings,
    inspect_checkpoint,
    load_model,
    parse_arguments,
    seqeval_metrics,
    token_accuracy,
    train_and_save,
    word_level_predictions,
    write_predictions,
)
from mux_plms.utils.runtime import configure_threads, local_process_count

logger = logging.getLogger(__name__)
TAG_COLUMNS = ("ner_tags", "tags", "pos_tags", "upos", "labels", "label")
METRICS = ("seqeval", "accuracy")


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on, and how to tokenize it."""

    task_name: str | None = field(default=None, metadata={"help": f"Hub task: {', '.join(tasks.TOKEN_TASKS)}"})
    dataset_name: str | None = field(
        default=None, metadata={"help": f"Shipped data set: {', '.join(tasks.SHIPPED_TOKEN_TASKS)}"}
    )
    train_file: str | None = field(default=None, metadata={"help": "json lines or CoNLL-style training file"})
    validation_file: str | None = field(default=None, metadata={"help": "json lines or CoNLL-style validation file"})
    test_file: str | None = field(default=None, metadata={"help": "json lines or CoNLL-style test file"})
    text_column_name: str | None = field(default=None, metadata={"help": "Column of word lists (default: tokens)"})
    label_column_name: str | None = field(
        default=None, metadata={"help": f"Column of tag lists (default: first of {TAG_COLUMNS})"}
    )
    metric: str | None = field(
        default=None, metadata={"help": "seqeval (BIO entities) or accuracy (POS); default: by task / tags"}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Word pieces per input after truncation"})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every input to max_seq_length"})
    label_all_tokens: bool = field(default=False, metadata={"help": "Label every word piece, not only the first"})
    return_entity_level_metrics: bool = field(default=False, metadata={"help": "Also report F1 per entity type"})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation examples"})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Keep the first N test examples"})
    drop_empty_examples: bool = field(
        default=False, metadata={"help": "Drop rows without words from train / validation instead of failing"}
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, eval_args, distill_args, training_args = parse_arguments(DataTrainingArguments, argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    configure_threads(local_process_count(), logger=logger, flag=None)  # torchrun ranks share the cores

    info = inspect_checkpoint(model_args)
    check_eval_arguments(eval_args, info, training_args.per_device_eval_batch_size)
    check_max_seq_length(data_args.max_seq_length, info)
    if data_args.metric is not None and data_args.metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}; got {data_args.metric!r}")
    set_seed(training_args.seed)
    raw, task = tasks.load_token_data(
        data_args.task_name, data_args.dataset_name, data_args.train_file, data_args.validation_file,
        data_args.test_file, model_args.cache_dir,
    )  # fmt: skip
    train_splits = ["train"] if training_args.do_train else []
    eval_splits = ["validation"] if training_args.do_eval else []
    test_splits = ["test"] if training_args.do_predict else []
    labelled = train_splits + eval_splits
    tasks.check_splits(raw, labelled + test_splits, "--do_train / --do_eval / --do_predict")
    if not labelled:
        raise ValueError("Nothing to do: pass --do_train and/or --do_eval (and --do_predict)")
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    tasks.limit_splits(raw, {**limits, "test": data_args.max_predict_samples})
    columns = raw[labelled[0]].column_names
    words_column = data_args.text_column_name or (task.tokens_column if task else "tokens")
    tags_column = data_args.label_column_name or (
        task.tags_column if task else next((c for c in TAG_COLUMNS if c in columns), TAG_COLUMNS[0])
    )
    tasks.check_columns(raw, [tags_column], labelled, "label", "--label_column_name")
    tasks.check_columns(raw, [words_column], labelled + test_splits, "text", "--text_column_name")
    if data_args.drop_empty_examples:
        for split, count in tasks.drop_empty_texts(raw, [words_column], labelled).items():
            if count:
                logger.warning("Dropped %d rows without words from the %s split", count, split)
    tasks.check_no_empty_texts(raw, [words_column], labelled + test_splits)
    scored = labelled + [s for s in test_splits if tags_column in raw[s].column_names]
    for split in scored:
        bad = [i for i, (w, t) in enumerate(zip(raw[split][words_column], raw[split][tags_column])) if len(w) != len(t)]
        if bad:
            raise ValueError(
                f"The {split} split has {len(bad)} rows whose word and tag lists differ in length (rows {bad[:5]})"
            )
    tasks.check_token_tag_types(raw, tags_column, scored)
    label_names = tasks.token_label_list(raw[labelled[0]], tags_column)
    class_label = tasks.class_label_names(raw[labelled[0]], tags_column) is not None
    known = range(len(label_names)) if class_label else label_names
    tasks.check_known_labels(
        raw, tags_column, known, [s for s in scored if s != labelled[0]], nested=True, key=None if class_label else str
    )
    label_to_id = {name: i for i, name in enumerate(label_names)}
    metric = data_args.metric or (task.metric if task else None)
    if metric is None:
        bio = all(name == "O" or name[:2] in ("B-", "I-", "E-", "S-") for name in label_names)
        metric = "seqeval" if bio else "accuracy"

    def tag_id(tag) -> int:
        return int(tag) if class_label else label_to_id[str(tag)]  # plain tags are names (integers too)

    continuation = continuation_label_ids(label_names)

    def tokenize(batch, label_all: bool):
        padding = "max_length" if data_args.pad_to_max_length else False
        encoded = tokenizer(
            batch[words_column], is_split_into_words=True, truncation=True, max_length=data_args.max_seq_length,
            padding=padding,
        )  # fmt: skip
        word_ids = [encoded.word_ids(i) for i in range(len(batch[words_column]))]
        encoded["word_ids"] = [
            [-1 if w is None else w for w, m in zip(ids, mask) if m]
            for ids, mask in zip(word_ids, encoded["attention_mask"])
        ]
        if tags_column in batch:
            encoded["labels"] = [
                align_word_labels(ids, [tag_id(t) for t in tags], continuation if label_all else None)
                for ids, tags in zip(word_ids, batch[tags_column])
            ]
        return encoded

    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    if not tokenizer.is_fast:
        raise ValueError("run_ner.py needs a fast tokenizer (word_ids() aligns labels with word pieces)")
    model = load_model(model_args, info, "token", len(label_names), dict(enumerate(label_names)))
    logger.info("Model: %s, N=%d (%s)", type(model).__name__, info.num_instances, model_args.model_name_or_path)

    data = {}
    for split in labelled + test_splits:
        label_all = data_args.label_all_tokens and split == "train"  # scoring always uses first pieces
        with training_args.main_process_first(desc=f"tokenizing {split}"):
            data[split] = raw[split].map(
                tokenize, batched=True, fn_kwargs={"label_all": label_all}, remove_columns=raw[split].column_names,
                desc=f"Tokenizing {split}",
            )  # fmt: skip

    def score(predicted: list[list[str]], references: list[list[str]]) -> dict[str, float]:
        if metric == "seqeval":
            return seqeval_metrics(predicted, references, per_type=data_args.return_entity_level_metrics)
        return token_accuracy(predicted, references)

    def compute_metrics(prediction):  # Trainer's own evaluation during training (--eval_strategy)
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        ids = np.argmax(logits, axis=-1)
        pairs = [
            [(label_names[p], label_names[r]) for p, r in zip(ps, rs) if r != -100]
            for ps, rs in zip(ids, prediction.label_ids)
        ]
        return score([[p for p, _ in row] for row in pairs], [[r for _, r in row] for row in pairs])

    # training_record.json of the fine-tuned model; reads the source record and --baseline_results now
    recorder = FinetuningRecorder(
        model_args, eval_args, training_args, task_type="token-classification",
        metric_names=("f1", "precision", "recall", "accuracy") if metric == "seqeval" else ("accuracy",),
        data=describe_data(task, data_args.train_file, data_args.validation_file),
        max_seq_length=data_args.max_seq_length, eval_split="validation" if eval_splits else None,
        eval_examples=len(data["validation"]) if eval_splits else None,
        teacher=distill_args.teacher_model_name_or_path,
    )  # fmt: skip

    # With a teacher, DistillationTrainer: its soft labels join the training loss
    trainer_class, distillation = distill_args.trainer_class_and_kwargs(
        "token", training_args.do_train, model_args.cache_dir, data_args.max_seq_length
    )
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=data["train"].remove_columns("word_ids") if "train" in data else None,
        eval_dataset=data["validation"].remove_columns("word_ids") if eval_splits else None,
        processing_class=tokenizer,
        data_collator=DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=None),
        compute_metrics=compute_metrics,
        **distillation,
    )
    all_metrics: dict[str, float] = {}
    if training_args.do_train:
        all_metrics.update(train_and_save(trainer, len(data["train"])))

    pad = DataCollatorWithPadding(tokenizer)
    settings = evaluation_settings(eval_args)
    for split in eval_splits + test_splits:
        prefix = "eval" if split in eval_splits else "predict"
        result = evaluate_logits(
            trainer.model, data[split], pad, training_args.per_device_eval_batch_size, desc=split, **settings
        )
        predicted = [
            [label_names[i] for i in word_level_predictions(logits, word_ids)]
            for logits, word_ids in zip(result.logits, data[split]["word_ids"])
        ]
        metrics = result.metrics(prefix)
        if tags_column in raw[split].column_names:
            references = [
                [label_names[tag_id(t)] for t in tags[: len(p)]] for tags, p in zip(raw[split][tags_column], predicted)
            ]
            metrics[f"{prefix}_truncated_examples"] = sum(
                len(p) < len(w) for p, w in zip(predicted, raw[split][words_column])
            )
            metrics.update({f"{prefix}_{k}": v for k, v in score(predicted, references).items()})
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)
        if trainer.is_world_process_zero():
            full = [p + [label_names[0]] * (len(w) - len(p)) for p, w in zip(predicted, raw[split][words_column])]
            kind = "eval_predictions" if split in eval_splits else "predict_results"
            write_predictions(
                os.path.join(training_args.output_dir, f"{kind}_{split}.txt"), [" ".join(p) for p in full]
            )
        all_metrics.update(metrics)
    recorder.write(trainer, all_metrics)
    return all_metrics


if __name__ == "__main__":
    main()
