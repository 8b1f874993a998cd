"""One list syntax for every ``mux-plms`` command.

Every list-valued option takes comma-separated values (``--num-instances 1,2,5``, the documented form) and,
for convenience, space-separated ones too (``--num-instances 1 2 5``, or a mix: ``1,2 5``). Each item is
converted and checked on its own, and a bad item is named: ``--num-instances: '2x' is not an integer``.

Use :func:`add_list_argument` on a parser or an argument group, and build the parser with
``formatter_class=ListHelpFormatter`` so that ``--help`` shows the documented form (``N[,N...]``) rather
than argparse's ``N [N ...]``. Imports nothing but the standard library: ``mux-plms --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["ListAction", "ListHelpFormatter", "add_list_argument", "split_list"]

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}


def _describe(item_type: Callable[[str], Any]) -> str:
    return _TYPE_NAMES.get(item_type, f"a valid {getattr(item_type, '__name__', 'value')}")


def split_list(
    text: str,
    item_type: Callable[[str], Any] = str,
    *,
    choices: Iterable[Any] | None = None,
    option: str = "value",
) -> list[Any]:
    """``"1,2, 5"`` -> ``[1, 2, 5]``: split `text` on commas, strip the items, skip empty ones, convert each
    with `item_type` and check it against `choices`.

    Raises `argparse.ArgumentTypeError` naming `option` and the bad item, e.g.
    ``--num-instances: '2x' is not an integer`` or ``--heads: 'tokens' is not one of sequence, token``.
    """
    allowed = list(choices) if choices is not None else None
    values = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            value = item_type(item)
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(f"{option}: {error}") from None
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{option}: {item!r} is not {_describe(item_type)}") from None
        if allowed is not None and value not in allowed:
            raise argparse.ArgumentTypeError(
                f"{option}: {item!r} is not one of {', '.join(str(choice) for choice in allowed)}"
            )
        values.append(value)
    return values


class ListAction(argparse.Action):
    """Store a list from comma- and/or space-separated values (``nargs="+"``; the items are converted here,
    not by argparse, because one command-line word may hold several of them).

    Extra keyword arguments (given to ``add_argument``):

    * ``item_type``: converts one item (default `str`); a `ValueError` / `TypeError` becomes
      ``'<item>' is not an integer`` (or a number, ...), an `argparse.ArgumentTypeError` keeps its message;
    * ``allowed``: the accepted items (argparse's own ``choices`` would check whole words such as ``a,b``);
    * ``check``: called with the whole converted list, returns the value to store (e.g. sorted); raise
      `ValueError` / `argparse.ArgumentTypeError` to refuse it;
    * ``join``: store the items joined by commas (one string, for options whose consumers read a
      comma-separated string, such as `PretrainingArguments.stages`) instead of a list.
    """

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        *,
        item_type: Callable[[str], Any] = str,
        allowed: Iterable[Any] | None = None,
        check: Callable[[list[Any]], Any] | None = None,
        join: bool = False,
        nargs: str = "+",
        **kwargs: Any,
    ) -> None:
        if nargs != "+":
            raise ValueError("ListAction takes one or more command-line words (nargs='+')")
        if kwargs.get("choices") is not None:
            raise ValueError("ListAction checks items against `allowed`, not `choices`")
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)
        self.item_type = item_type
        self.allowed = tuple(allowed) if allowed is not None else None
        self.check = check
        self.join = join

    def convert(self, words: Sequence[str], option: str | None = None) -> Any:
        """The value stored for the command-line `words` (what `__call__` stores; `ArgumentError` if bad)."""
        name = option or (self.option_strings[0] if self.option_strings else self.dest)
        try:
            values = [
                value for word in words for value in split_list(word, self.item_type, choices=self.allowed, option=name)
            ]
            if not values:
                raise argparse.ArgumentTypeError(f"{name}: expected at least one value")
            if self.check is not None:
                try:
                    values = self.check(values)
                except ValueError as error:
                    raise argparse.ArgumentTypeError(f"{name}: {error}") from None
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentError(None, str(error)) from None
        return ",".join(str(v) for v in values) if self.join else values

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, self.convert(values, option_string))


class ListHelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that list options read ``--num-instances N[,N...]`` (the documented,
    comma-separated form) instead of ``--num-instances N [N ...]``."""

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if isinstance(action, ListAction):
            (metavar,) = self._metavar_formatter(action, default_metavar)(1)
            return f"{metavar}[,{metavar}...]"
        return super()._format_args(action, default_metavar)


def add_list_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *flags: str,
    item_type: Callable[[str], Any] = str,
    choices: Iterable[Any] | None = None,
    check: Callable[[list[Any]], Any] | None = None,
    join: bool = False,
    **kwargs: Any,
) -> argparse.Action:
    """Add a list option that takes comma-separated values (and space-separated ones).

    `choices` are the accepted items: they are checked item by item and listed at the end of the help
    text (``(any of: a, b)``). Other keyword arguments go to ``add_argument`` (``default``, ``help``,
    ``metavar``, ``dest``, ``required``).

    Example::

        add_list_argument(parser, "--num-instances", "-N", item_type=int, default=[1, 2], metavar="N",
                          help="values of N")   # --num-instances 1,2,5   or   -N 1 2 5
    """
    allowed = tuple(choices) if choices is not None else None
    if allowed is not None and not kwargs.get("metavar"):
        kwargs["metavar"] = flags[0].lstrip("-").upper().replace("-", "_")
    help_text = kwargs.get("help")
    if allowed is not None and help_text is not None and help_text is not argparse.SUPPRESS:
        kwargs["help"] = f"{help_text} (any of: {', '.join(str(c) for c in allowed)})"
    return parser.add_argument(
        *flags, action=ListAction, item_type=item_type, allowed=allowed, check=check, join=join, **kwargs
    )
