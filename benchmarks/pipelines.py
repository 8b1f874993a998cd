"""transformers pipelines over a MUX model: the stock pipeline (batch_size=1, its default) against the MUX-aware
pipeline of `mux_plms.pipelines` (8*N inputs per batch, whole mux groups), instances/s on the same sentences.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/pipelines.py --rounds 5 --out benchmarks/results/pipelines.json

Models: the shipped MiniLM-L6 encoder (bert-base-uncased vocabulary, 6 layers, hidden 384) warm-started as
MUX-BERT N=2 (binary_hadamard + rsa) and, for reference, as vanilla BERT (N=1); the heads are untrained
(throughput does not depend on training). Inputs: the 400 sentences of the shipped polarity test split, in
their order. Every configuration runs once per round, rounds interleaved; the median round is reported, as
wall-clock instances/s and as instances per CPU-second of this process (steadier on a shared machine: with
one torch thread it counts the work done, not the time spent waiting for a core).
`max |dp|` is the largest difference of a class probability from the batched forward ``model(...)`` over
the same ordered sentences in batches of 8*N (0 for the MUX-aware pipeline: same groups).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def build(n: int, model_dir: str):
    from transformers import BertForSequenceClassification

    from mux_plms import MuxBertForSequenceClassification

    if n == 1:
        return BertForSequenceClassification.from_pretrained(model_dir, num_labels=2).eval()
    return MuxBertForSequenceClassification.from_pretrained(
        model_dir, num_instances=n, muxing_variant="binary_hadamard", demuxing_variant="rsa", num_labels=2
    ).eval()


def batched_probs(model, tokenizer, texts: list[str], batch_size: int) -> torch.Tensor:
    """Class probabilities of the plain batched forward over consecutive batches of `batch_size`."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            inputs = tokenizer(texts[start : start + batch_size], padding=True, return_tensors="pt")
            out.append(model(**inputs).logits.float().softmax(-1))
    return torch.cat(out)


def pipeline_probs(outputs, id2label) -> torch.Tensor:
    return torch.tensor([[{o["label"]: o["score"] for o in out}[id2label[i]] for i in range(2)] for out in outputs])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2, help="N of the MUX model (default 2)")
    parser.add_argument("--sentences", type=int, default=400, help="polarity test sentences (at most 400)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer
    from transformers import pipeline as stock_pipeline

    from mux_plms.data.corpora import polarity
    from mux_plms.demo import minilm_dir
    from mux_plms.pipelines import pipeline as mux_pipeline

    model_dir = str(minilm_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = list(polarity()["test"]["sentence"][: args.sentences])
    n = args.instances
    torch.manual_seed(0)  # the untrained heads and MUX modules
    mux, vanilla = build(n, model_dir), build(1, model_dir)
    configs = {  # label -> (pipeline, model, call kwargs)
        f"MUX N={n}, stock pipeline (batch_size=1)": (stock_pipeline, mux, {}),
        f"MUX N={n}, mux_plms.pipelines.pipeline (batch_size={8 * n})": (mux_pipeline, mux, {}),
        "BERT N=1, stock pipeline (batch_size=1)": (stock_pipeline, vanilla, {}),
        f"BERT N=1, stock pipeline (batch_size={8 * n})": (stock_pipeline, vanilla, {"batch_size": 8 * n}),
    }
    pipes = {
        label: factory("text-classification", model=model, tokenizer=tokenizer, top_k=None, device="cpu")
        for label, (factory, model, _) in configs.items()
    }
    references = {id(m): batched_probs(m, tokenizer, texts, 8 * n) for m in (mux, vanilla)}
    timings: dict[str, list[float]] = {label: [] for label in configs}
    cpu_times: dict[str, list[float]] = {label: [] for label in configs}
    deviations: dict[str, float] = {}
    for label, pipe in pipes.items():  # warm-up
        pipe(texts[:32], **configs[label][2])
    for _ in range(args.rounds):
        for label, pipe in pipes.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            outputs = pipe(texts, **configs[label][2])
            timings[label].append(time.perf_counter() - start)
            cpu_times[label].append(time.process_time() - cpu_start)
            model = configs[label][1]
            probs = pipeline_probs(outputs, model.config.id2label)
            deviations[label] = float((probs - references[id(model)]).abs().max())
    rows = []
    for label, seconds in timings.items():
        wall, cpu = statistics.median(seconds), statistics.median(cpu_times[label])
        rows.append({"config": label, "wall_s": seconds, "cpu_s": cpu_times[label],
                     "instances_per_s": len(texts) / wall, "instances_per_cpu_s": len(texts) / cpu,
                     "max_abs_prob_diff_vs_batched_forward": deviations[label]})  # fmt: skip
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{len(texts)} polarity sentences, {args.threads} torch thread(s), median of {args.rounds} rounds, "
          f"load average {load}\n")  # fmt: skip
    print("| pipeline | instances/s | instances per CPU-s | max abs(dp) vs batched forward |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['config']} | {row['instances_per_s']:.1f} | {row['instances_per_cpu_s']:.1f} "
              f"| {row['max_abs_prob_diff_vs_batched_forward']:.1e} |")  # fmt: skip
    if args.out:
        meta = {"sentences": len(texts), "threads": args.threads, "rounds": args.rounds, "machine": platform.node(),
                "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "torch": torch.__version__}  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
