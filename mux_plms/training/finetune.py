"""Fine-tuning helpers shared by `examples/run_glue.py` and `examples/run_ner.py`.

* argument dataclasses for the model (:class:`MuxModelArguments`) and the evaluation
  (:class:`MuxEvalArguments`), parsed with `HfArgumentParser` next to the distillation arguments
  (:class:`~mux_plms.training.distillation.DistillationArguments`) and `TrainingArguments`;
* :func:`inspect_checkpoint` / :func:`load_model`: a MUX checkpoint, a vanilla BERT warm-started into
  a MUX model (``--num_instances``), or a vanilla BERT baseline; every mismatch is a `ValueError`
  raised before training;
* metrics computed offline: :func:`classification_metrics` (scikit-learn / scipy: accuracy, F1,
  Matthews, Pearson, Spearman), :func:`seqeval_metrics` (seqeval), :func:`token_accuracy`;
* :func:`evaluate_logits`: the evaluation loop (plain or ensembled with ``model.forward_ensemble``,
  optionally length-grouped, sharded over ranks under `torchrun` / `accelerate launch`) that
  measures instances per second and returns one logits array per example, in input order.

Length-grouped evaluation (:func:`eval_batches`) has two modes:

* ``mux_groups`` (default): the mux groups of the ungrouped evaluation (consecutive runs of N
  examples) are kept whole; only the *batches* are formed from groups of similar length, so a batch
  pads less. Each example keeps its mux partners, so its predictions are those of the ungrouped
  evaluation (logits equal up to float rounding from the different padding). Needs an evaluation
  batch size that is a multiple of N.
* ``examples``: examples are sorted by length first, so the mux groups themselves are formed from
  similar-length examples (the union attention mask of a group covers less padding). What changes:
  each example's mux partners, hence its logits: they are exactly the logits of the ungrouped
  evaluation of the data set in length-sorted order, mapped back to the original order. At N = 1
  nothing changes.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

LENGTH_GROUPINGS = ("mux_groups", "examples")
LOAD_REPORT_HINT = "--log_level debug (or DEBUG logging)"  # how the examples print transformers' loading table
HEADS = ("sequence", "token")
# MuxModelArguments fields that configure a MUX model built from a vanilla checkpoint.
WARM_START_FIELDS = (
    "muxing_variant",
    "demuxing_variant",
    "num_hidden_demux_layers",
    "muxing_seed",
    "gaussian_hadamard_norm",
    "position_mixing",
)


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------


@dataclass
class MuxModelArguments:
    """Which model to fine-tune, and how to build a MUX model from a vanilla BERT."""

    model_name_or_path: str = field(
        metadata={
            "help": "A MUX-BERT / MUX-ELECTRA checkpoint (folder or Hub id), or a vanilla BERT to warm start from"
        }
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer folder / id if not the model's"})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads"})
    num_instances: int | None = field(
        default=None,
        metadata={
            "help": "N. With a vanilla BERT: build a MUX model with N instances from it (warm start). With a MUX "
            "checkpoint: must equal its N (checked). Unset with a vanilla BERT: fine-tune plain BERT (baseline)."
        },
    )
    muxing_variant: str | None = field(
        default=None,
        metadata={"help": "Warm start only: gaussian_hadamard | binary_hadamard | random_ortho | contextual"},
    )
    demuxing_variant: str | None = field(default=None, metadata={"help": "Warm start only: rsa | prefix | mlp"})
    num_hidden_demux_layers: int | None = field(default=None, metadata={"help": "Warm start only: demux MLP depth"})
    retrieval_loss_coeff: float | None = field(
        default=None, metadata={"help": "Weight of the auxiliary token-retrieval loss while fine-tuning (MUX models)"}
    )
    muxing_seed: int | None = field(default=None, metadata={"help": "Warm start only: seed of the fixed instance keys"})
    sequence_pooling: str | None = field(
        default=None,
        metadata={
            "help": "MUX sequence classification: 'first' (the demultiplexed first-token state, the default) or "
            "'mean' (the mean of each instance's demultiplexed token states)"
        },
    )
    gaussian_hadamard_norm: float | None = field(
        default=None,
        metadata={
            "help": "Warm start only: L2 norm of the Hadamard instance keys (default 1; sqrt(hidden_size) keeps "
            "the mixture at the scale a pre-trained backbone expects)"
        },
    )
    position_mixing: str | None = field(
        default=None,
        metadata={
            "help": "Warm start only (MUX-BERT): 'keyed' (default: each instance's full embedding is keyed and "
            "mixed) or 'shared' (only the word embeddings are mixed; positions, token types and the embedding "
            "LayerNorm are applied once to the mixture)"
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a checkpoint's classifier whose number of labels differs"}
    )


@dataclass
class MuxEvalArguments:
    """How the final evaluation / prediction runs (see the module docstring for length grouping)."""

    ensemble: bool = field(
        default=False,
        metadata={
            "help": "Ensembled inference: each example visits the N slots of its mux group (model.forward_ensemble)"
        },
    )
    group_by_length_eval: bool = field(
        default=False, metadata={"help": "Batch similar-length examples together at evaluation (less padding)"}
    )
    length_grouping: str = field(
        default="mux_groups",
        metadata={
            "help": "mux_groups: keep every mux group, group whole groups by length (same predictions); "
            "examples: form the mux groups from similar-length examples (partners change)",
            "choices": list(LENGTH_GROUPINGS),
        },
    )
    baseline_results: str | None = field(
        default=None,
        metadata={
            "help": "An N=1 run's all_results.json (or its output folder), evaluated on the same data: the "
            "training record (and the model card) then compare this model's main metric and evaluation "
            "instances/s with it (speed-up, cost in points). Needs --do_train and --do_eval."
        },
    )


def parse_arguments(data_arguments_class: type, argv: Sequence[str] | None = None) -> tuple:
    """Parse ``(MuxModelArguments, data_arguments_class, MuxEvalArguments, DistillationArguments,
    TrainingArguments)`` from `argv` (default ``sys.argv[1:]``) or from a single ``.json`` file argument, as
    transformers' examples do."""
    import os
    import sys

    from transformers import HfArgumentParser, TrainingArguments

    from ..utils.runtime import check_hub_models
    from .distillation import DistillationArguments

    parser = HfArgumentParser(
        (MuxModelArguments, data_arguments_class, MuxEvalArguments, DistillationArguments, TrainingArguments)
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        parsed = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    model_args, distill_args = parsed[0], parsed[3]
    # Offline / no network: a clear error now, not transformers' retry loop later (local folders are not checked).
    check_hub_models(
        {"--model_name_or_path": model_args.model_name_or_path, "--tokenizer_name": model_args.tokenizer_name,
         "--teacher_model_name_or_path": distill_args.teacher_model_name_or_path},
        model_args.cache_dir,
    )  # fmt: skip
    return tuple(parsed)


def save_model_whole(trainer, output_dir: str | None = None) -> None:
    """``trainer.save_model`` into a staging sibling of the output folder, then the files moved into it and
    the completion marker written last (`mux_plms.utils.folders.publish_staged_files`): a process killed
    while saving leaves a folder without the marker, which ``mux-plms push`` refuses, never half a
    ``model.safetensors`` under a valid marker. Every rank calls it (``save_model`` may gather weights)."""
    import shutil

    from ..utils.folders import publish_staged_files, staging_folder

    target = Path(output_dir or trainer.args.output_dir)
    staging = staging_folder(target)
    # Under torchrun on CPU, Trainer sees one process (world_size 1, every rank "process zero") while
    # torch.distributed runs several: the rank of torch.distributed decides who writes, and its barrier waits.
    rank, world = _rank_and_world()
    unknown_to_trainer = world > 1 and trainer.args.world_size == 1
    main = trainer.is_world_process_zero() and rank == 0

    def barrier() -> None:
        trainer.accelerator.wait_for_everyone()
        if unknown_to_trainer:
            torch.distributed.barrier()

    if main and staging.exists():
        shutil.rmtree(staging)  # left by a run killed while saving
    barrier()
    if main or not unknown_to_trainer:  # every rank Trainer knows of (save_model may gather); else rank 0 only
        trainer.save_model(str(staging))
    barrier()
    if main:
        publish_staged_files(staging, target)
    barrier()


def train_and_save(trainer, train_samples: int) -> dict[str, Any]:
    """`trainer.train()` (resuming from ``--resume_from_checkpoint``), then save the model whole
    (:func:`save_model_whole`), the train metrics (``train_results.json``) and the trainer state; returns
    the metrics. A ``training_record.json`` left in the output folder by an earlier run is removed first:
    it described other weights (:meth:`FinetuningRecorder.write` writes the new one after evaluation)."""
    from ..records import TRAINING_RECORD_FILE

    if trainer.is_world_process_zero() and _rank_and_world()[0] == 0:
        (Path(trainer.args.output_dir) / TRAINING_RECORD_FILE).unlink(missing_ok=True)
    result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    save_model_whole(trainer)
    metrics = {**result.metrics, "train_samples": train_samples}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics


# --------------------------------------------------------------------------------------------------
# Training record of a fine-tuned model
# --------------------------------------------------------------------------------------------------

RESULTS_FILES = ("all_results.json", "eval_results.json")  # what --baseline_results reads in a folder


@dataclass(frozen=True)
class DataDescription:
    """The data a run fine-tuned on, as its training record names it.

    Args:
        name: for people (``GLUE``, ``polarity (shipped with mux-plms)``, ``local files train.csv, dev.csv``).
        hub_id: the Hub data set, if any (``nyu-mll/glue``).
        config: its configuration (``sst2``), if any.
    """

    name: str
    hub_id: str | None = None
    config: str | None = None

    def __str__(self) -> str:
        return self.name + (f" ({self.config})" if self.config else "")


def describe_data(task, train_file: str | None = None, validation_file: str | None = None) -> DataDescription:
    """The :class:`DataDescription` of a run: a task of `mux_plms.data.tasks` (Hub or shipped), or local files."""
    if task is not None:
        hub_path = getattr(task, "hub_path", None)
        if hub_path:
            from ..data.tasks import GLUE_HUB_PATH

            name = "GLUE" if hub_path == GLUE_HUB_PATH else hub_path
            return DataDescription(name, hub_path, getattr(task, "hub_config", None))
        return DataDescription(f"{task.name} (shipped with mux-plms)")
    files = [Path(f).name for f in (train_file, validation_file) if f]
    return DataDescription("local files " + ", ".join(dict.fromkeys(files)) if files else "local files")


def metric_prefix(split: str, kind: str = "eval") -> str:
    """The prefix of a split's metrics in ``all_results.json``: ``eval`` for ``validation`` (``predict`` for
    ``test``), ``eval_<split>`` for any other split (``eval_validation_mismatched``)."""
    return kind + ("" if split in ("validation", "test") else f"_{split}")


@dataclass(frozen=True)
class BaselineResults:
    """The N=1 run ``--baseline_results`` points at: its main metric and evaluation throughput."""

    source: str
    metric: str
    value: float
    instances_per_second: float | None
    num_examples: int | None


def read_baseline_results(
    path: str | os.PathLike, metric: str, prefix: str = "eval", num_examples: int | None = None
) -> BaselineResults:
    """Read an N=1 run's results (``all_results.json`` / ``eval_results.json``, or the run's output folder):
    ``<prefix>_<metric>`` and ``<prefix>_instances_per_second``. Raises a `ValueError` naming the problem when
    the file is missing or unreadable, lacks the metric, was evaluated on a different number of examples than
    `num_examples`, or belongs to a multiplexed run (its folder's ``config.json`` or training record says N > 1)."""
    from ..records import TrainingRecord

    given = Path(path)
    file = next((given / name for name in RESULTS_FILES if (given / name).is_file()), None) if given.is_dir() else given
    if file is None or not file.is_file():
        where = f"{given} holds none of {', '.join(RESULTS_FILES)}" if given.is_dir() else f"{given} does not exist"
        raise ValueError(f"--baseline_results: {where}; give the N=1 run's all_results.json or its output folder")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"--baseline_results: {file} is not a readable JSON file: {error}") from error
    if not isinstance(results, dict):
        raise ValueError(f"--baseline_results: {file} must hold a JSON object of metrics")
    key = f"{prefix}_{metric}"
    value = results.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        found = sorted(k for k in results if k.startswith(f"{prefix}_"))
        raise ValueError(
            f"--baseline_results: {file} has no {key} to compare with (its {prefix} results: "
            f"{', '.join(found) or 'none'}); evaluate the N=1 run on the same task with --do_eval"
        )
    speed = results.get(f"{prefix}_instances_per_second")
    speed = float(speed) if isinstance(speed, int | float) and math.isfinite(speed) and speed > 0 else None
    count = results.get(f"{prefix}_num_examples")
    count = int(count) if isinstance(count, int) and not isinstance(count, bool) else None
    if num_examples is not None and count is not None and count != num_examples:
        raise ValueError(
            f"--baseline_results: {file} was evaluated on {count} examples, this run evaluates {num_examples}: "
            "compare runs on the same evaluation data (same data set and --max_eval_samples)"
        )
    folder = file.parent
    n = None
    if (folder / "config.json").is_file():
        try:
            n = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("num_instances")
        except (OSError, ValueError, AttributeError):
            n = None
    record = TrainingRecord.load(folder, missing_ok=True)
    if record.finetuning is not None:
        n = record.finetuning.num_instances
    if isinstance(n, int) and n > 1:
        raise ValueError(f"--baseline_results: {file} comes from a run at N={n}; the baseline is an N=1 run")
    return BaselineResults(str(file), metric, float(value), speed, count)


