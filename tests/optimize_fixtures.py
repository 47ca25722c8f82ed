"""Fixtures of the deit.optimize tests (test_optimize.py, test_onnx_engine.py): import them by name."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def engine_choices_in_a_temporary_folder(monkeypatch, tmp_path):
    """deit.optimize keeps its engine choices in this test's folder, not the user's cache."""
    monkeypatch.setenv("DEIT_CACHE_DIR", str(tmp_path / "choices"))


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
