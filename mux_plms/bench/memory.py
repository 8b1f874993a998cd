"""Peak memory of one inference forward pass.

What is measured (``activation_peak_bytes``): the peak memory *added* by one forward pass on top of
the loaded model: activations, attention workspaces, the N-fold demultiplexed tensors, allocator slack.
The weights are reported separately (``weights_bytes``).

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
  allocated before the forward (in process).
* CPU: the resident-set high-water mark (Linux ``VmHWM``) of a measurement subprocess (never the
  process that times the models). The subprocess builds the same model and inputs, runs one warm-up
  forward, returns freed heap pages to the kernel (``malloc_trim``), resets the high-water mark
  (``/proc/self/clear_refs``), runs one forward and reports ``VmHWM - VmRSS(before)``. By default one
  worker subprocess serves the whole run (the model is freed and the heap trimmed between
  measurements); ``fresh=True`` starts a new interpreter per measurement. ``tracemalloc`` cannot see
  torch's allocations and torch has no CPU allocator statistics, hence this approach. Where
  ``clear_refs`` is unavailable the RSS is sampled every millisecond from a thread instead (less exact).
  The subprocess runs with a fixed glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_``) so that freed
  tensors leave the RSS at once and repeated measurements agree.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import torch

CPU_METHOD = "rss_hwm_subprocess"
CPU_SAMPLING_METHOD = "rss_sampling_subprocess"
CUDA_METHOD = "cuda_max_memory_allocated"


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def cpu_forward_peak(forward: Callable[[], None]) -> tuple[int, str]:
    """Peak RSS added by one call of `forward` (after a warm-up call). Returns ``(bytes, method)``."""
    forward()  # warm-up: lazy initialisation and kernel caches are not part of the peak
    _trim_heap()
    if _reset_hwm() and _status_kib("VmHWM") is not None:
        before = _rss_bytes()
        forward()
        peak = _status_kib("VmHWM") * 1024
        return max(peak - before, 0), CPU_METHOD
    before = _rss_bytes()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    forward()
    done.set()
    sampler.join()
    peak = max(peak, _rss_bytes())
    return max(peak - before, 0), CPU_SAMPLING_METHOD


def cuda_forward_peak(forward: Callable[[], None]) -> tuple[int, str]:
    """Peak CUDA memory allocated by one call of `forward` (after a warm-up call)."""
    forward()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    forward()
    torch.cuda.synchronize()
    return max(torch.cuda.max_memory_allocated() - before, 0), CUDA_METHOD


def _measure_here(case_dict: dict, side: str, settings_dict: dict, threads: int | None) -> dict:
    from .models import RunSettings, build_model, make_forward, make_inputs, model_bytes
    from .sizes import BenchCase

    if threads:
        torch.set_num_threads(threads)
    case = BenchCase(**case_dict)
    settings = RunSettings(**settings_dict)
    model, _ = build_model(case, side, settings)
    inputs = make_inputs(case, side, settings)
    forward = make_forward(model, inputs, settings)
    measure = cuda_forward_peak if settings.device == "cuda" else cpu_forward_peak
    peak, method = measure(forward)
    weights = model_bytes(model)
    del model, inputs, forward
    return {"activation_peak_bytes": peak, "weights_bytes": weights, "method": method}


RESPONSE_MARK = "@@bench-memory@@ "


class MemoryProbe:
    """Peak-memory measurements of a run: in process on CUDA; on CPU in a subprocess, either one
    persistent worker for the whole run (default: the interpreter is started once; the heap is trimmed
    and the model freed between measurements) or a fresh process per measurement (`fresh=True`).

    Use as a context manager; :meth:`measure` returns ``{"activation_peak_bytes", "weights_bytes", "method"}``.
    """

    def __init__(self, threads: int | None = None, fresh: bool = False, timeout: float = 1800):
        self.threads = threads
        self.fresh = fresh
        self.timeout = timeout
        self._worker: subprocess.Popen | None = None
        self._stderr = None

    def __enter__(self) -> MemoryProbe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def measure(self, case, side: str, settings) -> dict:
        if settings.device == "cuda":
            return _measure_here(case.to_dict(), side, settings.to_dict(), self.threads)
        request = {"case": case.to_dict(), "side": side, "settings": settings.to_dict(), "threads": self.threads}
        if self.fresh:
            return self._fresh(request, case.label(), side)
        return self._ask_worker(request, case.label(), side)

    def _fresh(self, request: dict, label: str, side: str) -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "mux_plms.bench.memory"],
            input=json.dumps(request) + "\n",
            capture_output=True,
            text=True,
            timeout=self.timeout,
            env=_child_env(),
        )
        answer = _parse(result.stdout)
        if result.returncode != 0 or answer is None or "error" in answer:
            detail = answer["error"] if answer and "error" in answer else result.stderr[-4000:]
            raise RuntimeError(f"memory measurement of {label} ({side}) failed:\n{detail}")
        return answer

    def _ask_worker(self, request: dict, label: str, side: str) -> dict:
        if self._worker is None or self._worker.poll() is not None:
            self._stderr = tempfile.TemporaryFile(mode="w+")
            self._worker = subprocess.Popen(
                [sys.executable, "-m", "mux_plms.bench.memory", "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                env=_child_env(),
            )
        self._worker.stdin.write(json.dumps(request) + "\n")
        self._worker.stdin.flush()
        answer = None
        while answer is None:
            line = self._worker.stdout.readline()
            if not line:
                break
            answer = _parse(line)
        if answer is None or "error" in answer:
            detail = answer["error"] if answer else self._worker_stderr()
            self.close()
            raise RuntimeError(f"memory measurement of {label} ({side}) failed:\n{detail}")
        return answer

    def _worker_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-4000:]

    def close(self) -> None:
        if self._worker is not None:
            if self._worker.poll() is None:
                self._worker.stdin.close()
                try:
                    self._worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self._worker.kill()
            self._worker = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


# A fixed mmap threshold switches off glibc's dynamic threshold: every tensor above 128 KiB is mmapped
# and unmapped when freed, so the RSS follows the live tensors instead of the allocator's free lists
# (repeated measurements then agree to 0.1 MiB instead of scattering by +-15%).
CHILD_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _child_env() -> dict:
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", **CHILD_MALLOC_ENV}


def _parse(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith(RESPONSE_MARK):
            return json.loads(line[len(RESPONSE_MARK) :])
    return None


def _answer(request: dict) -> dict:
    try:
        return _measure_here(request["case"], request["side"], request["settings"], request.get("threads"))
    except Exception:  # reported to the parent, which raises
        import traceback

        return {"error": traceback.format_exc()}


def main(argv: list[str] | None = None) -> None:
    """Subprocess entry point: JSON requests on stdin (one per line), answers on stdout.
    Without ``--worker`` one request is answered; with it, requests are answered until stdin closes."""
    worker = "--worker" in (sys.argv[1:] if argv is None else argv)
    for line in sys.stdin:
        if not line.strip():
            continue
        print(RESPONSE_MARK + json.dumps(_answer(json.loads(line))), flush=True)
        _trim_heap()
        if not worker:
            break


if __name__ == "__main__":
    main()
