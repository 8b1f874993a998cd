"""Generated model cards for MUX models, rendered from their training record.

A card is rendered from the template ``mux_plms/model_cards/model_card.md.j2`` using

* the model's ``config.json`` (N, the multiplexing variants, the architecture, the size),
* the safetensors headers (parameter count), the tokenizer files present in the folder,
* the training record ``training_record.json`` saved beside the weights, when there is one
  (:class:`mux_plms.records.TrainingRecord`: the stages the model went through, its fine-tuning,
  evaluation results, throughput and the comparison with N=1),
* explicit overrides (license, base model, data sets, tags, ...).

Cards state what was measured and nothing more: no record, no claim. They are generated, never
hand-written: ``mux-plms card MODEL_DIR`` (re)writes ``README.md`` and ``mux-plms push`` uploads a freshly
generated one.

The record classes live in :mod:`mux_plms.records` and are re-exported here. Writing a record::

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
from dataclasses import dataclass
from pathlib import Path, PurePath

from huggingface_hub import ModelCard, ModelCardData

from ..records import (
    RECORD_VERSION,
    TRAINING_RECORD_FILE,
    BaselineComparison,
    EvaluationResult,
    FinetuningRecord,
    ThroughputRecord,
    TrainingRecord,
    TrainingStage,
    _from_mapping,
    is_hub_id,
)

TRAINING_RECORD_VERSION = RECORD_VERSION  # kept for compatibility; see mux_plms.records
TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "model_cards" / "model_card.md.j2"
GENERATED_MARKER = "<!-- mux-plms: generated model card -->"
DEFAULT_LICENSE = "mit"
BASE_TAGS = ("mux-plms", "data-multiplexing")

# How the card describes the fine-tuning stage; the pre-training stages describe themselves
# (`Stage.card_description` in mux_plms.training.stages). Any non-empty stage name is accepted.
FINETUNE_DESCRIPTION = {"finetune": "stage 3, task fine-tuning"}


def stage_descriptions() -> dict[str, str]:
    """Stage name -> how the card describes it: the registered pre-training stages, then fine-tuning."""
    from ..training.stages import STAGE_REGISTRY  # light: the stage modules import no torch at import time

    described = {name: stage.card_description for name, stage in STAGE_REGISTRY.items() if stage.card_description}
    return {**described, **FINETUNE_DESCRIPTION}


def family_display_name(model_type: str) -> str:
    """The family's display name from the family table (``MUX-BERT``); the model type for others."""
    from ..models.families import FAMILIES

    family = FAMILIES.get(model_type)
    return family.display_name if family is not None else model_type


def variant_description(name: str, what: str) -> str:
    """The one-sentence ``description`` of the registered multiplexer (`what` = ``"multiplexer"``) or
    demultiplexer named `name` (plug-ins included), or a neutral fallback."""
    if what == "multiplexer":
        from ..models.multiplexing import MULTIPLEXERS as registry
    else:
        from ..models.demultiplexing import DEMULTIPLEXERS as registry
    description = getattr(registry.get(name), "description", "")
    return description or f"the custom {what} `{name}`"


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
# Usage-example inputs per pipeline tag: reviews for sentence classification, sentences with named
# entities for token classification, plain sentences otherwise.
SAMPLE_TEXTS = {
    "text-classification": (
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
    ),
    "token-classification": (
        "Maria Lopez flew from Madrid to Toronto on Monday",
        "Apple opened a new office in Berlin",
        "Lionel Messi scored twice for Inter Miami",
        "the United Nations met in Geneva last week",
        "I watched Stranger Things on Netflix with Sam",
        "Toyota recalled cars sold in Japan and Canada",
        "Angela Merkel visited the White House",
        "we drove from Seattle to Portland for the Blazers game",
        "Samsung and Google announced a new phone",
        "Dr. Chen works at Stanford Hospital",
    ),
    "default": (
        "the river runs past the old mill",
        "she opened the window and the room filled with light",
        "a quiet morning in the small harbour town",
        "the committee will meet again next spring",
        "he kept the letters in a wooden box",
        "rain is expected across the north tonight",
        "the library stays open late on Thursdays",
        "they planted apple trees along the road",
        "the train was twenty minutes late",
        "a new bridge will connect the two villages",
    ),
}

