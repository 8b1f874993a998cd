"""The training record: what a model went through, saved as ``training_record.json`` beside its weights.

One schema and one on-disk format for every writer and reader: pre-training (``mux-plms pretrain``, one
stage appended per stage run), fine-tuning (``examples/run_glue.py`` / ``run_ner.py``: the fine-tuning
settings, the evaluation and, with ``--baseline_results``, the comparison with an N=1 run), the demo, and
the model cards rendered from it (``mux-plms card`` / ``mux-plms push``).

The file is one JSON object::

    {
      "format": "mux-plms-training-record",
      "version": 2,
      "base_model": "google-bert/bert-base-uncased",          # Hub id the chain started from, or null
      "datasets": ["nyu-mll/glue"],                            # Hub data sets used (card metadata)
      "stages": [                                              # oldest first
        {"name": "retrieval", "steps": 10000, "data": "ptb", "metrics": {"retrieval_accuracy": 0.97},
         "details": {"stage_index": 1, "tokens": 5120000, ...}},   # everything else the trainer recorded
        {"name": "finetune", "steps": 300, "data": "GLUE (sst2)", "metrics": {"train_loss": 0.41}, "details": {}}
      ],
      "finetuning": {"task": "text-classification", "dataset": "GLUE", "steps": 300, ...,
                     "baseline": {"metric": "accuracy", "value": 0.87, "baseline_value": 0.91, ...}},  # or null
      "eval_results": [{"task": "text-classification", "dataset": "GLUE", "metric": "accuracy", "value": 0.87, ...}],
      "throughput": {"samples_per_second": 812.0, "baseline_samples_per_second": 430.0, ...}    # or null
    }

Older files are upgraded when read: the list of stage entries that pre-training wrote before this format
(``[{"stage": ..., "steps": ..., "final_metrics": ...}, ...]``) and the version-1 object of the cards
(no ``format`` key). Writes are atomic (a temporary sibling renamed over the file).

This module imports neither torch nor the rest of the package: reading a record is cheap.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

TRAINING_RECORD_FILE = "training_record.json"
RECORD_FORMAT = "mux-plms-training-record"
RECORD_VERSION = 2
# Versions this module reads: 0 = pre-training's list of stage entries, 1 = the cards' object without "format".
READABLE_VERSIONS = (0, 1, RECORD_VERSION)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------
def _number(value: Any, name: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def _optional_number(value: Any, name: str, positive: bool = False) -> None:
    if value is None:
        return
    if _number(value, name) <= 0 and positive:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _optional_int(value: Any, name: str, minimum: int = 0) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _optional_str(value: Any, name: str) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{name} must be a non-empty string or null, got {value!r}")


def _json_value(value: Any, name: str) -> None:
    """`value` must be strict JSON (no NaN / infinity, string keys)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must hold JSON values only (no NaN or infinity): {error}") from None


