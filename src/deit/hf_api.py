"""The Hugging Face model API that every PyTorch model class inherits: ``from_pretrained`` /
``save_pretrained`` / ``push_to_hub``, gradient checkpointing switches, the PEFT hooks, parameter counts, the
forward arguments' config defaults.

It knows no DeiT module: :mod:`deit.modeling` builds its models on :class:`PreTrainedModel`
and its encoder on :class:`CheckpointingEncoder`, and the files are read and written by
:mod:`deit.checkpoint`. So the arrows run one way: modeling -> hf_api -> checkpoint.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from . import checkpoint
from .config import DeiTConfig
from .errors import DeitError


class HubUploadError(DeitError, RuntimeError):
    """An upload to the Hugging Face Hub could not be made (offline, no token, refused); nothing was uploaded."""


def check_hub_upload(repo_id: str) -> None:
    """Raise :class:`HubUploadError` when an upload to ``repo_id`` cannot work here: offline mode, or
    no token. Made before long work (a training run) whose result would be pushed at its end."""
    from huggingface_hub import constants, get_token

    # The environment as it is now (huggingface_hub reads it once, at import).
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise HubUploadError(f"cannot push to the Hub repository {repo_id}: HF_HUB_OFFLINE is set (offline mode); "
                             "unset it to upload, or save locally and upload later with `hf upload`")
    if get_token() is None:
        raise HubUploadError(f"cannot push to the Hub repository {repo_id}: no Hugging Face token (run `hf auth login` or set HF_TOKEN)")


def upload_folder_to_hub(folder: str | os.PathLike, repo_id: str, *, commit_message: str, private: bool | None = None,
                         token: str | None = None, revision: str | None = None) -> str:
    """Create ``repo_id`` (a model repository) if needed and upload ``folder`` in one commit, through
    ``huggingface_hub``'s API; return the commit's URL. Every failure is one :class:`HubUploadError`."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                   revision=revision, repo_type="model")
    except (OSError, ValueError) as err:  # huggingface_hub's offline, network and HTTP errors are OSError subclasses
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise HubUploadError(f"could not push {folder} to the Hub repository {repo_id} ({type(err).__name__}: {first_line})") from None
    return str(getattr(commit, "commit_url", commit))


class CheckpointingEncoder(nn.Module):
    """An encoder whose layers :meth:`PreTrainedModel.gradient_checkpointing_enable` can checkpoint:
    in training, such a layer keeps only its inputs and the backward pass recomputes the rest."""

    def __init__(self) -> None:
        super().__init__()
        # The reference's attribute name; set by PreTrainedModel.gradient_checkpointing_enable.
        self.gradient_checkpointing = False
        self.checkpoint_function: Callable[..., Any] = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
        self.checkpoint_every_n_layers = 1
        self.checkpoint_offload = False

    def run_layer(self, index: int, layer: nn.Module, *args: Any) -> Any:
        """``layer(*args)``, checkpointed when switched on, in training, for every n-th ``index``."""
        if not (self.gradient_checkpointing and self.training and index % self.checkpoint_every_n_layers == 0):
            return layer(*args)
        if not self.checkpoint_offload:
            return self.checkpoint_function(layer, *args)
        # The saved inputs wait in (pinned) host memory instead of on the accelerator.
        with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
            return self.checkpoint_function(layer, *args)


