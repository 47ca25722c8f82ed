"""``deit COMMAND --help``: every option says what it does, and a default is said once.

Issue 24, item 11. train, pretrain and eval build their help from the training config (checked
with those commands); the formatter that appends "(default: X)" is shared by all.
"""

from __future__ import annotations

import argparse

import pytest
from journey_fixtures import console_script, run_deit

from deit.cli import build_parser

# The commands whose option texts are written in deit/commands/<name>.py beside their parser.
DOCUMENTED_HERE = ("predict", "attention", "convert", "export", "demo")


def subcommand_parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every parser below ``parser`` by its command words (``("bench", "loading")``)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[(*prefix, name)] = sub
                found.update(subcommand_parsers(sub, (*prefix, name)))
    return found


PARSERS = subcommand_parsers(build_parser())


@pytest.mark.parametrize("command", DOCUMENTED_HERE)
def test_every_option_has_a_text(command):
    parser = PARSERS[(command,)]
    silent = [action.option_strings or action.dest for action in parser._actions if not (action.help or "").strip()]
    assert not silent, f"deit {command}: options without a help text: {silent}"


@pytest.mark.parametrize("words", [w for w in PARSERS if w[0] not in ("train", "pretrain", "eval")], ids=" ".join)
def test_defaults_are_said_once(words):
    text = PARSERS[words].format_help()
    for entry in text.split("\n  -")[1:]:  # one option's usage and help each
        said = " ".join(entry.split()).lower()
        assert said.count("(default") <= 1, f"deit {' '.join(words)}: {said}"


@pytest.mark.skipif(console_script() is None, reason="no deit console script next to this Python")
def test_predict_help_through_the_console_script():
    proc = run_deit("predict", "--help")
    assert proc.returncode == 0, proc.stderr
    entries = [" ".join(("-" + entry).split()) for entry in proc.stdout.split("\n  -")[1:]]
    options = {entry.split()[0].rstrip(","): entry for entry in entries}
    # The two options the issue found silent now say what they are, with their default once.
    assert options["--batch-size"] == "--batch-size BATCH_SIZE images per forward pass (default: 16)"
    assert options["--device"] == "--device DEVICE where the model runs: cpu, cuda, cuda:N or mps (default: cpu)"
    assert options["--top-k"] == "--top-k TOP_K labels to show per image (default: 5)"
