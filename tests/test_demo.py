"""`mux-plms demo --quick`: the table, results.json, plots, model cards, resuming and the stage-2 kill case."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from mux_plms import demo
from mux_plms.cli import main
from mux_plms.hub.card import mark_card
from mux_plms.training.pretrain_records import read_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_demo(out: Path, *extra: str, jobs: int = 1) -> int:
    return main(["demo", "--quick", "--threads", "1", "--jobs", str(jobs), "--output-dir", str(out), *extra])


def log_entries(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / demo.LOG_FILE).read_text().splitlines()]


def mtimes(folder: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.glob(pattern))}


def png_text(path: Path) -> dict[str, str]:
    """The tEXt chunks (metadata) of a PNG file."""
    import struct

    data, found, at = path.read_bytes(), {}, 8
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at : at + 4]), data[at + 4 : at + 8]
        if kind == b"tEXt":
            key, _, value = data[at + 8 : at + 8 + length].partition(b"\0")
            found[key.decode("latin-1")] = value.decode("latin-1")
        at += 12 + length
    return found


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """One `mux-plms demo --quick` run; everything printed on the terminal (by this process and by the worker
    processes, which inherit its stdout / stderr) is kept in ``../console.txt``."""
    import contextlib
    import sys

    out = tmp_path_factory.mktemp("demo") / "out"
    path = out.parent / "console.txt"
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as console:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(console.fileno(), 1), os.dup2(console.fileno(), 2)
        try:
            with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
                code = run_demo(out, jobs=2)  # two worker processes: the parallel path of the default run
        finally:
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
    assert code == 0, path.read_text()[-3000:]
    return out


# ------------------------------------------------------------------------------------------ unit
def test_parse_instances():
    assert demo.parse_instances("5,2,2") == [2, 5]
    with pytest.raises(argparse.ArgumentTypeError, match="integers >= 2"):
        demo.parse_instances("1,2")
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated integers"):
        demo.parse_instances("two")


def test_bad_jobs_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="--jobs must be >= 1, got 0"):
        run_demo(tmp_path, jobs=0)


def test_in_parallel_runs_stages_in_workers_and_reraises_failures(tmp_path, capfd):
    runner = demo.Demo(tmp_path, demo.RECIPES["quick"], [2], ["polarity"], jobs=2, threads=1)
    runner.in_parallel([("log", ("worker", "one")), ("log", ("worker", "two"))])
    assert sorted(e["action"] for e in log_entries(tmp_path)) == ["one", "two"]
    printed = capfd.readouterr().out
    # milestones on the console, everything else of a worker in its own log file (no interleaved progress bars)
    assert "[demo] 2 stages in 2 worker processes, 1 torch thread each" in printed
    assert "[demo] worker: one" in printed and "[demo] worker: two" in printed
    worker_log = (tmp_path / "logs" / "log_worker_one.log").read_text()
    assert "torch threads: 1 per process" in worker_log and "worker: one" not in worker_log
    with pytest.raises(AttributeError, match="no_such_stage"):
        runner.in_parallel([("log", ("worker", "three")), ("no_such_stage", ())])
    assert f"a stage failed; its output: {tmp_path / 'logs' / 'no_such_stage.log'}" in capfd.readouterr().err


def test_worker_log_names():
    assert demo._worker_log_name("finetune", ("polarity", 2, Path("/x/y"))) == "finetune_polarity_N2.log"
    assert demo._worker_log_name("pretrain", (5,)) == "pretrain_N5.log"
    assert demo._worker_log_name("log", ("a b", "c/d")) == "log_a_b_c_d.log"


def test_only_the_quick_recipe_is_marked_and_cards_get_a_warning(tmp_path):
    assert demo.Demo(tmp_path, demo.RECIPES["quick"], [2], ["polarity"]).caveat == demo.QUICK_CAVEAT
    assert demo.Demo(tmp_path, demo.RECIPES["default"], [2], ["polarity"]).caveat is None
    card = tmp_path / "README.md"
    card.write_text("---\ntags: [x]\n---\n<!-- c -->\n\n# name\n\nBody.\n")
    mark_card(card, "SMOKE TEST: meaningless")
    assert (
        card.read_text()
        == "---\ntags: [x]\n---\n<!-- c -->\n\n# name\n\n> **Warning: SMOKE TEST: meaningless**\n\nBody.\n"
    )


def test_plots_carry_the_caveat_only_when_given(tmp_path):
    rows = [
        {"task": "polarity", "num_instances": n, "metric": "accuracy", "value": 0.5, "instances_per_second": 10.0 * n}
        for n in (1, 2)
    ]
    for caveat, folder in ((None, tmp_path / "plain"), ("SMOKE TEST: meaningless", tmp_path / "quick")):
        folder.mkdir()
        for path in demo.write_plots(rows, folder, caveat=caveat):
            assert png_text(path).get("Description") == caveat


def test_resuming_with_another_recipe_is_refused(tmp_path):
    recipe = {**demo.asdict(demo.RECIPES["quick"]), "pretrain_steps": 99}
    (tmp_path / "recipe.json").write_text(json.dumps({"recipe": recipe, "seed": 42}))
    with pytest.raises(ValueError, match=r"another recipe \(pretrain_steps: 99 -> 4\).*another --output-dir"):
        run_demo(tmp_path)
    with pytest.raises(ValueError, match=r"another recipe \(seed: 42 -> 7\)"):
        run_demo(tmp_path, "--pretrain-steps", "99", "--seed", "7")
    with pytest.raises(ValueError, match="--finetune-steps must be >= 1, got 0"):
        run_demo(tmp_path, "--finetune-steps", "0")


def test_bad_pretrain_stages_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="--pretrain-stages must be 'none' or a comma-separated list"):
        run_demo(tmp_path, "--pretrain-stages", "retrieval,electra")


def test_bad_task_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="--tasks must be a comma-separated subset of polarity, wnut16"):
        run_demo(tmp_path, "--tasks", "sst2")


def test_markdown_table_values():
    rows = [
        {"task": "polarity", "num_instances": 1, "metric": "accuracy", "value": 0.8, "instances_per_second": 100.0,
         "speedup": 1.0, "quality_cost_points": 0.0},
        {"task": "polarity", "num_instances": 2, "metric": "accuracy", "value": 0.77, "instances_per_second": 190.0,
         "speedup": 1.9, "quality_cost_points": 3.0},
    ]  # fmt: skip
    lines = demo.markdown_table(rows).splitlines()
    assert lines[2] == "| polarity | 1 | accuracy | 80.0 | 100.0 | 1.00x | +0.0 |"
    assert lines[3] == "| polarity | 2 | accuracy | 77.0 | 190.0 | 1.90x | +3.0 |"


# ------------------------------------------------------------------------------------------ quick run
@pytest.mark.slow
def test_quick_run_outputs(quick_run):
    out = quick_run
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == demo.SCHEMA_VERSION
    assert results["num_instances"] == [1, 2, 5]
    assert results["tasks"] == ["polarity", "wnut16"]
    assert results["pretraining"] == {}  # the default path: no multiplexed pre-training
    for n in (2, 5):  # every N > 1 model started from the task's fine-tuned N=1 model
        done = json.loads((out / "finetune" / f"polarity_N{n}" / "done.json").read_text())
        assert done["init"] == str(out / "finetune" / "polarity_N1" / "model")
    rows = results["rows"]
    assert [(r["task"], r["num_instances"]) for r in rows] == [
        (t, n) for t in ("polarity", "wnut16") for n in (1, 2, 5)
    ]
    for row in rows:
        assert set(row) == {"task", "num_instances", "metric", "value", "instances_per_second", "speedup",
                            "quality_cost_points", "model_dir"}  # fmt: skip
        assert row["metric"] == demo.TASK_METRIC[row["task"]]
        assert 0.0 <= row["value"] <= 1.0
        assert row["instances_per_second"] > 0
        base = next(r for r in rows if r["task"] == row["task"] and r["num_instances"] == 1)
        assert row["speedup"] == pytest.approx(row["instances_per_second"] / base["instances_per_second"])
        assert row["quality_cost_points"] == pytest.approx(100 * (base["value"] - row["value"]))
        throughput = results["throughput"][row["task"]]
        # same backbone rows for every N: N inputs per row
        assert throughput["batch_size"][str(row["num_instances"])] == throughput["backbone_rows"] * row["num_instances"]
        assert all(len(t) == demo.RECIPES["quick"].bench_repeats for t in throughput["times_s"].values())

    table = (out / "results.md").read_text().splitlines()
    body = [line for line in table if line.startswith("| polarity") or line.startswith("| wnut16")]
    assert len(body) == 6
    assert body[0].startswith("| polarity | 1 | accuracy |") and body[0].endswith("| 1.00x | +0.0 |")

    for name in ("quality_vs_throughput.png", "throughput_vs_n.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert results["plots"] == ["quality_vs_throughput.png", "throughput_vs_n.png"]

    assert len(results["model_cards"]) == 6
    for row in rows:
        card = out / row["model_dir"] / "README.md"
        assert card.is_file()
        record = json.loads((out / row["model_dir"] / "training_record.json").read_text())
        assert record["eval_results"][0]["value"] == pytest.approx(row["value"])
        assert record["throughput"]["samples_per_second"] == pytest.approx(row["instances_per_second"])
        names = [s["name"] for s in record["stages"]]
        assert names == (["finetune"] if row["num_instances"] == 1 else ["finetune N=1 (warm start)", "finetune"])


@pytest.mark.slow
def test_quick_run_marks_every_output_as_a_smoke_test(quick_run):
    out = quick_run
    results = json.loads((out / "results.json").read_text())
    assert results["smoke_test"] is True and results["caveat"].startswith(demo.QUICK_CAVEAT)
    assert "smoke test" in demo.QUICK_CAVEAT.lower() and "the numbers are meaningless" in demo.QUICK_CAVEAT
    assert (out / "results.md").read_text().splitlines()[0] == f"# mux-plms demo results: {demo.QUICK_CAVEAT}"
    console = (out.parent / "console.txt").read_text()
    assert f"mux-plms demo results: {demo.QUICK_CAVEAT}\n\n| task | N |" in console  # the printed table's title
    assert f"{demo.QUICK_CAVEAT}, {demo.QUICK_DURATION}" in console  # said first, with the measured duration
    for name in results["plots"]:
        assert png_text(out / name)["Description"] == demo.QUICK_CAVEAT
    for card in results["model_cards"]:
        text = (out / card).read_text()
        assert f"> **Warning: {demo.QUICK_CAVEAT}." in text and "- smoke-test" in text


@pytest.mark.slow
def test_quick_run_console_is_quiet_and_workers_log_to_files(quick_run):
    out = quick_run
    console = (out.parent / "console.txt").read_text()
    assert "[demo] finetune wnut16 N=5: done" in console  # the workers' milestones reach the terminal
    assert "LOAD REPORT" not in console and "MISSING" not in console and "{'loss'" not in console
    for task in ("polarity", "wnut16"):
        for n in (1, 2, 5):
            log = (out / "logs" / f"finetune_{task}_N{n}.log").read_text()
            assert "torch threads: 1 per process (--threads; 2 processes on" in log  # --threads 1 is the total
            assert "{'loss'" in log  # the Trainer's output
            assert "LOAD REPORT" not in log and "to instantiate a model of type" not in log
            if n > 1:
                assert "Warm start of MuxBertFor" in log and f"(N={n}) from {out / 'finetune' / f'{task}_N1'}" in log


@pytest.mark.slow
def test_rerun_skips_finished_stages(quick_run):
    out = quick_run
    before = mtimes(out, "**/done.json") | mtimes(out, "pretrain_N*/stage*/training_record.json")
    before |= mtimes(out, "throughput_*.json")
    logged = len(log_entries(out))
    assert run_demo(out) == 0
    new = log_entries(out)[logged:]
    assert new and all(e["action"] == "skip (finished)" for e in new)
    assert {e["stage"] for e in new} == {"throughput polarity", "throughput wnut16"} | {
        f"finetune {t} N={n}" for t in ("polarity", "wnut16") for n in (1, 2, 5)
    }
    after = mtimes(out, "**/done.json") | mtimes(out, "pretrain_N*/stage*/training_record.json")
    after |= mtimes(out, "throughput_*.json")
    assert after == before and len(before) == 6 + 1 + 2  # fine-tuned, tiny init, throughput


@pytest.mark.slow
def test_kill_during_stage2_does_not_redo_stage1(tmp_path, capsys):
    out = tmp_path / "out"
    args = ("--num-instances", "2", "--tasks", "polarity", "--pretrain-stages", "retrieval,mlm")
    # The test hook stops right after stage 1, as a kill during stage 2 would (stage 2 folder empty / partial).
    assert run_demo(out, *args, "--stop-after-stage1") == 0
    stage1 = out / "pretrain_N2" / "stage1_retrieval" / "training_record.json"
    stage2 = out / "pretrain_N2" / "stage2_mlm" / "training_record.json"
    assert stage1.is_file() and not stage2.exists()
    stage1_entry = read_record(stage1.parent)
    stage1_mtime = stage1.stat().st_mtime_ns
    # leftovers of an interrupted stage 2 (an incomplete checkpoint) must not break the resume
    partial = stage2.parent / "checkpoints" / "step_2"
    partial.mkdir(parents=True)
    (partial / "garbage.bin").write_bytes(b"x")
    capsys.readouterr()

    assert run_demo(out, *args) == 0
    printed = capsys.readouterr().out
    assert "Stage 1 (retrieval) already finished" in printed
    assert stage1.stat().st_mtime_ns == stage1_mtime
    record = read_record(stage2.parent)
    assert [e["stage"] for e in record] == ["retrieval", "mlm"]
    assert record[0] == stage1_entry[0]  # stage 2 started from the untouched stage 1 folder
    results = json.loads((out / "results.json").read_text())
    assert [(r["task"], r["num_instances"]) for r in results["rows"]] == [("polarity", 1), ("polarity", 2)]
    assert os.path.isfile(out / "finetune" / "polarity_N2" / "model" / "README.md")


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found |= {int(c) for c in text.split()}
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_killing_the_demo_stops_its_worker_processes(tmp_path):
    """SIGKILL of the demo process must not leave its worker processes training in the background."""
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "mux_plms.cli", "demo", "--quick", "--jobs", "2", "--threads", "1",
               "--output-dir", str(tmp_path / "out")]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, workers = time.time() + 120, set()
        while time.time() < deadline and len(workers) < 2 and process.poll() is None:
            time.sleep(0.2)
            workers = {c for c in _children(process.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()}
        assert len(workers) >= 2, "the demo never started its worker processes"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers)
    finally:
        if process.poll() is None:
            process.kill()
