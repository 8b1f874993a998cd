"""Throughput and peak-memory benchmarks of multiplexed models against vanilla transformers models.

Entry points: the ``mux-plms bench`` command (:mod:`mux_plms.bench.cli`) and :func:`run_benchmark`.

The names below are imported on first access, so ``mux-plms bench --help`` (which imports
:mod:`mux_plms.bench.cli`, hence this package) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..utils.lazy import lazy_exports

if TYPE_CHECKING:
    from .cost_model import analytical_bound, layer_pass_bound, mux_costs, vanilla_costs
    from .models import RunSettings, build_model
    from .sizes import HEADS, SIZES, BackboneSize, BenchCase
    from .throughput import SCHEMA_VERSION, build_cases, run_benchmark, time_interleaved

# public name -> submodule that defines it
_LAZY = {
    "HEADS": "sizes",
    "SIZES": "sizes",
    "BackboneSize": "sizes",
    "BenchCase": "sizes",
    "RunSettings": "models",
    "build_model": "models",
    "analytical_bound": "cost_model",
    "layer_pass_bound": "cost_model",
    "mux_costs": "cost_model",
    "vanilla_costs": "cost_model",
    "SCHEMA_VERSION": "throughput",
    "build_cases": "throughput",
    "run_benchmark": "throughput",
    "time_interleaved": "throughput",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
