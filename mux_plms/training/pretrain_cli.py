"""`mux-plms pretrain`: the command-line face of :func:`mux_plms.training.pretrain.run_pretraining`.

Every field of :class:`~mux_plms.training.arguments.PretrainingArguments` is a flag of the same name; the
list fields (``--stages``, ``--report_to``) take comma-separated values (space-separated ones work too). Run it
plainly (one CPU / GPU) or under ``accelerate launch``::

    mux-plms pretrain --preset demo --corpus ptb --stages retrieval,mlm --output_dir runs/demo
    accelerate launch -m mux_plms.cli pretrain --preset base --dataset_name wikitext \\
        --dataset_config_name wikitext-103-raw-v1 --stages retrieval,mlm --output_dir runs/base
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

from ..utils.cli_types import ListHelpFormatter, add_list_argument
from .arguments import PretrainingArguments

# Fields holding a comma-separated list: on the command line they also take space-separated values
# (``--stages retrieval mlm``), stored comma-joined as the dataclass expects.
LIST_FIELDS = ("stages", "report_to")

_TRUE = {"true", "yes", "y", "1", "t"}
_FALSE = {"false", "no", "n", "0", "f"}


def _to_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def _base_type(annotation):
    """``int | None`` -> ``int``; plain types unchanged."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return annotation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--<field>`` flag per field of `PretrainingArguments` (defaults and help from the dataclass)."""
    hints = typing.get_type_hints(PretrainingArguments)
    for spec in dataclasses.fields(PretrainingArguments):
        kind = _base_type(hints[spec.name])
        help_text = spec.metadata.get("help", "")
        default = spec.default
        if spec.name in LIST_FIELDS:
            add_list_argument(
                parser, f"--{spec.name}", join=True, default=default, metavar=spec.name.rstrip("s").upper(),
                help=help_text + f" (default: {default})",
            )  # fmt: skip
        elif kind is bool:
            parser.add_argument(f"--{spec.name}", type=_to_bool, nargs="?", const=True, default=default, help=help_text)
        else:
            shown = "" if default is None else f" (default: {default})"
            parser.add_argument(f"--{spec.name}", type=kind, default=default, help=help_text + shown)


def arguments_from_namespace(namespace: argparse.Namespace) -> PretrainingArguments:
    names = {f.name for f in dataclasses.fields(PretrainingArguments)}
    return PretrainingArguments(**{k: v for k, v in vars(namespace).items() if k in names})


def run(namespace: argparse.Namespace) -> int:
    """Entry point of ``mux-plms pretrain``. Bad input ends with a one-line error and exit status 2."""
    from .pretrain import run_pretraining

    try:
        args = arguments_from_namespace(namespace)
        run_pretraining(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"mux-plms pretrain: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mux-plms pretrain", description=__doc__.splitlines()[0], formatter_class=ListHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
