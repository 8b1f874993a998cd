"""Throughput and peak memory of MUX models against the vanilla transformers model with the same backbone.

Protocol (per case):

* Both sides run the same number of backbone rows R per forward: the vanilla model gets R instances,
  the MUX model R*N instances (R mixtures). Inputs are random full-length sequences.
* Both models are built once, in eval mode, on the same device with the same attention implementation
  and the same optimisations (dtype, quantization, compilation).
* Warm-up forwards are discarded; then ``repeats`` timed forwards of each side are *interleaved*
  (vanilla, MUX, MUX, vanilla, ...) under ``torch.inference_mode()``, so a slow phase of a shared
  machine hits both sides. Throughput = instances / median time. ``speedup`` is the ratio of the two
  median throughputs; ``speedup_paired`` the median of the per-repeat ratios (more robust to drift).
* With an optimisation switched on, the fp32 eager models ("reference") are timed in the same
  interleaving, which shows whether the optimisation's gain multiplies with multiplexing.
* Peak memory per forward is measured separately (see :mod:`mux_plms.bench.memory`).
"""

from __future__ import annotations

import datetime as _dt
import gc
import itertools
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .cost_model import analytical_bound, layer_pass_bound
from .memory import MemoryProbe
from .models import RunSettings, build_model, instances_per_forward, make_forward, make_inputs, synchronize
from .sizes import BenchCase

SCHEMA_VERSION = 1
RESULT_KEYS = (
    "case",
    "slug",
    "variant",
    "layers",
    "hidden",
    "rows",
    "mux",
    "vanilla",
    "speedup",
    "speedup_paired",
    "analytical_bound",
    "layer_pass_bound",
    "fraction_of_bound",
    "memory_per_instance_ratio",
)
SIDE_KEYS = (
    "instances_per_forward",
    "parameters",
    "times_s",
    "median_s",
    "instances_per_s",
    "activation_peak_bytes",
    "activation_peak_bytes_per_instance",
    "weights_bytes",
    "memory_method",
)


def build_cases(
    sizes: Iterable[str],
    lengths: Iterable[int],
    heads: Iterable[str],
    muxing_variants: Iterable[str],
    demuxing_variants: Iterable[str],
    num_instances: Iterable[int],
) -> list[BenchCase]:
    """Every combination, ordered so that cases sharing a vanilla model are consecutive."""
    product = itertools.product(sizes, lengths, heads, muxing_variants, demuxing_variants, num_instances)
    return [BenchCase(size, head, length, n, mux, demux) for size, length, head, mux, demux, n in product]


