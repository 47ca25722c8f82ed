"""Two gloo processes under torchrun train like one process with the same global batch."""

from __future__ import annotations

import importlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fit_helpers import datasets, finish, needs_fast_kernels, one_thread, start_two_gloo_processes  # noqa: F401 (one_thread: autouse fixture)

from deit.train import checkpointing

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"
GLOBAL_BATCH = 8

# Per-sample augmentation stays on (its randomness follows the sample's global position, not
# the rank); mixup and stochastic depth draw per process, so they are off for this comparison.
SETTINGS = dict(epochs=2, mixup=0.0, cutmix=0.0, drop_path=0.0, model_ema=True, model_ema_decay=0.9)

WORKER = textwrap.dedent(
    """
    import glob, json, os, sys
    sys.path[:0] = [{helpers!r}, {src!r}]
    rank = int(os.environ["RANK"])
    replaced = []
    if rank != 0:
        # Record every file this rank would write: all our writes end with an atomic rename.
        real_replace = os.replace
        def recording_replace(src, dst, *args, **kwargs):
            replaced.append(str(dst))
            return real_replace(src, dst, *args, **kwargs)
        os.replace = recording_replace
    from fit_helpers import datasets
    from {config_module} import {make_config} as make_config
    from {run_module} import {run} as run

    output, repeated_aug = sys.argv[1], sys.argv[2] == "ra"
    train_set, val_set = datasets()
    config = make_config(output, batch_size={per_rank}, repeated_aug=repeated_aug, **{settings!r})
    result = run(config, train_dataset=train_set, val_dataset=val_set)
    # The native threads left once run() has destroyed the process group it created.
    threads = sorted(open(p).read().strip() for p in glob.glob("/proc/self/task/*/comm"))
    report = {{"step_losses": result.step_losses, "history": result.history, "replaced": replaced, "threads": threads}}
    with open(os.path.join(sys.argv[3], f"rank{{rank}}.json"), "w") as f:
        json.dump(report, f)
    """
)


# Both objectives of the engine: config maker, run function, the validation metrics to compare and
# their tolerance (accuracies are counts, exact; a mean loss is a float sum in another order).
OBJECTIVES = {
    "classification": ("fit_helpers", "tiny_config", "deit.train.engine", "fit", ("val_acc1", "val_acc1_cls", "val_acc1_dist", "ema_acc1"), 0.0),
    "pretraining": ("pretrain_helpers", "tiny_pretrain_config", "deit.train.pretraining", "pretrain", ("val_loss", "ema_loss"), 1e-6),
    "partly labelled": ("fit_helpers", "tiny_partly_labelled_config", "fit_helpers", "fit_with_colour_teacher",
                        ("val_acc1", "val_acc1_cls", "val_acc1_dist", "ema_acc1"), 0.0),
}


# Each objective, each sampler and each kernel setting at least once: the student's Linear layers
# on oneDNN ("on") and not, the plain and the repeated-augmentation ("ra") sampler. The three are
# independent (the kernels are the engine's, shared by every objective; the sampler only orders
# the data), so every pair of them need not be run.
CASES = [pytest.param(objective, sampler, fast_kernels, marks=[needs_fast_kernels] if fast_kernels == "on" else [])
         for objective, sampler, fast_kernels in [("classification", "plain", "off"), ("classification", "ra", "on"),
                                                  ("pretraining", "plain", "on"), ("partly labelled", "plain", "off")]]


@pytest.mark.parametrize(("objective", "sampler", "fast_kernels"), CASES)
def test_two_gloo_processes_match_one_process(tmp_path, objective, sampler, fast_kernels):
    config_module, make_config, run_module, run, metrics, rel = OBJECTIVES[objective]
    make_config = getattr(importlib.import_module(config_module), make_config)
    settings = dict(SETTINGS, fast_kernels=fast_kernels)
    train_set, val_set = datasets()
    alone = getattr(importlib.import_module(run_module), run)(
        make_config(str(tmp_path / "alone"), batch_size=GLOBAL_BATCH, repeated_aug=sampler == "ra", **settings),
        train_dataset=train_set, val_dataset=val_set,
    )

    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(helpers=str(HERE), src=str(SRC), per_rank=GLOBAL_BATCH // 2, settings=settings,
                                    config_module=config_module, make_config=OBJECTIVES[objective][1], run_module=run_module, run=run))
    reports = tmp_path / "reports"
    reports.mkdir()
    finish(start_two_gloo_processes(script, tmp_path / "ddp", sampler, reports))
    rank0 = json.loads((reports / "rank0.json").read_text())
    rank1 = json.loads((reports / "rank1.json").read_text())

    # The same loss per optimizer step, reduced over the ranks (float tolerance: sums in another order).
    assert len(rank0["step_losses"]) == len(alone.step_losses) == 2 * len(train_set) // GLOBAL_BATCH
    np.testing.assert_allclose(rank0["step_losses"], alone.step_losses, rtol=1e-5, atol=1e-6)
    assert rank0["step_losses"] == rank1["step_losses"]
    # Validation metrics count every image once over both ranks.
    for key in metrics:
        assert [h[key] for h in rank0["history"]] == pytest.approx([h[key] for h in alone.history], rel=rel, abs=1e-9), key
    # The process group is gone with its threads when run() returns: gloo threads left running
    # into interpreter exit are the likely cause of a rare abort there.
    if Path("/proc/self/task").is_dir():
        for report in (rank0, rank1):
            assert not [name for name in report["threads"] if "gloo" in name], report["threads"]
    # Only rank 0 wrote files; what it wrote is a complete run.
    assert rank1["replaced"] == []
    assert (tmp_path / "ddp" / "metrics.jsonl").read_text().count("\n") == 2
    state = checkpointing.load_checkpoint(tmp_path / "ddp")
    assert state["world_size"] == 2 and state["global_step"] == len(alone.step_losses)
