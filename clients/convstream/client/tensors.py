"""Wire tensors to numpy: float32 and float16 as they are, uint8 through scale and zero point."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from convstream.v1 import convstream_pb2 as pb

_DTYPES: dict[int, np.dtype[Any]] = {
    pb.TENSOR_ENCODING_FLOAT32: np.dtype("<f4"),
    pb.TENSOR_ENCODING_FLOAT16: np.dtype("<f2"),
    pb.TENSOR_ENCODING_UINT8: np.dtype("u1"),
}


def to_numpy(tensor: pb.Tensor) -> npt.NDArray[np.float32]:
    """Decode a Tensor message, for programs that call the generated gRPC stubs themselves
    (``Result`` already holds its tensors decoded).

    Args:
        tensor: a feature map or heatmap from a FrameResult.

    Returns:
        np.ndarray: float32, shape ``tuple(tensor.shape)`` (e.g. (C, H, W)); uint8 tensors are
        dequantised as scale * (q - zero_point).
    """
    dtype = _DTYPES.get(tensor.encoding)
    if dtype is None:
        raise ValueError(f"tensor {tensor.name!r} has unknown encoding {tensor.encoding}")
    shape = tuple(tensor.shape)
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(tensor.data) != expected:
        raise ValueError(
            f"tensor {tensor.name!r} of shape {shape} in {dtype} needs {expected} bytes, "
            f"got {len(tensor.data)}"
        )
    array = np.frombuffer(tensor.data, dtype).reshape(shape)
    if tensor.encoding == pb.TENSOR_ENCODING_UINT8:
        return (array.astype(np.float32) - tensor.zero_point) * np.float32(tensor.scale)
    return array.astype(np.float32)
