"""Resolving a model name: a local folder or file, or a Hugging Face Hub repository id.

Hub names go through ``huggingface_hub`` (its cache, ``revision``, ``local_files_only`` and the
``HF_HUB_OFFLINE`` environment variable). Nothing here runs at import time.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from .errors import DeitError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")

# Weight files in the order we prefer them: safetensors first, pickle last.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Suffixes of weight files: a name ending so is a file path, never a Hub repository.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".json")
# The model folders a training run writes (deit train --output RUN): RUN/best, RUN/last, RUN/ema.
RUN_MODEL_FOLDERS = ("best", "last", "ema")


class ModelNotFoundError(DeitError, FileNotFoundError):
    """A name that is neither a local path nor a Hub repository we can reach or find cached."""


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """Offline mode, read now rather than when ``huggingface_hub`` was imported (it reads its
    environment once), so setting ``HF_HUB_OFFLINE`` in a running process takes effect."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def default_cache_dir() -> Path:
    """The Hub cache folder the environment names now (``HF_HUB_CACHE``, ``HF_HOME``, ...).

    ``huggingface_hub`` resolves this once at import time; resolving it per call lets a process
    (or a test) point at another cache after the import.
    """
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[name])))
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def _hub_download(repo_id: str, filename: str, *, cache_dir: str | os.PathLike | None, revision: str | None, local_files_only: bool, token: str | bool | None) -> Path | None:
    """Path of ``filename`` in the repo (downloading if allowed), or None if the repo lacks it."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError as err:  # pragma: no cover - huggingface_hub is a dependency
        raise ModelNotFoundError(f"{repo_id!r} is not a local path, and huggingface_hub is not installed to resolve it") from err
    offline = local_files_only or is_offline()
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id, filename, cache_dir=cache_dir, revision=revision, local_files_only=offline, token=token
        )
    except LocalEntryNotFoundError:  # before EntryNotFoundError: it is a subclass of it in huggingface_hub >= 1.0
        if offline:
            # Tell apart "the file is missing from a cached snapshot" and "nothing is cached".
            if _cached_snapshot(repo_id, cache_dir, revision) is not None:
                return None
            raise ModelNotFoundError(
                f"{repo_id!r} is not a local path and is not in the Hugging Face cache at {cache_dir}, and offline mode is on "
                f"(local_files_only={local_files_only}, HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}), so it cannot be downloaded. "
                "Pass a local path instead (a folder with config.json and model.safetensors, or a weights file), "
                "point cache_dir= / HF_HUB_CACHE at a cache that holds it, or download it on a connected machine."
            ) from None
        raise ModelNotFoundError(
            f"could not download {filename} of {repo_id!r} from the Hugging Face Hub and it is not cached; "
            "check the network, or pass the path of a local folder or weights file"
        ) from None
    except EntryNotFoundError:
        return None
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise ModelNotFoundError(f"{repo_id!r}: no such local path, and the Hub has no such repository/revision ({err})") from None
    return Path(path)


def _cached_snapshot(repo_id: str, cache_dir: str | os.PathLike, revision: str | None) -> Path | None:
    root = Path(cache_dir)
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / (revision or "main")
    if ref.is_file():
        snapshot = repo_dir / "snapshots" / ref.read_text().strip()
        return snapshot if snapshot.is_dir() else None
    snapshot = repo_dir / "snapshots" / (revision or "")
    return snapshot if revision and snapshot.is_dir() else None


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and not Path(name).exists()


def missing_local_path(name: str) -> str | None:
    """Why ``name``, which does not exist, is meant as a local path rather than a Hub id (None when it
    may be a Hub id): it cannot be one, ends like a weights file, or its parent folder exists here
    (``runs/nothere`` beside a ``runs/`` folder)."""
    if Path(name).exists():
        return None
    if not _REPO_ID.match(name):
        return "not a Hub name (owner/name) either"
    if name.lower().endswith(WEIGHT_SUFFIXES):
        return "a file name, not a Hub name"
    parent = Path(name).parent
    if str(parent) != "." and parent.is_dir():
        return f"{parent}/ is a local folder, so this is a path, not a Hub name"
    return None


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    required: bool = True,
) -> Path | None:
    """Path of ``filename`` inside a local folder or a Hub repository.

    A local file given directly is returned as is when it is named ``filename``.
    Returns None for a missing file when ``required`` is False.
    """
    path = Path(name_or_path)
    if path.is_dir():
        candidate = path / filename
        if candidate.is_file():
            return candidate
        if required:
            raise FileNotFoundError(f"{path}: no {filename} in this folder")
        return None
    if path.is_file():
        if path.name == filename:
            return path
        if required:
            raise FileNotFoundError(f"{path} is a file, not a folder containing {filename}")
        return None
    name = str(name_or_path)
    why_local = missing_local_path(name)
    if why_local is not None:
        raise ModelNotFoundError(f"{name}: no such file or folder ({why_local})")
    found = _hub_download(name, filename, cache_dir=cache_dir, revision=revision, local_files_only=local_files_only, token=token)
    if found is None and required:
        raise FileNotFoundError(f"Hub repository {name!r} has no {filename}")
    return found


def resolve_weights(name_or_path: str | os.PathLike, **hub_kwargs) -> Path:
    """The weights file of a model (a file given directly, or the preferred one in a folder / repo)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for filename in WEIGHT_FILES:
        found = resolve_file(name_or_path, filename, required=False, **hub_kwargs)
        if found is not None:
            return found
    runs = [str(path / name) for name in RUN_MODEL_FOLDERS if path.is_dir() and (path / name / WEIGHT_FILES[0]).is_file()]
    hint = f"; this is a training run's folder: its models are {' and '.join(runs)}" if runs else ""
    raise FileNotFoundError(f"{name_or_path}: no weights found (looked for {', '.join(WEIGHT_FILES)}){hint}")
