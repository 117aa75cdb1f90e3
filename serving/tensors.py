"""TensorProtos of numpy arrays and back, without TensorFlow's Python per tensor or per string.

`tf.make_tensor_proto` converts every element of an object array on its own (`compat.as_bytes`): about
2 ms for one `[100, 50]` behaviour sequence, which made the request tensors the largest cost of scoring
100 items over gRPC. Past that, its fixed cost (dtype and shape objects, checks for arguments we never
pass) and `tf.make_ndarray`'s are 40-45 us a tensor: a ranker request has 19 inputs, which each side
encoded and decoded (measured on the demo export, 2 cores: 0.9 ms on the client, 0.9 ms on the server
of a 12 ms call). `tensor_proto` and `to_ndarray` write and read the arrays the served signatures take
(strings, float32/64, int32/64, bool) directly and hand every other case to TensorFlow; each equals
TensorFlow's function on numpy arrays (tests/serving/test_tensors.py; a Python scalar or list is made a
numpy array first, so `1.0` is float64 here where TensorFlow would pick float32).
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# The typed field `tf.make_ndarray` (and TensorFlow's Tensor::FromProto) reads for each dtype.
VALUE_FIELDS = {
    types_pb2.DT_HALF: "half_val", types_pb2.DT_BFLOAT16: "half_val", types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val", types_pb2.DT_BOOL: "bool_val", types_pb2.DT_STRING: "string_val",
    types_pb2.DT_COMPLEX64: "scomplex_val", types_pb2.DT_COMPLEX128: "dcomplex_val",
    **{d: "int_val" for d in (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8,
                              types_pb2.DT_UINT16, types_pb2.DT_QINT8, types_pb2.DT_QUINT8, types_pb2.DT_QINT16,
                              types_pb2.DT_QUINT16, types_pb2.DT_QINT32)},
}

# numpy dtype -> (DataType enum, whether `tensor_content` carries more than one value). As
# `tf.make_tensor_proto`: numbers of size > 1 go out as `tensor_content` bytes, size 1 in the typed
# field (`VALUE_FIELDS`); bool always in `bool_val`.
_NUMERIC = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, True),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, True),
    np.dtype(np.int32): (types_pb2.DT_INT32, True),
    np.dtype(np.int64): (types_pb2.DT_INT64, True),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, False),
}
_BY_ENUM = {enum: dtype for dtype, (enum, _) in _NUMERIC.items()}


def _shape_proto(shape) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape])


def tensor_proto(value) -> tensor_pb2.TensorProto:
    """The TensorProto of `value`, equal to `tf.make_tensor_proto(value)`.

    Args:
        value: a numpy array (or anything `np.asarray` takes). Object arrays whose elements are all
            `bytes` and arrays of float32 / float64 / int32 / int64 / bool take the fast path; `str`
            elements and every other dtype take TensorFlow's.

    Returns:
        The `TensorProto`.
    """
    array = np.asarray(value)
    if array.dtype == object and array.size:
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape_proto(array.shape))
        try:
            proto.string_val.extend(array.ravel().tolist())
            return proto
        except TypeError:  # an element that is not bytes: TensorFlow's conversion encodes or refuses it
            pass
    known = _NUMERIC.get(array.dtype)
    if known is not None and array.size and array.nbytes < (1 << 31):  # TensorFlow refuses 2 GiB and more
        enum, content = known
        proto = tensor_pb2.TensorProto(dtype=enum, tensor_shape=_shape_proto(array.shape))
        if content and array.size > 1:
            proto.tensor_content = array.tobytes()  # row-major whatever the array's memory order
        else:
            getattr(proto, VALUE_FIELDS[enum]).extend(array.ravel().tolist())
        return proto
    return tf.make_tensor_proto(array)


def to_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The numpy array of `proto`, equal to `tf.make_ndarray(proto)`.

    Strings, float32 / float64 / int32 / int64 / bool holding one value per element (or one value that
    fills the shape, or `tensor_content` bytes of the shape) take the fast path; everything else,
    TensorFlow's.

    Raises:
        Whatever `tf.make_ndarray` raises on a proto it cannot decode.
    """
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    n = math.prod(shape)
    if n and not proto.tensor_shape.unknown_rank:
        if proto.dtype == types_pb2.DT_STRING and not proto.tensor_content:
            values = proto.string_val
            if len(values) == n:
                out = np.empty(n, dtype=object)
                out[:] = list(values)
                return out.reshape(shape)
        else:
            dtype = _BY_ENUM.get(proto.dtype)
            if dtype is not None:
                if proto.tensor_content:
                    if len(proto.tensor_content) == n * dtype.itemsize:
                        return np.frombuffer(proto.tensor_content, dtype=dtype).copy().reshape(shape)
                else:
                    values = getattr(proto, VALUE_FIELDS[proto.dtype])
                    if len(values) == n:
                        return np.array(values, dtype=dtype).reshape(shape)
                    if len(values) == 1:
                        return np.full(shape, values[0], dtype=dtype)
    return tf.make_ndarray(proto)