def _device_description(device, ranks: int) -> str:
    kind = getattr(device, "type", str(device))
    if kind == "cpu":
        threads = torch.get_num_threads()
        text = f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    elif kind == "cuda" and torch.cuda.is_available():
        text = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        text = kind
    return text + (f", {ranks} processes" if ranks > 1 else "")


def _source_record(name_or_path: str, cache_dir: str | None):
    """The training record of the checkpoint fine-tuning starts from (a folder, or a Hub repository's file
    when it can be fetched), continued: its stages, base model and data sets. Empty when it has none."""
    from ..records import TRAINING_RECORD_FILE, TrainingRecord, hub_id_or_none

    path = Path(name_or_path)
    if path.is_dir():
        record = TrainingRecord.load(path, missing_ok=True)
    else:
        from transformers.utils import cached_file

        try:
            found = cached_file(
                name_or_path, TRAINING_RECORD_FILE, cache_dir=cache_dir,
                _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False,
            )  # fmt: skip
        except (OSError, ValueError):
            found = None
        record = TrainingRecord.load(found) if found else TrainingRecord()
    record = record.continued()
    if record.base_model is None and not record.stages:
        record.base_model = hub_id_or_none(name_or_path)
    return record


class FinetuningRecorder:
    """The ``training_record.json`` of a model fine-tuned by ``run_glue.py`` / ``run_ner.py``.

    Built before training, it reads the record of the checkpoint fine-tuning starts from (its stages are
    inherited) and the ``--baseline_results`` of an N=1 run, so that their errors come before any step.
    After evaluation, :meth:`write` saves the record into the output folder: base model, inherited stages
    plus a ``finetune`` stage, the fine-tuning settings (:class:`mux_plms.records.FinetuningRecord`), the
    evaluation metrics of every evaluated split, the evaluation throughput and, with a baseline, the
    comparison with it (baseline metric and instances/s, speed-up, cost in points).

    Args:
        model_args, eval_args, training_args: the parsed arguments of the run.
        task_type: ``text-classification`` or ``token-classification``.
        data: what the run trains and evaluates on (:func:`describe_data`).
        metric_names: the task's metrics, main one first (compared with the baseline).
        max_seq_length: tokens per input after truncation.
        eval_split: the first evaluated split (None without ``--do_eval``); its throughput is recorded.
        eval_examples: examples in that split (checked against the baseline's).
        teacher: the distillation teacher, if any.
    """

    def __init__(
        self,
        model_args: MuxModelArguments,
        eval_args: MuxEvalArguments,
        training_args,
        *,
        task_type: str,
        data: DataDescription,
        metric_names: Sequence[str],
        max_seq_length: int,
        eval_split: str | None,
        eval_examples: int | None = None,
        teacher: str | None = None,
    ):
        if not metric_names:
            raise ValueError("metric_names must name at least the task's main metric")
        self.model_args, self.eval_args, self.training_args = model_args, eval_args, training_args
        self.task_type, self.data, self.metric_names = task_type, data, tuple(metric_names)
        self.max_seq_length, self.eval_split, self.teacher = max_seq_length, eval_split, teacher
        self.prefix = metric_prefix(eval_split) if eval_split else None
        self.source = _source_record(model_args.model_name_or_path, model_args.cache_dir)
        self.baseline: BaselineResults | None = None
        if eval_args.baseline_results:
            if not training_args.do_train or not training_args.do_eval:
                raise ValueError(
                    "--baseline_results needs --do_train and --do_eval: the comparison is made on this run's "
                    "evaluation and saved in the fine-tuned model's training record"
                )
            self.baseline = read_baseline_results(
                eval_args.baseline_results, self.metric_names[0], self.prefix, eval_examples
            )

    def build(self, trainer, metrics: dict[str, Any]):
        """The :class:`~mux_plms.records.TrainingRecord` of the run, from its metrics (``all_results``)."""
        from ..records import (
            BaselineComparison,
            EvaluationResult,
            FinetuningRecord,
            ThroughputRecord,
            TrainingStage,
        )

        args = trainer.args
        config = trainer.model.config
        n = int(getattr(config, "num_instances", 1) or 1)
        record = copy.deepcopy(self.source)
        steps = int(trainer.state.global_step)
        train_loss = metrics.get("train_loss")
        stage_metrics = {"train_loss": float(train_loss)} if _finite(train_loss) else {}
        details = {"init": _as_recorded(self.model_args.model_name_or_path)}
        if _finite(metrics.get("train_runtime")):
            details["train_seconds"] = float(metrics["train_runtime"])
        record.stages.append(TrainingStage("finetune", steps, str(self.data), stage_metrics, details))
        if self.data.hub_id and self.data.hub_id not in record.datasets:
            record.datasets.append(self.data.hub_id)

        prefixes = sorted(
            {k[: -len("_instances_per_second")] for k in metrics if k.startswith("eval") and
             k.endswith("_instances_per_second")},
            key=lambda p: (p != self.prefix, p),
        )  # fmt: skip
        for prefix in prefixes:
            split = prefix[len("eval_") :] if prefix != "eval" else "validation"
            for name in self.metric_names:
                value = metrics.get(f"{prefix}_{name}")
                if _finite(value):
                    record.eval_results.append(
                        EvaluationResult(
                            self.task_type, self.data.name, name, float(value), dataset_id=self.data.hub_id,
                            dataset_config=self.data.config, split=split,
                            ensembled=bool(metrics.get(f"{prefix}_ensemble", False)),
                        )
                    )  # fmt: skip
        speed = metrics.get(f"{self.prefix}_instances_per_second") if self.prefix else None
        if _finite(speed) and speed > 0:
            count = metrics.get(f"{self.prefix}_num_examples")
            grouping = metrics.get(f"{self.prefix}_length_grouping", "none")
            how = [f"inputs of up to {self.max_seq_length} tokens padded per batch"]
            if metrics.get(f"{self.prefix}_ensemble"):
                how.append("ensembled")
            if grouping not in (None, "none"):
                how.append(f"grouped by length ({grouping})")
            record.throughput = ThroughputRecord(
                samples_per_second=float(speed),
                baseline_samples_per_second=self.baseline.instances_per_second if self.baseline else None,
                device=_device_description(args.device, int(metrics.get(f"{self.prefix}_ranks", 1) or 1)),
                batch_size=int(metrics.get(f"{self.prefix}_batch_size") or args.per_device_eval_batch_size),
                workload=f"the evaluation loop over the {count} {self.eval_split} inputs ({', '.join(how)})",
            )
        comparison = None
        ours = metrics.get(f"{self.prefix}_{self.metric_names[0]}") if self.prefix else None
        if self.baseline is not None and _finite(ours):
            comparison = BaselineComparison(
                metric=self.metric_names[0],
                value=float(ours),
                baseline_value=self.baseline.value,
                instances_per_second=float(speed) if _finite(speed) and speed > 0 else None,
                baseline_instances_per_second=self.baseline.instances_per_second,
                source=self.baseline.source,
            )
        _, world = _rank_and_world()
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, world)
        record.finetuning = FinetuningRecord(
            task=self.task_type,
            dataset=self.data.name,
            init=_as_recorded(self.model_args.model_name_or_path),
            steps=steps,
            learning_rate=float(args.learning_rate),
            num_instances=n,
            muxing_variant=getattr(config, "muxing_variant", None),
            demuxing_variant=getattr(config, "demuxing_variant", None),
            dataset_id=self.data.hub_id,
            dataset_config=self.data.config,
            train_samples=int(metrics["train_samples"]) if isinstance(metrics.get("train_samples"), int) else None,
            epochs=float(metrics["epoch"]) if _finite(metrics.get("epoch")) else None,
            train_batch_size=int(per_step),
            max_seq_length=self.max_seq_length,
            seed=int(args.seed),
            teacher=_as_recorded(self.teacher),
            metric=self.metric_names[0],
            ensembled=bool(self.eval_args.ensemble),
            baseline=comparison,
        )
        return record

    def write(self, trainer, metrics: dict[str, Any]) -> Path | None:
        """Save the record into the output folder (main process only; nothing without ``--do_train``: no model
        was saved). Returns its path, or None when nothing was written."""
        if not self.training_args.do_train or not (trainer.is_world_process_zero() and _rank_and_world()[0] == 0):
            return None
        path = self.build(trainer, metrics).save(Path(trainer.args.output_dir))
        logger.info("Training record: %s", path)
        return path


