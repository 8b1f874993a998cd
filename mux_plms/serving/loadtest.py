"""A bounded open-loop load test of the request batcher (in-process) or of an HTTP endpoint on 127.0.0.1.

Requests arrive as a Poisson process at a fixed rate (seeded), each one text drawn from a text pool; a fixed
number of requests is sent, and sending stops at a time limit. Latency = completion time minus the request's
*scheduled* arrival time (a client that falls behind adds its lag to the latency: no coordinated omission).
Throughput = completed requests / (last completion - first arrival).
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass


@dataclass
class LoadResult:
    """One load-test run."""

    label: str
    rate: float  # offered requests/s (inf: all requests at once)
    sent: int
    completed: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def arrival_times(count: int, rate: float, seed: int = 0) -> list[float]:
    """Offsets (s) of `count` Poisson arrivals at `rate` per second (all 0 for an infinite rate)."""
    if rate == float("inf"):
        return [0.0] * count
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(count):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def run_load(
    submit: Callable[[str], Future],
    texts: Sequence[str],
    rate: float,
    count: int,
    time_limit_s: float = 60.0,
    seed: int = 0,
    label: str = "",
) -> LoadResult:
    """Send `count` requests (texts drawn with `seed`) through `submit` (text -> future) at `rate` per second."""
    rng = random.Random(seed)
    chosen = [rng.choice(texts) for _ in range(count)]
    offsets = arrival_times(count, rate, seed)
    latencies: list[float] = []
    errors = [0]
    last_done = [0.0]
    lock = threading.Lock()
    futures = []
    start = time.monotonic()
    for text, offset in zip(chosen, offsets):
        scheduled = start + offset
        if scheduled - start > time_limit_s:
            break
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)

        def done(future: Future, scheduled: float = scheduled) -> None:
            now = time.monotonic()
            with lock:
                if future.exception() is None:
                    latencies.append(now - scheduled)
                else:
                    errors[0] += 1
                last_done[0] = max(last_done[0], now)

        future = submit(text)
        future.add_done_callback(done)
        futures.append(future)
    deadline = start + time_limit_s + 60
    for future in futures:
        try:
            future.result(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            pass
    with lock:
        seconds = max(last_done[0] - start, 1e-9)
        ms = [x * 1000 for x in latencies]
        return LoadResult(
            label=label,
            rate=rate,
            sent=len(futures),
            completed=len(latencies),
            errors=errors[0],
            seconds=round(seconds, 4),
            requests_per_s=round(len(latencies) / seconds, 2),
            p50_ms=round(percentile(ms, 50), 2),
            p95_ms=round(percentile(ms, 95), 2),
            p99_ms=round(percentile(ms, 99), 2),
        )


def http_submitter(url: str, workers: int = 64) -> tuple[Callable[[str], Future], ThreadPoolExecutor]:
    """A `submit` for :func:`run_load` that POSTs ``{"text": ...}`` to `url` from a pool of client threads."""
    pool = ThreadPoolExecutor(max_workers=workers)

    def post(text: str) -> dict:
        data = json.dumps({"text": text}).encode()
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    return (lambda text: pool.submit(post, text)), pool


def summary_table(results: Sequence[dict]) -> str:
    """Markdown table of load-test results."""
    lines = [
        "| model | offered req/s | served req/s | p50 ms | p95 ms | p99 ms | mean batch | completed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rate = "burst" if r["rate"] == float("inf") else f"{r['rate']:g}"
        batch = "" if r.get("mean_batch") is None else f"{r['mean_batch']:.1f}"
        lines.append(
            f"| {r['label']} | {rate} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {batch} | {r['completed']}/{r['sent']} |"
        )
    return "\n".join(lines)


def aggregate(results: Sequence[dict]) -> list[dict]:
    """One row per (model, rate): the median over rounds of served req/s and of each latency percentile."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r.get("num_instances", 0), r["label"], r["rate"]), []).append(r)
    rows = []
    for (_, label, rate), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        row = {"label": label, "rate": rate, "rounds": len(runs)}
        for key in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms"):
            row[key] = statistics.median(r[key] for r in runs)
        batches = [r["mean_batch"] for r in runs if r.get("mean_batch") is not None]
        row["mean_batch"] = statistics.median(batches) if batches else None
        row["completed"] = sum(r["completed"] for r in runs)
        row["sent"] = sum(r["sent"] for r in runs)
        rows.append(row)
    return rows


def mean(values: Sequence[int]) -> float | None:
    return statistics.fmean(values) if values else None
