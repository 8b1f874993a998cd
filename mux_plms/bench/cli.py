"""`mux-plms bench`: throughput and peak memory of MUX-BERT against vanilla BERT.

List options take comma-separated values (space-separated ones work too). Example (the committed CPU
results)::

    mux-plms bench --sizes base --lengths 128 --heads sequence,token --num-instances 1,2,5,10 \\
        --output-dir benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from ..utils.cli_types import ListHelpFormatter, add_list_argument
from .sizes import HEADS, SIZES

# The option values of the parser, written out so that `mux-plms bench --help` imports neither torch nor the
# model code. tests/test_cli.py checks them against their sources: MUXING_VARIANTS / DEMUXING_VARIANTS
# (mux_plms.models.configuration_mux_bert) and DTYPES, QUANTIZATIONS, QUANTIZE_SCOPES, ATTN_IMPLEMENTATIONS
# (mux_plms.bench.models).
MUXING_CHOICES = ("gaussian_hadamard", "binary_hadamard", "random_ortho", "contextual")
DEMUXING_CHOICES = ("rsa", "prefix", "mlp")
DTYPE_CHOICES = ("fp32", "bf16", "fp16")
QUANTIZATION_CHOICES = ("int8",)
QUANTIZE_SCOPE_CHOICES = ("backbone", "all")
ATTN_IMPLEMENTATION_CHOICES = ("sdpa", "eager")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    grid = parser.add_argument_group("what to measure (every combination is a case)")
    add_list_argument(grid, "--sizes", choices=SIZES, default=["base"], metavar="SIZE", help="backbone sizes")
    add_list_argument(
        grid, "--num-instances", "-N", item_type=int, default=[1, 2, 5, 10, 20], metavar="N",
        help="values of N (default: 1,2,5,10,20)",
    )  # fmt: skip
    add_list_argument(
        grid, "--lengths", item_type=int, default=[128], metavar="L", help="sequence lengths (tokens per instance)"
    )
    add_list_argument(grid, "--heads", choices=HEADS, default=list(HEADS), metavar="HEAD", help="task heads")
    add_list_argument(
        grid, "--muxing", choices=MUXING_CHOICES, default=["gaussian_hadamard", "contextual"], metavar="MUX",
        help="multiplexers",
    )  # fmt: skip
    add_list_argument(
        grid, "--demuxing", choices=DEMUXING_CHOICES, default=["rsa", "prefix"], metavar="DEMUX",
        help="demultiplexers",
    )  # fmt: skip
    add_list_argument(
        grid,
        "--variants",
        default=None,
        metavar="MUX+DEMUX",
        help="explicit pairs, e.g. gaussian_hadamard+rsa,contextual+prefix (instead of --muxing x --demuxing)",
    )

    how = parser.add_argument_group("how to measure")
    how.add_argument(
        "--rows", type=int, default=8, help="backbone rows per forward (vanilla batch; MUX batch = rows*N)"
    )
    how.add_argument("--repeats", type=int, default=5, help="timed forwards per side (median; at least 5)")
    how.add_argument(
        "--warmup", type=int, default=None, help="discarded forwards per side (default 1, 2 with --compile)"
    )
    how.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    how.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    how.add_argument("--attn-implementation", default="sdpa", choices=ATTN_IMPLEMENTATION_CHOICES)
    how.add_argument("--seed", type=int, default=0)
    how.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    how.add_argument(
        "--memory-process",
        default="worker",
        choices=["worker", "fresh"],
        help="CPU memory: one measurement subprocess for the run (worker) or a new one per measurement (fresh)",
    )
    how.add_argument("--profile", action="store_true", help="torch.profiler stage breakdown and top ops per case")

    opt = parser.add_argument_group("composability (applied to both sides)")
    opt.add_argument("--dtype", default="fp32", choices=DTYPE_CHOICES, help="cast the weights (or autocast)")
    opt.add_argument("--autocast", action="store_true", help="keep fp32 weights, run under torch.autocast(--dtype)")
    opt.add_argument("--compile", action="store_true", help="torch.compile both models")
    opt.add_argument("--quantize", default=None, choices=QUANTIZATION_CHOICES, help="dynamic quantization (CPU)")
    opt.add_argument(
        "--quantize-scope",
        default="backbone",
        choices=QUANTIZE_SCOPE_CHOICES,
        help="quantize the backbone's Linear layers only, or every Linear (demultiplexer and heads included)",
    )
    opt.add_argument(
        "--no-reference",
        action="store_true",
        help="with an optimisation, do not time the fp32 eager models alongside (faster, no composability numbers)",
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--output-dir", type=Path, default=None, help="default: ./bench_results (with --replot: the JSON's folder)"
    )
    out.add_argument("--name", default=None, help="file-name stem (default: device, sizes, lengths, optimisations)")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    out.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: re-render the plots and the markdown table of an earlier run's JSON",
    )


def _split_variant(variant: str) -> tuple[list[str], list[str]]:
    from mux_plms.models.configuration_mux_utils import DEMUXING_VARIANTS, MUXING_VARIANTS

    mux, _, demux = variant.partition("+")
    if mux not in MUXING_VARIANTS or demux not in DEMUXING_VARIANTS:
        raise ValueError(
            f"--variants entries must be MUX+DEMUX with MUX in {', '.join(MUXING_VARIANTS)} and DEMUX in "
            f"{', '.join(DEMUXING_VARIANTS)}; got {variant!r}"
        )
    return [mux], [demux]


def default_name(args: argparse.Namespace, device: str) -> str:
    parts = [device, "-".join(args.sizes), "L" + "-".join(str(x) for x in args.lengths)]
    if args.dtype != "fp32":
        parts.append(args.dtype + ("-autocast" if args.autocast else ""))
    if args.compile:
        parts.append("compile")
    if args.quantize:
        parts.append(args.quantize + ("-all" if args.quantize_scope == "all" else ""))
    return "_".join(parts)


def write_outputs(payload: dict, output_dir: Path, name: str) -> list[Path]:
    """Write ``<name>.json``, ``<name>.md`` and the plots; returns the written paths."""
    from .plots import write_plots
    from .report import markdown_report

    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    md_path = output_dir / f"{name}.md"
    md_path.write_text(markdown_report(payload, title=f"Throughput and memory: {name}"))
    written = [json_path, md_path, *write_plots(payload, output_dir, name)]
    if any("profile" in record for record in payload["results"]):
        from .profiling import format_profile

        lines = []
        for record in payload["results"]:
            for side in ("mux", "vanilla"):
                lines.append(format_profile(f"== {record['slug']} [{side}]", record["profile"][side]))
        profile_path = output_dir / f"{name}_profile.txt"
        profile_path.write_text("\n\n".join(lines) + "\n")
        written.append(profile_path)
    return written


def run(args: argparse.Namespace) -> int:
    import torch

    from .models import RunSettings
    from .throughput import SCHEMA_VERSION, build_cases, run_benchmark

    if args.replot is not None:
        payload = json.loads(Path(args.replot).read_text())
        if payload.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"--replot needs a schema_version {SCHEMA_VERSION} JSON; got {payload.get('schema_version')!r}"
            )
        name = args.name or Path(args.replot).stem
        output_dir = args.output_dir or Path(args.replot).parent
        written = write_outputs(payload, output_dir, name)
        print("wrote " + ", ".join(str(p) for p in written))
        return 0

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch.cuda.is_available() is False")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.repeats < 5:
        warnings.warn(f"--repeats {args.repeats}: fewer than 5 timed runs; medians will be noisy", stacklevel=2)
    bad = [n for n in args.num_instances if n < 1]
    if bad:
        raise ValueError(f"--num-instances must be >= 1, got {bad}")
    warmup = args.warmup if args.warmup is not None else (2 if args.compile else 1)
    settings = RunSettings(
        rows=args.rows,
        device=device,
        dtype=args.dtype,
        autocast=args.autocast,
        compile=args.compile,
        quantize=args.quantize,
        quantize_scope=args.quantize_scope,
        attn_implementation=args.attn_implementation,
        seed=args.seed,
    )
    if args.variants:
        cases = [
            case
            for variant in args.variants
            for case in build_cases(args.sizes, args.lengths, args.heads, *_split_variant(variant), args.num_instances)
        ]
        cases.sort(key=lambda c: (args.sizes.index(c.size), args.lengths.index(c.seq_length), args.heads.index(c.head)))
    else:
        cases = build_cases(args.sizes, args.lengths, args.heads, args.muxing, args.demuxing, args.num_instances)
    payload = run_benchmark(
        cases,
        settings,
        warmup=warmup,
        repeats=args.repeats,
        memory=not args.no_memory,
        reference=settings.optimized and not args.no_reference,
        threads=args.threads,
        profile=args.profile,
        progress=not args.quiet,
        fresh_memory_process=args.memory_process == "fresh",
    )
    name = args.name or default_name(args, device)
    output_dir = args.output_dir or Path("bench_results")
    written = write_outputs(payload, output_dir, name)
    print((output_dir / f"{name}.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mux-plms bench", description=__doc__.splitlines()[0], formatter_class=ListHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