def _from_mapping(cls, data: Any, where: str):
    """Build dataclass `cls` from a mapping, naming unknown or missing keys in the error."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed keys: {sorted(allowed)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def hub_id_or_none(name_or_path: str | os.PathLike | None) -> str | None:
    """`name_or_path` when it names a Hub repository (``org/name`` or ``name``, not an existing local path);
    None for local folders, absolute paths and anything else. What writers store as ``base_model``."""
    if name_or_path is None:
        return None
    text = str(name_or_path)
    if os.path.isabs(text) or os.path.exists(text) or not _HUB_ID.match(text):
        return None
    return text


def is_hub_id(value: Any) -> bool:
    """Whether `value` is spelled like a Hub repository id (``org/name`` or ``name``; not an absolute path)."""
    return isinstance(value, str) and bool(_HUB_ID.match(value)) and not os.path.isabs(value)


# ---------------------------------------------------------------------------------------------
# The parts of a record
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainingStage:
    """One training stage.

    Args:
        name: what the stage trained (recommended: ``retrieval``, ``mlm``, ``electra``, ``distill``,
            ``finetune``; any non-empty name is accepted).
        steps: number of optimisation steps.
        data: what it trained on, for people: a Hub data set id or a short description.
        metrics: final metrics of the stage (losses, retrieval accuracy, ...), name -> finite number.
        details: everything else the trainer recorded about the stage (JSON values): pre-training keeps its
            stage index, initialisation, sample and token counts (``samples``, ``tokens``), hyper-parameters,
            data settings, timings, ...
    """

    name: str
    steps: int
    data: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"TrainingStage.name must be a non-empty string, got {self.name!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"TrainingStage.steps must be an integer >= 0, got {self.steps!r}")
        if not isinstance(self.data, str):
            raise ValueError(f"TrainingStage.data must be a string, got {self.data!r}")
        if not isinstance(self.metrics, dict):
            raise ValueError(f"TrainingStage.metrics must be a mapping name -> number, got {self.metrics!r}")
        for key, value in self.metrics.items():
            _number(value, f"TrainingStage.metrics[{key!r}]")
        if not isinstance(self.details, dict):
            raise ValueError(f"TrainingStage.details must be a JSON object, got {self.details!r}")
        _json_value(self.details, "TrainingStage.details")

    # The trainer's own entry (what pre-training returns per stage, and what its list format stored).
    @classmethod
    def from_entry(cls, entry: dict, where: str = "stage entry") -> TrainingStage:
        """A stage from a trainer's entry: ``stage`` (the name), ``steps``, ``data`` (a description, or a dict
        of data settings: ``corpus`` / ``dataset_name`` / ``train_file`` describe it), ``final_metrics``;
        every other key is kept in :attr:`details`. Metrics that are not finite numbers are kept in
        ``details["other_final_metrics"]`` (non-finite ones as strings)."""
        if not isinstance(entry, dict) or "stage" not in entry:
            raise ValueError(f"{where} must be a JSON object with a 'stage' key")
        details = {k: v for k, v in entry.items() if k not in ("stage", "steps", "final_metrics")}
        data = entry.get("data")
        if isinstance(data, dict):
            described = data.get("corpus") or data.get("dataset_name") or data.get("train_file") or ""
            if data.get("dataset_config_name"):
                described += f" ({data['dataset_config_name']})"
        else:
            described = "" if data is None else str(data)
            details.pop("data", None)
        if entry.get("teacher"):
            described += f"; teacher: {entry['teacher']}"
        metrics, other = {}, {}
        for key, value in (entry.get("final_metrics") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                metrics[str(key)] = float(value)
            else:
                other[str(key)] = value if isinstance(value, str | bool) or value is None else str(value)
        if other:
            details["other_final_metrics"] = other
        steps = entry.get("steps", 0)
        if isinstance(steps, bool) or not isinstance(steps, int | float) or steps != int(steps):
            raise ValueError(f"{where}: steps must be an integer, got {steps!r}")
        return cls(str(entry["stage"]), int(steps), described.strip(), metrics, details)

    def to_entry(self) -> dict:
        """The stage as the trainer's entry (``stage``, ``steps``, ``data``, ``final_metrics`` and the
        details): the inverse of :meth:`from_entry`."""
        details = dict(self.details)
        other = details.pop("other_final_metrics", {})
        entry = {"stage": self.name, "steps": self.steps, "data": self.data}
        entry.update(details)
        entry["final_metrics"] = {**self.metrics, **other}
        return entry


@dataclass
class EvaluationResult:
    """One evaluation result, shown in the card and in its ``model-index`` metadata.

    Args:
        task: task type in the Hub's vocabulary (``text-classification``, ``token-classification``, ...).
        dataset: data set name shown in the card.
        metric: metric type (``accuracy``, ``f1``, ...).
        value: the measured value.
        dataset_id: Hub id of the data set (default: `dataset`).
        dataset_config: its configuration (``sst2``), if any.
        split: the split evaluated (``validation``, ``test``).
        ensembled: measured with ``model.forward_ensemble`` rather than one multiplexed pass.
    """

    task: str
    dataset: str
    metric: str
    value: float
    dataset_id: str | None = None
    dataset_config: str | None = None
    split: str | None = None
    ensembled: bool = False

    def __post_init__(self):
        for name in ("task", "dataset", "metric"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"EvaluationResult.{name} must be a non-empty string, got {getattr(self, name)!r}")
        _number(self.value, "EvaluationResult.value")
        if not isinstance(self.ensembled, bool):
            raise ValueError(f"EvaluationResult.ensembled must be true or false, got {self.ensembled!r}")

    def to_hub(self):
        """The `huggingface_hub.EvalResult` of the card's ``model-index``."""
        from huggingface_hub import EvalResult

        return EvalResult(
            task_type=self.task,
            dataset_type=self.dataset_id or self.dataset,
            dataset_name=self.dataset,
            dataset_config=self.dataset_config,
            dataset_split=self.split,
            metric_type=self.metric,
            metric_value=self.value,
            metric_name=f"{self.metric} (ensembled)" if self.ensembled else self.metric,
        )


