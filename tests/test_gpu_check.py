"""benchmarks/gpu_check.py in its CPU dry run: every candidate of the GPU check runs and lands in
the table written to the output folder (correctness of the script, not speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_times_every_candidate_and_writes_the_table(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "gpu_check.md").read_text()
    rows = json.loads((tmp_path / "gpu_check.json").read_text())
    for dtype in ("bf16", "fp16"):
        for name in ("ours", "timm", "transformers eager", "transformers sdpa", "ours compiled", "timm compiled", "transformers sdpa compiled"):
            assert f"| inference | DeiT-T | {dtype} | 2 | {name} | " in table, (dtype, name)
    for name in ("ours", "ours compiled", "timm", "timm compiled"):
        assert f"| training | DeiT-T | bf16 autocast | 2 | {name} | " in table, name
    assert all(row["images_per_s"] > 0 for row in rows)
    assert "| 1.00x (1.00x) |" in table  # timm eager against itself


def test_without_a_gpu_it_says_to_use_the_dry_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no CUDA device here; use --dry-run" in result.stderr
