"""Request checks: a PredictRequest's inputs validated before TensorFlow runs.

`check_inputs` refuses, with INVALID_ARGUMENT and a message naming the input: missing and unknown
inputs, dtype, rank and dimensions against the signature's TensorInfo (-1 / None accepts any size),
different batch sizes across inputs, a batch over the maximum batch size, a number of values that
does not fill the declared shape, non-finite floats (NaN, +Inf, -Inf), and the model's own checks
(below). Sizes are checked on the declared shapes before anything is decoded (a few bytes can declare
a huge tensor that one value fills). `RequestError` carries the gRPC status code and message a
refused request gets, here and in `serving.server`.

Values against the declared shape: `tensor_content` must hold exactly the bytes of the shape (as
TensorFlow's `Tensor::FromProto` requires); the typed fields (`float_val`, `string_val`, ...) must
hold exactly one value per element, or a single value, which fills the shape: the form
`tf.make_tensor_proto(value, shape=...)` writes and TF Serving accepts. TF Serving (and
`tf.make_ndarray`) would also pad any shorter list with its last value, fill an empty one with zeros
and (TF Serving) drop extra values; those are refused here, as a client's mistake, not read as data.

Model checks: `assets.extra/serving_checks.json`
-------------------------------------------------
A version folder may declare constraints on requests, checked before the model runs (stock TF
Serving ignores `assets.extra`; the exported graph must still handle such values safely there):

    {
      "allowed_values": {"domain": ["d0", "d1"]},
      "max_length": {"hist_item_id": 50},
      "max_batch_size": 1024,
      "reject_non_finite": true
    }

- `allowed_values`: input name -> the values every element of that input must be one of (strings for
  string inputs, numbers for numeric inputs). A violation names the input and the offending values.
- `max_length`: input name -> the largest size of axis 1 (the sequence axis after the batch axis) of
  that input. Inputs of rank < 2 are not concerned.
- `max_batch_size`: the largest batch (axis 0) of a request; the smaller of this and the server's
  applies.
- `reject_non_finite`: whether NaN, +Inf and -Inf in float inputs are refused (default true; a
  version without the key or without the file gets the default).
Every key is optional; names are matched against the inputs of whatever signature is called, so a
check on `domain` applies to each signature that has a `domain` input (values inside serialized
`tf.Example` inputs are not inspected). `serving.config.ServingChecks` reads and writes the file.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from serving import config as cfg
from serving.servables import Servable, Signature, shape_str
from serving.tensors import VALUE_FIELDS, to_ndarray


class RequestError(Exception):
    """A request the server refuses, with the gRPC status code and message the client gets."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _preview(values) -> List:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values[:5]]


def describe_signature(servable: Servable, signature: str) -> str:
    """`signature 'x' of model 'm' version 1`: how messages name the signature a request called."""
    return f"signature {signature!r} of model {servable.name!r} version {servable.version}"


def check_inputs(servable: Servable, signature: Signature, inputs: Mapping, max_batch_size: Optional[int] = None
                 ) -> Dict[str, np.ndarray]:
    """Decodes request `inputs` (name -> TensorProto) after checking them against `signature`.

    Args:
        servable: the version called.
        signature: the signature called.
        inputs: the request's TensorProtos.
        max_batch_size: the server's largest batch, or None.

    Returns:
        name -> numpy array, for every input of the signature.

    Raises:
        RequestError: INVALID_ARGUMENT naming the input and the problem.
    """
    where = describe_signature(servable, signature.name)
    expected = sorted(signature.inputs)
    missing = sorted(set(signature.inputs) - set(inputs))
    if missing:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"missing input(s) {missing}; {where} expects inputs {expected}")
    extra = sorted(set(inputs) - set(signature.inputs))
    if extra:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"unknown input(s) {extra}; {where} expects inputs {expected}")
    shapes = {}
    for name in expected:
        proto, spec = inputs[name], signature.inputs[name]
        if proto.dtype != spec.dtype.as_datatype_enum:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} has dtype {_dtype_name(proto.dtype)}; {where} expects "
                               f"{spec.describe()}")
        if proto.tensor_shape.unknown_rank:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} has no shape")
        shape = tuple(d.size for d in proto.tensor_shape.dim)
        if any(d < 0 for d in shape):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} has shape {shape_str(shape)}, with a negative dimension")
        if spec.shape is not None and (len(shape) != len(spec.shape) or any(
                want is not None and got != want for got, want in zip(shape, spec.shape))):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} has shape {shape_str(shape)}; {where} expects {spec.describe()} "
                               "(? = any size)")
        shapes[name] = shape

    # Every check of sizes runs on the declared shapes, before anything is decoded: a few bytes can
    # declare a huge tensor (one value fills a whole shape), which must be refused, not allocated.
    # Axis 0 is the batch axis of every input whose signature leaves it open.
    batch = {k: s[0] for k, s in shapes.items()
             if signature.inputs[k].shape and signature.inputs[k].shape[0] is None}
    if len(set(batch.values())) > 1:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"inputs have different batch sizes (axis 0): {dict(sorted(batch.items()))}")
    checks = servable.checks
    limits = [m for m in (max_batch_size, checks.max_batch_size if checks else None) if m is not None]
    if batch and limits and next(iter(batch.values())) > min(limits):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"batch size {next(iter(batch.values()))} (axis 0 of inputs {sorted(batch)}) is over the "
                           f"maximum batch size {min(limits)} of model {servable.name!r}")
    if checks is not None:
        _check_lengths(checks, shapes)

    for name in expected:
        _check_value_count(name, inputs[name], shapes[name])

    arrays = {}
    for name in expected:
        proto, shape = inputs[name], shapes[name]
        try:
            array = to_ndarray(proto)
        except Exception as e:  # bad encodings (e.g. tensor_content for strings)
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} cannot be decoded: {e}") from e
        if array.shape != shape:
            # A guard: counts were checked above (make_ndarray repeats a single value to fill the shape).
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} declares shape {shape_str(shape)} but holds {array.size} values")
        arrays[name] = array
    if checks is None or checks.reject_non_finite:
        for name in expected:
            if signature.inputs[name].dtype.is_floating:
                _check_finite(name, arrays[name])
    if checks is not None:
        _check_values(checks, arrays)
    return arrays


