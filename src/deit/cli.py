"""The ``deit`` command. Each subcommand lives in ``deit/commands/<name>.py`` and provides
``register(subparsers)`` (adding its parser, with ``func`` set to its entry point)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .allocator import retain_freed_memory

SUBCOMMANDS = ("predict", "attention", "convert", "export", "train", "pretrain", "eval", "demo", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deit", description="Data-efficient Image Transformers: inference, conversion, training with distillation.")
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