def time_interleaved(
    forwards: dict[str, Callable[[], None]], warmup: int, repeats: int, device: str = "cpu"
) -> dict[str, list[float]]:
    """Seconds per call of each forward: `warmup` discarded rounds, then `repeats` timed rounds in
    alternating order (ABBA...), so that slow phases of a shared machine hit every forward alike."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    names = list(forwards)
    for _ in range(warmup):
        for name in names:
            forwards[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            synchronize(device)
            start = time.perf_counter()
            forwards[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def environment(settings: RunSettings, threads: int | None) -> dict:
    """What the numbers depend on: versions, hardware, threads, load."""
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "device": settings.device,
        "load_average_start": _load_average(),
        "git_commit": _git_commit(),
    }
    if settings.device == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class _ModelCache:
    """Keeps the vanilla model(s) of the current baseline key; MUX models are built per case."""

    def __init__(self):
        self.key = None
        self.entries: dict[str, tuple] = {}

    def get(self, case: BenchCase, role: str, settings: RunSettings):
        key = (case.baseline_key, settings.rows)
        if key != self.key:
            self.entries.clear()
            gc.collect()
            self.key = key
        if role not in self.entries:
            model, parameters = build_model(case, "vanilla", settings)
            inputs = make_inputs(case, "vanilla", settings)
            self.entries[role] = (model, parameters, make_forward(model, inputs, settings))
        return self.entries[role]


def _side_record(case, side, settings, parameters, times, memory) -> dict:
    instances = instances_per_forward(case, side, settings)
    median = statistics.median(times)
    record = {
        "instances_per_forward": instances,
        "parameters": parameters,
        "times_s": list(times),
        "median_s": median,
        "instances_per_s": instances / median,
        "activation_peak_bytes": None,
        "activation_peak_bytes_per_instance": None,
        "weights_bytes": None,
        "memory_method": None,
    }
    if memory is not None:
        record["activation_peak_bytes"] = memory["activation_peak_bytes"]
        record["activation_peak_bytes_per_instance"] = memory["activation_peak_bytes"] / instances
        record["weights_bytes"] = memory["weights_bytes"]
        record["memory_method"] = memory["method"]
    return record


def _speedups(case: BenchCase, fast: list[float], slow: list[float]) -> tuple[float, float]:
    """(ratio of median throughputs, median of per-repeat ratios): `fast` runs N times the instances."""
    n = case.num_instances
    by_median = n * statistics.median(slow) / statistics.median(fast)
    paired = statistics.median(n * s / f for s, f in zip(slow, fast))
    return by_median, paired


def measure_case(
    case: BenchCase,
    settings: RunSettings,
    cache: _ModelCache,
    *,
    warmup: int,
    repeats: int,
    memory: MemoryProbe | None,
    reference: bool,
    memory_cache: dict,
    profile: bool = False,
) -> dict:
    """Time (and measure the memory of) one case against its vanilla twin."""
    mux_model, mux_parameters = build_model(case, "mux", settings)
    mux_forward = make_forward(mux_model, make_inputs(case, "mux", settings), settings)
    vanilla_model, vanilla_parameters, vanilla_forward = cache.get(case, "vanilla", settings)
    forwards = {"vanilla": vanilla_forward, "mux": mux_forward}
    ref_settings = settings.reference()
    if reference:
        ref_model, _ = build_model(case, "mux", ref_settings)
        ref_forward = make_forward(ref_model, make_inputs(case, "mux", ref_settings), ref_settings)
        forwards["vanilla_reference"] = cache.get(case, "vanilla_reference", ref_settings)[2]
        forwards["mux_reference"] = ref_forward
    times = time_interleaved(forwards, warmup, repeats, settings.device)

    mux_memory = vanilla_memory = None
    if memory:
        mux_memory = memory.measure(case, "mux", settings)
        key = (case.baseline_key, settings)
        if key not in memory_cache:
            memory_cache[key] = memory.measure(case, "vanilla", settings)
        vanilla_memory = memory_cache[key]

    speedup, paired = _speedups(case, times["mux"], times["vanilla"])
    bound = analytical_bound(case, settings.num_hidden_demux_layers)
    size = case.backbone
    record = {
        "case": case.to_dict(),
        "slug": case.slug(),
        "variant": case.variant,
        "layers": size.layers,
        "hidden": size.hidden,
        "rows": settings.rows,
        "mux": _side_record(case, "mux", settings, mux_parameters, times["mux"], mux_memory),
        "vanilla": _side_record(case, "vanilla", settings, vanilla_parameters, times["vanilla"], vanilla_memory),
        "speedup": speedup,
        "speedup_paired": paired,
        "analytical_bound": bound,
        "layer_pass_bound": layer_pass_bound(size.layers, case.num_instances, case.muxing_variant),
        "fraction_of_bound": speedup / bound,
        "memory_per_instance_ratio": None,
    }
    if memory is not None:
        v = record["vanilla"]["activation_peak_bytes_per_instance"]
        m = record["mux"]["activation_peak_bytes_per_instance"]
        record["memory_per_instance_ratio"] = m / v if v else None
    if reference:
        ref_speedup, _ = _speedups(case, times["mux_reference"], times["vanilla_reference"])
        total, _ = _speedups(case, times["mux"], times["vanilla_reference"])
        gain_vanilla = statistics.median(times["vanilla_reference"]) / statistics.median(times["vanilla"])
        gain_mux = statistics.median(times["mux_reference"]) / statistics.median(times["mux"])
        record["reference"] = {
            "vanilla_median_s": statistics.median(times["vanilla_reference"]),
            "mux_median_s": statistics.median(times["mux_reference"]),
            "vanilla_times_s": list(times["vanilla_reference"]),
            "mux_times_s": list(times["mux_reference"]),
            "speedup": ref_speedup,
            "optimization_gain_vanilla": gain_vanilla,
            "optimization_gain_mux": gain_mux,
            "total_speedup": total,
            # 1.0: the optimisation's gain and multiplexing's gain multiply exactly.
            "composition_efficiency": total / (gain_vanilla * ref_speedup),
        }
    if profile:
        from .profiling import profile_forward, stage_breakdown

        record["profile"] = {}
        for side, model, forward in (("mux", mux_model, mux_forward), ("vanilla", vanilla_model, vanilla_forward)):
            profiled = profile_forward(model, forward, settings.device)
            profiled["best_of_3"] = stage_breakdown(model, forward, settings.device, repeats=3)
            record["profile"][side] = profiled
    del mux_model, forwards
    gc.collect()
    return record


def run_benchmark(
    cases: list[BenchCase],
    settings: RunSettings,
    *,
    warmup: int = 1,
    repeats: int = 5,
    memory: bool = True,
    reference: bool | None = None,
    threads: int | None = None,
    profile: bool = False,
    progress: bool = True,
    fresh_memory_process: bool = False,
) -> dict:
    """Measure every case; returns the JSON-ready payload ``{"schema_version", "created", "environment",
    "settings", "protocol", "results": [...]}``. `reference` (default: on when an optimisation is on)
    also times the fp32 eager models next to the optimised ones."""
    if not cases:
        raise ValueError("cases is empty: give at least one size, length, head, variant and N")
    from ..utils.runtime import configure_threads

    # One process times (the memory worker runs while it waits): torch's threads, or --threads, checked against
    # the cores and the machine's load (timings on a busy machine are slow and noisy: said in one line).
    threads = configure_threads(1, threads, logger=print if progress else None).threads
    reference = settings.optimized if reference is None else reference
    started = time.perf_counter()
    env = environment(settings, threads)
    cache = _ModelCache()
    memory_cache: dict = {}
    results = []
    probe = MemoryProbe(threads, fresh=fresh_memory_process) if memory else None
    bar = tqdm(cases, desc="bench", unit="case", disable=not progress)
    try:
        for case in bar:
            bar.set_postfix_str(case.label())
            record = measure_case(
                case,
                settings,
                cache,
                warmup=warmup,
                repeats=repeats,
                memory=probe,
                reference=reference,
                memory_cache=memory_cache,
                profile=profile,
            )
            results.append(record)
            bar.write(
                f"{case.label():<55} speed-up {record['speedup']:6.2f}x (paired {record['speedup_paired']:.2f}x, "
                f"bound {record['analytical_bound']:.2f}x)"
            )
    finally:
        if probe is not None:
            probe.close()
    env["load_average_end"] = _load_average()
    env["wall_time_s"] = round(time.perf_counter() - started, 1)
    from .memory import CPU_METHOD, CUDA_METHOD

    return {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "environment": env,
        "settings": settings.to_dict(),
        "protocol": {
            "warmup": warmup,
            "repeats": repeats,
            "statistic": "median",
            "interleaved": True,
            "reference": reference,
            "inputs": "random token ids, full length, all-ones attention mask",
            "memory": None
            if not memory
            else {
                "method": CUDA_METHOD if settings.device == "cuda" else CPU_METHOD,
                "process": "in process"
                if settings.device == "cuda"
                else ("fresh subprocess per measurement" if fresh_memory_process else "one worker subprocess per run"),
                "what": "peak memory added by one inference forward on top of the loaded model (activations, "
                "workspaces); weights reported separately",
            },
        },
        "results": results,
    }
