"""Teachers for distillation: load any classifier, run it frozen on the student's batch.

:func:`load_teacher` reads a teacher from

- our checkpoint (a folder, or a weights file beside its ``config.json``): its ``logits``, which
  for a distilled DeiT are the averaged CLS and DIST heads;
- ``torchvision:NAME``: any torchvision classification model, weights from ``weights_path``;
- ``timm:NAME`` (when timm is installed): ``timm.create_model(NAME, pretrained=False)`` + weights;
- a TorchScript file (``.pt``, ``.ts``, ...: ``torch.jit.load``) or a ``torch.export`` file
  (``.pt2``: ``torch.export.load``);
- ``hf:NAME_OR_DIR``: any ``transformers`` ``AutoModelForImageClassification`` checkpoint, fed by
  its own ``preprocessor_config.json`` (mean, std, size; :mod:`deit.train.hf_teacher`);
- ``module:callable``: the callable is imported and called without arguments and must return an
  ``nn.Module`` (``weights_path``, if given, is then loaded into it).

Weights files are safetensors or plain PyTorch pickles read with ``torch.load(weights_only=True)``.
A torchvision/timm model is built with the class count found in the weights' classifier.

:class:`Teacher` wraps the model in eval mode without gradients. It receives the student's
batch (normalised with the student's mean/std, at the student's size) and converts it: undo the
student's normalisation, apply the teacher's, resize (antialiased) to the teacher's input size
when that is set and differs. The teacher's mean/std/size come from the arguments, else from the
source where the source knows what its weights were trained on (our ``preprocessor_config.json``
and ``config.json``; a ``.pt2`` file: its static input size), else the student's: a torchvision
or timm architecture with a weights file of the user's gets the student's batch as it is (as
timm's ``train.py`` feeds its teacher), unless the architecture only takes its own input size.
``teacher.input_description`` says which, and why.

A teacher without weights (a torchvision/timm name without a weights file) is refused: random
logits would teach noise. A teacher whose checkpoint names its classes exposes them as
``teacher.class_names``; :meth:`Teacher.reorder_classes` puts its logits in the student's order.
"""

from __future__ import annotations

import importlib
import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PREPROCESSOR_CONFIG_NAME
from .hf_teacher import HF_TEACHER_PREFIX, load_transformers_teacher

__all__ = ["Teacher", "load_teacher", "logits_of"]

