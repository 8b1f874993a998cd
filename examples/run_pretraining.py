#!/usr/bin/env python
"""Pre-train a multiplexed BERT: token retrieval (stage 1), then multiplexed MLM (stage 2).

The same code as `mux-plms pretrain`, driven by `HfArgumentParser` (flags, or one JSON file of arguments).

    python examples/run_pretraining.py --preset demo --corpus ptb --stages retrieval,mlm --output_dir runs/demo
    accelerate launch examples/run_pretraining.py --preset base --dataset_name wikitext \
        --dataset_config_name wikitext-103-raw-v1 --stages retrieval,mlm --output_dir runs/base
    python examples/run_pretraining.py my_args.json
"""

import sys

from transformers import HfArgumentParser

from mux_plms.training import PretrainingArguments, run_pretraining


def main() -> None:
    parser = HfArgumentParser(PretrainingArguments)
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        (args,) = parser.parse_json_file(sys.argv[1])
    else:
        (args,) = parser.parse_args_into_dataclasses()
    for entry in run_pretraining(args):
        print(entry["stage"], entry["final_metrics"])


if __name__ == "__main__":
    main()