@dataclass
class ThroughputRecord:
    """Measured inference throughput of the model and, when measured, of an N=1 model on the same work.

    Args:
        samples_per_second: this model (one multiplexed pass per N inputs).
        baseline_samples_per_second: the un-multiplexed (N=1) model, same settings.
        device: e.g. ``cpu (2 threads)``, ``cuda (A100)``.
        batch_size: inputs per forward call.
        sequence_length: tokens per input (None when inputs were padded per batch).
        workload: what was timed, for people (``evaluation loop over the 400 validation inputs``).
    """

    samples_per_second: float
    baseline_samples_per_second: float | None = None
    device: str = "cpu"
    batch_size: int | None = None
    sequence_length: int | None = None
    workload: str | None = None

    def __post_init__(self):
        if _number(self.samples_per_second, "ThroughputRecord.samples_per_second") <= 0:
            raise ValueError(f"ThroughputRecord.samples_per_second must be > 0, got {self.samples_per_second}")
        if self.baseline_samples_per_second is not None:
            if _number(self.baseline_samples_per_second, "ThroughputRecord.baseline_samples_per_second") <= 0:
                raise ValueError("ThroughputRecord.baseline_samples_per_second must be > 0")
        _optional_int(self.batch_size, "ThroughputRecord.batch_size", 1)
        _optional_int(self.sequence_length, "ThroughputRecord.sequence_length", 1)
        _optional_str(self.workload, "ThroughputRecord.workload")

    @property
    def speedup(self) -> float | None:
        """Throughput relative to N=1 (None when the baseline is unknown)."""
        if self.baseline_samples_per_second is None:
            return None
        return self.samples_per_second / self.baseline_samples_per_second


@dataclass
class BaselineComparison:
    """This model against an N=1 run on the same evaluation (``--baseline_results``).

    Args:
        metric: the compared metric (``accuracy``, ``f1``, ...).
        value: this model's value.
        baseline_value: the N=1 run's value.
        instances_per_second: this model's evaluation throughput.
        baseline_instances_per_second: the N=1 run's.
        source: where the N=1 numbers were read (its ``all_results.json``), for people.
        speedup: ``instances_per_second / baseline_instances_per_second`` (computed when left out).
        cost_points: ``100 * (baseline_value - value)``: the points multiplexing costs (negative: gains).
    """

    metric: str
    value: float
    baseline_value: float
    instances_per_second: float | None = None
    baseline_instances_per_second: float | None = None
    source: str | None = None
    speedup: float | None = None
    cost_points: float | None = None

    def __post_init__(self):
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"BaselineComparison.metric must be a non-empty string, got {self.metric!r}")
        _number(self.value, "BaselineComparison.value")
        _number(self.baseline_value, "BaselineComparison.baseline_value")
        _optional_number(self.instances_per_second, "BaselineComparison.instances_per_second", positive=True)
        _optional_number(
            self.baseline_instances_per_second, "BaselineComparison.baseline_instances_per_second", positive=True
        )
        _optional_str(self.source, "BaselineComparison.source")
        if self.speedup is None and self.instances_per_second and self.baseline_instances_per_second:
            self.speedup = self.instances_per_second / self.baseline_instances_per_second
        if self.cost_points is None:
            self.cost_points = 100.0 * (self.baseline_value - self.value)
        _optional_number(self.speedup, "BaselineComparison.speedup", positive=True)
        _number(self.cost_points, "BaselineComparison.cost_points")