TASK_WORDS = {
    "text-classification": "sentence classification",
    "token-classification": "token classification",
    "image-classification": "image classification",
}
# How the card names the metrics trainers record (unknown names are shown with spaces for underscores).
METRIC_NAMES = {
    "loss": "loss",
    "train_loss": "training loss",
    "task_loss": "task loss",
    "retrieval_loss": "retrieval loss",
    "retrieval_accuracy": "retrieval accuracy",
    "retrieval_perplexity": "retrieval perplexity",
    "mlm_loss": "MLM loss",
    "mlm_accuracy": "MLM accuracy",
    "mlm_perplexity": "MLM perplexity",
    "generator_loss": "generator loss",
    "rtd_loss": "replaced-token detection loss",
    "rtd_accuracy": "replaced-token detection accuracy",
    "distill_loss": "distillation loss",
    "distill_mse": "distillation MSE",
    "distill_cosine": "distillation cosine similarity",
    "distill_pooled_cosine": "pooled-state cosine similarity",
    "accuracy": "accuracy",
    "f1": "F1",
    "precision": "precision",
    "recall": "recall",
    "matthews_correlation": "Matthews correlation",
    "pearson": "Pearson correlation",
    "spearmanr": "Spearman correlation",
    "combined_score": "combined score",
}
# Counts of evaluated tokens: attached to the accuracy they were measured on, not listed as metrics.
_EVALUATED_TOKENS = re.compile(r"^(?P<kind>.+)_tokens$")
_PER_SLOT = re.compile(r"^(?P<base>.+)_slot(?P<slot>\d+)$")


def metric_name(key: str) -> str:
    """The card's name of a recorded metric: ``retrieval_accuracy`` -> ``retrieval accuracy``."""
    return METRIC_NAMES.get(key, key.replace("_", " "))


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


def summarize_metrics(metrics: dict[str, float]) -> str:
    """The metrics of a stage for people: human names, per-slot values folded into their overall metric
    (``retrieval accuracy 0.97 (per slot 0.95 to 0.99; 2,048 tokens evaluated)``), counts of evaluated
    tokens attached to the accuracy measured on them."""
    slots: dict[str, list[float]] = {}
    counts: dict[str, float] = {}
    plain: dict[str, float] = {}
    for key, value in metrics.items():
        slot, count = _PER_SLOT.match(key), _EVALUATED_TOKENS.match(key)
        if slot:
            slots.setdefault(slot["base"], []).append(value)
        elif count and f"{count['kind']}_accuracy" in metrics:
            counts[f"{count['kind']}_accuracy"] = value
        else:
            plain[key] = value
    for base in slots:
        plain.setdefault(base, math.nan)  # per-slot values without an overall one still get a line
    parts = []
    for key, value in plain.items():
        notes = []
        if key in slots:
            low, high = min(slots[key]), max(slots[key])
            if len(slots[key]) == 1:
                notes.append(f"one slot recorded: {_fmt_number(low)}")
            else:
                notes.append(f"per slot {_fmt_number(low)} to {_fmt_number(high)}" if low != high else "equal per slot")
        if key in counts:
            notes.append(f"{_fmt_count_exact(counts[key])} tokens evaluated")
        text = metric_name(key) if math.isnan(value) else f"{metric_name(key)} {_fmt_number(value)}"
        parts.append(text + (f" ({'; '.join(notes)})" if notes else ""))
    return ", ".join(parts)


