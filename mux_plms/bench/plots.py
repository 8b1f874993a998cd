"""PNG plots of a benchmark payload (matplotlib, Agg backend): speed-up vs N against the ideal N,
the analytical bounds and the published figures; peak memory per instance vs N; composability; quality vs
throughput of fine-tuned models (the demo's)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

# Published throughput speed-ups, for comparison (different hardware, models and protocols).
DATAMUX_PUBLISHED = {2: 1.3, 5: 3.2, 10: 6.1, 20: 11.1, 40: 18.3}  # DataMUX (Murahari et al., 2022), 12 layers
MUX_PLMS_PUBLISHED = {2: 2.0, 5: 5.0}  # MUX-PLMs (Murahari et al., 2023), MUX-BERT base, approx.

MIB = 2**20


CAVEAT_COLOR = "tab:red"


def add_caveat(fig, caveat: str | None, title: str | None = None) -> dict[str, str]:
    """Mark a figure whose numbers must not be read as results (a smoke test): `caveat` in red as its
    super-title, under `title` when given. Returns the PNG metadata to pass to ``savefig(metadata=...)`` (the
    title and the caveat as text chunks: the mark survives cropping)."""
    metadata = {"Title": title} if title else {}
    if caveat:
        fig.suptitle(caveat if not title else f"{title}\n{caveat}", color=CAVEAT_COLOR, fontweight="bold")
        metadata["Description"] = caveat
    elif title:
        fig.suptitle(title)
    return metadata


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _groups(results: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """Results by (size, seq_length): one figure each."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for record in results:
        groups[(record["case"]["size"], record["case"]["seq_length"])].append(record)
    return groups


def _series(records: list[dict], head: str) -> dict[str, list[dict]]:
    series: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if record["case"]["head"] == head:
            series[record["variant"]].append(record)
    for points in series.values():
        points.sort(key=lambda r: r["case"]["num_instances"])
    return series


def _heads(records: list[dict]) -> list[str]:
    return sorted({r["case"]["head"] for r in records}, key=["sequence", "token"].index)


def _n_axis(ax, ns: list[int]) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    # label the 2x and 5x minor ticks of each decade only
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if f"{y:.0e}"[0] in "25" else ""))
    ax.set_xlabel("N (instances per backbone row)")
    ax.grid(True, which="both", alpha=0.3)


