"""`mux-plms convert-legacy SRC OUT_DIR`: convert an original MUX-PLMs checkpoint (princeton-nlp/datamux-pretraining)
into a mux_plms checkpoint folder."""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        metavar="SRC",
        help="folder holding the original config.json and pytorch_model.bin, or a Hub repo id "
        "(e.g. princeton-nlp/muxbert_base_gaussian_hadamard_index_pos_2)",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the converted checkpoint to")
    parser.add_argument("--revision", help="Hub revision of SRC (repo ids only)")
    parser.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in OUT_DIR")


def run(args: argparse.Namespace) -> int:
    from .convert import LegacyCheckpointError, convert_legacy_checkpoint

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        report = convert_legacy_checkpoint(args.src, args.out_dir, revision=args.revision, overwrite=args.overwrite)
    except (LegacyCheckpointError, OSError) as error:
        print(f"mux-plms convert-legacy: error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
