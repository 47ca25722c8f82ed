"""deit.retain_freed_memory: large freed blocks stay in the process and are reused."""

from __future__ import annotations

import ctypes
import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)

# Each probe runs in a fresh process: the setting is process-wide, and the test runner's process
# may have it already.
MALLINFO = """
import ctypes, json, sys, torch, deit
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
def heap_and_mmapped():
    info = libc.mallinfo2()
    return {"heap": info.arena, "mmapped": info.hblkhd}
if sys.argv[1] == "retain":
    assert deit.retain_freed_memory() is True
"""

# A 64 MiB tensor (DeiT-S batch 16's MLP activation is 19 MB, DeiT-B batch 64's about 160 MB).
ONE_BLOCK = MALLINFO + """
start = heap_and_mmapped()
block = torch.empty(64 << 20, dtype=torch.uint8)
alive = heap_and_mmapped()
del block
print(json.dumps({"start": start, "alive": alive, "freed": heap_and_mmapped()}))
"""

MANY_BLOCKS = MALLINFO + """
heaps = []
for _ in range(16):
    block = torch.empty(64 << 20, dtype=torch.uint8)
    del block
    heaps.append(heap_and_mmapped()["heap"])
print(json.dumps(heaps))
"""

# The MLP's hidden activation (16 x 198 x 3072 floats, 39 MB) is above the largest threshold glibc
# moves its mmap threshold to (32 MiB), so by default it is a fresh mmap on every forward.
FAULTS = """
import resource, sys, torch, deit
if sys.argv[1] == "retain":
    assert deit.retain_freed_memory() is True
torch.manual_seed(0)
# Four layers: each forward frees and reallocates the 39 MB activation as often as it has layers.
model = deit.DeiTForImageClassificationWithTeacher(deit.DeiTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=3072,
                                                                   num_labels=10)).eval()
x = torch.randn(16, 3, 224, 224)
with torch.inference_mode():
    for _ in range(2):
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""

MiB = 1 << 20


def probe(script: str, mode: str):
    result = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def has_mallinfo2() -> bool:
    return hasattr(ctypes.CDLL(None), "mallinfo2")  # glibc >= 2.33


@pytest.mark.skipif(not has_mallinfo2(), reason="needs glibc's mallinfo2 to look at the heap")
def test_a_large_freed_block_stays_in_the_heap():
    default = probe(ONE_BLOCK, "default")
    # glibc's default: the block is its own mmap, returned to the OS when freed.
    assert default["alive"]["mmapped"] - default["start"]["mmapped"] >= 64 * MiB, default
    assert default["freed"]["mmapped"] == default["start"]["mmapped"], default

    retained = probe(ONE_BLOCK, "retain")
    assert retained["alive"]["mmapped"] == retained["start"]["mmapped"], retained
    assert retained["alive"]["heap"] - retained["start"]["heap"] >= 60 * MiB, retained
    assert retained["freed"]["heap"] == retained["alive"]["heap"], retained  # kept, not trimmed


@pytest.mark.skipif(not has_mallinfo2(), reason="needs glibc's mallinfo2 to look at the heap")
def test_retained_memory_is_reused_not_accumulated():
    heaps = probe(MANY_BLOCKS, "retain")
    # Measured: the heap grows for the first few blocks (each aligned request is a little larger
    # than the block freed before it) and then stays put.
    assert heaps[-8:] == [heaps[-1]] * 8, [h // MiB for h in heaps]
    assert heaps[-1] - heaps[0] < 8 * 64 * MiB, [h // MiB for h in heaps]


def test_a_forward_pass_stops_faulting_in_its_activations():
    default = probe(FAULTS, "default")
    if default == 0:
        pytest.skip("this system does not count minor page faults (getrusage ru_minflt is 0)")
    # One mmap'd 39 MB block alone is 9,500 pages faulted in: by default each of the four layers
    # maps it afresh (measured about 62,000 faults per forward); retained, a forward faults in
    # less than that one block (measured 0-3,200).
    retained = probe(FAULTS, "retain")
    assert default > 4 * 9_000 and retained < 9_000, (default, retained)


def test_the_command_calls_it_before_running(monkeypatch, tmp_path):
    from deit import cli

    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(True))
    code = cli.main(["eval", str(tmp_path / "no-such-folder"), "--data", str(tmp_path / "no-such-folder")])
    assert code == 2 and calls == [True]  # called before the command runs (which then fails)