def _as_recorded(name_or_path: str | None) -> str | None:
    """A checkpoint as the record names it: a local folder by its absolute path (so that no reader mistakes a
    relative path for a Hub id), anything else as given."""
    if name_or_path and os.path.exists(name_or_path):
        return str(Path(name_or_path).resolve())
    return name_or_path or None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------------
# Checkpoints and models
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`inspect_checkpoint` learnt from a checkpoint's config (no weights loaded)."""

    model_type: str
    is_mux: bool  # the fine-tuned model multiplexes (a MUX checkpoint or a warm start)
    warm_start: bool  # a MUX model built from a vanilla checkpoint
    num_instances: int  # N of the fine-tuned model (1 for a plain model)
    demuxing_variant: str | None
    max_position_embeddings: int
    # Positions the demultiplexer prepends to every input (the `prefix` demultiplexer's N slots, N + 1 for a
    # converted original checkpoint), from the demultiplexer's own formula (`demultiplexing.prefix_length`).
    prefix_length: int = 0


def _warm_start_classes() -> dict[str, dict[str, type]]:
    """Vanilla model_type -> {head: MUX class} of the families that can be warm-started from it (the family
    table, :mod:`mux_plms.models.families`)."""
    from mux_plms.models.families import FAMILIES, HEAD_AUTO_CLASSES

    return {
        family.vanilla_model_type: {head: family.head_class(head) for head in HEAD_AUTO_CLASSES}
        for family in FAMILIES.values()
        if family.warm_startable
    }


