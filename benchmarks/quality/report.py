"""The ablation table and the quality-vs-minutes plot of the quality levers (``benchmarks/quality/levers.py``).

    python benchmarks/quality/report.py            # reads benchmarks/results/quality/runs.jsonl

Writes ``ablation.md`` (recipe x N -> metric, cost vs the N=1 run of the same task and steps, training minutes
including the pre-training the run started from) and ``quality_vs_minutes_<task>.png`` (one curve per recipe:
the metric at every evaluation point against the training minutes spent so far, pre-training included), next
to the runs file. Minutes are wall-clock minutes of training on this 2-core machine (evaluation excluded), at
the thread count and machine load recorded with each run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "benchmarks/results/quality/runs.jsonl"


def read_runs(path: Path) -> list[dict]:
    runs = {}
    for line in path.read_text().splitlines():
        if line.strip():
            run = json.loads(line)
            runs[run["name"]] = run  # a re-run of a name replaces it
    return list(runs.values())


def baseline_for(run: dict, runs: list[dict]) -> dict | None:
    """The N=1 run of the same task with the most steps not above this run's."""
    candidates = [r for r in runs if r["task"] == run["task"] and r["num_instances"] == 1]
    candidates.sort(key=lambda r: r["settings"]["steps"])
    best = None
    for candidate in candidates:
        if candidate["settings"]["steps"] <= run["settings"]["steps"]:
            best = candidate
    return best or (candidates[0] if candidates else None)


def minutes(run: dict, seconds: float) -> float:
    return (run.get("init_train_seconds", 0.0) + seconds) / 60.0


def describe(run: dict) -> str:
    s = run["settings"]
    parts = []
    if run["num_instances"] > 1:
        parts.append(f"{s['muxing']}+{s['demuxing']}")
    if run.get("init_stages"):
        stages = []
        for e in run["init_stages"]:
            extra = ""
            if (e.get("distillation") or {}).get("pooled_coeff"):
                extra = f" (+pooled x{e['distillation']['pooled_coeff']:g})"
            stages.append(f"{e['stage']}:{e['steps']}{extra}")
        parts.append("init " + "+".join(stages))
    elif s.get("init") not in (None, "minilm"):
        parts.append(f"init {Path(s['init']).name}")
    parts.append(f"FT {s['steps']} steps, lr {s['lr']:g}")
    if s.get("key_scale"):
        parts.append(f"keys x{s['key_scale']:g}")
    if s.get("learn_keys"):
        parts.append("learned keys")
    if s.get("curriculum"):
        parts.append(f"single-instance curriculum {s['curriculum']:.0%}")
    if s.get("instance_layer_from") is not None:
        parts.append(f"instance layer from layer {s['instance_layer_from']}")
    if s.get("teacher"):
        parts.append(f"logit KD a={s['alpha']} T={s['temperature']}")
    if run["num_instances"] > 1 and s.get("pooling"):
        parts.append(f"{s['pooling']} pooling")
    if s.get("new_lr_scale", 1.0) != 1.0:
        parts.append(f"new modules lr x{s['new_lr_scale']:g}")
    if s.get("config"):
        parts.append(" ".join(s["config"]))
    return ", ".join(parts)


def table(runs: list[dict]) -> str:
    lines = [
        "| run | task | N | recipe | metric | value | cost vs N=1 (points) | training minutes | load |",
        "|---|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for run in sorted(runs, key=lambda r: (r["task"], r["num_instances"], r["name"])):
        base = baseline_for(run, runs)
        cost = "" if base is None else f"{100 * (base['value'] - run['value']):+.1f}"
        lines.append(
            f"| {run['name']} | {run['task']} | {run['num_instances']} | {describe(run)} | {run['metric']} | "
            f"{100 * run['value']:.1f} | {cost} | {minutes(run, run['train_seconds']):.1f} | "
            f"{run.get('load', 0):.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for task in sorted({r["task"] for r in runs}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run in sorted((r for r in runs if r["task"] == task), key=lambda r: r["name"]):
            xs = [minutes(run, p["train_seconds"]) for p in run["curve"]]
            ys = [100 * p[run["metric"]] for p in run["curve"]]
            style = "--" if run["num_instances"] == 1 else "-"
            ax.plot(xs, ys, style + "o", markersize=3, label=f"{run['name']} (N={run['num_instances']})")
        ax.set_xlabel("training minutes, pre-training included (2-core CPU)")
        ax.set_ylabel(f"{task} validation {runs[0]['metric'] if task == 'polarity' else 'F1'} (%)")
        ax.set_title(f"{task}: quality vs training minutes per recipe")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = folder / f"quality_vs_minutes_{task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(DEFAULT))
    args = parser.parse_args(argv)
    path = Path(args.runs)
    runs = read_runs(path)
    text = table(runs)
    (path.parent / "ablation.md").write_text("# Quality levers: ablation\n\n" + text)
    plot(runs, path.parent)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
