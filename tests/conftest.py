"""Shared test helpers: tiny configurations and deterministic inputs."""

from __future__ import annotations

import os

import pytest
import torch

# Tests never reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Under pytest-xdist every worker is a process of its own: one thread each keeps the workers from
# oversubscribing the cores (OpenMP threads spin while they wait for a core another worker holds).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    image_size=32, patch_size=8, num_channels=3, encoder_stride=8, num_labels=5,
)


@pytest.fixture(autouse=True, scope="session")
def deit_cache_in_a_temporary_folder(tmp_path_factory):
    """deit's cache (deit.optimize's engine choices, the ONNX Runtime engine's graph files) in a
    temporary folder for the whole run, in this process and the deit commands it starts: never
    the user's ~/.cache/deit."""
    previous = os.environ.get("DEIT_CACHE_DIR")
    os.environ["DEIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("deit-cache"))
    yield
    if previous is None:
        del os.environ["DEIT_CACHE_DIR"]
    else:
        os.environ["DEIT_CACHE_DIR"] = previous


@pytest.fixture
def tiny_kwargs() -> dict:
    return dict(TINY)


@pytest.fixture
def pixels() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=g)


# Lines a test wants shown at the end of the run (e.g. what the README test ran and skipped).
# Under pytest-xdist a worker hands its lines to the controller, which prints them.
_SUMMARY_LINES: list[str] = []


@pytest.fixture
def record_readme_summary():
    return _SUMMARY_LINES.append


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["deit_summary_lines"] = list(_SUMMARY_LINES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _SUMMARY_LINES.extend(getattr(node, "workeroutput", {}).get("deit_summary_lines", []))


def pytest_terminal_summary(terminalreporter):
    for line in _SUMMARY_LINES:
        terminalreporter.write_line(line)