def is_mux_config(config) -> bool:
    """A config of this package's MUX families (``mux_*`` model types with ``num_instances``)."""
    return config.model_type.startswith("mux_") and hasattr(config, "num_instances")


def inspect_checkpoint(model_args: MuxModelArguments) -> CheckpointInfo:
    """Read the checkpoint's config and check the MUX arguments against it.

    Raises a `ValueError` when ``--num_instances`` contradicts a MUX checkpoint's N, when warm-start
    options are given for a MUX checkpoint, when a vanilla checkpoint cannot be warm-started, or
    for an original (legacy-format) MUX-PLMs checkpoint, which must be converted first."""
    from transformers import AutoConfig

    import mux_plms  # noqa: F401  (registers the MUX configs with AutoConfig)
    from mux_plms.models.demultiplexing import prefix_length as demux_prefix_length

    config = AutoConfig.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    path = model_args.model_name_or_path
    warm_options = {f"--{name}": getattr(model_args, name) for name in WARM_START_FIELDS}
    given = [name for name, value in warm_options.items() if value is not None]
    if is_mux_config(config):
        n = config.num_instances
        if model_args.num_instances is not None and model_args.num_instances != n:
            raise ValueError(
                f"--num_instances {model_args.num_instances} does not match the checkpoint {path}, which was trained "
                f"with num_instances={n}. A multiplexed checkpoint only works at its own N: drop --num_instances or "
                "pick a checkpoint trained for that N."
            )
        for name in given:
            checkpoint_value = getattr(config, name.lstrip("-"))
            if checkpoint_value != warm_options[name]:
                raise ValueError(
                    f"{name} {warm_options[name]!r} contradicts the checkpoint {path} ({name.lstrip('-')}="
                    f"{checkpoint_value!r}); these options only apply when warm-starting from a vanilla BERT."
                )
        return CheckpointInfo(
            config.model_type, True, False, n, config.demuxing_variant, config.max_position_embeddings,
            prefix_length=demux_prefix_length(config),
        )  # fmt: skip
    if getattr(config, "num_instances", None) is not None:
        raise ValueError(
            f"{path} is an original MUX-PLMs checkpoint (model_type {config.model_type!r} with num_instances="
            f"{config.num_instances}); convert it first: mux-plms convert-legacy {path} OUTPUT_DIR"
        )
    if model_args.num_instances is None:
        if given:
            raise ValueError(f"{', '.join(given)} need --num_instances (they configure a MUX model built from {path})")
        return CheckpointInfo(config.model_type, False, False, 1, None, config.max_position_embeddings)
    if model_args.num_instances < 1:
        raise ValueError(f"--num_instances must be >= 1, got {model_args.num_instances}")
    classes = _warm_start_classes()
    if config.model_type not in classes:
        raise ValueError(
            f"--num_instances builds a MUX model from a vanilla {', '.join(classes)} checkpoint; {path} has "
            f"model_type {config.model_type!r}"
        )
    from mux_plms.models.demultiplexing import demuxing_variants
    from mux_plms.models.multiplexing import muxing_variants

    for name, value, allowed in (
        ("--muxing_variant", model_args.muxing_variant, muxing_variants()),
        ("--demuxing_variant", model_args.demuxing_variant, demuxing_variants()),
    ):
        if value is not None and value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    config_class = classes[config.model_type]["sequence"].config_class
    demux = model_args.demuxing_variant or config_class.demuxing_variant  # the dataclass default
    warm = SimpleNamespace(num_instances=model_args.num_instances, demuxing_variant=demux)  # no legacy option
    return CheckpointInfo(
        config.model_type, True, True, model_args.num_instances, demux, config.max_position_embeddings,
        prefix_length=demux_prefix_length(warm),
    )  # fmt: skip


