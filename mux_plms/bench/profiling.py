"""Where does the time go? ``torch.profiler`` on one forward, with the model's stages annotated.

Forward hooks wrap the embeddings, the multiplexer, every backbone layer, the demultiplexer and the
task head in ``record_function`` ranges, so the profile splits the forward into stages; the rest
(padding, prefixes, the union mask, reshapes) is reported as ``other``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
from torch import nn

# stage -> attribute paths (first match wins); backbone layers are matched by prefix.
STAGES = {
    "embeddings": ("bert.embeddings",),
    "multiplexer": ("bert.multiplexer",),
    "backbone": ("bert.encoder.layer.",),
    "demultiplexer": ("bert.demultiplexer",),
    "head": ("bert.pooler", "classifier"),
}


def _stage_of(name: str) -> str | None:
    for stage, patterns in STAGES.items():
        for pattern in patterns:
            if name == pattern or (pattern.endswith(".") and name.startswith(pattern) and name.count(".") == 3):
                return stage
    return None


@contextlib.contextmanager
def annotate_stages(model: nn.Module):
    """Wrap the stage modules of `model` in ``record_function("stage::<name>")`` while active."""
    model = getattr(model, "_orig_mod", model)
    handles, stack = [], []
    for name, module in model.named_modules():
        stage = _stage_of(name)
        if stage is None:
            continue

        def pre(_module, _args, stage=stage):
            context = torch.profiler.record_function(f"stage::{stage}")
            context.__enter__()
            stack.append(context)

        def post(_module, _args, _output):
            stack.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def time_stages(model: nn.Module, device: str = "cpu"):
    """Record the wall time of every stage call (hooks with ``perf_counter``; CUDA is synchronised).
    Yields a dict ``stage -> list of seconds`` filled while active (a stage may be called several times
    per forward, e.g. the backbone layers: the durations of one forward are summed by the caller)."""
    model = getattr(model, "_orig_mod", model)
    handles, starts = [], []
    durations: dict[str, list[float]] = {stage: [] for stage in STAGES}

    def now() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    for name, module in model.named_modules():
        stage = _stage_of(name)
        if stage is None:
            continue

        def pre(_module, _args):
            starts.append(now())

        def post(_module, _args, _output, stage=stage):
            durations[stage].append(now() - starts.pop())

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield durations
    finally:
        for handle in handles:
            handle.remove()


def stage_breakdown(model: nn.Module, forward: Callable[[], None], device: str = "cpu", repeats: int = 5) -> dict:
    """Best-of-`repeats` milliseconds of every stage of one forward (and of the whole forward), robust to
    a busy machine: ``{"total_ms", "stages": {stage: ms, ..., "other": ms}}``; ``other`` (padding,
    prefixes, masks, reshapes: everything outside the stages) is the best of its per-forward values."""
    forward()
    best: dict[str, float] = {}
    totals, others = [], []
    for _ in range(repeats):
        with time_stages(model, device) as durations:
            start = time.perf_counter()
            forward()
            if device == "cuda":
                torch.cuda.synchronize()
            totals.append(time.perf_counter() - start)
        others.append(totals[-1] - sum(sum(values) for values in durations.values()))
        for stage, values in durations.items():
            best[stage] = min(best.get(stage, float("inf")), sum(values))
    stages = {stage: best[stage] * 1000 for stage in STAGES}
    stages["other"] = max(min(others) * 1000, 0.0)
    return {"total_ms": min(totals) * 1000, "stages": stages}


def profile_forward(model: nn.Module, forward: Callable[[], None], device: str = "cpu", top: int = 15) -> dict:
    """Profile one call of `forward` (after a warm-up call).

    Returns ``{"total_ms", "stages": {stage: ms}, "top_ops": [{"name", "self_ms", "calls", "share"}]}``
    where ``stages["other"]`` is the forward time outside every annotated stage."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    forward()
    with annotate_stages(model), torch.profiler.profile(activities=activities) as prof:
        with torch.profiler.record_function("stage::forward"):
            forward()
    events = prof.key_averages()
    time_attr = "device_time_total" if device == "cuda" else "cpu_time_total"
    self_attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    stage_us = {e.key.removeprefix("stage::"): getattr(e, time_attr) for e in events if e.key.startswith("stage::")}
    if device == "cuda":  # user annotations carry no device time; fall back to CPU time
        stage_us = {e.key.removeprefix("stage::"): e.cpu_time_total for e in events if e.key.startswith("stage::")}
    total_us = stage_us.pop("forward", 0.0)
    stages = {name: stage_us.get(name, 0.0) / 1000 for name in STAGES}
    stages["other"] = max(total_us / 1000 - sum(stages.values()), 0.0)
    ops = [e for e in events if not e.key.startswith("stage::")]
    ops.sort(key=lambda e: getattr(e, self_attr), reverse=True)
    total_self = sum(getattr(e, self_attr) for e in ops) or 1.0
    top_ops = [
        {
            "name": e.key,
            "self_ms": getattr(e, self_attr) / 1000,
            "calls": e.count,
            "share": getattr(e, self_attr) / total_self,
        }
        for e in ops[:top]
    ]
    return {"total_ms": total_us / 1000, "stages": stages, "top_ops": top_ops}


def format_profile(title: str, profile: dict) -> str:
    """A plain-text rendering of :func:`profile_forward`'s result."""
    lines = [title, f"profiled forward: {profile['total_ms']:.1f} ms", "stages (inclusive ms, profiled forward):"]
    for stage, ms in profile["stages"].items():
        share = ms / profile["total_ms"] if profile["total_ms"] else 0.0
        lines.append(f"  {stage:<14} {ms:10.2f}  {share:6.1%}")
    best = profile.get("best_of_3")
    if best:
        lines.append(f"stages (best of 3 forwards, without the profiler; forward {best['total_ms']:.1f} ms):")
        for stage, ms in best["stages"].items():
            share = ms / best["total_ms"] if best["total_ms"] else 0.0
            lines.append(f"  {stage:<14} {ms:10.2f}  {share:6.1%}")
    lines.append("top ops (self time):")
    for op in profile["top_ops"]:
        lines.append(f"  {op['name']:<40} {op['self_ms']:10.2f} ms  {op['share']:6.1%}  x{op['calls']}")
    return "\n".join(lines)
