"""Throughput and peak-memory benchmarks of multiplexed models against vanilla transformers models.

Entry points: the ``mux-plms bench`` command (:mod:`mux_plms.bench.cli`) and :func:`run_benchmark`.
"""

from .cost_model import analytical_bound, layer_pass_bound, mux_costs, vanilla_costs
from .models import RunSettings, build_model
from .sizes import HEADS, SIZES, BackboneSize, BenchCase
from .throughput import SCHEMA_VERSION, build_cases, run_benchmark, time_interleaved

__all__ = [
    "HEADS",
    "SCHEMA_VERSION",
    "SIZES",
    "BackboneSize",
    "BenchCase",
    "RunSettings",
    "analytical_bound",
    "build_cases",
    "build_model",
    "layer_pass_bound",
    "mux_costs",
    "run_benchmark",
    "time_interleaved",
    "vanilla_costs",
]