def check_eval_arguments(eval_args: MuxEvalArguments, info: CheckpointInfo, eval_batch_size: int) -> None:
    """Raise a `ValueError` for evaluation options the model or batch size cannot honour."""
    if eval_args.ensemble and not info.is_mux:
        raise ValueError("--ensemble needs a MUX model (a MUX checkpoint, or --num_instances with a vanilla BERT)")
    if eval_args.length_grouping not in LENGTH_GROUPINGS:
        raise ValueError(
            f"--length_grouping must be one of {', '.join(LENGTH_GROUPINGS)}; got {eval_args.length_grouping!r}"
        )
    n = info.num_instances
    if eval_args.group_by_length_eval and eval_args.length_grouping == "mux_groups" and eval_batch_size % n:
        raise ValueError(
            f"--group_by_length_eval with --length_grouping mux_groups keeps every mux group whole, which needs "
            f"--per_device_eval_batch_size to be a multiple of N={n}; got {eval_batch_size}"
        )


def check_max_seq_length(max_seq_length: int, info: CheckpointInfo) -> None:
    """The inputs plus the demultiplexer's prefix must fit the position table."""
    needed = max_seq_length + info.prefix_length
    if needed > info.max_position_embeddings:
        extra = f" + {info.prefix_length} prefix positions" if info.prefix_length else ""
        raise ValueError(
            f"--max_seq_length {max_seq_length}{extra} needs {needed} positions, but the model has "
            f"max_position_embeddings={info.max_position_embeddings}: use --max_seq_length "
            f"{info.max_position_embeddings - info.prefix_length} or less"
        )


