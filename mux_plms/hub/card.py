"""Generated model cards for MUX models, and the training record they are generated from.

A card is rendered from the template ``mux_plms/model_cards/model_card.md.j2`` using

* the model's ``config.json`` (N, the multiplexing variants, the architecture, the size),
* the safetensors headers (parameter count), the tokenizer files present in the folder,
* the training record ``training_record.json`` saved beside the weights, when there is one
  (:class:`TrainingRecord`: the stages the model went through, evaluation results, throughput),
* explicit overrides (license, base model, data sets, tags, ...).

Cards are generated, never hand-written: ``mux-plms card MODEL_DIR`` (re)writes ``README.md`` and
``mux-plms push`` uploads a freshly generated one.

Writing a training record (training code)::

    record = TrainingRecord.load(output_dir, missing_ok=True)
    record.stages.append(TrainingStage(name="retrieval", steps=10_000, data="treebank (Penn Treebank)",
                                       metrics={"retrieval_accuracy": 0.97}))
    record.save(output_dir)
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TRAINING_RECORD_FILE = "training_record.json"
TRAINING_RECORD_VERSION = 1
TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "model_cards" / "model_card.md.j2"
GENERATED_MARKER = "<!-- mux-plms: generated model card -->"
DEFAULT_LICENSE = "mit"
BASE_TAGS = ("mux-plms", "data-multiplexing")

# Recommended stage names (any non-empty name is accepted) and how the card describes them.
STAGE_DESCRIPTIONS = {
    "retrieval": "stage 1, token retrieval: recover every instance's tokens from the mixture",
    "mlm": "stage 2, multiplexed masked-language-model pre-training",
    "electra": "stage 2, multiplexed ELECTRA pre-training (replaced-token detection)",
    "distill": "hidden-state distillation: each instance's demultiplexed states learn the frozen N=1 encoder's states",
    "finetune": "stage 3, task fine-tuning",
}

MUXING_DESCRIPTIONS = {
    "gaussian_hadamard": "each instance's embeddings are multiplied elementwise by a fixed random Gaussian key "
    "(one key per instance) and the N products are averaged",
    "binary_hadamard": "each instance's embeddings are multiplied elementwise by a fixed binary key that keeps "
    "its own chunk of the hidden dimensions, and the N products are averaged",
    "random_ortho": "each instance's embeddings are rotated by a fixed random orthogonal matrix (one per "
    "instance) and the N results are summed and scaled by 1/sqrt(N)",
    "contextual": "the MUX-PLMs contextual multiplexer: a Transformer layer within each instance, a Hadamard "
    "product with the instance's key, a Transformer layer across the N instances at each position, then the mean",
}
DEMUXING_DESCRIPTIONS = {
    "rsa": "a learned private key per instance is concatenated with the mixed hidden state and an MLP turns "
    "the pair into that instance's hidden state",
    "prefix": "every instance is prefixed with N tokens (fillers, with its own index token in its own slot); "
    "the backbone's output at that slot is the instance's key, combined with the mixed states by an MLP",
    "mlp": "DataMUX's demultiplexer: a private MLP per instance reads the mixed hidden state",
}
FAMILY_NAMES = {
    "mux_bert": "MUX-BERT",
    "mux_electra": "MUX-ELECTRA",
    "mux_lstm": "MUX-LSTM",
    "mux_vision": "MUX vision",
}
PIPELINE_TAGS = (
    ("ForImageClassification", "image-classification"),
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForMaskedLM", "fill-mask"),
    ("ForPreTraining", "feature-extraction"),
    ("Model", "feature-extraction"),
)
TASK_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForMaskedLM", "ForImageClassification")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_SAMPLE_TEXTS = (
    "a gripping, beautifully acted film",
    "the plot is thin and the jokes fall flat",
    "an honest portrait of a small town",
    "two hours I will never get back",
    "a warm and funny family story",
    "visually stunning but emotionally empty",
    "the best thriller of the year",
    "a tired remake with nothing new to say",
    "smart, tender and surprising",
    "loud, long and forgettable",
)


# ---------------------------------------------------------------------------------------------
# Training record
# ---------------------------------------------------------------------------------------------
def _number(value: Any, name: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def _from_mapping(cls, data: Any, where: str):
    """Build dataclass `cls` from a mapping, naming unknown or missing keys in the error."""
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


@dataclass
class TrainingStage:
    """One training stage.

    Args:
        name: what the stage trained (recommended: ``retrieval``, ``mlm``, ``electra``, ``finetune``).
        steps: number of optimisation steps.
        data: what it trained on: a Hub data set id or a short description.
        metrics: final metrics of the stage (losses, retrieval accuracy, ...), name -> number.
    """

    name: str
    steps: int
    data: str
    metrics: dict[str, float] = field(default_factory=dict)

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

    def to_hub(self) -> EvalResult:
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
    """Measured inference throughput of the model and of the same backbone at N=1.

    Args:
        samples_per_second: this model (one multiplexed pass per N inputs).
        baseline_samples_per_second: the un-multiplexed (N=1) backbone, same settings.
        device: e.g. ``cpu``, ``cuda (A100)``.
        batch_size: inputs per forward call.
        sequence_length: tokens per input.
    """

    samples_per_second: float
    baseline_samples_per_second: float | None = None
    device: str = "cpu"
    batch_size: int | None = None
    sequence_length: int | None = None

    def __post_init__(self):
        if _number(self.samples_per_second, "ThroughputRecord.samples_per_second") <= 0:
            raise ValueError(f"ThroughputRecord.samples_per_second must be > 0, got {self.samples_per_second}")
        if self.baseline_samples_per_second is not None:
            if _number(self.baseline_samples_per_second, "ThroughputRecord.baseline_samples_per_second") <= 0:
                raise ValueError("ThroughputRecord.baseline_samples_per_second must be > 0")

    @property
    def speedup(self) -> float | None:
        """Throughput relative to N=1 (None when the baseline is unknown)."""
        if self.baseline_samples_per_second is None:
            return None
        return self.samples_per_second / self.baseline_samples_per_second


@dataclass
class TrainingRecord:
    """What a model went through, saved as ``training_record.json`` beside its weights.

    Args:
        stages: the training stages, in order.
        eval_results: evaluation results of the final model.
        throughput: measured throughput vs N=1.
        base_model: Hub id of the checkpoint the model was warm-started from.
        datasets: Hub ids of the data sets used (card metadata).
        version: schema version (currently 1).
    """

    stages: list[TrainingStage] = field(default_factory=list)
    eval_results: list[EvaluationResult] = field(default_factory=list)
    throughput: ThroughputRecord | None = None
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    version: int = TRAINING_RECORD_VERSION

    def __post_init__(self):
        self.stages = [
            s if isinstance(s, TrainingStage) else _from_mapping(TrainingStage, s, "stage") for s in self.stages
        ]
        self.eval_results = [
            r if isinstance(r, EvaluationResult) else _from_mapping(EvaluationResult, r, "eval result")
            for r in self.eval_results
        ]
        if self.throughput is not None and not isinstance(self.throughput, ThroughputRecord):
            self.throughput = _from_mapping(ThroughputRecord, self.throughput, "throughput")
        if self.version != TRAINING_RECORD_VERSION:
            raise ValueError(
                f"training record version {self.version!r} is not supported (this mux-plms reads version "
                f"{TRAINING_RECORD_VERSION}); upgrade mux-plms"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | list) -> TrainingRecord:
        """A record from its JSON form; a list is the pre-training format (see :meth:`from_pretraining`)."""
        if isinstance(data, list):
            return cls.from_pretraining(data)
        return _from_mapping(cls, data, "training record")

    @classmethod
    def from_pretraining(cls, entries: list[dict]) -> TrainingRecord:
        """The record of a ``mux-plms pretrain`` output folder: its ``training_record.json`` is a list of stage
        entries (``stage``, ``steps``, ``data``, ``final_metrics``, ...), oldest first. Each becomes a
        :class:`TrainingStage` (numeric final metrics kept; the data described by corpus, Hub data set or
        files)."""
        stages, datasets = [], []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or "stage" not in entry:
                raise ValueError(f"pre-training record entry {index} must be a JSON object with a 'stage' key")
            data = entry.get("data") or {}
            described = data.get("corpus") or data.get("dataset_name") or data.get("train_file") or ""
            if data.get("dataset_config_name"):
                described += f" ({data['dataset_config_name']})"
            if entry.get("teacher"):
                described += f"; teacher: {entry['teacher']}"
            if data.get("dataset_name") and data["dataset_name"] not in datasets:
                datasets.append(data["dataset_name"])
            metrics = {
                k: float(v)
                for k, v in (entry.get("final_metrics") or {}).items()
                if isinstance(v, int | float) and not isinstance(v, bool) and v == v
            }
            stages.append(TrainingStage(str(entry["stage"]), int(entry.get("steps", 0)), str(described), metrics))
        return cls(stages=stages, datasets=datasets)

    @staticmethod
    def path_in(directory_or_file: str | os.PathLike) -> Path:
        """``<dir>/training_record.json`` for a folder; the path itself for a ``.json`` file."""
        path = Path(directory_or_file)
        return path if path.suffix == ".json" else path / TRAINING_RECORD_FILE

    def save(self, directory_or_file: str | os.PathLike) -> Path:
        """Write the record (into ``<dir>/training_record.json`` when given a folder). Returns the path."""
        path = self.path_in(directory_or_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory_or_file: str | os.PathLike, missing_ok: bool = False) -> TrainingRecord:
        """Read a record; with `missing_ok`, a missing file gives an empty record."""
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


# ---------------------------------------------------------------------------------------------
# Reading a model (folder or object)
# ---------------------------------------------------------------------------------------------
@dataclass
class _ModelFacts:
    config: dict
    architecture: str
    num_parameters: int | None
    has_tokenizer: bool
    record: TrainingRecord | None
    default_name: str


def count_safetensors_parameters(directory: str | os.PathLike) -> int | None:
    """Number of stored values (weights and persistent buffers such as the fixed instance keys), read
    from the safetensors headers only; None without safetensors weights."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    from ..utils.folders import contained_file

    total = 0
    for name in files:
        with open(contained_file(directory, name, f"shard listed in {index.name}"), "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for key, info in header.items():
            if key != "__metadata__":
                total += math.prod(info["shape"])
    return total


def _facts_from_dir(directory: Path) -> _ModelFacts:
    if not directory.is_dir():
        raise FileNotFoundError(f"Model folder {directory} does not exist")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} is not a model folder: it has no config.json")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    record_path = directory / TRAINING_RECORD_FILE
    return _ModelFacts(
        config=config,
        architecture=(config.get("architectures") or ["MuxModel"])[0],
        num_parameters=count_safetensors_parameters(directory),
        has_tokenizer=any((directory / name).is_file() for name in TOKENIZER_FILES),
        record=TrainingRecord.load(record_path) if record_path.is_file() else None,
        default_name=directory.resolve().name,
    )


