"""Tests of serving/tensors.py: `tensor_proto` writes the TensorProto `tf.make_tensor_proto` writes, for
bytes arrays on its own path and for everything else through TensorFlow's."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from serving.tensors import tensor_proto


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
])
def test_tensor_proto_equals_tensorflows(value):
    assert tensor_proto(value) == tf.make_tensor_proto(value)
    np.testing.assert_array_equal(tf.make_ndarray(tensor_proto(value)), tf.make_ndarray(tf.make_tensor_proto(value)))


def test_bytes_array_is_one_string_val_of_its_shape():
    proto = tensor_proto(_objects([b"u1", b"u2", b"u3", b"u4"], (2, 2)))
    assert proto.dtype == types_pb2.DT_STRING
    assert [d.size for d in proto.tensor_shape.dim] == [2, 2]
    assert list(proto.string_val) == [b"u1", b"u2", b"u3", b"u4"]  # row-major, as make_ndarray reshapes it


def test_objects_that_are_not_strings_are_refused_as_tensorflow_refuses_them():
    with pytest.raises((TypeError, ValueError)):
        tensor_proto(_objects([b"a", object()], (2,)))
