"""The teacher-logit cache (deit.train.teacher_cache): a student trained from it is the student
trained with the teacher online, bit for bit; a cache of other views or a damaged one is refused.

The runs are the two-block 16 px DeiT of fit_helpers on a folder of 12 small PNG images, so the
recipe's whole augmentation runs (random resized crops, flips, RandAugment, random erasing,
repeated augmentation, mixup/cutmix): two epochs of three steps, about a second a run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fit_helpers import CLASSES, ColourTeacher, datasets, finish, one_thread, start_two_gloo_processes, tiny_config  # noqa: F401 (one_thread: autouse fixture)
from PIL import Image

from deit.train import teacher_cache
from deit.train.engine import fit
from deit.train.teacher_cache import TeacherCacheError, logits_from_top_k
from deit.train.teacher_cache_builder import build_teacher_cache

# The recipe's augmentation, all of it on (tiny_config turns mixup, cutmix and repeated augmentation off).
AUGMENTED = dict(aa="rand-m9-mstd0.5-inc1", reprob=0.25, hflip=0.5, mixup=0.8, cutmix=1.0, repeated_aug=True, num_repeats=3,
                 drop_path=0.1, batch_size=4, deterministic=True, teacher="<module>", fast_kernels="off")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """root/{train,val}/<class>/*.png: 4 training and 2 validation images per class, 20 x 20 px of coloured noise."""
    root = tmp_path_factory.mktemp("cache-images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for channel, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 128, size=(20, 20, 3), dtype=np.uint8)
                pixels[..., channel] += 120
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def run_config(image_folder: Path, output: Path, **overrides):
    return tiny_config(str(output), data=str(image_folder), **{**AUGMENTED, **overrides})


def build(config, top_k=None):
    return build_teacher_cache(config, top_k=top_k, teacher=ColourTeacher())


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [name for name in sa if not torch.equal(sa[name], sb[name])]
    assert not different, f"parameters that differ: {different}"


@pytest.mark.parametrize("kind, tau", [("hard", 1.0), ("soft", 2.0)])
def test_a_student_trained_from_the_cache_is_bit_identical_to_one_with_the_teacher_online(image_folder, tmp_path, kind, tau):
    settings = dict(distillation_type=kind, distillation_tau=tau)
    cache = build(run_config(image_folder, tmp_path / "cache", **settings))  # top K: all 3 classes by default
    assert cache.complete and cache.layout.top_k == len(CLASSES)
    online = fit(run_config(image_folder, tmp_path / "online", **settings), teacher=ColourTeacher())
    cached = fit(run_config(image_folder, tmp_path / "cached", teacher_cache=str(tmp_path / "cache"), **settings))
    assert len(cached.step_losses) == 2 * 3 and cached.step_losses == online.step_losses
    assert_same_weights(cached.model, online.model)


def test_exact_resume_from_the_cache(image_folder, tmp_path):
    build(run_config(image_folder, tmp_path / "cache"))
    config = run_config(image_folder, tmp_path / "run", teacher_cache=str(tmp_path / "cache"), checkpoint_every_steps=1)
    whole = fit(dataclasses.replace(config, output=str(tmp_path / "whole")))
    first = fit(dataclasses.replace(config, stop_after_steps=4))  # in the middle of the second epoch
    assert not first.completed
    resumed = fit(dataclasses.replace(config, resume="auto"))
    assert resumed.step_losses == whole.step_losses[4:]
    assert_same_weights(resumed.model, whole.model)


def test_a_cache_made_for_another_seed_is_refused_naming_the_setting_and_both_values(image_folder, tmp_path):
    build(run_config(image_folder, tmp_path / "cache", seed=0))
    with pytest.raises(TeacherCacheError, match=r"--seed: 0 in the cache, 1 in this run"):
        fit(run_config(image_folder, tmp_path / "run", seed=1, teacher_cache=str(tmp_path / "cache")))
    with pytest.raises(TeacherCacheError, match=r"holds 2 epoch\(s\) of views but this run trains 3 \(--epochs\)"):
        fit(run_config(image_folder, tmp_path / "run", epochs=3, teacher_cache=str(tmp_path / "cache")))


def test_a_truncated_or_corrupt_store_is_a_named_error(image_folder, tmp_path):
    build(run_config(image_folder, tmp_path / "cache"))
    values = tmp_path / "cache" / "values.f32"
    intact = values.read_bytes()
    config = run_config(image_folder, tmp_path / "run", teacher_cache=str(tmp_path / "cache"), overwrite=True)
    values.write_bytes(intact[:-12])
    with pytest.raises(TeacherCacheError, match=r"values.f32: truncated or corrupt teacher cache \(\d+ bytes, the manifest says \d+\)"):
        fit(config)
    flipped = bytearray(intact)
    flipped[len(intact) // 2] ^= 0x40
    values.write_bytes(bytes(flipped))
    with pytest.raises(TeacherCacheError, match=r"corrupt teacher cache: the logits of epoch 2, batch 1, rank 0 do not match their checksum"):
        fit(config)


def test_an_interrupted_build_continues_to_the_bytes_of_an_uninterrupted_one(image_folder, tmp_path):
    config = run_config(image_folder, tmp_path / "whole")
    build(config)
    parts = dataclasses.replace(config, output=str(tmp_path / "parts"))
    assert not build(dataclasses.replace(parts, stop_after_steps=4)).complete
    assert build(parts).complete
    for name in ("values.f32", "indices.i16", "logsumexp.f32", "checks.i64"):
        assert (tmp_path / "parts" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    with pytest.raises(TeacherCacheError, match=r"holds a teacher cache of other views or another teacher \(--seed: 0 in the cache, 3 in this run\)"):
        build(dataclasses.replace(parts, seed=3))
    assert build(dataclasses.replace(parts, seed=3, overwrite=True)).complete


def test_soft_distillation_from_the_top_k_trains_at_the_caches_temperature_and_refuses_another(image_folder, tmp_path):
    soft = dict(distillation_type="soft", distillation_tau=1.0)
    assert build(run_config(image_folder, tmp_path / "cache", **soft), top_k=2).layout.top_k == 2
    with pytest.raises(TeacherCacheError, match=r"keeps 2 of 3 classes and the rest of the softmax at --distillation-tau 1, this run has 2"):
        fit(run_config(image_folder, tmp_path / "run", teacher_cache=str(tmp_path / "cache"), **{**soft, "distillation_tau": 2.0}))
    trained = fit(run_config(image_folder, tmp_path / "run", teacher_cache=str(tmp_path / "cache"), **soft))
    assert len(trained.step_losses) == 6 and all(np.isfinite(trained.step_losses))


def test_a_build_the_disk_cannot_hold_is_refused_before_it_starts(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_cache.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(TeacherCacheError, match=r"the teacher cache needs 576 bytes more but the disk has 100 bytes free"):
        build(run_config(image_folder, tmp_path / "cache"))
    assert not (tmp_path / "cache" / "values.f32").exists()


def test_top_k_soft_targets_keep_the_top_classes_and_spread_the_rest_evenly():
    torch.manual_seed(0)
    logits, tau, k = torch.randn(5, 12) * 3, 2.0, 4
    values, indices = logits.topk(k, dim=-1)
    target = torch.softmax(logits_from_top_k(values, indices, torch.logsumexp(logits / tau, -1), 12, tau) / tau, -1)
    full = torch.softmax(logits / tau, -1)
    torch.testing.assert_close(target.gather(1, indices), full.gather(1, indices), rtol=1e-5, atol=1e-7)
    rest = torch.ones_like(full, dtype=torch.bool).scatter_(1, indices, False)
    expected_rest = (1 - full.gather(1, indices).sum(-1, keepdim=True)) / (12 - k)
    torch.testing.assert_close(target[rest].view(5, -1), expected_rest.expand(5, 12 - k), rtol=1e-4, atol=1e-7)
    assert torch.equal(target.argmax(-1), logits.argmax(-1))
    # Every class kept: the logits themselves, bit for bit.
    values, indices = logits.topk(12, dim=-1)
    assert torch.equal(logits_from_top_k(values, indices, torch.zeros(5), 12, tau), logits)


DDP_WORKER = """
import json, os, sys
sys.path[:0] = [{helpers!r}, {src!r}]
import torch
import torch.distributed as dist
from fit_helpers import ColourTeacher, datasets, tiny_config
from deit.train.engine import fit
from deit.train.teacher_cache_builder import build_teacher_cache

out = sys.argv[1]
dist.init_process_group("gloo")  # one group for the three runs (each run would otherwise make and end its own)
train_set, val_set = datasets(32, 8)
settings = dict(epochs=1, batch_size=4, mixup=0.8, cutmix=1.0, deterministic=True, teacher="<module>", distillation_type="hard", fast_kernels="off")
build_teacher_cache(tiny_config(out + "/cache", **settings), teacher=ColourTeacher(), train_dataset=train_set, val_dataset=val_set)
online = fit(tiny_config(out + "/online", **settings), teacher=ColourTeacher(), train_dataset=train_set, val_dataset=val_set)
cached = fit(tiny_config(out + "/cached", teacher_cache=out + "/cache", **settings), train_dataset=train_set, val_dataset=val_set)
same = [torch.equal(a, b) for a, b in zip(online.model.state_dict().values(), cached.model.state_dict().values())]
with open(os.path.join(out, "rank" + os.environ["RANK"] + ".json"), "w") as f:
    json.dump({{"same": same, "online": online.step_losses, "cached": cached.step_losses}}, f)
dist.destroy_process_group()
"""


def test_two_processes_build_and_read_their_own_rows_and_one_process_is_refused(tmp_path):
    here = Path(__file__).parent
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(helpers=str(here), src=str(here.parents[1] / "src")))
    finish(start_two_gloo_processes(script, tmp_path))
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(report["online"]) == 32 // 8 and report["cached"] == report["online"] and all(report["same"])
    train_set, val_set = datasets(32, 8)
    alone = tiny_config(str(tmp_path / "alone"), epochs=1, batch_size=4, mixup=0.8, cutmix=1.0, deterministic=True, teacher="<module>",
                        distillation_type="hard", fast_kernels="off", teacher_cache=str(tmp_path / "cache"))
    with pytest.raises(TeacherCacheError, match=r"the number of processes .*: 2 in the cache, 1 in this run"):
        fit(alone, train_dataset=train_set, val_dataset=val_set)
