"""Do bfloat16 and int8 change predictions? Top-1 agreement of ours in bf16 and int8 with the float32 model.

Until a trained checkpoint is available offline, the model is a randomly initialised DeiT
(the library's own initialisation, seeded) and the inputs are real photographs: random crops,
flips and colour changes of the photos shipped with matplotlib / scikit-learn
(:mod:`deit.bench.photos`), preprocessed by :class:`deit.DeiTImageProcessor`. The reference is
the plain float32 model (no :func:`deit.optimize`); for context the same is reported for the
optimized float32 model and, when installed, for transformers under bf16 autocast. With
ONNX Runtime installed, int8 too: ``deit.optimize(model, dtype="int8")`` and, as the peer, ONNX
Runtime's dynamic int8 quantization of the file ``deit export --onnx`` writes. Each variant also
reports its largest absolute logit difference from the float32 model and, on a labelled data
set, its top-1 accuracy.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable

import torch

from ..modeling import DeiTForImageClassification, DeiTForImageClassificationWithTeacher
from ..onnx_engine import onnxruntime_available
from ..optimize import optimize
from ..probes import bf16_kernels_available
from ..processing import DeiTImageProcessor
from .inference import fresh_optimize, onnxruntime_peer, preset_config
from .photos import photo_variants

__all__ = ["top1_agreement", "format_agreement"]


def _predict(model: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(pixels[i : i + batch_size]).float() for i in range(0, len(pixels), batch_size)])


def _images_and_model(model_path: str | None, data: str, size: str, num_images: int,
                      seed: int) -> tuple[list, list[int] | None, torch.nn.Module, DeiTImageProcessor]:
    """The evaluation images (PIL), their labels (None for the photos), the float32 reference model and its processor."""
    if model_path is None:
        torch.manual_seed(seed)
        model: torch.nn.Module = DeiTForImageClassificationWithTeacher(preset_config(size)).eval()
        processor = DeiTImageProcessor()
    else:
        from ..auto import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(model_path, torch_dtype=torch.float32).eval()
        processor = DeiTImageProcessor.for_model(model_path, model.config.image_size)
    labels = None
    if data == "photos":
        images = photo_variants(num_images, seed=seed)
    else:
        from ..train.data import build_dataset

        dataset = build_dataset(data, "val", image_size=model.config.image_size)
        count = len(dataset) if num_images <= 0 else min(num_images, len(dataset))
        images = [dataset.load_image(i) for i in range(count)]
        labels = dataset.targets[:count]
    return images, labels, model, processor


def top1_agreement(model_path: str | None = None, data: str = "photos", size: str = "small", num_images: int = 300,
                   batch_size: int = 16, seed: int = 0, log: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    """Fraction of images whose top-1 class equals the plain float32 model's, per variant.

    ``model_path``: a trained checkpoint; default a random-weight DeiT of ``size``. ``data``:
    "photos" (``num_images`` variants of the shipped photos) or a data set spec understood by
    :func:`deit.train.data.build_dataset` (its val split, ``num_images`` of it; 0 for all).
    """
    images, labels, reference, processor = _images_and_model(model_path, data, size, num_images, seed)
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    log(f"{len(images)} images ({data}), model {model_path or f'random-weight DeiT-{size}'}")
    expected = _predict(lambda x: reference(x).logits, pixels, batch_size)
    ours_fp32 = fresh_optimize(reference)
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"ours fp32 (deit.optimize)": lambda x: ours_fp32(x).logits}
    onnx_folder = tempfile.TemporaryDirectory()  # the peer's ONNX files
    # Both ways of computing the bf16 matmuls (deit.optimize picks the faster; see bf16_matmul),
    # where the CPU has both: without bf16 kernels every mode computes in float32.
    for mode in ("bf16", "fp32") if bf16_kernels_available() else ("fp32",):
        ours_bf16 = optimize(reference, dtype=torch.bfloat16, bf16_matmul=mode)
        variants[f"ours bf16 (deit.optimize, matmuls in {mode})"] = lambda x, m=ours_bf16: m(x.bfloat16()).logits
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is not None and reference.config.model_type == "deit" and type(reference).__name__ in dir(transformers):
        with tempfile.TemporaryDirectory() as folder:
            reference.save_pretrained(folder)
            theirs = getattr(transformers, type(reference).__name__).from_pretrained(folder).eval()

        def theirs_autocast(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", torch.bfloat16):
                return theirs(x).logits

        variants["transformers bf16 autocast"] = theirs_autocast
    if onnxruntime_available() and isinstance(reference, (DeiTForImageClassification, DeiTForImageClassificationWithTeacher)):
        ours_int8 = optimize(reference, dtype="int8")
        variants["ours int8 (deit.optimize)"] = lambda x: ours_int8(x).logits
        peer = onnxruntime_peer("onnxruntime-int8", reference, onnx_folder.name)
        variants["ONNX Runtime dynamic int8 (on deit export --onnx)"] = lambda x: torch.from_numpy(peer(x.float()))
    top1 = expected.argmax(-1)
    predictions = {name: _predict(fn, pixels, batch_size) for name, fn in variants.items()}
    onnx_folder.cleanup()
    agreement = {name: float((logits.argmax(-1) == top1).float().mean()) for name, logits in predictions.items()}
    largest_error = {name: float((logits - expected).abs().max()) for name, logits in predictions.items()}
    accuracy = None
    if labels is not None:
        truth = torch.tensor(labels)
        accuracy = {name: float((logits.argmax(-1) == truth).float().mean()) for name, logits in {"float32 model": expected, **predictions}.items()}
    # How decisive the reference is: the median gap between its two best logits.
    best_two = expected.topk(2, dim=-1).values
    return {"images": len(images), "data": data, "model": model_path or f"random-weight DeiT-{size}", "agreement": agreement,
            "largest_logit_error": largest_error, "accuracy": accuracy, "largest_logit": float(expected.abs().max()),
            "median_top1_margin": float((best_two[:, 0] - best_two[:, 1]).median())}


def format_agreement(result: dict[str, object]) -> str:
    accuracy = result.get("accuracy")
    lines = [f"{result['images']} images ({result['data']}), model: {result['model']}; "
             f"median gap between the float32 model's two best logits: {result['median_top1_margin']:.4f}, "
             f"largest |logit| {result['largest_logit']:.2f}", "",
             "| variant | top-1 agreement with the float32 model | largest logit error | top-1 accuracy (change) |", "|---|---:|---:|---:|"]
    if accuracy:
        lines.append(f"| float32 model (plain) |  |  | {accuracy['float32 model']:.1%} |")
    for name, value in result["agreement"].items():
        change = f"{accuracy[name]:.1%} ({100 * (accuracy[name] - accuracy['float32 model']):+.1f} points)" if accuracy else ""
        lines.append(f"| {name} | {value:.1%} | {result['largest_logit_error'][name]:.4f} | {change} |")
    return "\n".join(lines)
