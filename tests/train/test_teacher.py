"""Teachers: every kind of source, the normalisation/size conversion against a hand computation,
and the class-count check (adapting a teacher's head to new classes: test_teacher_head.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from deit import DeiTConfig, DeiTForImageClassificationWithTeacher
from deit.processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from deit.demo.teacher import SmallConvNet
from deit.train.teacher import Teacher, load_teacher

HERE = Path(__file__).parent
STUDENT_MEAN, STUDENT_STD = (0.1307, 0.2, 0.3), (0.3081, 0.25, 0.5)
ATOL = 1e-5  # float32, same ops in the same order: differences are rounding only


def student_batch(size: int = 16, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def by_hand(x: torch.Tensor, mean, std, size: int | None = None, mode: str = "bicubic") -> torch.Tensor:
    """Undo the student's normalisation, apply the teacher's, resize: step by step."""
    view = lambda v: torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)  # noqa: E731
    pixels = x * view(STUDENT_STD) + view(STUDENT_MEAN)
    out = (pixels - view(mean)) / view(std)
    if size is not None:
        out = F.interpolate(out, size=(size, size), mode=mode, align_corners=False, antialias=True)
    return out


class Echo(nn.Module):
    """Returns its input, so a Teacher's output is exactly what it fed the model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_conversion_matches_the_hand_computation():
    x = student_batch()
    teacher = Teacher(Echo(), student_mean=STUDENT_MEAN, student_std=STUDENT_STD, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    torch.testing.assert_close(teacher(x), by_hand(x, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)), atol=ATOL, rtol=0)
    resized = Teacher(Echo(), student_mean=STUDENT_MEAN, student_std=STUDENT_STD, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, input_size=24)
    torch.testing.assert_close(resized(x), by_hand(x, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 24), atol=ATOL, rtol=0)
    # A uniform image stays uniform through the (antialiased) resize: exact per-channel values.
    flat = torch.ones(1, 3, 16, 16) * torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    down = Teacher(Echo(), student_mean=STUDENT_MEAN, student_std=STUDENT_STD, mean=(0, 0, 0), std=(1, 1, 1), input_size=5, interpolation="bilinear")
    expected = torch.tensor([0.5 * 0.3081 + 0.1307, -1.0 * 0.25 + 0.2, 2.0 * 0.5 + 0.3]).view(1, 3, 1, 1).expand(1, 3, 5, 5)
    torch.testing.assert_close(down(flat), expected, atol=ATOL, rtol=0)
    same = Teacher(Echo(), student_mean=STUDENT_MEAN, student_std=STUDENT_STD)
    assert not same.convert_stats and torch.equal(same(x), x)


def test_teacher_stays_frozen_and_in_eval_mode():
    teacher = Teacher(SmallConvNet(3))
    teacher.train()
    assert not teacher.training and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    x = student_batch().requires_grad_()
    assert not teacher(x).requires_grad


def save_resnet18(path: Path, num_classes: int) -> nn.Module:
    import torchvision

    model = torchvision.models.resnet18(num_classes=num_classes).eval()
    if path.suffix == ".safetensors":
        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return model


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_torchvision_teacher_from_a_weights_file(tmp_path, suffix):
    reference = save_resnet18(tmp_path / f"r18{suffix}", num_classes=10)
    teacher = load_teacher("torchvision:resnet18", num_classes=10, weights_path=str(tmp_path / f"r18{suffix}"),
                           student_mean=STUDENT_MEAN, student_std=STUDENT_STD, student_input_size=16)
    assert teacher.num_classes == 10 and teacher.input_size is None  # convnet: any size
    # A weights file of the user's: its training size and statistics are unknown, so the teacher
    # gets the student's batch as it is (as timm's train.py feeds its teacher), and says so.
    x = student_batch()
    with torch.no_grad():
        expected = reference(x)
    torch.testing.assert_close(teacher(x), expected, atol=0, rtol=0)
    assert "input 16x16 px (the student's batch as it is: the weights file's training size is unknown" in teacher.input_description
    assert f"mean ({STUDENT_MEAN[0]:.3g}, " in teacher.input_description and "(the student's: the weights file's are unknown)" in teacher.input_description
    # Asked for, the ImageNet statistics and another size are applied.
    resized = load_teacher("torchvision:resnet18", num_classes=10, weights_path=str(tmp_path / f"r18{suffix}"), student_mean=STUDENT_MEAN,
                           student_std=STUDENT_STD, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, input_size=32)
    with torch.no_grad():
        expected = reference(by_hand(x, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 32))
    torch.testing.assert_close(resized(x), expected, atol=ATOL, rtol=0)
    assert "input 32x32 px (--teacher-input-size)" in resized.input_description


def test_class_count_mismatch_is_refused(tmp_path):
    save_resnet18(tmp_path / "r18.safetensors", num_classes=10)
    with pytest.raises(ValueError, match="predicts 10 classes but the data set has 5.*--teacher-finetune-epochs"):
        load_teacher("torchvision:resnet18", num_classes=5, weights_path=str(tmp_path / "r18.safetensors"), student_input_size=16)
    # num_classes=None: loaded unchecked, for a teacher whose head the engine adapts (test_teacher_head.py).
    assert load_teacher("torchvision:resnet18", num_classes=None, weights_path=str(tmp_path / "r18.safetensors"), student_input_size=16).num_classes == 10