def _stored_values(model) -> int:
    """Values in the model's state dict, tied tensors counted once: what its safetensors file holds
    (weights plus persistent buffers such as the fixed instance keys)."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            total += tensor.numel()
    return total


def _facts_from_model(model) -> _ModelFacts:
    config = model.config.to_dict()
    n = config.get("num_instances")
    return _ModelFacts(
        config=config,
        architecture=type(model).__name__,
        num_parameters=_stored_values(model),
        has_tokenizer=False,
        record=None,
        default_name=f"{config.get('model_type', 'mux').replace('_', '-')}-n{n}",
    )


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
CARD_OVERRIDES = (
    "repo_id",
    "model_name",
    "license",
    "language",
    "base_model",
    "datasets",
    "tags",
    "pipeline_tag",
    "training_record",
    "eval_results",
    "tokenizer_id",
)


def _pipeline_tag(architecture: str, config: dict) -> str:
    if architecture.endswith("ForMaskedLM") and not config.get("task_loss_coeff", 1):
        return "feature-extraction"  # the stage-1 retrieval model has no usable MLM head
    for suffix, tag in PIPELINE_TAGS:
        if architecture.endswith(suffix):
            return tag
    return "feature-extraction"


def _auto_class(architecture: str, config: dict) -> str:
    for auto_name, target in (config.get("auto_map") or {}).items():
        if target.split(".")[-1] == architecture and auto_name != "AutoConfig":
            return auto_name
    for suffix in TASK_SUFFIXES + ("ForPreTraining",):
        if architecture.endswith(suffix):
            return f"AutoModel{suffix}"
    return "AutoModel"


def _as_list(value, name: str) -> list[str]:
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{name} must be a string or a list of non-empty strings, got {value!r}")
    return values


def _check_hub_ids(values: list[str], name: str) -> list[str]:
    bad = [v for v in values if not _REPO_ID.match(v) or os.path.isabs(v)]
    if bad:
        raise ValueError(f"{name} must be Hub ids like 'google-bert/bert-base-uncased' (not local paths); got {bad}")
    return values


def _fmt_count(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _fmt_number(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _stage_rows(record: TrainingRecord | None) -> list[dict]:
    rows = []
    for i, stage in enumerate(record.stages if record else [], 1):
        rows.append(
            {
                "index": i,
                "name": stage.name,
                "description": (
                    f"`{stage.name}` ({STAGE_DESCRIPTIONS[stage.name]})"
                    if stage.name in STAGE_DESCRIPTIONS
                    else f"`{stage.name}`"
                ),
                "steps": f"{stage.steps:,}",
                "data": _cell(stage.data or "not recorded"),
                "metrics": _cell(", ".join(f"{k} = {_fmt_number(v)}" for k, v in stage.metrics.items()) or "-"),
            }
        )
    return rows


def _size_facts(config: dict) -> list[str]:
    """Readable size fields of the config that are set (layers, width, heads, vocabulary, image size)."""
    facts = []
    for key, template in (
        ("num_hidden_layers", "{} layers"),
        ("hidden_size", "hidden size {}"),
        ("num_attention_heads", "{} attention heads"),
        ("vocab_size", "vocabulary {}"),
        ("image_size", "images {0}x{0}"),
    ):
        if config.get(key) is not None:
            facts.append(template.format(config[key]))
    return facts


def _label_names(id2label: dict) -> list[str]:
    """Label names in id order; empty for transformers' placeholder names (LABEL_0, LABEL_1, ...)."""
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    return [] if all(re.fullmatch(r"LABEL_\d+", name) for name in names) else names


