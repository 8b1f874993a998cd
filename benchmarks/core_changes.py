"""Before/after numbers of `benchmarks/core_changes.diff`, the memory change of `mux_plms/models/`
(Hadamard mixing streamed slot by slot; the contextual multiplexer's layers run in N chunks).

The change is in the tree ("after"). The script copies `mux_plms/models/` into a temporary package and
reverse-applies the diff there to rebuild "before" (the tree is left untouched), checks that both compute
the same outputs (same seed, same weights), then times vanilla BERT, "before" and "after" interleaved,
and measures the peak forward memory of each in fresh subprocesses (as `mux-plms bench` does).

    python benchmarks/core_changes.py --rows 4 --threads 1 --output benchmarks/results/core_changes
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from mux_plms.bench import BenchCase, RunSettings, build_model, time_interleaved
from mux_plms.bench.memory import CHILD_MALLOC_ENV, cpu_forward_peak
from mux_plms.bench.models import make_forward, make_inputs

HERE = Path(__file__).resolve().parent
DIFF = HERE / "core_changes.diff"
PACKAGE = "mux_models_before"
MIB = 2**20
DEFAULT_CASES = [
    ("sequence", "gaussian_hadamard", "rsa", 10),
    ("token", "gaussian_hadamard", "rsa", 10),
    ("sequence", "contextual", "prefix", 2),
    ("sequence", "contextual", "prefix", 10),
    ("token", "contextual", "prefix", 10),
]


def models_before(workdir: Path):
    """Import a copy of `mux_plms/models/` with the diff reversed, as the package ``mux_models_before``."""
    import mux_plms.models

    target = workdir / PACKAGE
    if not target.exists():
        shutil.copytree(Path(mux_plms.models.__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["patch", "-s", "-R", "-p3", "-d", str(target), "-i", str(DIFF)], check=True)
    sys.path.insert(0, str(workdir))
    return importlib.import_module(PACKAGE)


def build(case: BenchCase, side: str, settings: RunSettings, workdir: Path):
    """side: vanilla | before | after."""
    if side == "vanilla":
        return build_model(case, "vanilla", settings)[0]
    return build_model(case, "mux", settings, models_before(workdir) if side == "before" else None)[0]


def child() -> None:
    """Memory measurement in a fresh process: request (JSON) on stdin, answer (JSON) on stdout."""
    request = json.loads(sys.stdin.read())
    torch.set_num_threads(request["threads"])
    case, settings = BenchCase(**request["case"]), RunSettings(**request["settings"])
    model = build(case, request["side"], settings, Path(request["workdir"]))
    side = "vanilla" if request["side"] == "vanilla" else "mux"
    peak, method = cpu_forward_peak(make_forward(model, make_inputs(case, side, settings), settings))
    print(json.dumps({"activation_peak_bytes": peak, "method": method}))


def measure_memory(case, side, settings, workdir, threads) -> int:
    request = {"case": case.to_dict(), "side": side, "settings": settings.to_dict()}
    request.update(workdir=str(workdir), threads=threads)
    result = subprocess.run(
        [sys.executable, __file__, "--child"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        env={**__import__("os").environ, **CHILD_MALLOC_ENV},
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])["activation_peak_bytes"]


def max_difference(case, settings, models) -> float:
    inputs = make_inputs(case, "mux", settings)
    with torch.inference_mode():
        before, after = (models[side](**inputs).logits for side in ("before", "after"))
    return (before - after).abs().max().item()


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="mux_patch_"))
    settings = RunSettings(rows=args.rows)
    results = []
    vanilla_memory: dict = {}
    for head, mux, demux, n in DEFAULT_CASES:
        case = BenchCase(args.size, head, args.length, n, mux, demux)
        models = {side: build(case, side, settings, workdir) for side in ("vanilla", "before", "after")}
        difference = max_difference(case, settings, models)
        forwards = {
            side: make_forward(model, make_inputs(case, "vanilla" if side == "vanilla" else "mux", settings), settings)
            for side, model in models.items()
        }
        times = time_interleaved(forwards, args.warmup, args.repeats)
        del models, forwards
        memory = {}
        if not args.no_memory:
            if case.baseline_key not in vanilla_memory:
                vanilla_memory[case.baseline_key] = measure_memory(case, "vanilla", settings, workdir, args.threads)
            memory = {"vanilla": vanilla_memory[case.baseline_key]}
            memory.update(
                {side: measure_memory(case, side, settings, workdir, args.threads) for side in ("before", "after")}
            )
        medians = {side: statistics.median(t) for side, t in times.items()}
        record = {
            "case": case.to_dict(),
            "max_abs_logit_difference": difference,
            "times_s": times,
            "speedup_before": n * medians["vanilla"] / medians["before"],
            "speedup_after": n * medians["vanilla"] / medians["after"],
            "mux_time_ratio_after_over_before": medians["after"] / medians["before"],
            "speedup_paired_before": statistics.median(n * v / b for v, b in zip(times["vanilla"], times["before"])),
            "speedup_paired_after": statistics.median(n * v / a for v, a in zip(times["vanilla"], times["after"])),
            "activation_peak_bytes": memory,
            "peak_per_instance_mib": {
                side: value / MIB / (settings.rows * (1 if side == "vanilla" else n)) for side, value in memory.items()
            },
        }
        results.append(record)
        print(json.dumps({k: record[k] for k in ("case", "speedup_before", "speedup_after", "peak_per_instance_mib")}))
    shutil.rmtree(workdir, ignore_errors=True)
    return {"settings": settings.to_dict(), "threads": args.threads, "repeats": args.repeats, "results": results}


def markdown(payload: dict) -> str:
    lines = [
        "| head | variant | N | speed-up before | after | paired before | paired after | MUX time after/before "
        "| MiB/inst vanilla | before | after | max logit diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["results"]:
        c, m = r["case"], r["peak_per_instance_mib"]
        mem = [f"{m[s]:.2f}" if s in m else "-" for s in ("vanilla", "before", "after")]
        lines.append(
            f"| {c['head']} | {c['muxing_variant']}+{c['demuxing_variant']} | {c['num_instances']} "
            f"| {r['speedup_before']:.2f}x | {r['speedup_after']:.2f}x | {r['speedup_paired_before']:.2f}x "
            f"| {r['speedup_paired_after']:.2f}x | {r['mux_time_ratio_after_over_before']:.3f} | {' | '.join(mem)} "
            f"| {r['max_abs_logit_difference']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    if "--child" in sys.argv:
        child()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "core_changes")
    args = parser.parse_args()
    payload = run(args)
    args.output.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    args.output.with_suffix(".md").write_text(markdown(payload))
    print(markdown(payload))


if __name__ == "__main__":
    main()
