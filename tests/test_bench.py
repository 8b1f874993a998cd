"""Tests of the throughput / memory benchmark (`mux-plms bench`). No timing assertions: the machine is
shared; only the protocol, the schema, the cost model and the plumbing are checked."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from mux_plms.bench import BenchCase, RunSettings, analytical_bound, build_model, layer_pass_bound, time_interleaved
from mux_plms.bench.cost_model import mux_costs, vanilla_costs
from mux_plms.bench.memory import cpu_forward_peak
from mux_plms.bench.models import make_forward, make_inputs
from mux_plms.bench.throughput import RESULT_KEYS, SCHEMA_VERSION, SIDE_KEYS, build_cases
from mux_plms.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One tiny end-to-end run through the CLI: N in {1, 2}, both heads, memory measured."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--sizes", "tiny", "-N", "1", "2", "--lengths", "16", "--rows", "2"]
    argv += ["--heads", "sequence", "token", "--muxing", "gaussian_hadamard", "--demuxing", "rsa"]
    argv += ["--repeats", "5", "--threads", "1", "--output-dir", str(out), "--name", "tiny", "--quiet", "--profile"]
    assert main(argv) == 0
    return out, json.loads((out / "tiny.json").read_text())


@pytest.mark.slow
def test_cli_writes_json_with_the_documented_schema(bench_run):
    _, payload = bench_run
    assert payload["schema_version"] == SCHEMA_VERSION
    assert {"created", "environment", "settings", "protocol", "results"} <= set(payload)
    assert payload["settings"]["rows"] == 2 and payload["settings"]["device"] == "cpu"
    assert payload["protocol"]["repeats"] == 5 and payload["protocol"]["interleaved"] is True
    assert payload["environment"]["torch"] == torch.__version__
    results = payload["results"]
    assert [(r["case"]["head"], r["case"]["num_instances"]) for r in results] == [
        ("sequence", 1),
        ("sequence", 2),
        ("token", 1),
        ("token", 2),
    ]
    for record in results:
        assert set(RESULT_KEYS) <= set(record)
        n = record["case"]["num_instances"]
        assert record["variant"] == "gaussian_hadamard+rsa"
        assert (record["layers"], record["hidden"]) == (2, 128)
        for side, instances in (("mux", 2 * n), ("vanilla", 2)):
            entry = record[side]
            assert set(SIDE_KEYS) <= set(entry)
            assert entry["instances_per_forward"] == instances
            assert len(entry["times_s"]) == 5 and all(t > 0 for t in entry["times_s"])
            assert entry["median_s"] == pytest.approx(statistics.median(entry["times_s"]), rel=1e-9)
            assert entry["instances_per_s"] == pytest.approx(instances / entry["median_s"])
            assert isinstance(entry["activation_peak_bytes"], int) and entry["activation_peak_bytes"] >= 0
            assert entry["weights_bytes"] > 1_000_000  # the 30522 x 128 word embeddings alone are 15.6 MB
            assert entry["memory_method"] == "rss_hwm_subprocess"
        # Same backbone on both sides: the MUX model only adds the multiplexing modules and its heads.
        assert record["mux"]["parameters"] > record["vanilla"]["parameters"]
        ratio = record["mux"]["instances_per_s"] / record["vanilla"]["instances_per_s"]
        assert record["speedup"] == pytest.approx(ratio)
        assert record["analytical_bound"] == pytest.approx(analytical_bound(BenchCase(**record["case"])))
        assert record["fraction_of_bound"] == pytest.approx(record["speedup"] / record["analytical_bound"])
        assert "reference" not in record  # no optimisation switched on


@pytest.mark.slow
def test_cli_writes_plots_and_markdown(bench_run):
    out, payload = bench_run
    for name in ("tiny_speedup.png", "tiny_memory.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    table = (out / "tiny.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| tiny |")]
    assert len(rows) == len(payload["results"]) == 4
    assert "gaussian_hadamard+rsa" in rows[0]
    profile = (out / "tiny_profile.txt").read_text()
    assert profile.count("== tiny_") == 8  # 4 cases x (mux, vanilla)
    assert set(payload["results"][0]["profile"]["mux"]["stages"]) >= {"backbone", "demultiplexer", "other"}


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_cli_composability_times_the_fp32_eager_reference(tmp_path):
    argv = ["bench", "--sizes", "tiny", "-N", "2", "--lengths", "8", "--rows", "1", "--heads", "sequence"]
    argv += ["--muxing", "gaussian_hadamard", "--demuxing", "rsa", "--threads", "1", "--quantize", "int8"]
    argv += ["--no-memory", "--output-dir", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    payload = json.loads((tmp_path / "cpu_tiny_L8_int8.json").read_text())
    assert payload["settings"]["quantize"] == "int8" and payload["protocol"]["memory"] is None
    (record,) = payload["results"]
    ref = record["reference"]
    assert len(ref["vanilla_times_s"]) == len(ref["mux_times_s"]) == 5
    n_times_vanilla = 2 * statistics.median(ref["vanilla_times_s"])
    assert ref["total_speedup"] == pytest.approx(n_times_vanilla / statistics.median(record["mux"]["times_s"]))
    assert ref["composition_efficiency"] == pytest.approx(
        ref["total_speedup"] / (ref["optimization_gain_vanilla"] * ref["speedup"])
    )
    assert record["mux"]["activation_peak_bytes"] is None
    assert (tmp_path / "cpu_tiny_L8_int8_composability.png").read_bytes()[:8] == PNG_MAGIC


def test_build_cases_orders_cases_by_shared_vanilla_model():
    cases = build_cases(["tiny"], [16, 32], ["sequence"], ["gaussian_hadamard"], ["rsa", "prefix"], [1, 2])
    assert len(cases) == 8
    keys = [c.baseline_key for c in cases]
    assert keys == sorted(keys, key=[("tiny", "sequence", 16), ("tiny", "sequence", 32)].index)
    assert cases[0].slug() == "tiny_sequence_L16_gaussian_hadamard_rsa_N1"
    with pytest.raises(ValueError, match="size must be one of"):
        BenchCase("huge", "sequence", 16, 2, "gaussian_hadamard", "rsa")
    with pytest.raises(ValueError, match="head must be one of"):
        BenchCase("tiny", "span", 16, 2, "gaussian_hadamard", "rsa")


def test_time_interleaved_discards_warmup_and_alternates_order():
    calls = []
    forwards = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_interleaved(forwards, warmup=2, repeats=5)
    assert calls == ["a", "b"] * 2 + ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 5, "b": 5}
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_interleaved(forwards, warmup=0, repeats=0)


def test_cost_model_counts_bert_base_and_gives_the_known_bounds():
    case = BenchCase("base", "sequence", 128, 10, "gaussian_hadamard", "rsa")
    per_token_layer = 4 * 768**2 + 2 * 768 * 3072 + 2 * 128 * 768
    assert vanilla_costs(case)["backbone"] == 12 * 128 * per_token_layer
    assert mux_costs(case)["backbone"] == vanilla_costs(case)["backbone"]  # one pass for all N
    assert analytical_bound(case) == pytest.approx(10, rel=0.005)
    # Token heads pay the demultiplexer MLP per instance and position; prefix pays N extra positions.
    token = BenchCase("base", "token", 128, 10, "gaussian_hadamard", "rsa")
    prefix = BenchCase("base", "sequence", 128, 10, "gaussian_hadamard", "prefix")
    assert 9.0 < analytical_bound(token) < analytical_bound(case)
    assert analytical_bound(prefix) == pytest.approx(10 * 128 / 138, rel=0.01)
    # Contextual: two extra layers cost about 2N layer passes, bound ~ L N / (L + 2N).
    for n in (2, 5, 10, 20):
        contextual = BenchCase("base", "sequence", 128, n, "contextual", "rsa")
        assert layer_pass_bound(12, n, "contextual") == pytest.approx(12 * n / (12 + 2 * n))
        assert analytical_bound(contextual) == pytest.approx(layer_pass_bound(12, n, "contextual"), rel=0.02)


def test_run_settings_validate_their_fields():
    with pytest.raises(ValueError, match="quantize int8 needs fp32"):
        RunSettings(quantize="int8", dtype="bf16")
    with pytest.raises(ValueError, match="autocast needs dtype bf16 or fp16"):
        RunSettings(autocast=True)
    with pytest.raises(ValueError, match="dtype must be one of"):
        RunSettings(dtype="fp8")
    with pytest.raises(ValueError, match="rows must be >= 1"):
        RunSettings(rows=0)
    assert RunSettings(compile=True, dtype="bf16").reference() == RunSettings()


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
@pytest.mark.parametrize("head", ["sequence", "token"])
def test_both_sides_share_the_backbone_and_optimisations_apply_to_both(head):
    torch.set_num_threads(1)
    case = BenchCase("tiny", head, 16, 2, "contextual", "rsa")
    settings = RunSettings(rows=2, quantize="int8", attn_implementation="eager")
    models = {side: build_model(case, side, settings)[0] for side in ("mux", "vanilla")}
    for side, model in models.items():
        assert model.config._attn_implementation == "eager"
        encoder_linears = [m for m in model.bert.encoder.modules() if isinstance(m, nn.Linear)]
        assert encoder_linears == []  # every Linear of the backbone is dynamically quantized
        quantized = [m for m in model.bert.encoder.modules() if isinstance(m, DynamicQuantizedLinear)]
        assert len(quantized) == 2 * 6  # 2 layers x (q, k, v, o, ffn in, ffn out)
        inputs = make_inputs(case, side, settings)
        with torch.inference_mode():
            logits = model(**inputs).logits
        instances = 2 * (2 if side == "mux" else 1)
        expected = (instances, 2) if head == "sequence" else (instances, 16, 9)
        assert tuple(logits.shape) == expected
    multiplexer = models["mux"].bert.multiplexer
    assert [m for m in multiplexer.modules() if isinstance(m, nn.Linear)] == []
    assert len([m for m in multiplexer.modules() if isinstance(m, DynamicQuantizedLinear)]) == 2 * 6
    # The demultiplexer and the heads are not part of the backbone: left in fp32.
    assert any(isinstance(m, nn.Linear) for m in models["mux"].bert.demultiplexer.modules())


def test_bf16_casts_both_sides():
    case = BenchCase("tiny", "sequence", 16, 2, "gaussian_hadamard", "prefix")
    settings = RunSettings(rows=2, dtype="bf16")
    for side in ("mux", "vanilla"):
        model, parameters = build_model(case, side, settings)
        assert parameters > 0
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        make_forward(model, make_inputs(case, side, settings), settings)()


def test_cpu_forward_peak_sees_a_large_allocation():
    def forward():
        buffer = torch.ones(16 * 2**20)  # 64 MiB, touched
        del buffer

    peak, method = cpu_forward_peak(forward)
    assert method in ("rss_hwm_subprocess", "rss_sampling_subprocess")
    assert 60 * 2**20 < peak < 200 * 2**20


def test_stage_breakdown_and_profile_cover_every_stage():
    from mux_plms.bench.profiling import format_profile, profile_forward, stage_breakdown

    torch.set_num_threads(1)
    case = BenchCase("tiny", "token", 16, 2, "gaussian_hadamard", "rsa")
    settings = RunSettings(rows=2)
    model, _ = build_model(case, "mux", settings)
    forward = make_forward(model, make_inputs(case, "mux", settings), settings)
    breakdown = stage_breakdown(model, forward, repeats=2)
    stages = breakdown["stages"]
    assert list(stages) == ["embeddings", "multiplexer", "backbone", "demultiplexer", "head", "other"]
    assert all(stages[s] > 0 for s in ("embeddings", "multiplexer", "backbone", "demultiplexer", "head"))
    assert sum(stages.values()) <= breakdown["total_ms"] * 1.5
    profile = profile_forward(model, forward, top=5)
    assert len(profile["top_ops"]) == 5 and all(op["name"].startswith("aten::") for op in profile["top_ops"])
    assert profile["stages"]["backbone"] > 0
    assert "backbone" in format_profile("title", profile)


def test_cli_rejects_bad_arguments(tmp_path):
    base = ["bench", "--sizes", "tiny", "-N", "2", "--lengths", "16", "--output-dir", str(tmp_path), "--quiet"]
    with pytest.raises(ValueError, match="--repeats must be >= 1"):
        main([*base, "--repeats", "0"])
    with pytest.raises(ValueError, match="--num-instances must be >= 1"):
        main([*base[:4], "0", *base[5:]])
    with pytest.raises(ValueError, match="quantize int8 needs fp32"):
        main([*base, "--quantize", "int8", "--dtype", "bf16"])
    with pytest.raises(ValueError, match="--variants entries must be MUX\\+DEMUX"):
        main([*base, "--variants", "gaussian_hadamard-rsa"])