def _prefix_length(config: dict) -> int:
    """Positions the model's demultiplexer prepends to every input: its own formula
    (`demultiplexing.prefix_length`); 0 for a demultiplexer this installation does not know."""
    from types import SimpleNamespace

    from ..models.demultiplexing import prefix_length

    try:
        return prefix_length(SimpleNamespace(**config))
    except (ValueError, AttributeError, TypeError):
        return 0


def render_model_card(model_dir_or_model, **overrides) -> ModelCard:
    """Render the model card of a MUX model folder (or of a MUX model object).

    Args:
        model_dir_or_model: a folder written by ``save_pretrained`` (``config.json``; weights and
            ``training_record.json`` are read when present) or a MUX model instance.
        **overrides: any of ``repo_id`` (used in the usage snippets), ``model_name``, ``license``
            (default ``mit``), ``language``, ``base_model``, ``datasets``, ``tags`` (added to the
            generated ones), ``pipeline_tag``, ``training_record`` (a :class:`TrainingRecord`, a dict
            or a path), ``eval_results`` (list of :class:`EvaluationResult` or dicts; replaces the
            record's), ``tokenizer_id`` (where the usage snippets load the tokenizer from).

    Returns:
        A `huggingface_hub.ModelCard` (``str(card)`` is the README text).
    """
    unknown = sorted(set(overrides) - set(CARD_OVERRIDES))
    if unknown:
        raise ValueError(f"Unknown model card override(s) {unknown}; allowed: {', '.join(CARD_OVERRIDES)}")
    if isinstance(model_dir_or_model, str | os.PathLike):
        facts = _facts_from_dir(Path(model_dir_or_model))
    elif hasattr(model_dir_or_model, "config") and hasattr(model_dir_or_model, "num_parameters"):
        facts = _facts_from_model(model_dir_or_model)
    else:
        raise ValueError(
            f"model_dir_or_model must be a model folder path or a MUX model, got {type(model_dir_or_model).__name__}"
        )
    config = facts.config
    n = config.get("num_instances")
    if not isinstance(n, int) or "muxing_variant" not in config:
        raise ValueError(
            f"{model_dir_or_model!s} is not a MUX model: its config has no num_instances / muxing_variant "
            f"(model_type {config.get('model_type')!r})"
        )

    record = overrides.get("training_record", facts.record)
    if isinstance(record, str | os.PathLike):
        record = TrainingRecord.load(record)
    elif isinstance(record, dict):
        record = TrainingRecord.from_dict(record)
    elif record is not None and not isinstance(record, TrainingRecord):
        raise ValueError(f"training_record must be a TrainingRecord, a dict or a path, got {type(record).__name__}")
    eval_results = overrides.get("eval_results", record.eval_results if record else [])
    eval_results = [
        r if isinstance(r, EvaluationResult) else _from_mapping(EvaluationResult, r, "eval result")
        for r in eval_results or []
    ]

    repo_id = overrides.get("repo_id")
    if repo_id is not None:
        _check_hub_ids([repo_id], "repo_id")
    model_name = overrides.get("model_name") or (repo_id.split("/")[-1] if repo_id else facts.default_name)
    base_model = overrides.get("base_model", record.base_model if record else None)
    base_models = _check_hub_ids(_as_list(base_model, "base_model"), "base_model")
    datasets = _check_hub_ids(
        _as_list(overrides.get("datasets", record.datasets if record else None), "datasets"), "datasets"
    )
    model_type = config.get("model_type", "mux")
    muxing, demuxing = config["muxing_variant"], config.get("demuxing_variant")
    tags = list(BASE_TAGS) + [
        model_type.replace("_", "-"),
        f"mux-n{n}",
        f"muxing-{muxing}".replace("_", "-"),
        f"demuxing-{demuxing}".replace("_", "-"),
    ]
    for tag in _as_list(overrides.get("tags"), "tags"):
        if tag not in tags:
            tags.append(tag)
    pipeline_tag = overrides.get("pipeline_tag") or _pipeline_tag(facts.architecture, config)
    license_id = overrides.get("license") or DEFAULT_LICENSE

    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license=license_id,
        language=_as_list(overrides.get("language"), "language") or None,
        base_model=(base_models[0] if len(base_models) == 1 else base_models) or None,
        datasets=datasets or None,
        tags=tags,
        model_name=model_name if eval_results else None,
        eval_results=[r.to_hub() for r in eval_results] or None,
    )

    legacy = sorted(k for k, v in config.items() if k.startswith("legacy_") and v not in (None, False))
    throughput = record.throughput if record else None
    id2label = config.get("id2label") or {}
    source = repo_id or "path/to/this/model"
    tokenizer_id = overrides.get("tokenizer_id") or (
        source if facts.has_tokenizer else (base_models[0] if base_models else None)
    )
    context = {
        "card_data": card_data.to_yaml(),
        "marker": GENERATED_MARKER,
        "model_name": model_name,
        "family": FAMILY_NAMES.get(model_type, model_type),
        "model_type": model_type,
        "architecture": facts.architecture,
        "auto_class": _auto_class(facts.architecture, config),
        "pipeline_tag": pipeline_tag,
        "n": n,
        "muxing": muxing,
        "muxing_description": MUXING_DESCRIPTIONS.get(muxing, f"the custom multiplexer `{muxing}`"),
        "demuxing": demuxing,
        "demuxing_description": DEMUXING_DESCRIPTIONS.get(demuxing, f"the custom demultiplexer `{demuxing}`"),
        "num_hidden_demux_layers": config.get("num_hidden_demux_layers"),
        "size_facts": _size_facts(config),
        "max_positions": config.get("max_position_embeddings"),
        "prefix_length": _prefix_length(config),
        "max_input_length": (config.get("max_position_embeddings") or 0) - _prefix_length(config),
        "num_parameters": _fmt_count(facts.num_parameters),
        "labels": _label_names(id2label),
        "retrieval_loss_coeff": config.get("retrieval_loss_coeff"),
        "task_loss_coeff": config.get("task_loss_coeff"),
        "legacy": legacy,
        "stages": _stage_rows(record),
        "has_record": record is not None,
        "eval_results": [
            {
                "dataset": _cell(r.dataset + (f" ({r.dataset_config})" if r.dataset_config else "")),
                "split": _cell(r.split or "-"),
                "metric": _cell(r.metric),
                "value": _fmt_number(r.value),
                "mode": "ensembled" if r.ensembled else "multiplexed",
            }
            for r in eval_results
        ],
        "throughput": None
        if throughput is None
        else {
            "samples_per_second": f"{throughput.samples_per_second:,.1f}",
            "baseline": None
            if throughput.baseline_samples_per_second is None
            else f"{throughput.baseline_samples_per_second:,.1f}",
            "speedup": None if throughput.speedup is None else f"{throughput.speedup:.2f}",
            "device": throughput.device,
            "batch_size": throughput.batch_size,
            "sequence_length": throughput.sequence_length,
        },
        "base_models": base_models,
        "datasets": datasets,
        "source": source,
        "tokenizer_id": tokenizer_id,
        "texts": [_SAMPLE_TEXTS[i % len(_SAMPLE_TEXTS)] for i in range(max(2, n))],
        "is_task_model": facts.architecture.endswith(TASK_SUFFIXES),
        "is_image_model": pipeline_tag.startswith("image"),
        "image_size": config.get("image_size", 224),
        "num_channels": config.get("num_channels", 3),
    }
    return ModelCard(_render_template(context))