def _check_value_count(name: str, proto, shape: Tuple[int, ...]) -> None:
    """Refuses values that do not fill `shape` exactly (one typed value repeated over it excepted)."""
    n = math.prod(shape)
    if proto.tensor_content and proto.dtype != types_pb2.DT_STRING:
        dtype = tf.dtypes.as_dtype(proto.dtype)
        if len(proto.tensor_content) != n * dtype.size:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} declares shape {shape_str(shape)} ({n} values of {dtype.name}, "
                               f"{n * dtype.size} bytes) but its tensor_content holds {len(proto.tensor_content)} "
                               "bytes")
        return
    field = VALUE_FIELDS.get(proto.dtype)
    if field is None:  # dtypes no signature of ours takes: left to the decoder
        return
    count = len(getattr(proto, field))
    if proto.dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        count //= 2  # real and imaginary parts
    if count != n and not (count == 1 and n > 1):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r} declares shape {shape_str(shape)} ({n} values) but holds {count} "
                           f"values in {field}; send one value per element (or a single value to fill the shape)")


def _check_finite(name: str, array: np.ndarray) -> None:
    finite = np.isfinite(np.asarray(array, dtype=np.float64))  # float16 / bfloat16 too
    if not finite.all():
        bad = np.argwhere(~finite)
        values = np.asarray(array, dtype=np.float64)[~finite]
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r} has non-finite value(s) {_preview(values.tolist())} "
                           f"({len(bad)} of {array.size} values, first at index {bad[0].tolist()}); "
                           "only finite numbers are allowed (no NaN or Inf)")


def _dtype_name(enum: int) -> str:
    """The name of a request's dtype enum; any int32 can arrive (proto3 enums are open)."""
    if enum == types_pb2.DT_INVALID:
        return "no dtype"
    try:
        return tf.dtypes.as_dtype(enum).name
    except TypeError:
        return f"unknown dtype enum {enum}"


def _check_lengths(checks: cfg.ServingChecks, shapes: Dict[str, Tuple[int, ...]]) -> None:
    for name, max_length in sorted(checks.max_length.items()):
        shape = shapes.get(name)
        if shape is not None and len(shape) >= 2 and shape[1] > max_length:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} has length {shape[1]} (axis 1), over the maximum {max_length}")


def _check_values(checks: cfg.ServingChecks, arrays: Dict[str, np.ndarray]) -> None:
    for name, allowed in sorted(checks.allowed_values.items()):
        if name not in arrays:
            continue
        array = arrays[name]
        if array.dtype == object:
            allowed_set = {v.encode("utf-8") if isinstance(v, str) else v for v in allowed}
        else:
            allowed_set = {v for v in allowed if not isinstance(v, str)}
        # Python sets: exact for bytes and numbers, and cheap at request sizes.
        bad = sorted({v for v in array.ravel().tolist() if v not in allowed_set}, key=repr)
        if bad:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} has value(s) not allowed: {_preview(bad)}; allowed: {list(allowed)}")
