"""Markdown rendering of a benchmark payload."""

from __future__ import annotations

MIB = 2**20


def _mib(value) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def _settings_line(payload: dict) -> str:
    s, p, env = payload["settings"], payload["protocol"], payload["environment"]
    parts = [
        f"device {s['device']} ({env.get('processor', '?')}, {env.get('torch_threads')} threads)",
        f"dtype {s['dtype']}" + (" (autocast)" if s["autocast"] else ""),
        f"attention {s['attn_implementation']}",
        f"{s['rows']} backbone rows per forward",
        f"{p['warmup']} warm-up + median of {p['repeats']} interleaved timed forwards",
    ]
    if s["compile"]:
        parts.append("torch.compile")
    if s["quantize"]:
        scope = "every Linear layer" if s.get("quantize_scope") == "all" else "the backbone Linear layers"
        parts.append(f"{s['quantize']} dynamic quantization of {scope}")
    return "; ".join(parts)


def markdown_table(payload: dict) -> str:
    """One row per case: throughputs, speed-ups, the analytical bound, peak memory per instance."""
    results = payload["results"]
    composed = any(r.get("reference") for r in results)
    header = [
        "size",
        "L",
        "head",
        "variant",
        "N",
        "vanilla inst/s",
        "MUX inst/s",
        "speed-up",
        "paired",
        "MAC bound",
        "% of bound",
        "vanilla MiB/inst",
        "MUX MiB/inst",
    ]
    if composed:
        header += ["fp32 eager speed-up", "opt. gain (vanilla)", "MUX+opt total", "composition"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in results:
        c = r["case"]
        row = [
            c["size"],
            str(c["seq_length"]),
            c["head"],
            r["variant"],
            str(c["num_instances"]),
            f"{r['vanilla']['instances_per_s']:.1f}",
            f"{r['mux']['instances_per_s']:.1f}",
            f"{r['speedup']:.2f}x",
            f"{r['speedup_paired']:.2f}x",
            f"{r['analytical_bound']:.2f}x",
            f"{r['fraction_of_bound']:.0%}",
            _mib(r["vanilla"]["activation_peak_bytes_per_instance"]),
            _mib(r["mux"]["activation_peak_bytes_per_instance"]),
        ]
        if composed:
            ref = r.get("reference") or {}
            row += [
                f"{ref['speedup']:.2f}x" if ref else "-",
                f"{ref['optimization_gain_vanilla']:.2f}x" if ref else "-",
                f"{ref['total_speedup']:.2f}x" if ref else "-",
                f"{ref['composition_efficiency']:.2f}" if ref else "-",
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown_report(payload: dict, title: str = "Throughput and memory") -> str:
    env = payload["environment"]
    text = [
        f"# {title}",
        "",
        _settings_line(payload) + ".",
        "",
        f"torch {env['torch']}, transformers {env['transformers']}, created {payload['created']}, "
        f"load average {env.get('load_average_start')} at start, {env.get('load_average_end')} at the end, "
        f"{env.get('wall_time_s')} s in all.",
        "",
        "speed-up = MUX instances/s over vanilla instances/s (ratio of medians); paired = median of the "
        "per-repeat ratios; MAC bound = N x vanilla MACs / MUX MACs (matrix products only); MiB/inst = peak "
        "memory added by one forward, per instance.",
        "",
        markdown_table(payload),
        "",
    ]
    return "\n".join(text)