class PreTrainedModel(nn.Module):
    """A model with a :class:`~deit.config.DeiTConfig` and the Hugging Face model API.

    Subclasses set ``config_class`` and ``base_model_prefix``, and answer
    :meth:`init_arguments`, :meth:`class_for_config` (what ``from_pretrained`` builds) and
    :meth:`get_input_embeddings`.
    """

    config_class: ClassVar[type[DeiTConfig]] = DeiTConfig
    base_model_prefix: ClassVar[str] = ""
    main_input_name: ClassVar[str] = "pixel_values"
    supports_gradient_checkpointing: ClassVar[bool] = True

    def __init__(self, config: DeiTConfig) -> None:
        super().__init__()
        if not isinstance(config, DeiTConfig):
            raise TypeError(f"{type(self).__name__} expects a DeiTConfig, got {type(config).__name__}")
        # A config may have been built in steps; here it must describe a model.
        config.validate()
        self.config = config
        self._require_grads_hooks: list[torch.utils.hooks.RemovableHandle] = []

    @classmethod
    def init_arguments(cls) -> frozenset[str]:
        """Constructor keywords ``from_pretrained`` passes on to the class it builds, not to the config."""
        raise NotImplementedError

    @classmethod
    def class_for_config(cls, config: DeiTConfig) -> type["PreTrainedModel"]:
        """The class that ``from_pretrained`` builds for a checkpoint with ``config``."""
        raise NotImplementedError

    def get_input_embeddings(self) -> nn.Module:
        raise NotImplementedError

    # ---------------------------------------------------------------------- properties
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def base_model(self) -> nn.Module:
        """The body under ``base_model_prefix``; the model itself for the bare body."""
        return getattr(self, self.base_model_prefix, self)

    def get_output_embeddings(self) -> None:
        """None: no model here has an output embedding tied to its input (no language-model head)."""
        return None

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters, as the reference counts them: ``only_trainable`` counts those
        that require grad; ``exclude_embeddings`` leaves out ``nn.Embedding`` weights, of which
        DeiT has none (its patch and position embeddings are a convolution and a parameter)."""
        embedding_weights = {f"{name}.weight" for name, m in self.named_modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(
            p.numel() for name, p in self.named_parameters()
            if name not in embedding_weights and (p.requires_grad or not only_trainable)
        )

    def _output_flags(self, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None) -> tuple[bool, bool, bool]:
        """The forward arguments, with the config's defaults where an argument is None (as the reference)."""
        c = self.config
        return (
            c.output_attentions if output_attentions is None else output_attentions,
            c.output_hidden_states if output_hidden_states is None else output_hidden_states,
            c.return_dict if return_dict is None else return_dict,
        )

    def set_attn_implementation(self, attn_implementation: str) -> None:
        if attn_implementation not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}")
        self.config.attn_implementation = attn_implementation

    # ------------------------------------------------- training API of the Trainer and PEFT
    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Recompute each layer's activations in the backward pass instead of keeping them.

        ``gradient_checkpointing_kwargs`` go to ``torch.utils.checkpoint.checkpoint`` (default
        ``{"use_reentrant": False}``); ``every_n_layers``: checkpoint every n-th layer only;
        ``offload``: keep the checkpointed inputs in host memory. Takes effect in training mode.
        """
        if isinstance(every_n_layers, bool) or not isinstance(every_n_layers, int) or every_n_layers < 1:
            raise ValueError(f"every_n_layers must be a positive integer, got {every_n_layers!r}")
        function = functools.partial(torch.utils.checkpoint.checkpoint, **{"use_reentrant": False, **(gradient_checkpointing_kwargs or {})})
        for encoder in self._encoders():
            encoder.gradient_checkpointing = True
            encoder.checkpoint_function = function
            encoder.checkpoint_every_n_layers = every_n_layers
            encoder.checkpoint_offload = offload

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict[str, Any] | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """The newer reference name of :meth:`gradient_checkpointing_enable` (what its Trainer calls)."""
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs, every_n_layers=every_n_layers, offload=offload)

    def gradient_checkpointing_disable(self) -> None:
        for encoder in self._encoders():
            encoder.gradient_checkpointing = False

    activation_checkpointing_disable = gradient_checkpointing_disable

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(encoder.gradient_checkpointing for encoder in self._encoders())

    is_activation_checkpointing = is_gradient_checkpointing

    def _encoders(self) -> list[CheckpointingEncoder]:
        return [m for m in self.modules() if isinstance(m, CheckpointingEncoder)]

    def enable_input_require_grads(self) -> None:
        """Make the input embeddings' output require grad, so that gradients reach adapters (and
        checkpointed layers) of a model whose own weights are frozen, as the reference does."""

        def require_grad(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            output.requires_grad_(True)

        self.disable_input_require_grads()
        self._require_grads_hooks = [self.get_input_embeddings().register_forward_hook(require_grad)]

    def disable_input_require_grads(self) -> None:
        for hook in self._require_grads_hooks:
            hook.remove()
        self._require_grads_hooks = []

    # --------------------------------------------------------------- files (deit.checkpoint)
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *args: Any, **kwargs: Any) -> "PreTrainedModel":
        """Load a model from a folder, a weights file, or a Hub name.

        Keyword arguments: ``config``, ``state_dict`` (weights to use instead of a file; the
        name may then be None), ``dtype`` / ``torch_dtype``, ``device``, ``attn_implementation``,
        ``ignore_mismatched_sizes``, ``output_loading_info``, ``cache_dir``, ``revision``,
        ``local_files_only``, ``token``; a keyword the model's constructor takes
        (``add_pooling_layer``, ``use_mask_token``) goes to it; any other overrides a config field
        (e.g. ``num_labels=10``, ``output_attentions=True``).
        """
        return checkpoint.load_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _from_config(cls, config: DeiTConfig, *, attn_implementation: str | None = None, dtype: Any = None,
                     torch_dtype: Any = None, **model_kwargs: Any) -> "PreTrainedModel":
        """A freshly initialised model of ``config`` (the reference's helper, used in notebooks):
        ``attn_implementation`` and ``dtype`` (or ``torch_dtype``) are applied, ``model_kwargs``
        go to the constructor."""
        if attn_implementation is not None:
            config.attn_implementation = attn_implementation
        model = cls(config, **model_kwargs)
        resolved = dtype if dtype is not None else torch_dtype
        if resolved is not None:
            model.to(getattr(torch, resolved) if isinstance(resolved, str) else resolved)
            config.dtype = model.dtype
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, max_shard_size: int | str | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (sharded when ``max_shard_size`` is set).

        Like the reference, the config records the dtype of the weights (``"dtype"``).
        """
        self.config.dtype = self.dtype
        checkpoint.save_pretrained(self, save_directory, max_shard_size=max_shard_size)

    def push_to_hub(self, repo_id: str, *, commit_message: str = "Upload model", private: bool | None = None,
                    token: str | None = None, revision: str | None = None, max_shard_size: int | str | None = None) -> str:
        """Save the model (``config.json``, safetensors) and upload it to the Hub repository
        ``repo_id``, created if needed, in one commit; returns the commit's URL. Offline
        (``HF_HUB_OFFLINE``), without a token, or when the Hub refuses: :class:`HubUploadError`."""
        if token is None:
            check_hub_upload(repo_id)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            return upload_folder_to_hub(folder, repo_id, commit_message=commit_message, private=private, token=token, revision=revision)
