"""Real files for the tests that use deit as a new user does: through the ``deit`` console script,
on images, image folders and checkpoints written to disk.

Plain functions (no pytest), so the journey tests and the README test build the same things:

- :func:`run_deit`: the installed ``deit`` console script in a subprocess, on these sources.
- :func:`write_photo`: a real photograph as a JPEG file (matplotlib's ``grace_hopper.jpg``).
- :func:`write_predict_inputs`: a folder with a JPEG photograph, a PNG, a grayscale image and a
  file with an image suffix that is not an image.
- :func:`write_image_folder`: a tiny ``train/`` + ``val/`` ImageFolder of real photographs.
- :func:`tiny_deit` / :func:`save_hf_checkpoint`: a small random DeiT in the Hugging Face layout.
- :func:`tiny_timm` / :func:`save_timm_safetensors` / :func:`save_original_pth`: a small random
  timm model as a timm ``.safetensors`` file and as an original-DeiT ``.pth`` ({"model": ...}).

Every size is the smallest that still goes through the real code: 32 px inputs, 8 px patches.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import torch
from PIL import Image

import deit
from deit.bench.photos import photo_sources, photo_variants

# The labels of the tiny checkpoints and the class folders of the tiny ImageFolder.
CLASSES = ("cat", "dog", "fox")
IMAGE_SIZE = 32
PATCH_SIZE = 8
# A DeiT small enough that a training step takes milliseconds.
TINY_DEIT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, encoder_stride=PATCH_SIZE,
)
# The timm model is 192 wide, a released DeiT width, so the loader knows its head count (3)
# from the weights alone, as it does for the real checkpoints.
TINY_TIMM = dict(img_size=IMAGE_SIZE, patch_size=PATCH_SIZE, embed_dim=192, depth=1, num_heads=3)
# The evaluation resize of the DeiT recipe for a 32 px crop: shorter side to 32 / 0.875.
RESIZE = 36
# A deit run prints a line and exits in seconds; a minute means it hangs.
DEFAULT_TIMEOUT_S = 120


def console_script() -> Path | None:
    """The ``deit`` script installed next to this Python (``pip install -e .`` puts it there)."""
    script = Path(sys.executable).with_name("deit.exe" if os.name == "nt" else "deit")
    return script if script.is_file() else None


def deit_env(**extra: str) -> dict[str, str]:
    """The environment of a ``deit`` subprocess: the sources this process imports first on the
    path (so a worktree's code is what runs), one compute thread, no network, deit's cache in a
    temporary folder (the test run's, else one of this process), never the user's."""
    src = str(Path(deit.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    cache = os.environ.get("DEIT_CACHE_DIR") or _scratch_cache()
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DEIT_CACHE_DIR": cache, **extra}


@functools.cache
def _scratch_cache() -> str:
    """A temporary cache folder for the deit commands of a process that set none, removed at its exit."""
    folder = tempfile.mkdtemp(prefix="deit-cache-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def deit_command(*args: str | os.PathLike) -> list[str]:
    """The argv of ``deit ARGS...``; raises FileNotFoundError when the console script is missing."""
    script = console_script()
    if script is None:
        raise FileNotFoundError(f"no deit console script next to {sys.executable}; install the package (pip install -e .)")
    return [str(script), *map(str, args)]


def run_deit(*args: str | os.PathLike, cwd: str | os.PathLike | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``deit ARGS...`` to the end; stdout and stderr captured as text, the exit code not checked."""
    return subprocess.run(deit_command(*args), cwd=cwd, env=deit_env(), capture_output=True, text=True, timeout=timeout)


def photograph() -> Image.Image:
    """A real photograph, offline: matplotlib's ``grace_hopper.jpg`` (RGB, 512 x 600)."""
    return Image.open(photo_sources()[0]).convert("RGB")


def write_photo(path: str | os.PathLike) -> Path:
    """The photograph's JPEG file, byte for byte as shipped, at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(photo_sources()[0].read_bytes())
    return path


def write_predict_inputs(folder: str | os.PathLike) -> dict[str, Path]:
    """A folder of what ``deit predict`` meets: ``jpeg`` (the photograph as shipped), ``png`` (a
    smaller RGB copy), ``gray`` (a grayscale PNG) and ``not_image`` (text under an image suffix,
    so that a folder scan picks it up). Returns the paths by those names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "jpeg": folder / "hopper.jpg", "png": folder / "hopper_small.png",
        "gray": folder / "hopper_gray.png", "not_image": folder / "notes.png",
    }
    write_photo(paths["jpeg"])
    photo = photograph()
    photo.resize((120, 140)).save(paths["png"])
    photo.resize((90, 100)).convert("L").save(paths["gray"])
    paths["not_image"].write_text("shopping list: not an image\n")
    return paths


def write_image_folder(root: str | os.PathLike, train_per_class: int = 4, val_per_class: int = 2,
                       classes: tuple[str, ...] = CLASSES, long_side: tuple[int, int] = (40, 64)) -> Path:
    """An ImageFolder tree ``root/{train,val}/<class>/*.jpg`` of photo variants (random crops,
    flips and colour changes of the shipped photographs), small JPEGs so that decoding is cheap.
    The classes are not visually distinct: accuracies are not meaningful, only well-formed."""
    root = Path(root)
    per_split = {"train": train_per_class, "val": val_per_class}
    seed = 0
    for split, count in per_split.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(photo_variants(count, seed=seed, long_side=long_side)):
                image.save(folder / f"{name}_{i}.jpg", quality=90)
            seed += 1
    return root


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Noise on every parameter: the initialisation zeroes biases and tokens, which would leave the
    logits of a random model nearly tied and its top label decided by rounding."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=g) * 0.1)
    return model.eval()


def tiny_deit(seed: int = 0, labels: tuple[str, ...] = CLASSES) -> deit.DeiTForImageClassificationWithTeacher:
    """A random distilled DeiT (32 px, two blocks) predicting ``labels``, in eval mode."""
    config = deit.DeiTConfig(**TINY_DEIT, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(seed)
    return _perturb(deit.DeiTForImageClassificationWithTeacher(config), seed)


def save_hf_checkpoint(folder: str | os.PathLike, model: torch.nn.Module | None = None) -> Path:
    """``model`` (default :func:`tiny_deit`) in the Hugging Face layout: config.json,
    model.safetensors, and a preprocessor_config.json with the DeiT evaluation resize."""
    folder = Path(folder)
    (model if model is not None else tiny_deit()).save_pretrained(folder)
    deit.DeiTImageProcessor(size=RESIZE, crop_size=IMAGE_SIZE).save_pretrained(folder)
    return folder


def tiny_timm(distilled: bool, seed: int = 0, num_classes: int = len(CLASSES)) -> torch.nn.Module:
    """A random timm DeiT (``VisionTransformerDistilled``) or ViT (``VisionTransformer``), 32 px,
    one block of the DeiT-Tiny width, in eval mode."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = (VisionTransformerDistilled if distilled else VisionTransformer)(**TINY_TIMM, num_classes=num_classes)
    return _perturb(model, seed)


def save_timm_safetensors(path: str | os.PathLike, model: torch.nn.Module) -> Path:
    """A timm model's state dict as one safetensors file (what ``timm``'s hub files hold)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return Path(path)


def save_original_pth(path: str | os.PathLike, model: torch.nn.Module) -> Path:
    """A timm model's state dict as the DeiT authors released theirs: ``torch.save({"model": ...})``."""
    torch.save({"model": model.state_dict()}, path)
    return Path(path)
