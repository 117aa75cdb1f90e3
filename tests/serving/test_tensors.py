"""Tests of serving/tensors.py: `tensor_proto` writes the TensorProto `tf.make_tensor_proto` writes and
`to_ndarray` reads the array `tf.make_ndarray` reads, on their own paths (bytes, the usual numbers) and
through TensorFlow's for everything else."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from serving.tensors import tensor_proto, to_ndarray


def _objects(values, shape):
    out = np.empty(shape, dtype=object)
    out.reshape(-1)[:] = values
    return out


@pytest.mark.parametrize("value", [
    _objects([b"a", b"", "é".encode("utf-8"), b"d" * 300, b"x", b"\x00y"], (2, 3)),  # the fast path
    _objects([b"a", b"b"], (2,)),
    _objects([b"a"] * 4, (1, 2, 2)),
    _objects([b"a", "b"], (2,)),  # a str element: TensorFlow encodes it as UTF-8
    np.array(["ab", "c"]),  # numpy unicode
    np.array([[0.5, -1.0]], np.float32),
    np.array([3, 4, 5], np.int64),
    np.empty((0, 3), dtype=object),
    np.float32(2.5),
    np.array([[7]], np.int64),  # size 1: the typed field, not tensor_content
    np.array([[7]], np.int32),
    np.array([1.5], np.float64),
    np.array([[1.0, 2.0], [3.0, 4.0]], np.float64),
    np.array([[1, 2], [3, 4]], np.int32).T,  # not C-contiguous: still row-major bytes
    np.array([True, False, True]),
    np.array([True]),
    np.array([1.5, 2.5], np.float16),  # TensorFlow's path
    np.array([1, 2], np.uint8),
    np.zeros((0,), np.float32),
    np.zeros((2, 0), np.int64),
])
def test_tensor_proto_equals_tensorflows(value):
    ours, theirs = tensor_proto(value), tf.make_tensor_proto(value)
    assert ours == theirs
    expected = tf.make_ndarray(theirs)
    decoded = to_ndarray(ours)
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)


def _proto(dtype, shape, **fields):
    proto = tf.make_tensor_proto(np.zeros(shape, dtype=dtype.as_numpy_dtype) if dtype != tf.string else
                                 np.full(shape, b"", dtype=object))
    for name in ("tensor_content", "float_val", "double_val", "int_val", "int64_val", "bool_val", "string_val"):
        proto.ClearField(name)
    for name, values in fields.items():
        if name == "tensor_content":
            proto.tensor_content = values
        else:
            getattr(proto, name).extend(values)
    return proto


@pytest.mark.parametrize("proto", [
    _proto(tf.float32, (2, 2), float_val=[1.0, 2.0, 3.0, 4.0]),  # one value per element, as other clients send
    _proto(tf.float32, (2, 3), float_val=[0.5]),  # one value fills the shape
    _proto(tf.int64, (3,), int64_val=[9]),
    _proto(tf.int32, (2,), int_val=[4, 5]),
    _proto(tf.float64, (2,), tensor_content=np.array([1.5, -2.0]).tobytes()),
    _proto(tf.bool, (2,), bool_val=[True, False]),
    _proto(tf.string, (2, 1), string_val=[b"a", b"bc"]),
    _proto(tf.string, (3,), string_val=[b"z"]),  # TensorFlow's path: one string filling the shape
    _proto(tf.float32, (3,), float_val=[1.0, 2.0]),  # short: TensorFlow pads (the server refuses it before)
])
def test_to_ndarray_equals_tensorflows(proto):
    expected, decoded = tf.make_ndarray(proto), to_ndarray(proto)
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    np.testing.assert_array_equal(decoded, expected)


def test_to_ndarray_gives_a_writable_copy():
    proto = tensor_proto(np.array([1.0, 2.0], np.float32))
    array = to_ndarray(proto)
    array[0] = 5.0  # frombuffer alone would be read-only
    assert to_ndarray(proto)[0] == 1.0


def test_bytes_array_is_one_string_val_of_its_shape():
    proto = tensor_proto(_objects([b"u1", b"u2", b"u3", b"u4"], (2, 2)))
    assert proto.dtype == types_pb2.DT_STRING
    assert [d.size for d in proto.tensor_shape.dim] == [2, 2]
    assert list(proto.string_val) == [b"u1", b"u2", b"u3", b"u4"]  # row-major, as make_ndarray reshapes it


def test_objects_that_are_not_strings_are_refused_as_tensorflow_refuses_them():
    with pytest.raises((TypeError, ValueError)):
        tensor_proto(_objects([b"a", object()], (2,)))