def test_torchvision_errors_and_random_weights_refused(tmp_path):
    """Issue 24 item 9: a teacher without weights teaches noise; it used to be a warning only."""
    with pytest.raises(ValueError, match="not a torchvision classification model"):
        load_teacher("torchvision:no_such_net", num_classes=10)
    for spec in ("torchvision:resnet18", "timm:test_resnet"):
        with pytest.raises(ValueError, match="would have random weights.*--teacher-weights"):
            load_teacher(spec, num_classes=3, student_input_size=16)
    torch.save({"something": torch.zeros(2)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="do not fit"):
        load_teacher("torchvision:resnet18", num_classes=10, weights_path=str(tmp_path / "wrong.pth"))


def test_timm_teacher_with_its_own_weights_gets_the_student_batch(tmp_path):
    timm = pytest.importorskip("timm")
    reference = timm.create_model("test_resnet", pretrained=False, num_classes=7).eval()
    save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    teacher = load_teacher("timm:test_resnet", num_classes=7, weights_path=str(tmp_path / "w.safetensors"),
                           student_mean=STUDENT_MEAN, student_std=STUDENT_STD, input_size=32)
    cfg = reference.pretrained_cfg
    x = student_batch()
    with torch.no_grad():  # resized as asked, in the student's normalisation (the file's own is unknown)
        expected = reference(F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False, antialias=True))
    torch.testing.assert_close(teacher(x), expected, atol=ATOL, rtol=0)
    # Without --teacher-input-size a convnet with the user's weights is fed the student's batch as
    # it is, not resized to its pretrained_cfg size (issue 24 item 12: 28 px data went in at 224 px).
    default = load_teacher("timm:test_resnet", num_classes=7, weights_path=str(tmp_path / "w.safetensors"), student_input_size=16)
    assert default.input_size is None and "input 16x16 px (the student's batch as it is" in default.input_description
    assert cfg["input_size"][-1] != 16


def test_fixed_size_teacher_is_resized_to_its_own_size_and_says_why(tmp_path):
    """An architecture that refuses the student's size (a ViT with its position embeddings) gets its own."""
    timm = pytest.importorskip("timm")
    reference = timm.create_model("test_vit3", pretrained=False, num_classes=4).eval()  # 160 px only
    save_file(reference.state_dict(), str(tmp_path / "vit.safetensors"))
    teacher = load_teacher("timm:test_vit3", num_classes=4, weights_path=str(tmp_path / "vit.safetensors"), student_input_size=32)
    assert teacher.input_size == 160
    assert "input 160x160 px (the only size timm:test_vit3 takes (it fails on the student's))" in teacher.input_description
    x = student_batch(size=32, batch=1)
    with torch.no_grad():
        expected = reference(F.interpolate(x, size=(160, 160), mode="bicubic", align_corners=False, antialias=True))
    torch.testing.assert_close(teacher(x), expected, atol=ATOL, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_teacher(tmp_path):
    model = SmallConvNet(num_classes=4).eval()
    torch.jit.script(model).save(str(tmp_path / "t.pt"))
    teacher = load_teacher(str(tmp_path / "t.pt"), num_classes=4, student_input_size=16)
    x = student_batch()
    torch.testing.assert_close(teacher(x), model(x).detach(), atol=ATOL, rtol=0)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_teacher(str(tmp_path / "weights.pt"), num_classes=4)


def test_torch_export_teacher_reads_its_input_size(tmp_path):
    model = SmallConvNet(num_classes=4).eval()
    example = torch.randn(2, 3, 12, 12)
    program = torch.export.export(model, (example,), dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(tmp_path / "t.pt2"))
    teacher = load_teacher(str(tmp_path / "t.pt2"), num_classes=4, student_mean=STUDENT_MEAN, student_std=STUDENT_STD)
    assert teacher.input_size == 12
    x = student_batch(size=16, batch=3)  # resized to the exported 12 px
    with torch.no_grad():
        expected = model(by_hand(x, STUDENT_MEAN, STUDENT_STD, 12))
    torch.testing.assert_close(teacher(x), expected, atol=ATOL, rtol=0)


def test_module_callable_teacher(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    teacher = load_teacher("teacher_factory:make_teacher", num_classes=4, student_input_size=16)
    assert isinstance(teacher.model, SmallConvNet) and teacher.num_classes == 4
    trained = SmallConvNet(num_classes=4).eval()
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    with_weights = load_teacher("teacher_factory:make_teacher", num_classes=4, weights_path=str(tmp_path / "w.safetensors"), student_input_size=16)
    x = student_batch()
    torch.testing.assert_close(with_weights(x), trained(x).detach(), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        load_teacher("teacher_factory:make_not_a_module", num_classes=4)
    with pytest.raises(ValueError, match="cannot import"):
        load_teacher("no_such_module_here:make", num_classes=4)
    with pytest.raises(FileNotFoundError):
        load_teacher("no/such/teacher/folder", num_classes=4)


def tiny_deit(num_labels: int = 5) -> DeiTForImageClassificationWithTeacher:
    config = DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        image_size=32, patch_size=8, num_labels=num_labels)
    torch.manual_seed(0)
    return DeiTForImageClassificationWithTeacher(config).eval()


def test_our_checkpoint_teacher_uses_its_config_and_processor(tmp_path):
    model = tiny_deit()
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    teacher = load_teacher(str(tmp_path / "ckpt"), num_classes=5, student_mean=STUDENT_MEAN, student_std=STUDENT_STD)
    assert teacher.input_size == 32
    x = student_batch(size=16)
    with torch.no_grad():
        output = model(by_hand(x, (0.5,) * 3, (0.25,) * 3, 32))
    # A distilled DeiT teaches with its prediction: the mean of its two heads.
    torch.testing.assert_close(teacher(x), (output.cls_logits + output.distillation_logits) / 2, atol=ATOL, rtol=0)