_MODULE_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_EXPORT_SUFFIXES = (".pt2",)
_TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".jit", ".torchscript")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: a tensor, ``.logits``, ``["logits"]`` or the first element."""
    if isinstance(output, torch.Tensor):
        return output
    if getattr(output, "logits", None) is not None:
        return output.logits
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a teacher output of type {type(output).__name__}")


def _freeze_eval(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        model.eval()
    except NotImplementedError:
        pass  # torch.export modules are traced in eval mode already and refuse .eval()


def _stats(values: Sequence[float], what: str) -> torch.Tensor:
    t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if t.numel() == 1:
        t = t.repeat(3)
    if t.numel() != 3:
        raise ValueError(f"{what} needs 1 or 3 values, got {len(values)}")
    return t.view(1, 3, 1, 1)


class Teacher(nn.Module):
    """A frozen classifier that takes the student's normalised batch and returns logits.

    ``input = (x * student_std + student_mean - mean) / std``, computed as one scale and shift,
    then resized to ``input_size`` x ``input_size`` (antialiased ``interpolation``) when set and
    different from the batch's size. ``mean``/``std`` default to the student's (no conversion).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        student_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        student_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_size: int | None = None,
        interpolation: str = "bicubic",
        name: str = "",
    ) -> None:
        super().__init__()
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
        self.model = model
        _freeze_eval(model)
        s_mean, s_std = _stats(student_mean, "student_mean"), _stats(student_std, "student_std")
        t_mean = _stats(mean, "teacher mean") if mean is not None else s_mean
        t_std = _stats(std, "teacher std") if std is not None else s_std
        self.register_buffer("scale", s_std / t_std, persistent=False)
        self.register_buffer("shift", (s_mean - t_mean) / t_std, persistent=False)
        self.convert_stats = not (torch.allclose(self.scale, torch.ones(1)) and torch.allclose(self.shift, torch.zeros(1)))
        self.input_size = input_size
        self.interpolation = interpolation
        self.name = name or type(model).__name__
        self.num_classes: int | None = None
        self.class_names: list[str] | None = None  # in logit order, where the source names them
        self.input_description = ""
        self.register_buffer("class_order", None, persistent=False)
        self.training = False

    def train(self, mode: bool = True) -> Teacher:
        # The wrapped model stays in eval mode whatever the caller does (BatchNorm statistics and
        # dropout of a teacher must not change); torch.export modules refuse train()/eval() anyway.
        self.training = False
        return self

    def prepare(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The student's batch in the teacher's normalisation and size."""
        x = pixel_values
        if self.convert_stats:
            x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        size = self.input_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode=self.interpolation, align_corners=False, antialias=True)
        return x

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits with autograd left as the caller has it (used to train an adapted head)."""
        logits = logits_of(self.model(self.prepare(pixel_values)))
        return logits if self.class_order is None else logits.index_select(-1, self.class_order)

    def reorder_classes(self, names: Sequence[str]) -> None:
        """Give the logits in the order of ``names`` (the same classes as ``class_names``, reordered)."""
        if self.class_names is None or sorted(self.class_names) != sorted(names):
            raise ValueError(f"teacher {self.name}: cannot reorder classes {self.class_names} to {list(names)}")
        order = [self.class_names.index(name) for name in names]
        self.class_order = torch.tensor(order, dtype=torch.long, device=self.scale.device)
        self.class_names = list(names)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.logits(pixel_values)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, convert_stats={self.convert_stats}, num_classes={self.num_classes}"


# --------------------------------------------------------------------------------- sources
@dataclass
class _Loaded:
    model: nn.Module
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    input_size: int | None = None
    probe_batch: int = 1
    # Whether mean/std/input_size describe the loaded weights (our checkpoint's own files), rather
    # than the architecture's usual ImageNet weights, which a weights file of the user's may not be.
    describes_weights: bool = True
    class_names: list[str] | None = None


def output_linears(model: nn.Module, num_outputs: int | None = None) -> list[str]:
    """Names of the classification layers: the ``nn.Linear`` modules with ``num_outputs`` outputs
    (both heads of a distilled DeiT), or the last ``nn.Linear`` when ``num_outputs`` is None."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if num_outputs is None:
        return [linears[-1][0]] if linears else []
    return [name for name, m in linears if m.out_features == num_outputs]


def _load_weights(model: nn.Module, weights_path: str | Path, rebuild: Callable[[int], nn.Module] | None) -> nn.Module:
    """Load a state dict; rebuild the model first when the file's classifier has another class count."""
    from ..checkpoint import read_state_dict

    state = read_state_dict(weights_path)
    heads = output_linears(model)
    if rebuild is not None and heads:
        head = model.get_submodule(heads[0])
        weight = state.get(f"{heads[0]}.weight")
        if weight is not None and weight.ndim == 2 and weight.shape[0] != head.out_features:
            model = rebuild(int(weight.shape[0]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights_path}: the weights do not fit the teacher model: {str(err).splitlines()[0]} {_short(err)}") from None
    return model


def _short(err: Exception, limit: int = 400) -> str:
    text = " ".join(str(err).split("\n")[1:]).strip()
    return text[:limit] + ("..." if len(text) > limit else "")


def _refuse_random_weights(spec: str) -> None:
    raise ValueError(
        f"teacher {spec} would have random weights (no --teacher-weights FILE): its logits would teach noise; "
        "pass the weights it was trained with"
    )


def _from_torchvision(name: str, weights_path: str | None) -> _Loaded:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ValueError(f"torchvision:{name}: not a torchvision classification model (e.g. {', '.join(sorted(known)[:8])}, ...)")

    def build(n: int) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, num_classes=n)

    if weights_path is None:
        _refuse_random_weights(f"torchvision:{name}")
    model = _load_weights(build(1000), weights_path, build)
    # Models with a fixed input size (vision transformers) say so; convnets take any size.
    size = getattr(model, "image_size", None)
    return _Loaded(model, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, size if isinstance(size, int) else None, describes_weights=False)


def _from_timm(name: str, weights_path: str | None) -> _Loaded:
    try:
        import timm
    except ImportError:
        raise ValueError(f"timm:{name}: timm is not installed (pip install timm)") from None
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(f"timm:{name}: {err}") from None
    if weights_path is None:
        _refuse_random_weights(f"timm:{name}")
    model = _load_weights(model, weights_path, lambda n: timm.create_model(name, pretrained=False, num_classes=n))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return _Loaded(model, cfg.get("mean"), cfg.get("std"), int(size[-1]) if size else None, describes_weights=False)


def _from_our_checkpoint(path: Path) -> _Loaded:
    from ..auto import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(str(path))
    folder = path if path.is_dir() else path.parent
    mean = std = None
    processor_file = folder / PREPROCESSOR_CONFIG_NAME
    if processor_file.is_file():
        settings = json.loads(processor_file.read_text())
        mean, std = settings.get("image_mean"), settings.get("image_std")
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    generic = all(re.fullmatch(r"LABEL_\d+", name) for name in names)  # no names: the default labels
    return _Loaded(model, mean, std, model.config.image_size, class_names=None if generic else names)


def _from_export(path: Path) -> _Loaded:
    try:
        program = torch.export.load(str(path))
    except Exception as err:  # the loader raises many kinds for a file that is not an export
        raise ValueError(f"{path}: not a torch.export file ({type(err).__name__}: {err})") from None
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    shape = placeholders[program.graph_signature.user_inputs[0]].meta["val"].shape
    static = [d if isinstance(d, int) else None for d in shape]
    size = static[-1] if static[-1] is not None and static[-1] == static[-2] else None
    batch = static[0] or 1
    if static[0] is not None:
        warnings.warn(
            f"{path}: the exported teacher only accepts batches of {static[0]} images; export it with a dynamic batch "
            "dimension (dynamic_shapes) to train and evaluate with any batch size",
            stacklevel=3,
        )
    return _Loaded(program.module(), input_size=size, probe_batch=batch)


def _from_torchscript(path: Path) -> _Loaded:
    try:
        return _Loaded(torch.jit.load(str(path), map_location="cpu"))
    except RuntimeError as err:
        raise ValueError(
            f"{path}: not a TorchScript file ({str(err).splitlines()[0]}). A plain weights file needs its model: "
            "pass torchvision:NAME, timm:NAME or module:callable with --teacher-weights FILE"
        ) from None


def _from_callable(spec: str, weights_path: str | None) -> _Loaded:
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"teacher {spec}: cannot import {module_name!r} ({err})") from None
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise ValueError(f"teacher {spec}: {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, attr)
    model = target()
    if not isinstance(model, nn.Module):
        raise ValueError(f"teacher {spec}: calling it returned {type(model).__name__}, not a torch.nn.Module")
    if weights_path is not None:
        model = _load_weights(model, weights_path, rebuild=None)
    return _Loaded(model)


def _from_transformers(name: str, weights_path: str | None) -> _Loaded:
    if weights_path is not None:
        raise ValueError(f"teacher {HF_TEACHER_PREFIX}{name}: --teacher-weights does not apply to an hf: checkpoint (its weights are in it)")
    return _Loaded(**load_transformers_teacher(name))


# Where a teacher comes from: a spec that starts with a prefix names a model of that library
# (loader(name after the prefix, weights_path)); an existing file or folder is read by its suffix
# (loader(path); a folder is our checkpoint); otherwise ``module:callable``.
_PREFIX_LOADERS: dict[str, Callable[[str, str | None], _Loaded]] = {
    HF_TEACHER_PREFIX: _from_transformers,
    "torchvision:": _from_torchvision,
    "timm:": _from_timm,
}
_FILE_LOADERS: dict[str, Callable[[Path], _Loaded]] = {
    **dict.fromkeys(_WEIGHT_SUFFIXES, _from_our_checkpoint),
    **dict.fromkeys(_EXPORT_SUFFIXES, _from_export),
    **dict.fromkeys(_TORCHSCRIPT_SUFFIXES, _from_torchscript),
}


def _load(spec: str, weights_path: str | None) -> _Loaded:
    for prefix, load in _PREFIX_LOADERS.items():
        if spec.startswith(prefix):
            return load(spec.removeprefix(prefix), weights_path)
    path = Path(spec)
    if path.exists():
        if weights_path is not None:
            raise ValueError(f"teacher {spec}: --teacher-weights applies to torchvision:, timm: and module: teachers, not to a file or folder")
        load_file = _from_our_checkpoint if path.is_dir() else _FILE_LOADERS.get(path.suffix.lower())
        if load_file is None:
            raise ValueError(f"teacher {spec}: unknown file type (expected a checkpoint folder, .safetensors/.bin/.pth, .pt TorchScript or .pt2 torch.export)")
        return load_file(path)
    if _MODULE_CALLABLE.match(spec):
        return _from_callable(spec, weights_path)
    raise FileNotFoundError(f"teacher {spec}: no such file or folder, and not hf:NAME, torchvision:NAME, timm:NAME or module:callable")


def load_teacher(
    spec: str,
    *,
    num_classes: int | None,
    device: str | torch.device = "cpu",
    student_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    student_std: Sequence[float] = IMAGENET_DEFAULT_STD,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    weights_path: str | None = None,
    student_input_size: int | None = None,
    interpolation: str = "bicubic",
) -> Teacher:
    """Load, wrap and check a teacher (see the module docstring for ``spec``).

    The teacher's input: ``input_size``/``mean``/``std`` when given; else what our checkpoint (or a
    ``.pt2`` file) says its weights were trained on; else the student's batch as it is (a
    torchvision/timm architecture with the user's weights file, whose training size and statistics
    are unknown), resized to the architecture's own size only when it refuses the student's.
    ``teacher.input_description`` says which. A dry forward on a blank batch reads the teacher's
    class count (``teacher.num_classes``); a count other than ``num_classes`` raises ValueError.
    ``num_classes=None`` skips the check, for a teacher whose head the engine will replace (``--teacher-finetune-epochs``:
    :mod:`deit.train.classifier_training`).
    """
    loaded = _load(spec, weights_path)
    known_stats = loaded.describes_weights and loaded.mean is not None and loaded.std is not None
    if mean is not None or std is not None:
        stats_why = "--teacher-mean/--teacher-std"
    elif known_stats:
        stats_why = "its checkpoint's preprocessor_config.json"
    else:
        stats_why = "the student's" + ("" if loaded.describes_weights else ": the weights file's are unknown")
    mean = mean if mean is not None else (loaded.mean if known_stats else None)
    std = std if std is not None else (loaded.std if known_stats else None)
    # Sizes to try in turn (None: the student's batch as it is), with why each is used.
    if input_size is not None:
        sizes = [(input_size, "--teacher-input-size")]
    elif loaded.describes_weights and loaded.input_size is not None:
        sizes = [(loaded.input_size, "the size its checkpoint was trained at")]
    else:
        sizes = [(None, "the student's batch as it is" + ("" if loaded.describes_weights else
                 ": the weights file's training size is unknown (timm's train.py feeds its teacher the same)"))]
        if loaded.input_size is not None:
            sizes.append((loaded.input_size, f"the only size {spec} takes (it fails on the student's)"))
    for attempt, (size, size_why) in enumerate(sizes, 1):
        teacher = Teacher(
            loaded.model, student_mean=student_mean, student_std=student_std, mean=mean, std=std,
            input_size=size, interpolation=interpolation, name=spec,
        ).to(device)
        probe_size = size or student_input_size or 224
        probe = torch.zeros(loaded.probe_batch, 3, probe_size, probe_size, device=device)
        try:
            teacher.num_classes = int(teacher(probe).shape[-1])
            break
        except Exception as err:  # whatever the foreign model raises, say what was tried
            if attempt == len(sizes):
                raise ValueError(
                    f"teacher {spec} failed on a {probe_size}x{probe_size} input ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                    "set the teacher's input size (--teacher-input-size)"
                ) from None
    shown = f"{probe_size}x{probe_size} px"
    t_mean, t_std = (mean, std) if mean is not None and std is not None else (student_mean, student_std)
    teacher.input_description = (
        f"teacher {spec}: input {shown} ({size_why}); normalisation mean {_fmt(t_mean)} std {_fmt(t_std)} ({stats_why})"
    )
    teacher.class_names = loaded.class_names
    if num_classes is not None and teacher.num_classes != num_classes:
        raise ValueError(
            f"teacher {spec} predicts {teacher.num_classes} classes but the data set has {num_classes}; "
            "use a teacher trained on these classes, or adapt its head first with --teacher-finetune-epochs N"
        )
    return teacher


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.3g}" for v in values) + ")"
