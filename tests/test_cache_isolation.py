"""The test run never writes to the user's deit cache (~/.cache/deit): deit.optimize's engine
choices and the ONNX Runtime engine's graph files go to a temporary folder, in this process and
in the deit commands the journeys start."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from deit.optimize import default_cache_dir
from journey_fixtures import deit_env


def _in_temporary_folder(path: Path) -> bool:
    return path.resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())


def test_the_cache_of_this_process_is_temporary():
    assert _in_temporary_folder(default_cache_dir())


def test_the_cache_of_a_deit_command_is_temporary(monkeypatch):
    assert _in_temporary_folder(Path(deit_env()["DEIT_CACHE_DIR"]))
    monkeypatch.delenv("DEIT_CACHE_DIR")  # a process that set none (deit_env outside pytest)
    assert _in_temporary_folder(Path(deit_env()["DEIT_CACHE_DIR"]))
    assert "DEIT_CACHE_DIR" not in os.environ
