"""Exporting a model as a graph: ONNX (for onnxruntime and friends) and ``torch.export``.

The exported graph takes ``pixel_values`` of shape (batch, channels, image_size, image_size)
with a dynamic batch axis and returns the model's main tensor(s): ``logits`` for classifiers,
``last_hidden_state`` (and ``pooler_output``) for a bare body, ``reconstruction`` for masked
image modeling.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .io import atomic_path

if TYPE_CHECKING:
    from .modeling import DeiTPreTrainedModel

# The largest batch an exported graph is declared for; any batch from 1 to this runs.
MAX_BATCH = 4096


def output_names(model: "DeiTPreTrainedModel") -> list[str]:
    name = type(model).__name__
    if name.endswith("ForMaskedImageModeling"):
        return ["reconstruction"]
    if "ForImageClassification" in name:
        return ["logits"]
    return ["last_hidden_state", "pooler_output"] if getattr(model, "pooler", None) is not None else ["last_hidden_state"]


class GraphModule(nn.Module):
    """``model`` with a tensor-only signature: ``pixel_values`` in, the named outputs out."""

    def __init__(self, model: "DeiTPreTrainedModel") -> None:
        super().__init__()
        self.model = model
        self.names = output_names(model)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values, return_dict=True)
        return tuple(getattr(outputs, name) for name in self.names)


def example_input(model: "DeiTPreTrainedModel", batch_size: int = 2) -> torch.Tensor:
    config = model.config
    return torch.randn(batch_size, config.num_channels, config.image_size, config.image_size, dtype=model.dtype, device=model.device)


def _batch_dim() -> torch.export.Dim:
    # An example batch of 2 with min=1: batch 1 stays general instead of being specialised.
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def export_program(model: "DeiTPreTrainedModel") -> torch.export.ExportedProgram:
    """``torch.export`` of the model (in eval mode) with a dynamic batch axis."""
    graph = GraphModule(model).eval()
    return torch.export.export(graph, (example_input(model),), dynamic_shapes={"pixel_values": {0: _batch_dim()}})


def export_onnx(model: "DeiTPreTrainedModel", path: str | os.PathLike, opset: int | None = None) -> Path:
    """Write the model as one self-contained ONNX file (weights inside) with a dynamic batch axis."""
    path = Path(path)
    program = export_program(model)
    names = output_names(model)
    with atomic_path(path) as tmp:
        torch.onnx.export(
            program, (example_input(model),), str(tmp), input_names=["pixel_values"], output_names=names,
            opset_version=opset, dynamo=True, external_data=False, verbose=False,
        )
    return path


def compare_onnx(model: "DeiTPreTrainedModel", path: str | os.PathLike, batch_sizes: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Run the ONNX file with onnxruntime and return, per batch size, the largest absolute
    difference from the PyTorch model on the same random input."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = GraphModule(model).eval()
    differences: dict[int, float] = {}
    for batch_size in batch_sizes:
        pixel_values = example_input(model, batch_size).float()
        with torch.inference_mode():
            expected = graph(pixel_values.to(model.dtype))
        produced = session.run(None, {"pixel_values": pixel_values.numpy()})
        differences[batch_size] = max(
            float((torch.from_numpy(out) - ref.float().cpu()).abs().max()) for out, ref in zip(produced, expected)
        )
    return differences
