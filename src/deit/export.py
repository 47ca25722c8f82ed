"""Exporting a model as a graph: ONNX (for onnxruntime and friends) and ``torch.export``.

The exported graph takes ``pixel_values`` of shape (batch, channels, image_size, image_size),
its first axis named ``batch`` and dynamic, and returns every head the model has, by name:
``logits`` for classifiers, and for the distilled classifier also ``cls_logits`` and
``distillation_logits`` (``logits`` is their mean); ``last_hidden_state`` (and
``pooler_output``) for a bare body; ``reconstruction`` for masked image modeling.

An ONNX file also carries what a runtime needs to use the model without this package
(:func:`onnx_metadata`): the class names, the image size, and the preprocessing (resize rule,
rescale, mean and std), as string entries that onnxruntime reads back with
``session.get_modelmeta().custom_metadata_map``; :func:`processor_from_metadata` and
:func:`labels_from_metadata` turn them back into a processor and class names.

The float file is the one source of other ONNX variants: a post-processing step (e.g. dynamic
int8 quantisation) reads it and writes its own file, keeping the metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import PIL.Image
import torch
from torch import nn

from .atomic import atomic_path
from .model_rules import exported_names

if TYPE_CHECKING:
    from .modeling import DeiTPreTrainedModel
    from .processing import DeiTImageProcessor

# The largest batch an exported graph is declared for; any batch from 1 to this runs.
MAX_BATCH = 4096
# The name of the dynamic first axis of the input and of every output.
BATCH_AXIS = "batch"


# What each output holds, for the metadata (a runtime user reads which head is which).
OUTPUT_MEANINGS = {
    "logits": "class scores (for a distilled model: the mean of cls_logits and distillation_logits, the prediction the paper reports)",
    "cls_logits": "class scores of the head on the [CLS] token",
    "distillation_logits": "class scores of the head on the [DIST] token (trained to match the teacher)",
    "last_hidden_state": "token states after the final LayerNorm",
    "pooler_output": "the pooled [CLS] state",
    "reconstruction": "the reconstructed image",
}


class GraphModule(nn.Module):
    """``model`` with a tensor-only signature: ``pixel_values`` in, the named outputs out."""

    def __init__(self, model: "DeiTPreTrainedModel") -> None:
        super().__init__()
        self.model = model
        self.names = exported_names(model)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(pixel_values, return_dict=True)
        return tuple(getattr(outputs, name) for name in self.names)


def example_input(model: "DeiTPreTrainedModel", batch_size: int = 2) -> torch.Tensor:
    config = model.config
    return torch.randn(batch_size, config.num_channels, config.image_size, config.image_size, dtype=model.dtype, device=model.device)


def _dynamic_shapes() -> dict[str, dict[int, torch.export.Dim]]:
    # An example batch of 2 with min=1: batch 1 stays general instead of being specialised.
    return {"pixel_values": {0: torch.export.Dim(BATCH_AXIS, min=1, max=MAX_BATCH)}}


def export_program(model: "DeiTPreTrainedModel") -> torch.export.ExportedProgram:
    """``torch.export`` of the model (in eval mode) with a dynamic batch axis."""
    graph = GraphModule(model).eval()
    return torch.export.export(graph, (example_input(model),), dynamic_shapes=_dynamic_shapes())


def onnx_metadata(model: "DeiTPreTrainedModel", processor: "DeiTImageProcessor", id2label: Mapping[int, str] | None = None) -> dict[str, str]:
    """The string entries an exported ONNX file carries: the model class, the class names
    (``id2label``, default the config's), the input size, and the preprocessing of ``processor``
    (mean, std, the resize rule in words, and its whole ``preprocessor_config.json``)."""
    config = model.config
    labels = config.id2label if id2label is None else id2label
    size, crop = processor.size, processor.crop_size
    steps = []
    if processor.do_resize:
        target = f"shortest edge to {size['shortest_edge']}" if "shortest_edge" in size else f"{size['height']}x{size['width']}"
        steps.append(f"resize {target} ({PIL.Image.Resampling(processor.resample).name.lower()})")
    if processor.do_center_crop:
        steps.append(f"centre crop {crop['height']}x{crop['width']}")
    if processor.do_rescale:
        factor = "1/255" if abs(processor.rescale_factor * 255 - 1) < 1e-9 else f"{processor.rescale_factor:g}"
        steps.append(f"rescale by {factor}")
    if processor.do_normalize:
        steps.append("normalize (x - image_mean) / image_std per channel")
    names = exported_names(model)
    metadata = {
        "deit_model_class": type(model).__name__,
        "image_size": str(config.image_size),
        "num_channels": str(config.num_channels),
        "image_mean": json.dumps(list(processor.image_mean)),
        "image_std": json.dumps(list(processor.image_std)),
        "resize": ", then ".join(steps) + "; input pixel_values is (batch, channels, image_size, image_size), RGB",
        "preprocessor_config": json.dumps(processor.to_dict()),
        "outputs": json.dumps({name: OUTPUT_MEANINGS[name] for name in names}),
    }
    if any(name.endswith("logits") for name in names):
        metadata["id2label"] = json.dumps({str(i): labels[i] for i in sorted(labels)})
    return metadata


def processor_from_metadata(metadata: Mapping[str, str]) -> "DeiTImageProcessor":
    """The image processor an exported file's metadata describes (``custom_metadata_map``)."""
    from .processing import DeiTImageProcessor

    if "preprocessor_config" not in metadata:
        raise ValueError("the ONNX file's metadata has no 'preprocessor_config' entry; it was not written by deit export")
    return DeiTImageProcessor.from_dict(json.loads(metadata["preprocessor_config"]))


def labels_from_metadata(metadata: Mapping[str, str]) -> dict[int, str]:
    """The class names an exported file's metadata carries (``custom_metadata_map``)."""
    if "id2label" not in metadata:
        raise ValueError("the ONNX file's metadata has no 'id2label' entry (a model without a classifier, or not written by deit export)")
    return {int(k): v for k, v in json.loads(metadata["id2label"]).items()}


def export_onnx(model: "DeiTPreTrainedModel", path: str | os.PathLike, opset: int | None = None,
                metadata: Mapping[str, str] | None = None) -> Path:
    """Write the model as one self-contained float ONNX file (weights inside), every output
    named, the batch axis named ``batch`` and dynamic, and ``metadata`` (see :func:`onnx_metadata`)
    as the file's metadata properties. Written atomically: an error leaves no file behind."""
    path = Path(path)
    graph = GraphModule(model).eval()
    # The module with dynamic_shapes (not an ExportedProgram) keeps the axis name "batch" in the
    # graph; a program's symbolic sizes would be named s0, s1, ...
    program = torch.onnx.export(
        graph, (example_input(model),), None, input_names=["pixel_values"], output_names=graph.names, opset_version=opset,
        dynamic_shapes=_dynamic_shapes(), dynamo=True, verbose=False,
    )
    program.model.metadata_props.update(metadata or {})
    with atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)
    return path


def compare_onnx(model: "DeiTPreTrainedModel", path: str | os.PathLike, batch_sizes: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Run the ONNX file with onnxruntime on random inputs of each batch size and return, per
    output, the largest absolute difference from the PyTorch model on the same inputs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = GraphModule(model).eval()
    produced_names = [o.name for o in session.get_outputs()]
    if produced_names != graph.names:
        raise ValueError(f"{path}: the ONNX graph returns {produced_names}, the model {graph.names}")
    differences = dict.fromkeys(graph.names, 0.0)
    for batch_size in batch_sizes:
        pixel_values = example_input(model, batch_size).float()
        with torch.inference_mode():
            expected = graph(pixel_values.to(model.dtype))
        produced = session.run(None, {"pixel_values": pixel_values.numpy()})
        for name, out, ref in zip(graph.names, produced, expected):
            differences[name] = max(differences[name], float((torch.from_numpy(out) - ref.float().cpu()).abs().max()))
    return differences
