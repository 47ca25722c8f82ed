"""The command line prints the package's own errors as one line (exit status 2) and keeps the
traceback of anything else (a bug: exit status 1), by the rule of ``deit.cli.is_user_error``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from deit import cli
from deit.errors import CheckpointError, DeitError
from deit.hf_api import HubUploadError
from deit.hub import ModelNotFoundError
from deit.images import ImageReadError
from deit.train.compiling import CompileUnavailableError


def raised_in(module: str, source: str, **names) -> BaseException:
    """The exception that ``run()`` of ``source`` raises, its code run as the module ``module``."""
    namespace = {"__name__": module, "torch": torch, **names}
    exec(compile(textwrap.dedent(source), f"<{module}>", "exec"), namespace)
    with pytest.raises(Exception) as caught:
        namespace["run"]()
    return caught.value


@pytest.mark.parametrize("error", [ValueError("--top-k must be at least 1"), FileNotFoundError("no such data folder"),
                                   RuntimeError("all 3 images are corrupt")], ids=lambda e: type(e).__name__)
def test_a_raise_statement_of_the_package_is_a_message(error):
    # A fresh exception each time: one raised again keeps the traceback of its first raise.
    assert cli.is_user_error(raised_in("deit.train.data", "def run():\n    raise error\n", error=type(error)(*error.args)))
    assert not cli.is_user_error(raised_in("somelibrary.io", "def run():\n    raise error\n", error=type(error)(*error.args)))


@pytest.mark.parametrize("source", [
    "def run():\n    return torch.zeros(2, 3) @ torch.zeros(2, 3)\n",  # a RuntimeError from inside torch
    "def run():\n    first, second = [1, 2, 3]\n",  # a ValueError of an operation, not a raise statement
    "def run():\n    raise TypeError('pixel_values must be a torch.Tensor')\n",  # not a message kind
], ids=["torch shape error", "unpacking", "TypeError"])
def test_an_error_of_an_operation_in_the_package_is_a_bug(source):
    assert not cli.is_user_error(raised_in("deit.modeling", source))


def test_the_project_error_types_are_messages_wherever_raised():
    for cls in (CheckpointError, ImageReadError, ModelNotFoundError, HubUploadError, CompileUnavailableError):
        assert issubclass(cls, DeitError)
    error = ImageReadError("photo.jpg: cannot read it as an image", "truncated")
    assert isinstance(error, ValueError)  # the builtin base it always had
    assert cli.is_user_error(raised_in("torch.utils.data._utils", "def run():\n    raise error\n", error=error))


def test_an_error_the_operating_system_reports_is_a_message(tmp_path):
    error = raised_in("PIL.Image", "def run():\n    open(missing)\n", missing=str(tmp_path / "missing.jpg"))
    assert isinstance(error, FileNotFoundError) and cli.is_user_error(error)


def run_cli(*code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True, text=True, env=env, timeout=120)


def test_a_project_error_is_one_line_with_exit_status_2(tmp_path):
    proc = run_cli("import sys", "from deit.cli import main",
                   f"sys.exit(main(['predict', {str(tmp_path / 'photo.jpg')!r}, '--model', {str(tmp_path / 'missing')!r}]))")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deit predict: error: ") and "missing" in lines[0], proc.stderr


def test_a_bug_keeps_its_traceback_and_a_non_zero_exit(tmp_path):
    """A command that hits a RuntimeError inside torch (here: a predict patched to multiply
    mismatched matrices) prints Python's traceback, not one line, and exits with status 1."""
    proc = run_cli("import sys, torch", "import deit.commands.predict as predict",
                   "def broken(args):", "    return torch.zeros(2, 3) @ torch.zeros(2, 3)",
                   "predict.run = broken",
                   "from deit.cli import main",
                   f"sys.exit(main(['predict', {str(tmp_path / 'photo.jpg')!r}, '--model', 'unused']))")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "RuntimeError: mat1 and mat2 shapes cannot be multiplied" in proc.stderr
    assert "deit predict: error:" not in proc.stderr
