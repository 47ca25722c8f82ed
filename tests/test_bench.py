"""`deit bench`: each benchmark runs end to end in a tiny configuration and reports its table.
Correctness only (no timed assertions); the FLOP count is checked against PyTorch's counter.
One thread: on a shared machine two-thread parallel regions stall on every small op."""

from __future__ import annotations


import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import deit
from deit.bench.inference import model_flops
from deit.cli import main


def test_model_flops_matches_pytorch_flop_counter():
    config = deit.DeiTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                             image_size=32, patch_size=8, num_labels=5, attn_implementation="eager")
    model = deit.DeiTForImageClassificationWithTeacher(config).eval()  # eager: the counter skips SDPA
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        # Hidden states asked for: the full last layer runs, as the count assumes.
        model(torch.randn(1, 3, 32, 32), output_hidden_states=True)
    assert counter.get_total_flops() == model_flops(config)


# `deit bench inference` with its peers: tests/test_journeys.py, through the console script.


def test_loading_benchmark_reports_exact_match_with_transformers_pil(capsys):
    pytest.importorskip("transformers")
    code = main(["bench", "loading", "--images", "4", "--batch-size", "2", "--rounds", "1", "--workers", "0", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| ours, pil resize vs transformers (PIL backend) | 0.000 | 0.0000 |" in out


def test_training_benchmark_runs(capsys):
    """What deit train runs (the fast kernels) next to ours on PyTorch's kernels, in one table."""
    from deit.probes import fast_kernels_available

    code = main(["bench", "training", "--batch-size", "2", "--dtypes", "fp32", "--rounds", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "| DeiT-T | 2 | fp32 | ours, plain PyTorch kernels |" in out
    assert "| vs ours plain (median) |" in out and " | 1.00x (1.00x) | " in out  # the plain row against itself
    assert ("| DeiT-T | 2 | fp32 | ours, fast kernels (--fast-kernels on) |" in out) == fast_kernels_available()


def test_agreement_benchmark_runs(capsys):
    code = main(["bench", "agreement", "--size", "tiny", "--images", "4", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "| ours fp32 (deit.optimize) | 100.0% |" in out


def test_ablation_benchmark_lists_every_step(capsys):
    code = main(["bench", "ablation", "--size", "tiny", "--batch-sizes", "1", "--dtypes", "fp32", "--rounds", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("| DeiT-T | 1 | fp32 |") == 3 and "+ last layer only for the tokens the heads read" in out
    assert "+ deit.optimize (fused q/k/v and attention" in out


def test_timing_uses_quiet_rounds_and_falls_back_to_all():
    from deit.bench.timing import Timing

    assert Timing([3.0, 1.0, 2.0], [True, False, True]).best == 2.0  # the 1.0 s round was disturbed
    assert Timing([3.0, 1.0], [False, False]).best == 1.0


def test_short_calls_are_repeated_to_fill_a_turn(monkeypatch):
    """On a fake clock that only the candidates advance, so the test does not depend on timing."""
    from types import SimpleNamespace

    from deit.bench import timing

    clock = SimpleNamespace(now=0.0)
    pauses = []
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock.now, sleep=pauses.append))
    counts = {"short": 0, "long": 0}

    def call(name, seconds):
        def run():
            counts[name] += 1
            clock.now += seconds
        return run

    timings = timing.interleaved({"short": call("short", 0.002), "long": call("long", 0.03)}, rounds=2, warmup=1, min_seconds=0.02)
    # One warm-up call each, then ten 2 ms calls per round for "short" and one 30 ms call for "long".
    assert counts == {"short": 1 + 2 * 10, "long": 1 + 2 * 1}
    assert timings["short"].seconds == pytest.approx([0.002, 0.002]) and timings["long"].seconds == pytest.approx([0.03, 0.03])
    # A pause before every turn (2 rounds x 2 candidates), outside the timed calls: the previous
    # candidate's spinning threads stop before the next one is timed.
    assert pauses == [timing.SETTLE_SECONDS] * 4
