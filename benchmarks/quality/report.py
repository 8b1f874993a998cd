"""The ablation table and the quality-vs-minutes plot of the quality levers (``benchmarks/quality/levers.py``).

    python benchmarks/quality/report.py            # reads benchmarks/results/quality/runs.jsonl

Writes ``ablation.md`` (recipe x N -> metric, cost vs the N=1 run of the same task and steps, CPU minutes
including the pre-training the run started from, speed-up) and ``quality_vs_minutes_<task>.png`` (one curve
per recipe: the metric at every evaluation point against the CPU minutes spent so far, pre-training included),
next to the runs file. CPU minutes are one core's training minutes (evaluation excluded): the measured wall
time when the run had a core to itself (load <= 2.6 with two jobs), otherwise steps x the quiet step time
measured in the demo (:data:`QUIET_SECONDS_PER_STEP`); pre-training is counted at its quiet step time.
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


# Quiet seconds per step with one torch thread (each of two parallel jobs on its own core), measured in the
# committed demo run (fine-tuning, 8 backbone rows) and the distillation runs (16 mux rows x 32 tokens).
QUIET_SECONDS_PER_STEP = {("finetune", 1): 0.40, ("finetune", 2): 0.46, ("finetune", 5): 0.57, ("distill", 2): 1.3}
CONTENDED_LOAD = 2.6  # above this 1-minute load average two jobs did not have a core each: the wall time is inflated


def finetune_seconds(run: dict, seconds: float, step: int) -> float:
    """Training seconds of the fine-tuning up to `step`: measured when the run had a core, else estimated."""
    if run.get("load", 0.0) <= CONTENDED_LOAD:
        return seconds
    per_step = QUIET_SECONDS_PER_STEP.get(("finetune", run["num_instances"]))
    return step * per_step if per_step else seconds


def init_seconds(run: dict) -> float:
    """Training seconds of the pre-training the run started from (estimated from the quiet step time)."""
    total = 0.0
    for stage in run.get("init_stages") or []:
        per_step = QUIET_SECONDS_PER_STEP.get((stage.get("stage"), run["num_instances"]))
        total += (stage.get("steps") or 0) * per_step if per_step else 0.0
    return total or run.get("init_train_seconds", 0.0)


def minutes(run: dict, seconds: float, step: int | None = None) -> float:
    step = run["settings"]["steps"] if step is None else step
    return (init_seconds(run) + finetune_seconds(run, seconds, step)) / 60.0


# Measured speed-ups of the demo's models (benchmarks/results/demo/throughput_polarity.json) and the
# throughput bound L N / (k N + L - k) of the combine-first runs (MiniLM: L = 6).
MEASURED_SPEEDUP = {1: 1.0, 2: 288.2 / 150.7, 5: 567.8 / 150.7}


def speedup(run: dict) -> str:
    n = run["num_instances"]
    k = next((int(c.split("=")[1]) for c in run["settings"].get("config", []) if c.startswith("instance_layers=")), 0)
    if run["settings"].get("muxing") == "contextual" and n > 1:
        return f"<= {6 * n / (2 * n + 6):.2f}x (bound)"  # about one layer per instance + one across the N
    if k:
        return f"<= {6 * n / (k * n + 6 - k):.2f}x (bound)"
    return f"{MEASURED_SPEEDUP[n]:.2f}x" if n in MEASURED_SPEEDUP else ""


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
        "| run | task | N | recipe | metric | value | cost vs N=1 (points) | CPU minutes (1 core) | speed-up | load |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in sorted(runs, key=lambda r: (r["task"], r["num_instances"], r["name"])):
        base = baseline_for(run, runs)
        cost = "" if base is None else f"{100 * (base['value'] - run['value']):+.1f}"
        lines.append(
            f"| {run['name']} | {run['task']} | {run['num_instances']} | {describe(run)} | {run['metric']} | "
            f"{100 * run['value']:.1f} | {cost} | {minutes(run, run['train_seconds']):.1f} | {speedup(run)} | "
            f"{run.get('load', 0):.1f} |"
        )
    return "\n".join(lines) + "\n"


# The curves along which more CPU minutes were bought (polarity, N = 2): label -> (kind, runs, the N = 1 run
# at the same fine-tuning steps); each point is (CPU minutes, accuracy).
PROJECTED_CURVES = {
    "fine-tuning steps (one 1,500-step run, evaluated every 250 steps)": ("curve", "bin_rsa_s1500", "n1_s1500"),
    "fine-tuning steps (one 4,000-step run, evaluated every 500 steps)": ("curve", "bin_rsa_s4000", "n1_s1500"),
    "distillation steps, then 300 fine-tuning steps": (
        "finals",
        [
            "bin_rsa_s300",
            "distill200_bin_rsa_s300",
            "distill600_bin_rsa_s300",
            "distill2400run_at1200_s300",
            "distill2400run_at1800_s300",
            "distill2400_bin_rsa_s300",
        ],
        "n1_s300",
    ),  # fmt: skip
}
TARGET_POINTS = 3.0  # the N = 2 target: within 3 points of N = 1


def _curve_points(kind: str, spec, by_name: dict) -> list[tuple[float, float]]:
    if kind == "curve":
        run = by_name[spec]
        return [(minutes(run, p["train_seconds"], p["step"]), 100 * p[run["metric"]]) for p in run["curve"]]
    return sorted((minutes(by_name[n], by_name[n]["train_seconds"]), 100 * by_name[n]["value"]) for n in spec)


def saturating_fit(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Least-squares fit of ``y = a - b exp(-x / tau)`` (tau on a grid, a and b exact for each tau): (a, b, tau)."""
    import numpy as np

    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    best = None
    for tau in np.geomspace(0.5, 500.0, 400):
        design = np.stack([np.ones_like(x), -np.exp(-x / tau)], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        sse = float(((design @ np.array([a, b]) - y) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, float(a), float(b), float(tau))
    return best[1], best[2], best[3]


def last_slope(points: list[tuple[float, float]], count: int = 3) -> float:
    """Points per CPU minute over the last `count` points (least-squares line)."""
    import numpy as np

    x = np.array([p[0] for p in points[-count:]])
    y = np.array([p[1] for p in points[-count:]])
    return float(np.polyfit(x, y, 1)[0])


def projection(runs: list[dict]) -> str:
    """What the N = 2 target would take along each measured curve: at the slope of its last points, and by a
    saturating fit (its asymptote says whether any number of minutes gets there)."""
    import math

    by_name = {r["name"]: r for r in runs}
    lines = [
        f"Target: N = 2 within {TARGET_POINTS:g} points of the N = 1 model fine-tuned for as many steps. Generated by "
        "`report.py` from the runs above.",
        "",
        "| curve (polarity, N = 2) | target (N = 1 - 3) | last point (CPU-min, %) | slope of the last 3 points "
        "(points / CPU-min) | CPU-min to the target at that slope | fitted asymptote a - b exp(-t / tau) | "
        "tau (CPU-min) | CPU-min to the target on the fit |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for label, (kind, spec, reference) in PROJECTED_CURVES.items():
        names = [spec, reference] if kind == "curve" else [*spec, reference]
        if any(name not in by_name for name in names):
            continue
        target = 100 * by_name[reference]["value"] - TARGET_POINTS
        points = _curve_points(kind, spec, by_name)
        x_last, y_last = points[-1]
        slope = last_slope(points)
        at_slope = f"{x_last + (target - y_last) / slope:.0f}" if slope > 1e-3 else "never (slope <= 0)"
        a, b, tau = saturating_fit(points)
        on_fit = f"{-tau * math.log((a - target) / b):.0f}" if a > target and b > 0 else "never (asymptote below)"
        lines.append(
            f"| {label} | {target:.2f} | {x_last:.1f}, {y_last:.2f} | {slope:+.3f} | {at_slope} | {a:.1f} | {tau:.0f} | "
            f"{on_fit} |"
        )
    return "\n".join(lines) + "\n" if len(lines) > 4 else ""


def plot(runs: list[dict], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for task in sorted({r["task"] for r in runs}):
        fig, ax = plt.subplots(figsize=(10, 5))
        mine = sorted((r for r in runs if r["task"] == task), key=lambda r: r["name"])
        ax.set_prop_cycle(color=[plt.get_cmap("tab20")(i % 20) for i in range(len(mine))])
        for run in mine:
            xs = [minutes(run, p["train_seconds"], p["step"]) for p in run["curve"]]
            ys = [100 * p[run["metric"]] for p in run["curve"]]
            style = "--" if run["num_instances"] == 1 else "-"
            ax.plot(xs, ys, style + "o", markersize=3, label=f"{run['name']} (N={run['num_instances']})")
        ax.set_xlabel("CPU minutes (one core), pre-training included")
        ax.set_ylabel(f"{task} validation {runs[0]['metric'] if task == 'polarity' else 'F1'} (%)")
        ax.set_title(f"{task}: quality vs CPU minutes per recipe")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
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
    projected = projection(runs)
    if projected:
        text += "\n## What the N = 2 target would take along the measured curves\n\n" + projected
    (path.parent / "ablation.md").write_text("# Quality levers: ablation\n\n" + text)
    plot(runs, path.parent)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
