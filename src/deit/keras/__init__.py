"""The DeiT models in Keras 3, for the TensorFlow and JAX backends (``pip install 'deit[tf]'`` or
``'deit[jax]'``; the backend is Keras', chosen by ``KERAS_BACKEND`` before Keras is first imported).

Imported only when asked for (``import deit.keras``, or ``deit.TFDeiTModel`` etc.): ``import deit``
never imports TensorFlow, JAX or Keras.
"""

from ..tensorflow_import import import_dynamo_before_tensorflow

import_dynamo_before_tensorflow()  # before Keras imports its backend

try:
    import keras  # noqa: F401
except ImportError as err:  # Keras itself, or the backend it was told to use
    raise ImportError(f"deit.keras needs Keras 3 and its backend: pip install 'deit[tf]' (TensorFlow) or 'deit[jax]' (JAX) ({err})") from err

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