@dataclass
class FinetuningRecord:
    """How the model was fine-tuned (the latest fine-tuning: the one that produced these weights).

    Args:
        task: task type in the Hub's vocabulary (``text-classification``, ``token-classification``).
        dataset: data set name, for people (``GLUE``, ``polarity (shipped with mux-plms)``, ``train.csv``).
        init: the checkpoint fine-tuning started from (``--model_name_or_path`` as given).
        steps: optimisation steps.
        learning_rate: peak learning rate.
        num_instances: N of the fine-tuned model (1: no multiplexing).
        muxing_variant, demuxing_variant: its multiplexer and demultiplexer (None at N=1 without MUX).
        dataset_id, dataset_config: the Hub data set and configuration, if any.
        train_samples: training examples.
        epochs: training epochs (fractional when ``max_steps`` stopped earlier).
        train_batch_size: sequences per optimisation step (all devices, gradient accumulation included).
        max_seq_length: tokens per input after truncation.
        seed: the run's seed.
        teacher: the distillation teacher, if any.
        metric: the main metric of the task (the one compared with the baseline).
        ensembled: the evaluation used ``model.forward_ensemble``.
        baseline: the comparison with an N=1 run, when one was given.
    """

    task: str
    dataset: str
    init: str
    steps: int
    learning_rate: float
    num_instances: int
    muxing_variant: str | None = None
    demuxing_variant: str | None = None
    dataset_id: str | None = None
    dataset_config: str | None = None
    train_samples: int | None = None
    epochs: float | None = None
    train_batch_size: int | None = None
    max_seq_length: int | None = None
    seed: int | None = None
    teacher: str | None = None
    metric: str | None = None
    ensembled: bool = False
    baseline: BaselineComparison | None = None

    def __post_init__(self):
        for name in ("task", "dataset", "init"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"FinetuningRecord.{name} must be a non-empty string, got {getattr(self, name)!r}")
        _optional_int(self.steps, "FinetuningRecord.steps", 0)
        _number(self.learning_rate, "FinetuningRecord.learning_rate")
        _optional_int(self.num_instances, "FinetuningRecord.num_instances", 1)
        for name in ("muxing_variant", "demuxing_variant", "dataset_id", "dataset_config", "teacher", "metric"):
            _optional_str(getattr(self, name), f"FinetuningRecord.{name}")
        for name in ("train_samples", "train_batch_size", "max_seq_length"):
            _optional_int(getattr(self, name), f"FinetuningRecord.{name}", 0)
        _optional_int(self.seed, "FinetuningRecord.seed", -(2**63))
        _optional_number(self.epochs, "FinetuningRecord.epochs")
        if not isinstance(self.ensembled, bool):
            raise ValueError(f"FinetuningRecord.ensembled must be true or false, got {self.ensembled!r}")
        if self.baseline is not None:
            self.baseline = _from_mapping(BaselineComparison, self.baseline, "finetuning.baseline")