def load_model(
    model_args: MuxModelArguments,
    info: CheckpointInfo,
    head: str,
    num_labels: int,
    id2label: dict[int, str] | None = None,
    problem_type: str | None = None,
    verbose: bool = False,
    hint: str = LOAD_REPORT_HINT,
):
    """Load the model to fine-tune: a MUX checkpoint through the Auto classes, a vanilla BERT
    warm-started into a MUX model (`MuxBertFor*.from_pretrained(bert_dir, num_instances=...)`), or a
    plain vanilla model (baseline). `head` is ``sequence`` or ``token``.

    transformers' table of new and unused weights (50+ lines for a warm start) becomes one INFO line
    (:func:`mux_plms.utils.runtime.load_pretrained`); the table itself is printed with `verbose`, at DEBUG
    level (``--log_level debug`` in the examples), or when the load looks wrong (a module partly loaded);
    `hint` tells the summary line's reader how to get it."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from ..utils.runtime import load_pretrained

    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    kwargs: dict[str, Any] = {"num_labels": num_labels, "cache_dir": model_args.cache_dir}
    if id2label is not None:
        kwargs["id2label"] = {int(i): str(name) for i, name in id2label.items()}
        kwargs["label2id"] = {str(name): int(i) for i, name in id2label.items()}
    if problem_type is not None:
        kwargs["problem_type"] = problem_type
    if info.is_mux and model_args.retrieval_loss_coeff is not None:
        kwargs["retrieval_loss_coeff"] = model_args.retrieval_loss_coeff
    if model_args.sequence_pooling is not None:
        if not info.is_mux or head != "sequence":
            raise ValueError("--sequence_pooling applies to MUX sequence classification models only")
        kwargs["sequence_pooling"] = model_args.sequence_pooling
    path = model_args.model_name_or_path
    if info.warm_start:
        mux_class = _warm_start_classes()[info.model_type][head]
        for name in WARM_START_FIELDS:
            if getattr(model_args, name) is not None:
                kwargs[name] = getattr(model_args, name)
        return load_pretrained(mux_class, path, warm_start=True, verbose=verbose, logger=logger, hint=hint,
                               num_instances=info.num_instances, **kwargs)  # fmt: skip
    auto = AutoModelForSequenceClassification if head == "sequence" else AutoModelForTokenClassification
    return load_pretrained(auto, path, verbose=verbose, logger=logger, hint=hint,
                           ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **kwargs)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Metrics (offline: scikit-learn, scipy, seqeval)
# --------------------------------------------------------------------------------------------------

CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")


def classification_metrics(names: Sequence[str], predictions, references) -> dict[str, float]:
    """GLUE-style metrics of class ids (or regression scores for pearson / spearmanr).

    ``f1`` is binary F1 of class 1 for two classes, macro F1 otherwise. With more than one metric a
    ``combined_score`` (their mean) is added, as in transformers' `run_glue.py`."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predictions = np.asarray(predictions)
    references = np.asarray(references)
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
    result: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            result[name] = float(accuracy_score(references, predictions))
        elif name == "f1":
            binary = set(np.unique(references)) | set(np.unique(predictions)) <= {0, 1}
            result[name] = float(f1_score(references, predictions, average="binary" if binary else "macro"))
        elif name == "matthews_correlation":
            result[name] = float(matthews_corrcoef(references, predictions))
        elif name == "pearson":
            result[name] = float(pearsonr(predictions, references)[0])
        elif name == "spearmanr":
            result[name] = float(spearmanr(predictions, references)[0])
        else:
            raise ValueError(f"Unknown metric {name!r}; known: {', '.join(CLASSIFICATION_METRICS)}")
    if len(result) > 1:
        result["combined_score"] = float(np.mean(list(result.values())))
    return result


