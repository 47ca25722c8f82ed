"""Adapting a teacher's head (--teacher-finetune-epochs) and training a plain classifier in the
engine's loop (deit.train.classifier_training): only the new head trains, on the student's own
batches and data order, from the labelled images only; two DDP processes end with the same head,
the one a single process trains; the demo's convnet teacher learns through the engine."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fit_helpers import (  # noqa: F401 (one_thread: autouse fixture)
    LABELS_PER_CLASS, datasets, finish, one_thread, start_two_gloo_processes, tiny_config, tiny_partly_labelled_config,
)
from safetensors.torch import load_file, save_file
from teacher_factory import make_recording_teacher
from test_teacher import tiny_deit
from torch import nn
from torch.utils.data import DataLoader

from deit.demo.teacher import SmallConvNet
from deit.train.classifier_training import labelled_cross_entropy
from deit.train.distributed import DistributedContext
from deit.train.engine import ClassifierTrainer, Trainer, run_trainer
from deit.train.transforms import smoothed_one_hot

HERE = Path(__file__).parent
SRC = HERE.parents[1] / "src"
ONE_PROCESS = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
RECORDING_TEACHER = "teacher_factory:make_recording_teacher"  # a frozen colour detector for 4 classes that keeps its inputs


def write_teacher_weights(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights, with BatchNorm statistics of their own (so that a change would show)."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    save_file(state, str(path))
    return state


def student_trainer(config, train_set=None) -> Trainer:
    """The student's Trainer: making it loads the teacher and adapts its head (the student does not train here)."""
    train, val = datasets()
    return Trainer(config, ONE_PROCESS, train_set=train_set or train, val_set=val)


def test_labelled_cross_entropy_is_the_mean_over_the_labelled_images():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([2, -1, 0, -1, 1])
    expected = F.cross_entropy(logits[labels >= 0], labels[labels >= 0])
    torch.testing.assert_close(labelled_cross_entropy(logits, smoothed_one_hot(labels, 3)), expected, rtol=1e-6, atol=1e-7)
    none = torch.full((5,), -1)
    leaf = logits.clone().requires_grad_(True)
    loss = labelled_cross_entropy(leaf, smoothed_one_hot(none, 3))
    loss.backward()  # a batch without labels: no loss, no gradient, but a graph for DDP's all-reduce
    assert float(loss.detach()) == 0.0 and torch.equal(leaf.grad, torch.zeros_like(leaf))


def test_adapting_trains_only_a_new_head_on_the_students_batches(tmp_path, capsys):
    weights = tmp_path / "teacher.safetensors"
    body = write_teacher_weights(weights, make_recording_teacher())
    config = tiny_config(str(tmp_path / "run"), teacher=RECORDING_TEACHER, teacher_weights=str(weights),
                         teacher_finetune_epochs=6, teacher_finetune_lr=0.1)
    trainer = student_trainer(config)
    teacher = trainer.teacher
    assert teacher.num_classes == 3 and teacher.model.classifier.out_features == 3
    after = teacher.model.state_dict()
    assert all(torch.equal(body[key], after[key]) for key in body if not key.startswith("classifier"))  # incl. BatchNorm statistics
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.model.training
    # Head epoch k trained on the student's epoch k: its loader, sampler and augmentation (after load_teacher's probe).
    batches_per_epoch = 64 // 8
    trained_on = teacher.model.inputs[1:1 + 6 * batches_per_epoch]
    for epoch in (0, 1):
        trainer.data.order.set_epoch(epoch)
        student_batches = [images for images, _ in trainer.data.train_loader]
        assert len(student_batches) == batches_per_epoch
        assert all(torch.equal(a, b) for a, b in zip(trained_on[epoch * batches_per_epoch:], student_batches))
    _, val_set = datasets()
    correct = sum(int((teacher(images).argmax(-1) == labels).sum()) for images, labels in DataLoader(val_set, batch_size=8))
    assert correct / len(val_set) >= 0.9
    out = capsys.readouterr().out
    assert "teacher head epoch 6/6: loss" in out and "(64 labelled images" in out
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # the adaptation writes no files


