"""The training record of a pre-training stage: what it inherits from its init folder, the description of its
data, reading a folder's stage entries back and telling whether a stage folder is finished
(:class:`mux_plms.records.TrainingRecord` is the file format).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..records import TRAINING_RECORD_FILE, TrainingRecord, hub_id_or_none

if TYPE_CHECKING:  # pragma: no cover
    from .arguments import PretrainingArguments

RECORD_FILE = TRAINING_RECORD_FILE


def read_record(folder: str | os.PathLike | None) -> list[dict]:
    """The stage entries of a model folder's ``training_record.json``, oldest first, as :func:`train_stage`
    returns them (``stage``, ``stage_index``, ``steps``, ``data``, ``final_metrics``, ...); [] when the folder
    has no record. Records of any readable version are read (`mux_plms.records`)."""
    if folder is None:
        return []
    return [stage.to_entry() for stage in TrainingRecord.load(folder, missing_ok=True).stages]


def inherited_record(init_source: str | None, args: PretrainingArguments) -> TrainingRecord:
    """The record a stage starts from: the init folder's stages (its record), base model and data sets; the
    stage appends itself when it saves. Evaluation and throughput of the init folder are not carried over:
    they describe other weights. Read before the first step, so that an unreadable record fails early."""
    record = TrainingRecord.load(init_source, missing_ok=True).continued() if init_source else TrainingRecord()
    if record.base_model is None and not record.stages:
        record.base_model = hub_id_or_none(init_source)  # a Hub checkpoint the chain starts from
    if args.dataset_name and args.dataset_name not in record.datasets:
        record.datasets.append(args.dataset_name)
    return record


def stage_is_complete(stage_dir: Path, stage: str, index: int) -> bool:
    record = read_record(stage_dir)
    return bool(record) and record[-1].get("stage") == stage and record[-1].get("stage_index") == index


def data_description(args: PretrainingArguments, blocks, tokenizer) -> dict:
    if args.corpus_name:
        source = {"corpus": args.corpus_name}
    elif args.dataset_name:
        source = {"dataset_name": args.dataset_name, "dataset_config_name": args.dataset_config_name}
    else:
        source = {"train_file": args.train_file, "validation_file": args.validation_file}
    return {
        **source,
        "block_size": args.block_size,
        "train_blocks": len(blocks["train"]),
        "validation_blocks": len(blocks["validation"]),
        "mlm_probability": args.mlm_probability,
        "vocabulary_size": len(tokenizer),
        "pruned_vocabulary": bool(args.prune_vocabulary),
    }


__all__ = ["RECORD_FILE", "read_record", "inherited_record", "stage_is_complete", "data_description"]
