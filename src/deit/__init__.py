"""deit: Data-efficient Image Transformers with the Hugging Face API, and distillation training."""

from .allocator import retain_freed_memory
from .auto import AutoModel, AutoModelForImageClassification, AutoModelForMaskedImageModeling
from .config import PRESETS, DeiTConfig, ViTConfig
from .losses import DistillationLoss
from .modeling import (
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTForMaskedImageModeling,
    DeiTModel,
    DeiTPreTrainedModel,
    ViTForImageClassification,
    ViTForMaskedImageModeling,
    ViTModel,
)
from .optimize import optimize
from .outputs import (
    BaseModelOutputWithPooling,
    DeiTForImageClassificationWithTeacherOutput,
    ImageClassifierOutput,
    MaskedImageModelingOutput,
)

__version__ = "0.1.0"

__all__ = [
    "AutoModel", "AutoModelForImageClassification", "AutoModelForMaskedImageModeling",
    "PRESETS", "DeiTConfig", "ViTConfig", "DistillationLoss", "optimize", "retain_freed_memory",
    "DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher", "DeiTForMaskedImageModeling",
    "DeiTPreTrainedModel", "ViTModel", "ViTForImageClassification", "ViTForMaskedImageModeling",
    "BaseModelOutputWithPooling", "DeiTForImageClassificationWithTeacherOutput", "ImageClassifierOutput", "MaskedImageModelingOutput",
]

_KERAS_NAMES = (
    "TFDeiTModel", "TFDeiTForImageClassification", "TFDeiTForImageClassificationWithTeacher", "TFDeiTForMaskedImageModeling",
    "TFDeiTPreTrainedModel", "TFBaseModelOutputWithPooling", "TFImageClassifierOutput",
    "TFDeiTForImageClassificationWithTeacherOutput", "TFMaskedImageModelingOutput",
)


def __getattr__(name: str):
    # The image processor pulls in PIL; import it only when asked for.
    if name in ("DeiTImageProcessor", "DeiTFeatureExtractor"):
        from . import processing

        return getattr(processing, name)
    # The Keras models pull in Keras and its backend (TensorFlow or JAX): import them only when asked for.
    if name in _KERAS_NAMES:
        from . import keras

        return getattr(keras, name)
    raise AttributeError(f"module 'deit' has no attribute {name!r}")
