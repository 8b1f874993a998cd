"""The `mux-plms` command. Each sub-command lives in its own module and is imported lazily, so
`mux-plms --help` stays fast and a missing optional dependency only affects its own command.

Start-up stays light because `import mux_plms` is lazy (see `mux_plms/__init__.py`): `mux-plms --help` and
`mux-plms COMMAND --help` import neither torch nor transformers; a command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .utils.cli_types import ListHelpFormatter

EPILOG = (
    "List options take comma-separated values, e.g. --num-instances 1,2,5 (space-separated values work too). "
    "Run 'mux-plms COMMAND --help' for the options of a command."
)

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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``mux-plms`` parser. Only `command`'s module is imported, and only its options are added: the other
    sub-commands are listed (for ``--help``) but parse no options."""
    parser = argparse.ArgumentParser(
        prog="mux-plms",
        description="Data multiplexing for pre-trained language models.",
        epilog=EPILOG,
        formatter_class=ListHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        subparser = sub.add_parser(name, help=help_text, description=help_text, formatter_class=ListHelpFormatter)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(subparser)
            subparser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mux-plms`` with `argv` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = argv[0] if argv else None
    parser = build_parser(wanted)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if wanted is None else 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