def _fmt_count_exact(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else _fmt_number(value)


def _stage_tokens(stage: TrainingStage) -> int | None:
    tokens = stage.details.get("tokens")
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0 else None


def _stage_rows(record: TrainingRecord | None) -> list[dict]:
    descriptions = stage_descriptions()
    rows = []
    for i, stage in enumerate(record.stages if record else [], 1):
        rows.append(
            {
                "index": i,
                "name": stage.name,
                "description": (
                    f"`{stage.name}` ({descriptions[stage.name]})" if stage.name in descriptions else f"`{stage.name}`"
                ),
                "steps": f"{stage.steps:,}",
                "tokens": _fmt_count(_stage_tokens(stage)) if _stage_tokens(stage) is not None else "-",
                "data": _cell(stage.data or "not recorded"),
                "metrics": _cell(summarize_metrics(stage.metrics) or "-"),
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


def _where(name_or_path: str) -> str:
    """A checkpoint for the card: a Hub id as a link, a local folder by its name only (no local paths)."""
    if is_hub_id(name_or_path) and not os.path.isdir(name_or_path):
        return f"[`{name_or_path}`](https://huggingface.co/{name_or_path})"
    return f"the local checkpoint `{_cell(PurePath(name_or_path).name or name_or_path)}`"


def _finetuning_context(finetuning: FinetuningRecord | None) -> dict | None:
    if finetuning is None:
        return None
    settings = [f"learning rate {finetuning.learning_rate:g}"]
    if finetuning.train_batch_size:
        settings.append(f"{finetuning.train_batch_size} sequences per step")
    if finetuning.epochs is not None:
        settings.append(f"{finetuning.epochs:.3g} epochs")
    if finetuning.train_samples is not None:
        settings.append(f"{finetuning.train_samples:,} training examples")
    if finetuning.max_seq_length:
        settings.append(f"inputs truncated to {finetuning.max_seq_length} tokens")
    if finetuning.seed is not None:
        settings.append(f"seed {finetuning.seed}")
    if finetuning.num_instances > 1:
        variants = " / ".join(f"`{v}`" for v in (finetuning.muxing_variant, finetuning.demuxing_variant) if v)
        mux = f"multiplexed at N = {finetuning.num_instances}" + (f" ({variants})" if variants else "")
    else:
        mux = "without multiplexing (N = 1)"
    dataset = finetuning.dataset + (f" ({finetuning.dataset_config})" if finetuning.dataset_config else "")
    return {
        "task": TASK_WORDS.get(finetuning.task, finetuning.task),
        "dataset": _cell(dataset),
        "steps": f"{finetuning.steps:,}",
        "init": _where(finetuning.init),
        "mux": mux,
        "settings": ", ".join(settings),
        "teacher": _where(finetuning.teacher) if finetuning.teacher else None,
        "ensembled": finetuning.ensembled,
    }


def _baseline_context(baseline: BaselineComparison | None) -> dict | None:
    if baseline is None:
        return None
    cost = baseline.cost_points
    if abs(cost) < 0.05:
        change = f"with the same {metric_name(baseline.metric)} (within 0.05 points)"
    elif cost > 0:
        change = f"at a cost of {cost:.1f} points of {metric_name(baseline.metric)}"
    else:
        change = f"with {-cost:.1f} points more {metric_name(baseline.metric)}"
    source = PurePath(baseline.source).parts[-2:] if baseline.source else ()
    return {
        "metric": metric_name(baseline.metric),
        "value": _fmt_number(baseline.value),
        "baseline_value": _fmt_number(baseline.baseline_value),
        "ips": f"{baseline.instances_per_second:,.1f}" if baseline.instances_per_second else "not measured",
        "baseline_ips": f"{baseline.baseline_instances_per_second:,.1f}"
        if baseline.baseline_instances_per_second
        else "not measured",
        "speedup": f"{baseline.speedup:.2f}" if baseline.speedup else None,
        "change": change,
        "source": "/".join(source) if source else None,
    }


def _ensemble_measurements(results: list[EvaluationResult]) -> list[str]:
    """``accuracy 0.62 ensembled vs 0.61 multiplexed (SST-2 validation)`` for every ensembled result, next to
    the multiplexed one of the same data set, split and metric when it was measured too."""
    lines = []
    for result in results:
        if not result.ensembled:
            continue
        where = result.dataset + (f" ({result.dataset_config})" if result.dataset_config else "")
        where += f", {result.split}" if result.split else ""
        plain = next(
            (
                r
                for r in results
                if not r.ensembled
                and (r.dataset, r.dataset_config, r.split, r.metric)
                == (result.dataset, result.dataset_config, result.split, result.metric)
            ),
            None,
        )
        text = f"{metric_name(result.metric)} {_fmt_number(result.value)} ensembled"
        if plain is not None:
            text += f" vs {_fmt_number(plain.value)} multiplexed"
        lines.append(_cell(f"{text} ({where})"))
    return lines


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
    if "base_model" in overrides:
        base_models = _check_hub_ids(_as_list(overrides["base_model"], "base_model"), "base_model")
    else:  # a record written by a training run: only Hub ids go into the metadata
        base_models = [record.base_model] if record and is_hub_id(record.base_model) else []
    if "datasets" in overrides:
        datasets = _check_hub_ids(_as_list(overrides["datasets"], "datasets"), "datasets")
    else:
        datasets = [d for d in (record.datasets if record else []) if is_hub_id(d)]
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
    finetuning = record.finetuning if record else None
    id2label = config.get("id2label") or {}
    source = repo_id or "path/to/this/model"
    tokenizer_id = overrides.get("tokenizer_id") or (
        source if facts.has_tokenizer else (base_models[0] if base_models else None)
    )
    is_task_model = facts.architecture.endswith(TASK_SUFFIXES)
    texts = SAMPLE_TEXTS.get(pipeline_tag, SAMPLE_TEXTS["default"])
    context = {
        "card_data": card_data.to_yaml(),
        "marker": GENERATED_MARKER,
        "model_name": model_name,
        "family": family_display_name(model_type),
        "model_type": model_type,
        "architecture": facts.architecture,
        "auto_class": _auto_class(facts.architecture, config),
        "pipeline_tag": pipeline_tag,
        "n": n,
        "muxing": muxing,
        "muxing_description": variant_description(muxing, "multiplexer"),
        "demuxing": demuxing,
        "demuxing_description": variant_description(demuxing, "demultiplexer"),
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
        "stage_tokens": any(_stage_tokens(s) is not None for s in (record.stages if record else [])),
        "has_record": record is not None,
        "finetuning": _finetuning_context(finetuning),
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
        "ensemble_measurements": _ensemble_measurements(eval_results),
        "baseline": _baseline_context(finetuning.baseline if finetuning else None),
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
            "workload": throughput.workload,
        },
        "base_models": base_models,
        "datasets": datasets,
        "source": source,
        "tokenizer_id": tokenizer_id,
        # Loading the tokenizer of a repository with remote code makes transformers read its config.json, which
        # only the remote code defines: without mux_plms it needs trust_remote_code=True too (or it prompts).
        "tokenizer_needs_remote_code": tokenizer_id == source,
        "texts": [texts[i % len(texts)] for i in range(max(2, n))],
        "is_task_model": is_task_model,
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


def mark_card(path: Path, caveat: str) -> Path:
    """Put `caveat` in a warning block right under the title (the first ``# `` line) of the card at `path`."""
    lines = path.read_text().splitlines()
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), len(lines))
    lines[at:at] = ["", f"> **Warning: {caveat}**"]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def write_baseline_card(model_dir: Path, record: TrainingRecord, pipeline_tag: str, dataset: str,
                        caveat: str | None = None) -> Path:  # fmt: skip
    """README.md of an N = 1 baseline (a vanilla model fine-tuned without multiplexing, the reference point of
    MUX models trained with the same recipe) from its training record; `pipeline_tag` is its task kind,
    `dataset` its data's display name. `caveat` (a smoke test) goes into a warning block under the title and a
    ``smoke-test`` tag. :func:`render_model_card` renders MUX models only."""
    result = record.eval_results[0]
    throughput = record.throughput
    config = json.loads((model_dir / "config.json").read_text())
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: " + pipeline_tag,
        "tags:\n- mux-plms\n- baseline" + ("\n- smoke-test" if caveat else ""),
        *(["base_model: " + record.base_model] if record.base_model else []),
        "---",
        "",
        f"# {dataset} baseline (N=1, no multiplexing)",
        *(["", f"> **Warning: {caveat}**"] if caveat else []),
        "",
        f"A vanilla `{config.get('model_type')}` model ({config.get('num_hidden_layers')} layers, "
        f"{config.get('hidden_size')} wide) fine-tuned by `mux-plms demo` on {dataset}: the reference "
        "point of the multiplexed models (N > 1) trained with the same recipe.",
        "",
        "| metric | value | split | instances/s (cpu) | batch | sequence length |",
        "|---|---:|---|---:|---:|---:|",
        f"| {result.metric} | {result.value:.4f} | {result.split} | {throughput.samples_per_second:.1f} | "
        f"{throughput.batch_size} | {throughput.sequence_length} |",
        "",
        "Training: " + ", ".join(f"{s.name} ({s.steps} steps)" for s in record.stages) + ".",
        "",
        "<!-- generated by mux-plms demo -->",
    ]
    path = model_dir / "README.md"
    path.write_text("\n".join(lines) + "\n")
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
    "BaselineComparison",
    "EvaluationResult",
    "FinetuningRecord",
    "ThroughputRecord",
    "TrainingRecord",
    "TrainingStage",
    "count_safetensors_parameters",
    "metric_name",
    "summarize_metrics",
    "render_model_card",
    "write_model_card",
    "write_baseline_card",
    "mark_card",
    "write_push_card",
]
