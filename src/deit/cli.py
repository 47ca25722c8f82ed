"""The ``deit`` command. Each subcommand lives in ``deit/commands/<name>.py`` and provides
``register(subparsers)`` (adding its parser, with ``func`` set to its entry point)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .allocator import retain_freed_memory

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
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as err:
        # Expected failures (bad input, missing files) get one line, not a traceback.
        print(f"deit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
