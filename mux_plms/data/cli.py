"""`mux-plms data`: prepare the shipped real data sets into standard files (see `mux_plms.data.corpora`)."""

from __future__ import annotations

import argparse

from ..utils.cli_types import add_list_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .corpora import CORPORA, SPLIT_SEED

    parser.add_argument("action", choices=["prepare"], help="prepare: write train/validation/test files")
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where to write the files (default: $MUX_PLMS_DATA, else ~/.cache/mux_plms/data)",
    )
    add_list_argument(
        parser,
        "--corpora",
        choices=CORPORA,
        default=list(CORPORA),
        metavar="CORPUS",
        help="which corpora (default: all)",
    )
    parser.add_argument(
        "--seed", type=int, default=SPLIT_SEED, help="seed of the 80/10/10 split of polarity and wnut16"
    )


def run(args: argparse.Namespace) -> int:
    from .corpora import DataUnavailableError, data_dir, prepare

    try:
        counts = prepare(args.output_dir, corpora=args.corpora, seed=args.seed)
    except DataUnavailableError as error:
        print(f"error: {error}")
        return 1
    root = data_dir(args.output_dir)
    for corpus, splits in counts.items():
        sizes = ", ".join(f"{split} {count:,}" for split, count in splits.items())
        print(f"{corpus:9s} {root / corpus}  ({sizes})")
    print(f"manifest  {root / 'manifest.json'}")
    return 0
