"""Output containers of the Keras models, under the reference TF classes' names: the PyTorch
output dataclasses (:mod:`deit.outputs`, same fields, readable by attribute, key and index)
holding Keras tensors."""

from __future__ import annotations

from dataclasses import dataclass

from ..outputs import (
    BaseModelOutputWithPooling,
    DeiTForImageClassificationWithTeacherOutput,
    ImageClassifierOutput,
    MaskedImageModelingOutput,
)


@dataclass
class TFBaseModelOutputWithPooling(BaseModelOutputWithPooling):
    pass


@dataclass
class TFImageClassifierOutput(ImageClassifierOutput):
    pass


@dataclass
class TFDeiTForImageClassificationWithTeacherOutput(DeiTForImageClassificationWithTeacherOutput):
    pass


@dataclass
class TFMaskedImageModelingOutput(MaskedImageModelingOutput):
    pass
