"""Not drawing the initial weights of the PyTorch classes that a checkpoint is about to overwrite.

``from_pretrained`` builds the model inside :func:`deferred`, so its ``init_weights`` draws
nothing; once the checkpoint is in, :func:`draw_deferred` initialises only the weights the
checkpoint lacked (a new head, a re-sized classifier), as the reference does. Drawing every
weight first (PyTorch 2.14's ``nn.init.trunc_normal_`` resamples the whole tensor until nothing
is out of range) and overwriting it cost DeiT-B 10-20 s per load on a 2-core CPU.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from torch import nn

_DEFERRED = contextvars.ContextVar("deit_initialisation_deferred", default=False)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Models built inside leave their weights to a checkpoint (``init_weights`` is a no-op)."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def is_deferred() -> bool:
    return _DEFERRED.get()


def draw_deferred(model: object, keys: set[str]) -> None:
    """Initialise the weights ``keys`` (names in ``model.state_dict()``) of a model built under
    :func:`deferred`, keeping every other weight as loaded.

    ``init_weights`` works on whole modules, so each key's module is initialised and the loaded
    weights it also holds are put back. The Keras classes (not ``nn.Module``: they draw their own
    weights at construction) are left as they are.
    """
    if not keys or not isinstance(model, nn.Module):
        return
    owners = sorted({key.rpartition(".")[0] for key in keys})
    under_owner = lambda name: any(owner == "" or name.startswith(owner + ".") for owner in owners)  # noqa: E731
    loaded = {name: value.clone() for name, value in model.state_dict().items() if name not in keys and under_owner(name)}
    model.init_weights(*(model.get_submodule(owner) for owner in owners))
    model.load_state_dict(loaded, strict=False)