def seqeval_metrics(
    predictions: list[list[str]], references: list[list[str]], per_type: bool = False
) -> dict[str, float]:
    """Entity-level precision / recall / F1 (and token accuracy) of BIO tag sequences, via `seqeval.metrics`."""
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

    _check_sequence_lengths(predictions, references)
    result = {
        "precision": float(precision_score(references, predictions, zero_division=0)),
        "recall": float(recall_score(references, predictions, zero_division=0)),
        "f1": float(f1_score(references, predictions, zero_division=0)),
        "accuracy": float(accuracy_score(references, predictions)),
    }
    if per_type:
        report = classification_report(references, predictions, output_dict=True, zero_division=0)
        for entity, values in report.items():
            if " avg" not in entity:
                result[f"{entity}_f1"] = float(values["f1-score"])
    return result


def token_accuracy(predictions: list[list[str]], references: list[list[str]]) -> dict[str, float]:
    """Per-word accuracy (POS tagging)."""
    _check_sequence_lengths(predictions, references)
    total = sum(len(r) for r in references)
    correct = sum(p == r for ps, rs in zip(predictions, references) for p, r in zip(ps, rs))
    return {"accuracy": correct / total if total else 0.0}


def _check_sequence_lengths(predictions, references) -> None:
    if len(predictions) != len(references) or any(len(p) != len(r) for p, r in zip(predictions, references)):
        raise ValueError("predictions and references must hold the same number of sequences of the same lengths")


def continuation_label_ids(label_names: Sequence[str]) -> list[int]:
    """For every label id, the id given to the later word pieces of a word with ``--label_all_tokens``:
    ``B-x`` becomes ``I-x`` (when ``I-x`` exists), every other label stays itself."""
    index = {name: i for i, name in enumerate(label_names)}
    return [index.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(label_names)]


def align_word_labels(
    word_ids: Sequence[int | None], word_labels: Sequence[int], continuation: Sequence[int] | None = None
) -> list[int]:
    """Per-token labels from per-word labels: the first word piece of a word gets the word's label,
    special tokens -100, later pieces -100, or ``continuation[label]`` when `continuation` is given
    (``--label_all_tokens``; see :func:`continuation_label_ids`)."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(-100)
        elif word != previous:
            labels.append(int(word_labels[word]))
        else:
            labels.append(-100 if continuation is None else continuation[int(word_labels[word])])
        previous = word
    return labels


def word_level_predictions(token_logits: np.ndarray, word_ids: Sequence[int]) -> list[int]:
    """Class ids per word from sub-word logits ``(tokens, classes)``: the first sub-word of each word
    decides. `word_ids` holds the word index of every token (-1 for special tokens)."""
    predictions, previous = [], -1
    for position, word in enumerate(word_ids[: len(token_logits)]):
        if word >= 0 and word != previous:
            predictions.append(int(token_logits[position].argmax()))
        if word >= 0:
            previous = word
    return predictions


# --------------------------------------------------------------------------------------------------
# Evaluation loop: ensembling, length grouping, throughput, ranks
# --------------------------------------------------------------------------------------------------


def eval_batches(
    lengths: Sequence[int], batch_size: int, num_instances: int = 1, length_grouping: str | None = None
) -> list[list[int]]:
    """Row indices of every evaluation batch.

    * ``None``: consecutive batches in input order;
    * ``mux_groups``: the mux groups of that order (runs of N, the last one possibly shorter) are kept
      whole and sorted by their longest member; the short last group stays last, so that the model's
      internal padding completes it exactly as in input order. `batch_size` must be a multiple of N;
    * ``examples``: examples sorted by length (stable), then consecutive batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_examples = len(lengths)
    if length_grouping is None:
        order = list(range(n_examples))
    elif length_grouping == "examples":
        order = sorted(range(n_examples), key=lambda i: lengths[i])
    elif length_grouping == "mux_groups":
        if batch_size % num_instances:
            raise ValueError(
                f"mux_groups length grouping needs a batch size multiple of N={num_instances}, got {batch_size}"
            )
        groups = [list(range(i, min(i + num_instances, n_examples))) for i in range(0, n_examples, num_instances)]
        short = [groups.pop()] if groups and len(groups[-1]) < num_instances else []
        groups.sort(key=lambda group: max(lengths[i] for i in group))
        order = [i for group in groups + short for i in group]
    else:
        raise ValueError(
            f"length_grouping must be None or one of {', '.join(LENGTH_GROUPINGS)}; got {length_grouping!r}"
        )
    return [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]


