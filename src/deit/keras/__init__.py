"""The DeiT models in Keras 3, for the TensorFlow and JAX backends (``pip install 'deit[tf]'`` or
``'deit[jax]'``; the backend is Keras', chosen by ``KERAS_BACKEND`` before Keras is first imported).

Imported only when asked for (``import deit.keras``, or ``deit.TFDeiTModel`` etc.): ``import deit``
never imports TensorFlow, JAX or Keras.
"""

import importlib.util

# With torch's triton installed, TensorFlow imported before torch._dynamo crashes the interpreter
# (a segfault) at the later dynamo import, which torch.compile and transformers make; importing
# dynamo first avoids it.
if importlib.util.find_spec("triton") is not None:
    import torch._dynamo  # noqa: F401

from .models import (  # noqa: E402
    TFDeiTForImageClassification,
    TFDeiTForImageClassificationWithTeacher,
    TFDeiTForMaskedImageModeling,
    TFDeiTModel,
    TFDeiTPreTrainedModel,
)
from .outputs import (  # noqa: E402
    TFBaseModelOutputWithPooling,
    TFDeiTForImageClassificationWithTeacherOutput,
    TFImageClassifierOutput,
    TFMaskedImageModelingOutput,
)

__all__ = [
    "TFDeiTModel", "TFDeiTForImageClassification", "TFDeiTForImageClassificationWithTeacher", "TFDeiTForMaskedImageModeling",
    "TFDeiTPreTrainedModel", "TFBaseModelOutputWithPooling", "TFImageClassifierOutput",
    "TFDeiTForImageClassificationWithTeacherOutput", "TFMaskedImageModelingOutput",
]