@dataclass
class TrainingRecord:
    """What a model went through, saved as ``training_record.json`` beside its weights.

    Args:
        stages: the training stages, oldest first.
        eval_results: evaluation results of the final model.
        throughput: measured throughput (vs N=1 when measured).
        finetuning: the fine-tuning that produced the weights, when they are fine-tuned.
        base_model: Hub id of the checkpoint the chain of stages started from (None: a local folder or a
            fresh initialisation).
        datasets: Hub ids of the data sets used (card metadata).
    """

    stages: list[TrainingStage] = field(default_factory=list)
    eval_results: list[EvaluationResult] = field(default_factory=list)
    throughput: ThroughputRecord | None = None
    finetuning: FinetuningRecord | None = None
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.stages, list | tuple):
            raise ValueError(f"stages must be a list, got {type(self.stages).__name__}")
        if not isinstance(self.eval_results, list | tuple):
            raise ValueError(f"eval_results must be a list, got {type(self.eval_results).__name__}")
        self.stages = [_from_mapping(TrainingStage, s, f"stage {i}") for i, s in enumerate(self.stages)]
        self.eval_results = [
            _from_mapping(EvaluationResult, r, f"eval result {i}") for i, r in enumerate(self.eval_results)
        ]
        if self.throughput is not None:
            self.throughput = _from_mapping(ThroughputRecord, self.throughput, "throughput")
        if self.finetuning is not None:
            self.finetuning = _from_mapping(FinetuningRecord, self.finetuning, "finetuning")
        _optional_str(self.base_model, "base_model")
        if not isinstance(self.datasets, list | tuple) or not all(isinstance(d, str) and d for d in self.datasets):
            raise ValueError(f"datasets must be a list of non-empty strings, got {self.datasets!r}")
        self.datasets = list(self.datasets)

    # ----------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        """The JSON object of the current format: ``format`` and ``version`` first, then the history (base
        model, data sets, stages, fine-tuning), then the measurements (evaluation, throughput)."""
        data = asdict(self)
        order = ("base_model", "datasets", "stages", "finetuning", "eval_results", "throughput")
        ordered = {key: data.pop(key) for key in order}
        return {"format": RECORD_FORMAT, "version": RECORD_VERSION, **ordered, **data}

    @classmethod
    def from_dict(cls, data: dict | list) -> TrainingRecord:
        """A record from its JSON form, in any readable version: the current object, the version-1 object
        (no ``format`` key; its stages had no details), or pre-training's list of stage entries."""
        if isinstance(data, list):
            return cls.from_pretraining(data)
        if not isinstance(data, dict):
            raise ValueError(f"a training record must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        form = data.pop("format", None)
        if form is not None and form != RECORD_FORMAT:
            raise ValueError(f"not a training record: format {form!r} (expected {RECORD_FORMAT!r})")
        # The version-1 object of the cards had no "format" key; the current one has both.
        version = data.pop("version", None if form is not None else 1)
        if version != (RECORD_VERSION if form is not None else 1):
            raise ValueError(
                f"training record version {version!r} is not supported (this mux-plms reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}); upgrade mux-plms"
            )
        return _from_mapping(cls, data, "training record")

    @classmethod
    def from_pretraining(cls, entries: list[dict]) -> TrainingRecord:
        """The record of a folder written by an earlier ``mux-plms pretrain``: its ``training_record.json``
        was a list of stage entries (``stage``, ``steps``, ``data``, ``final_metrics``, ...), oldest first.
        Each becomes a :class:`TrainingStage` (:meth:`TrainingStage.from_entry`); the Hub data sets named by
        ``data.dataset_name`` become :attr:`datasets`."""
        stages, datasets = [], []
        for index, entry in enumerate(entries):
            stage = TrainingStage.from_entry(entry, f"pre-training record entry {index}")
            name = (entry.get("data") or {}).get("dataset_name") if isinstance(entry.get("data"), dict) else None
            if name and name not in datasets:
                datasets.append(str(name))
            stages.append(stage)
        return cls(stages=stages, datasets=datasets)

    def continued(self) -> TrainingRecord:
        """A new record for a model trained further from this one: the stages, base model and data sets,
        not the evaluation, throughput or fine-tuning settings (they describe the old weights)."""
        return TrainingRecord(
            stages=copy.deepcopy(self.stages), base_model=self.base_model, datasets=list(self.datasets)
        )

    # ----------------------------------------------------------------------------- files
    @staticmethod
    def path_in(directory_or_file: str | os.PathLike) -> Path:
        """``<dir>/training_record.json`` for a folder; the path itself for a ``.json`` file."""
        path = Path(directory_or_file)
        return path if path.suffix == ".json" else path / TRAINING_RECORD_FILE

    def save(self, directory_or_file: str | os.PathLike) -> Path:
        """Write the record atomically (into ``<dir>/training_record.json`` when given a folder): a temporary
        sibling is flushed to disk and renamed over the file, so a reader sees the old record or the new one,
        never half of one. Returns the path."""
        path = self.path_in(directory_or_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(partial, 0o644)
            os.replace(partial, path)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, directory_or_file: str | os.PathLike, missing_ok: bool = False) -> TrainingRecord:
        """Read a record (any readable version); with `missing_ok`, a missing file gives an empty record."""
        path = cls.path_in(directory_or_file)
        if not path.is_file():
            if missing_ok:
                return cls()
            raise FileNotFoundError(f"No training record at {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


__all__ = [
    "RECORD_FORMAT",
    "RECORD_VERSION",
    "TRAINING_RECORD_FILE",
    "BaselineComparison",
    "EvaluationResult",
    "FinetuningRecord",
    "ThroughputRecord",
    "TrainingRecord",
    "TrainingStage",
    "hub_id_or_none",
    "is_hub_id",
]
