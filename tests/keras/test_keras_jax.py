"""The parity tests again on the JAX backend, in a subprocess: the Keras backend is fixed at the
first ``import keras``, and this process runs TensorFlow."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import deit

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None or importlib.util.find_spec("keras") is None
    or os.environ.get("KERAS_BACKEND", "tensorflow") == "jax",  # already on JAX: the parity file runs in-process
    reason="needs jax and keras (pip install 'deit[jax]')",
)


def test_parity_with_pytorch_on_jax():
    here = Path(__file__).parent
    src = str(Path(deit.__file__).parents[1])
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "test_keras_parity.py")],
        env=env, capture_output=True, text=True, timeout=600, cwd=here.parent,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, summary