def test_adapting_learns_from_the_labelled_images_only(tmp_path, capsys):
    config = tiny_partly_labelled_config(str(tmp_path / "run"), teacher=RECORDING_TEACHER, teacher_finetune_epochs=1)
    teacher = student_trainer(config).teacher
    assert teacher.num_classes == 3
    assert f"({LABELS_PER_CLASS * 3} labelled images" in capsys.readouterr().out
    # The teacher ran on the labelled rows of each batch; a batch without any label ran whole (its loss 0).
    sizes = [len(images) for images in teacher.model.inputs[1:1 + 64 // 8]]
    assert sum(size for size in sizes if size < 8) == LABELS_PER_CLASS * 3


def test_adapting_replaces_both_heads_of_a_distilled_deit(tmp_path):
    tiny_deit(num_labels=5).save_pretrained(tmp_path / "ckpt")
    teacher = student_trainer(tiny_config(str(tmp_path / "run"), teacher=str(tmp_path / "ckpt"), teacher_finetune_epochs=1)).teacher
    assert teacher.model.cls_classifier.out_features == teacher.model.distillation_classifier.out_features == 3
    assert teacher(torch.randn(2, 3, 16, 16)).shape == (2, 3)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_adapting_refuses_torchscript(tmp_path):
    torch.jit.script(SmallConvNet(num_classes=4).eval()).save(str(tmp_path / "t.pt"))
    with pytest.raises(ValueError, match="TorchScript"):
        student_trainer(tiny_config(str(tmp_path / "run"), teacher=str(tmp_path / "t.pt"), teacher_finetune_epochs=1))


# Two gloo processes, 4 images each, against one process with the global batch of 8.
DDP_WORKER = textwrap.dedent(
    """
    import os, sys
    sys.path[:0] = [{helpers!r}, {src!r}]
    import torch
    from fit_helpers import datasets, tiny_config
    from deit.train.distributed import init_distributed, shutdown_distributed
    from deit.train.engine import Trainer

    ctx = init_distributed("cpu")
    train_set, val_set = datasets()
    config = tiny_config(sys.argv[1], batch_size=4, **{settings!r})
    teacher = Trainer(config, ctx, train_set=train_set, val_set=val_set).teacher
    torch.save(dict(teacher.model.classifier.state_dict()), os.path.join(sys.argv[2], f"head{{ctx.rank}}.pt"))
    shutdown_distributed()
    """
)


def test_two_ddp_processes_end_with_the_head_of_one_process(tmp_path):
    weights = tmp_path / "teacher.safetensors"
    write_teacher_weights(weights, SmallConvNet(num_classes=4))
    settings = dict(teacher="teacher_factory:make_teacher", teacher_weights=str(weights), teacher_finetune_epochs=2, teacher_finetune_lr=0.05)
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(helpers=str(HERE), src=str(SRC), settings=settings))
    process = start_two_gloo_processes(script, tmp_path / "ddp", tmp_path)
    alone = student_trainer(tiny_config(str(tmp_path / "alone"), batch_size=8, **settings)).teacher.model.classifier.state_dict()
    finish(process)
    heads = [torch.load(tmp_path / f"head{rank}.pt", weights_only=True) for rank in (0, 1)]
    for key in alone:
        assert torch.equal(heads[0][key], heads[1][key]), key  # every rank ends with the same head
        torch.testing.assert_close(heads[0][key], alone[key], rtol=0, atol=1e-5)  # DDP averaged the gradients of the global batch
    torch.manual_seed(0)  # the new head's initial weights (the engine seeds with config.seed)
    initial = nn.Linear(128, 3)
    assert (heads[0]["weight"] - initial.weight).abs().max() > 1e-2  # it trained: equal ranks are not equal initial weights


def test_a_plain_classifier_learns_in_the_engine(tmp_path):
    train_set, val_set = datasets()
    torch.manual_seed(0)
    config = tiny_config(str(tmp_path / "run"), model="SmallConvNet", epochs=3, lr=0.1, warmup_epochs=0.0, smoothing=0.0)
    result = run_trainer(ClassifierTrainer, config, train_dataset=train_set, val_dataset=val_set, model=SmallConvNet(num_classes=3))
    losses = result.step_losses
    assert len(losses) == 3 * 64 // 8 and sum(losses[-4:]) < 0.5 * sum(losses[:4])
    assert result.final_metrics["val_acc1"] >= 90.0
    saved = load_file(tmp_path / "run" / "last" / "model.safetensors")
    assert all(torch.equal(saved[key], value) for key, value in result.model.state_dict().items())
