"""Collect the training records of the runs of reproduce.sh into one JSON document (printed on stdout)."""

import json
import platform
import sys
from pathlib import Path

from mux_plms.records import TrainingRecord

RUNS = {
    "stage1_retrieval_n2": "n2/stage1_retrieval",
    "stage1_retrieval_n5": "n5/stage1_retrieval",
    "stage2_mlm_n2": "n2_mlm/stage1_mlm",
    "stage1_retrieval_n2_fp32": "n2_fp32/stage1_retrieval",
}
KEYS = ("stage", "num_instances", "muxing_variant", "demuxing_variant", "steps", "samples", "tokens", "train_seconds",
        "tokens_per_second", "wall_time_seconds", "mixed_precision", "num_processes", "seed", "loss_coefficients",
        "hyperparameters", "data", "final_metrics", "init")  # fmt: skip


def main(root: str) -> None:
    results = {}
    for name, folder in RUNS.items():
        path = Path(root) / folder / "training_record.json"
        if path.is_file():
            entry = TrainingRecord.load(path).stages[-1].to_entry()  # any training_record.json version
            results[name] = {key: entry.get(key) for key in KEYS}
            config = json.loads((path.parent / "config.json").read_text())
            results[name]["model"] = {k: config[k] for k in ("num_hidden_layers", "hidden_size", "vocab_size")}
    machine = {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform(), "threads": 1}
    print(json.dumps({"preset": "demo", "corpus": "ptb", "machine": machine, "runs": results}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/bench-pretraining")
