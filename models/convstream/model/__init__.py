"""The damage model: the shipped ONNX file and the onnxruntime wrapper that runs it.

Training code (``train``, ``export``, ``network``) needs ``convstream[train]`` and is imported
only on purpose; the server needs nothing of it.
"""

from convstream.model import _offline  # noqa: F401  (before onnxruntime loads)
from convstream.model.runtime import (
    FEATURE_NAMES,
    MODEL_PATH,
    OUTPUT_NAMES,
    DamageModel,
    ModelFileError,
    ModelInputError,
    StageInfo,
    select_providers,
    wants_cuda,
)

__all__ = [
    "FEATURE_NAMES",
    "MODEL_PATH",
    "OUTPUT_NAMES",
    "DamageModel",
    "ModelFileError",
    "ModelInputError",
    "StageInfo",
    "select_providers",
    "wants_cuda",
]