@dataclass
class EvalResult:
    """Output of :func:`evaluate_logits`: one logits array per example, in input order
    (``(classes,)`` for sequence tasks, ``(tokens, classes)`` over the non-padding tokens for token tasks)."""

    logits: list[np.ndarray]
    seconds: float
    batch_size: int
    ensemble: bool
    length_grouping: str | None
    padded_tokens: int  # input positions processed, padding included (the cost grouping reduces)
    ranks: int = 1  # processes the batches were dealt to

    @property
    def num_examples(self) -> int:
        return len(self.logits)

    @property
    def instances_per_second(self) -> float:
        return self.num_examples / self.seconds if self.seconds > 0 else math.inf

    def stacked(self) -> np.ndarray:
        """Sequence tasks: the logits as one ``(examples, classes)`` array."""
        return np.stack(self.logits) if self.logits else np.zeros((0, 0))

    def metrics(self, prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}_num_examples": self.num_examples,
            f"{prefix}_instances_per_second": round(self.instances_per_second, 3),
            f"{prefix}_loop_seconds": round(self.seconds, 4),
            f"{prefix}_batch_size": self.batch_size,
            f"{prefix}_ensemble": self.ensemble,
            f"{prefix}_length_grouping": self.length_grouping or "none",
            f"{prefix}_padded_tokens": self.padded_tokens,
            f"{prefix}_ranks": self.ranks,
        }


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def evaluate_logits(
    model: torch.nn.Module,
    dataset,
    pad: Callable[[list[dict]], dict[str, torch.Tensor]],
    batch_size: int,
    ensemble: bool = False,
    length_grouping: str | None = None,
    desc: str = "evaluating",
    warmup: bool = True,
) -> EvalResult:
    """Run `model` over a tokenized `dataset` and return the logits of every example in input order.

    `pad` turns a list of feature dicts into padded tensors (e.g. ``DataCollatorWithPadding(tokenizer)``).
    With `ensemble`, ``model.forward_ensemble`` replaces the forward pass. `length_grouping` is one of
    :data:`LENGTH_GROUPINGS` or None (see :func:`eval_batches`). The timed loop covers padding, the
    forward passes and copying logits to the CPU; tokenization is not timed, and one untimed forward
    on the first batch warms up the kernels. Under several ranks (``torchrun``), batches are dealt
    round-robin (each batch exactly as a single process would form it) and the logits gathered;
    the time is the slowest rank's."""
    from tqdm.auto import tqdm

    if ensemble and not hasattr(model, "forward_ensemble"):
        raise ValueError(f"ensemble=True needs a MUX model with forward_ensemble; got {type(model).__name__}")
    n = getattr(model.config, "num_instances", 1)
    columns = [c for c in MODEL_INPUTS if c in dataset.column_names]
    features = dataset.select_columns(columns).to_list()
    lengths = [len(f["input_ids"]) for f in features]
    batches = eval_batches(lengths, batch_size, n, length_grouping)
    rank, world = _rank_and_world()
    mine = batches[rank::world]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def run(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {k: v.to(device) for k, v in pad([features[i] for i in indices]).items() if k in MODEL_INPUTS}
        logits = model.forward_ensemble(**batch) if ensemble else model(**batch).logits
        return logits, batch["attention_mask"]

    results: dict[int, np.ndarray] = {}
    padded_tokens = 0
    with torch.inference_mode():
        if warmup and mine:
            run(mine[0])
        start = time.perf_counter()
        for indices in tqdm(mine, desc=desc, disable=rank != 0 or len(mine) < 2):
            logits, mask = run(indices)
            padded_tokens += mask.numel()
            logits = logits.float().cpu().numpy()
            mask = mask.bool().cpu().numpy()
            for row, index in enumerate(indices):
                results[index] = logits[row][mask[row]] if logits.ndim == 3 else logits[row]
        seconds = time.perf_counter() - start
    model.train(was_training)
    if world > 1:
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, (results, seconds, padded_tokens))
        results = {k: v for part, _, _ in gathered for k, v in part.items()}
        seconds = max(s for _, s, _ in gathered)
        padded_tokens = sum(t for _, _, t in gathered)
    return EvalResult(
        logits=[results[i] for i in range(len(features))],
        seconds=seconds,
        batch_size=batch_size,
        ensemble=ensemble,
        length_grouping=length_grouping,
        padded_tokens=padded_tokens,
        ranks=world,
    )


def evaluation_settings(eval_args: MuxEvalArguments) -> dict[str, Any]:
    """Keyword arguments of :func:`evaluate_logits` from the parsed evaluation arguments."""
    return {
        "ensemble": eval_args.ensemble,
        "length_grouping": eval_args.length_grouping if eval_args.group_by_length_eval else None,
    }


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def write_predictions(path, predictions: Sequence[Any]) -> None:
    """Write predictions in the GLUE submission format: a header ``index\\tprediction``, then one
    ``index\\tprediction`` line per example (floats with three decimals)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("index\tprediction\n")
        for index, item in enumerate(predictions):
            handle.write(f"{index}\t{item:.3f}\n" if isinstance(item, float) else f"{index}\t{item}\n")


__all__ = [
    "parse_arguments",
    "train_and_save",
    "BaselineResults",
    "DataDescription",
    "FinetuningRecorder",
    "describe_data",
    "metric_prefix",
    "read_baseline_results",
    "MuxModelArguments",
    "MuxEvalArguments",
    "CheckpointInfo",
    "inspect_checkpoint",
    "check_eval_arguments",
    "check_max_seq_length",
    "load_model",
    "classification_metrics",
    "seqeval_metrics",
    "token_accuracy",
    "word_level_predictions",
    "align_word_labels",
    "continuation_label_ids",
    "eval_batches",
    "EvalResult",
    "evaluate_logits",
    "evaluation_settings",
    "write_predictions",
]
