"""Teachers from ``transformers``: ``--teacher hf:NAME_OR_DIR``.

Any ``AutoModelForImageClassification`` checkpoint (a ConvNeXt, a ResNet, a ViT fine-tuned with
``transformers``), a local folder or a Hub name (offline: from the cache). Its own
``preprocessor_config.json`` says what its weights were trained on: ``image_mean``,
``image_std`` and the input size (``crop_size``, else ``size``: height x width or the shorter
edge), which the teacher's input then follows; its ``config.json`` names its classes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

HF_TEACHER_PREFIX = "hf:"


def _square_size(size: Any) -> int | None:
    """The side of a processor's square input from its ``size``/``crop_size`` setting, if it says one."""
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            if size["height"] != size["width"]:
                raise ValueError(f"a non-square teacher input ({size['height']}x{size['width']}) is not supported; set --teacher-input-size")
            return int(size["height"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"])
    return None


def processor_settings(name_or_path: str) -> dict[str, Any]:
    """The teacher checkpoint's ``preprocessor_config.json`` as a dict (empty when it has none)."""
    folder = Path(name_or_path)
    if folder.is_dir():
        file = folder / "preprocessor_config.json"
        return json.loads(file.read_text()) if file.is_file() else {}
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, "preprocessor_config.json")
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else {}


def load_transformers_teacher(name_or_path: str) -> dict[str, Any]:
    """The model and what its files say of its input and classes: keyword arguments of the
    teacher loader's ``_Loaded`` (model, mean, std, input_size, class_names)."""
    try:
        import transformers
    except ImportError:
        raise ValueError(f"teacher {HF_TEACHER_PREFIX}{name_or_path}: transformers is not installed (pip install transformers)") from None
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"teacher {HF_TEACHER_PREFIX}{name_or_path}: not an AutoModelForImageClassification checkpoint ({first_line})") from None
    settings = processor_settings(name_or_path)
    size = _square_size(settings.get("crop_size")) if settings.get("do_center_crop", "crop_size" in settings) else None
    size = size or _square_size(settings.get("size"))
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    generic = all(re.fullmatch(r"LABEL_\d+", str(name)) for name in names)
    return {
        "model": model, "mean": settings.get("image_mean"), "std": settings.get("image_std"), "input_size": size,
        "class_names": None if generic else [str(name) for name in names],
    }
