"""The ``deit`` command. Each subcommand lives in ``deit/commands/<name>.py`` and provides
``register(subparsers)`` (adding its parser, with ``func`` set to its entry point)."""

from __future__ import annotations

import argparse
import dis
import importlib
import sys
from types import TracebackType

from .allocator import retain_freed_memory
from .errors import DeitError

SUBCOMMANDS = ("predict", "attention", "convert", "export", "train", "teacher_cache", "pretrain", "eval", "demo", "bench")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that ends with ``(default: X)`` where an option has a default and its text does not
    already say what it is (a text that explains its default, "(default: one per core)", keeps
    its own words: the value would be said twice)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS or action.option_strings == [] or "default" in text.lower():
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        # argparse %-formats help texts: a literal % in a default must be escaped.
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


class DeitArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose help (and its subcommands' help) shows defaults once."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    # Subcommand parsers are made with the parent's class, so every level gets the formatter.
    parser = DeitArgumentParser(prog="deit", description="Data-efficient Image Transformers: inference, conversion, training with distillation.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in SUBCOMMANDS:
        # Every command exists: an import error inside one is a bug to see, not a command to hide.
        importlib.import_module(f"deit.commands.{name}").register(subparsers)
    return parser


# What the package raises on bad input, a missing or unreadable file, or a run that cannot go on.
_MESSAGE_KINDS = (ValueError, OSError, RuntimeError)
_RAISE = dis.opmap["RAISE_VARARGS"]


def _raised_by_deit_statement(tb: TracebackType | None) -> bool:
    """Whether the innermost frame of ``tb`` is in the deit package and stopped at a ``raise``
    statement: the package's own message. A bug raises from elsewhere: inside a library (torch,
    numpy, PIL, ...), or in our code by an operation rather than a ``raise`` (a shape error
    from a torch op called here, a failed tuple unpacking)."""
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    code = tb.tb_frame.f_code.co_code
    return (module == "deit" or module.startswith("deit.")) and 0 <= tb.tb_lasti < len(code) and code[tb.tb_lasti] == _RAISE


def is_user_error(err: BaseException) -> bool:
    """Whether the command line shows ``err`` as one line (exit status 2) rather than a traceback:

    - any :class:`~deit.errors.DeitError` (the package's error types, wherever raised);
    - a ValueError, OSError or RuntimeError raised by a ``raise`` statement of the package (its
      messages about bad input, missing files, a run that cannot go on; the one rule for every
      module, without a project type at each of its raise sites);
    - an OSError the operating system reported (``errno`` set: no such file, permission denied,
      disk full), which is about the machine's files, not the code, whoever made the call.

    Anything else (a RuntimeError from inside torch, a ValueError from a library, a TypeError)
    is a bug to see: it keeps its traceback."""
    if isinstance(err, DeitError):
        return True
    if isinstance(err, OSError) and err.errno is not None:
        return True
    return isinstance(err, _MESSAGE_KINDS) and _raised_by_deit_statement(err.__traceback__)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Large activations would otherwise be faulted in afresh on every forward (allocator.py).
    retain_freed_memory()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("deit: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not is_user_error(err):
            raise  # a bug: Python prints the traceback and exits with status 1
        print(f"deit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
