"""The `mux-plms` command. Each sub-command lives in its own module and is imported lazily, so
`mux-plms --help` stays fast and a missing optional dependency only affects its own command."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help). The module defines `add_arguments(parser)` and `run(args) -> int | None`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("mux_plms.demo", "run the three stages on the shipped real data and compare N=1, 2, 5"),
    "pretrain": ("mux_plms.training.pretrain_cli", "pre-train: token retrieval, then multiplexed MLM or ELECTRA"),
    "data": ("mux_plms.data.cli", "prepare the shipped real data sets into standard files"),
    "bench": ("mux_plms.bench.cli", "measure throughput and memory against vanilla BERT"),
    "push": ("mux_plms.hub.push_cli", "publish a model folder to the Hub with a generated model card"),
    "convert-legacy": ("mux_plms.hub.convert_cli", "convert an original MUX-PLMs checkpoint"),
    "card": ("mux_plms.hub.card_cli", "render the model card of a model folder"),
    "serve": ("mux_plms.serving.cli", "serve a model folder over HTTP on Ray Serve (mux groups filled from requests)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mux-plms", description="Data multiplexing for pre-trained language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv else None
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if wanted is None else 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