def _render_template(context: dict) -> str:
    import jinja2

    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True
    )
    template = environment.from_string(TEMPLATE_PATH.read_text(encoding="utf-8"))
    text = template.render(**context)
    return re.sub(r"\n{3,}", "\n\n", text)


def write_model_card(model_dir: str | os.PathLike, *, overwrite: bool = False, **overrides) -> Path:
    """Render the card of `model_dir` and write it to ``<model_dir>/README.md``. Returns the path.

    An existing README that mux-plms did not generate is kept unless `overwrite` is set (raises
    `FileExistsError` naming the file)."""
    directory = Path(model_dir)
    card = render_model_card(directory, **overrides)
    path = directory / "README.md"
    if path.is_file() and not overwrite and GENERATED_MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        raise FileExistsError(
            f"{path} exists and was not generated by mux-plms; pass overwrite=True (--overwrite) to replace it"
        )
    tmp = path.with_name(".README.md.tmp")
    tmp.write_text(str(card), encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_push_card(working_dir: str | os.PathLike, repo_id: str) -> Path:
    """Hook of ``model.push_to_hub``: replace the README transformers wrote into its temporary folder by
    the generated card, keeping the tags transformers put there (``push_to_hub(tags=...)``)."""
    path = Path(working_dir) / "README.md"
    extra_tags: list[str] = []
    if path.is_file():
        existing = ModelCard(path.read_text(encoding="utf-8"), ignore_metadata_errors=True)
        extra_tags = [t for t in (existing.data.tags or []) if isinstance(t, str)]
    return write_model_card(working_dir, overwrite=True, repo_id=repo_id, tags=extra_tags)


__all__ = [
    "TRAINING_RECORD_FILE",
    "EvaluationResult",
    "ThroughputRecord",
    "TrainingRecord",
    "TrainingStage",
    "count_safetensors_parameters",
    "render_model_card",
    "write_model_card",
    "write_push_card",
]
