"""deit.retain_freed_memory: a forward pass reuses freed memory instead of faulting it in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A DeiT-Ti forward at batch 16 (its MLP activation alone is about 10 MB), in a fresh process:
# the setting is process-wide, and the test runner's process may have it already.
PROBE = """
import resource, sys, torch, deit
if sys.argv[1] == "retain":
    assert deit.retain_freed_memory() is True
torch.manual_seed(0)
model = deit.DeiTForImageClassificationWithTeacher(deit.DeiTConfig(hidden_size=192, num_attention_heads=3, intermediate_size=768, num_labels=10)).eval()
x = torch.randn(16, 3, 224, 224)
with torch.inference_mode():
    for _ in range(2):
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def page_faults_per_forward(mode: str) -> float:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(result.stdout)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_a_forward_pass_reuses_freed_memory():
    # Measured: about 50,000 page faults per forward by default, 0-200 retained.
    default, retained = page_faults_per_forward("default"), page_faults_per_forward("retain")
    assert default > 10_000 and retained < default / 20, (default, retained)


def test_the_command_calls_it_before_running(monkeypatch, tmp_path):
    from deit import cli

    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(True))
    code = cli.main(["eval", str(tmp_path / "no-such-folder"), "--data", str(tmp_path / "no-such-folder")])
    assert code == 2 and calls == [True]  # called before the command runs (which then fails)