def plot_speedup(records: list[dict], path: Path, title: str) -> Path:
    """Measured speed-up over vanilla BERT vs N, one panel per task head."""
    plt = _pyplot()
    heads = _heads(records)
    fig, axes = plt.subplots(1, len(heads), figsize=(6.5 * len(heads), 5), squeeze=False)
    measured_ns = sorted({r["case"]["num_instances"] for r in records})
    ns = sorted(set(measured_ns) | set(DATAMUX_PUBLISHED))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, head in zip(axes[0], heads):
        ax.plot(ns, ns, "k--", lw=1, label="ideal (N)")
        ax.plot(
            list(DATAMUX_PUBLISHED), list(DATAMUX_PUBLISHED.values()), "s", color="gray", label="DataMUX (published)"
        )
        ax.plot(
            list(MUX_PLMS_PUBLISHED),
            list(MUX_PLMS_PUBLISHED.values()),
            "^",
            color="black",
            label="MUX-PLMs (published, approx.)",
        )
        for color, (variant, points) in zip(colors, _series(records, head).items()):
            x = [p["case"]["num_instances"] for p in points]
            ax.plot(x, [p["speedup"] for p in points], "o-", color=color, label=f"{variant} (measured)")
            ax.plot(x, [p["analytical_bound"] for p in points], ":", color=color, label=f"{variant} (MAC bound)")
        _n_axis(ax, ns)
        ax.set_ylabel("throughput speed-up over vanilla BERT")
        ax.set_title(f"{head} classification")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory(records: list[dict], path: Path, title: str) -> Path | None:
    """Peak forward memory per instance vs N (vanilla as a horizontal line)."""
    if all(r["mux"]["activation_peak_bytes_per_instance"] is None for r in records):
        return None
    plt = _pyplot()
    heads = _heads(records)
    fig, axes = plt.subplots(1, len(heads), figsize=(6.5 * len(heads), 5), squeeze=False)
    ns = sorted({r["case"]["num_instances"] for r in records})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, head in zip(axes[0], heads):
        vanilla = [
            r["vanilla"]["activation_peak_bytes_per_instance"]
            for r in records
            if r["case"]["head"] == head and r["vanilla"]["activation_peak_bytes_per_instance"]
        ]
        if vanilla:
            ax.axhline(sum(vanilla) / len(vanilla) / MIB, color="k", ls="--", lw=1, label="vanilla BERT")
        for color, (variant, points) in zip(colors, _series(records, head).items()):
            points = [p for p in points if p["mux"]["activation_peak_bytes_per_instance"]]
            x = [p["case"]["num_instances"] for p in points]
            y = [p["mux"]["activation_peak_bytes_per_instance"] / MIB for p in points]
            ax.plot(x, y, "o-", color=color, label=variant)
        _n_axis(ax, ns)
        ax.set_ylabel("peak forward memory per instance (MiB)")
        ax.set_title(f"{head} classification")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_composability(records: list[dict], path: Path, title: str) -> Path | None:
    """Speed-ups with and without the optimisation, the product of the two gains and the measured total."""
    records = [r for r in records if r.get("reference")]
    if not records:
        return None
    plt = _pyplot()
    heads = _heads(records)
    fig, axes = plt.subplots(1, len(heads), figsize=(6.5 * len(heads), 5), squeeze=False)
    ns = sorted({r["case"]["num_instances"] for r in records})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, head in zip(axes[0], heads):
        ax.plot(ns, ns, "k--", lw=1, label="ideal (N)")
        for color, (variant, points) in zip(colors, _series(records, head).items()):
            x = [p["case"]["num_instances"] for p in points]
            ref = [p["reference"] for p in points]
            ax.plot(
                x, [r["speedup"] for r in ref], "o:", color=color, label=f"{variant}: MUX vs vanilla, both fp32 eager"
            )
            ax.plot(
                x,
                [p["speedup"] for p in points],
                "s-.",
                color=color,
                label=f"{variant}: MUX vs vanilla, both optimised",
            )
            ax.plot(
                x,
                [r["total_speedup"] for r in ref],
                "D-",
                color=color,
                label=f"{variant}: optimised MUX vs fp32 eager vanilla",
            )
            product = [r["optimization_gain_vanilla"] * r["speedup"] for r in ref]
            ax.plot(x, product, "x--", color=color, alpha=0.6, label=f"{variant}: product of the two gains")
        _n_axis(ax, ns)
        ax.set_ylabel("throughput speed-up")
        ax.set_title(f"{head} classification")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_quality_results(rows: list[dict], folder: Path, caveat: str | None = None) -> list[Path]:
    """Quality results of fine-tuned models at several N (rows of ``task``, ``num_instances``, ``metric``,
    ``value`` in [0, 1], ``instances_per_second``; the demo's results): ``quality_vs_throughput.png`` (one panel per task, N=1 marked) and ``throughput_vs_n.png``; `caveat` (a
    smoke test) is written in red above the panels of both and into their PNG metadata."""
    plt = _pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        xs = [r["instances_per_second"] for r in mine]
        ys = [100 * r["value"] for r in mine]
        ax.plot(xs, ys, "-o", color="tab:blue")
        for r, x, y in zip(mine, xs, ys):
            style = {"color": "tab:red", "marker": "*", "markersize": 14} if r["num_instances"] == 1 else {}
            if style:
                ax.plot([x], [y], linestyle="none", **style, label="N=1 (no multiplexing)")
            ax.annotate(f"N={r['num_instances']}", (x, y), textcoords="offset points", xytext=(5, 5))
        ax.set_xlabel("evaluation throughput (instances/s)")
        ax.set_ylabel(f"{mine[0]['metric']} (%)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    metadata = add_caveat(fig, caveat, "Quality vs throughput" if caveat else None)
    fig.tight_layout()
    quality = folder / "quality_vs_throughput.png"
    fig.savefig(quality, dpi=110, metadata=metadata)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    for task in tasks:
        mine = [r for r in rows if r["task"] == task]
        ax.plot([r["num_instances"] for r in mine], [r["instances_per_second"] for r in mine], "-o", label=task)
    ns = sorted({r["num_instances"] for r in rows})
    ax.set_xticks(ns)
    ax.set_xlabel("N (multiplexed instances)")
    ax.set_ylabel("instances/s")
    title = "Throughput vs N (same backbone rows)"
    if caveat:
        metadata = add_caveat(fig, caveat, title)
    else:
        ax.set_title(title)
        metadata = {"Title": title}
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    speed = folder / "throughput_vs_n.png"
    fig.savefig(speed, dpi=110, metadata=metadata)
    plt.close(fig)
    return [quality, speed]


def write_plots(payload: dict, output_dir: Path, name: str) -> list[Path]:
    """Write every plot of `payload` into `output_dir`; returns the written paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = payload["settings"]
    tag = settings["device"] + (f", {settings['dtype']}" if settings["dtype"] != "fp32" else "")
    tag += ", compiled" if settings["compile"] else ""
    tag += f", {settings['quantize']} dynamic quantization" if settings["quantize"] else ""
    written = []
    groups = _groups(payload["results"])
    for (size, length), records in groups.items():
        stem = name if len(groups) == 1 else f"{name}_{size}_L{length}"
        title = f"MUX-BERT {size} vs BERT {size}, length {length}, {settings['rows']} rows per forward ({tag})"
        written.append(plot_speedup(records, output_dir / f"{stem}_speedup.png", title))
        for plot, suffix in ((plot_memory, "memory"), (plot_composability, "composability")):
            path = plot(records, output_dir / f"{stem}_{suffix}.png", title)
            if path is not None:
                written.append(path)
    return written
