"""Tests of serving/request_checks.py: a request's inputs checked against a loaded version's signature
and serving_checks.json, each refusal with INVALID_ARGUMENT and a message naming the input, and
sizes refused on the declared shape before anything is decoded."""
import dataclasses

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from mdr_contract import feature_spec as fs
from serving import config as cfg
from serving import export as ex
from serving.request_checks import RequestError, check_inputs
from serving.servables import Servable, Signature, TensorSignature, load_servable
from tests.serving.saved_models import write_affine, write_rec

SERVER_MAX_BATCH = 16
X = np.array([[0.0], [1.5], [-2.0]], np.float32)
D2 = np.array([b"d0", b"d1"], dtype=object)
H2 = np.array([[1, 2], [3, 4]], np.int64)


@pytest.fixture(scope="module")
def servables(tmp_path_factory):
    root = tmp_path_factory.mktemp("request_checks")
    write_affine(str(root / "affine" / "1"), a=2, b=1)
    write_rec(str(root / "rec" / "1"))
    return {name: load_servable(name, 1, str(root / name / "1")) for name in ("affine", "rec")}


def protos(**inputs):
    return {name: tf.make_tensor_proto(value) for name, value in inputs.items()}


def check(servables, model, inputs, signature="serving_default"):
    servable = servables[model]
    return check_inputs(servable, servable.signatures[signature], inputs, SERVER_MAX_BATCH)


def test_valid_inputs_are_decoded(servables):
    arrays = check(servables, "rec", protos(domain=D2, hist_item_id=H2))
    assert sorted(arrays) == ["domain", "hist_item_id"]
    assert arrays["domain"].tolist() == [b"d0", b"d1"] and arrays["hist_item_id"].dtype == np.int64
    np.testing.assert_array_equal(check(servables, "affine", protos(x=X))["x"], X)


REFUSED = {
    "missing input": ("rec", lambda: protos(domain=D2), ["missing", "hist_item_id"]),
    "extra input": ("affine", lambda: protos(x=X, z=X), ["unknown input", "'z'", "['x']"]),
    "wrong dtype": ("affine", lambda: protos(x=X.astype(np.float64)), ["'x'", "float64", "float32"]),
    "wrong rank": ("affine", lambda: protos(x=X[:, 0]), ["'x'", "shape [3]", "[?, 1]"]),
    "wrong dim": ("affine", lambda: protos(x=np.zeros([3, 2], np.float32)), ["'x'", "[3, 2]", "[?, 1]"]),
    "string for number": ("rec", lambda: protos(domain=D2, hist_item_id=np.array([["1", "2"]] * 2)),
                          ["'hist_item_id'", "string", "int64"]),
    "batch sizes differ": ("rec", lambda: protos(domain=D2, hist_item_id=np.ones([3, 2], np.int64)),
                           ["different batch sizes", "'domain': 2", "'hist_item_id': 3"]),
    "batch over the server maximum": ("affine", lambda: protos(x=np.zeros([SERVER_MAX_BATCH + 1, 1], np.float32)),
                                      ["batch size 17", "maximum batch size 16"]),
    "batch over the model maximum": ("rec", lambda: protos(domain=np.array([b"d0"] * 9, dtype=object),
                                                           hist_item_id=np.ones([9, 2], np.int64)),
                                     ["batch size 9", "maximum batch size 8"]),
    "disallowed value": ("rec", lambda: protos(domain=np.array([b"d0", b"d9"], dtype=object), hist_item_id=H2),
                         ["'domain'", "d9", "not allowed", "['d0', 'd1']"]),
    "over-long sequence": ("rec", lambda: protos(domain=D2, hist_item_id=np.ones([2, 5], np.int64)),
                           ["'hist_item_id'", "length 5", "maximum 4"]),
    # Refused whether or not the version has a serving_checks.json (affine has none).
    "NaN": ("affine", lambda: protos(x=np.array([[0.0], [np.nan], [1.0]], np.float32)),
            ["'x'", "non-finite value(s) [nan]", "first at index [1, 0]"]),
    "+Inf and -Inf": ("affine", lambda: protos(x=np.array([[np.inf], [2.0], [-np.inf]], np.float32)),
                      ["'x'", "non-finite value(s) [inf, -inf]", "2 of 3 values"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_inputs(servables, case):
    model, make, fragments = REFUSED[case]
    with pytest.raises(RequestError) as info:
        check(servables, model, make())
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, info.value.message
    for fragment in fragments:
        assert fragment in info.value.message


def _malformed_x(edit):
    """A `float32 [3, 1]` proto for input `x`, then changed by `edit(proto)`."""
    proto = tf.make_tensor_proto(X)
    edit(proto)
    return {"x": proto}


@pytest.mark.parametrize("edit, fragment", [
    (lambda p: setattr(p, "dtype", 0), "has dtype no dtype"),
    (lambda p: setattr(p, "dtype", 999), "unknown dtype enum 999"),
    (lambda p: p.tensor_shape.Clear() or setattr(p.tensor_shape, "unknown_rank", True), "has no shape"),
    (lambda p: setattr(p.tensor_shape.dim[0], "size", -3), "with a negative dimension"),
    # A few bytes declaring 10^12 rows: refused on the declared shape, never allocated.
    (lambda p: setattr(p.tensor_shape.dim[0], "size", 10**12), "maximum batch size 16"),
    # tensor_content must hold exactly the declared shape's bytes: 3 float32s are not [2, 1].
    (lambda p: setattr(p.tensor_shape.dim[0], "size", 2),
     "input 'x' declares shape [2, 1] (2 values of float32, 8 bytes) but its tensor_content holds 12 bytes"),
])
def test_malformed_protos(servables, edit, fragment):
    with pytest.raises(RequestError) as info:
        check(servables, "affine", _malformed_x(edit))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and fragment in info.value.message, info.value.message


def test_one_value_fills_its_declared_shape(servables):
    # TensorProto's own convention: what `tf.make_tensor_proto(value, shape=...)` writes, and what TF
    # Serving's Tensor::FromProto (and make_ndarray) reads as the value repeated over the shape.
    proto = tf.make_tensor_proto(np.float32(2.5), shape=[4, 1])
    assert list(proto.float_val) == [2.5] and not proto.tensor_content
    np.testing.assert_array_equal(check(servables, "affine", {"x": proto})["x"], np.full([4, 1], 2.5, np.float32))


def _typed(dtype, shape, field, values):
    """A TensorProto of `dtype` and `shape` holding `values` in its typed field `field`."""
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]))
    getattr(proto, field).extend(values)
    return proto


@pytest.mark.parametrize("model, inputs, fragment", [
    # make_ndarray (and TF Serving) would pad [1.0, 2.0] to [1.0, 2.0, 2.0]: refused, not guessed.
    ("affine", {"x": _typed(types_pb2.DT_FLOAT, [3, 1], "float_val", [1.0, 2.0])},
     "input 'x' declares shape [3, 1] (3 values) but holds 2 values in float_val"),
    # TF Serving would drop the extra values.
    ("affine", {"x": _typed(types_pb2.DT_FLOAT, [2, 1], "float_val", [1.0, 2.0, 3.0])},
     "input 'x' declares shape [2, 1] (2 values) but holds 3 values in float_val"),
    # No values at all: make_ndarray and TF Serving would fill zeros.
    ("affine", {"x": _typed(types_pb2.DT_FLOAT, [3, 1], "float_val", [])},
     "input 'x' declares shape [3, 1] (3 values) but holds 0 values in float_val"),
    ("rec", {"domain": _typed(types_pb2.DT_STRING, [2], "string_val", []),
             "hist_item_id": tf.make_tensor_proto(H2)},
     "input 'domain' declares shape [2] (2 values) but holds 0 values in string_val"),
    ("rec", {"domain": tf.make_tensor_proto(D2),
             "hist_item_id": _typed(types_pb2.DT_INT64, [2, 2], "int64_val", [1, 2, 3])},
     "input 'hist_item_id' declares shape [2, 2] (4 values) but holds 3 values in int64_val"),
])
def test_value_count_must_fill_the_declared_shape(servables, model, inputs, fragment):
    with pytest.raises(RequestError) as info:
        check(servables, model, inputs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and fragment in info.value.message, info.value.message


def test_exact_typed_values_are_accepted(servables):
    proto = _typed(types_pb2.DT_FLOAT, [3, 1], "float_val", [0.0, 1.5, -2.0])
    np.testing.assert_array_equal(check(servables, "affine", {"x": proto})["x"], X)


def test_non_finite_floats_allowed_when_the_option_is_off(servables):
    # `reject_non_finite: false` in serving_checks.json lets NaN / Inf through to the model.
    servable = dataclasses.replace(servables["affine"], checks=cfg.ServingChecks(reject_non_finite=False))
    x = np.array([[np.nan], [np.inf], [-np.inf]], np.float32)
    arrays = check_inputs(servable, servable.signatures["serving_default"], protos(x=x), SERVER_MAX_BATCH)
    np.testing.assert_array_equal(arrays["x"], x)
    # On by default, and for checks files written before the option existed.
    assert cfg.ServingChecks().reject_non_finite and cfg.ServingChecks.from_json({}).reject_non_finite


# A servable whose signature takes the domain-valued inputs of the feature spec (`vocab_from=DOMAIN`),
# with the serving checks the export writes for them.
SPEC = fs.FeatureSpec(features=fs.record_features([], None, sequence_length=3), domains=["d0", "d1"],
                      sequence_length=3)


@pytest.fixture(scope="module")
def domain_servable():
    checks = ex.serving_checks(SPEC, "ranker")
    inputs = {name: TensorSignature(tf.string, (None,) + ((None,) if SPEC[name].is_list else ()))
              for name in checks.allowed_values}
    signature = Signature(name="serving_default", function=None, inputs=inputs, outputs={})
    return Servable(name="ranker", version=1, path="", signatures={"serving_default": signature},
                    signature_defs={}, checks=checks)


def test_export_checks_every_domain_valued_input():
    checks = ex.serving_checks(SPEC, "ranker")
    assert checks.allowed_values == {fs.DOMAIN: ["d0", "d1"], fs.HIST_DOMAIN: ["d0", "d1", ""]}
    assert checks.reject_non_finite


def _domain_request(domain, hist_domain):
    return {fs.DOMAIN: tf.make_tensor_proto(np.array(domain, dtype=object)),
            fs.HIST_DOMAIN: tf.make_tensor_proto(np.array(hist_domain, dtype=object))}


def test_domain_history_holds_known_domains_or_padding(domain_servable):
    signature = domain_servable.signatures["serving_default"]
    arrays = check_inputs(domain_servable, signature, _domain_request([b"d0", b"d1"], [[b"d1", b"", b""],
                                                                                       [b"d0", b"d1", b"d0"]]))
    assert arrays[fs.HIST_DOMAIN].tolist() == [[b"d1", b"", b""], [b"d0", b"d1", b"d0"]]
    with pytest.raises(RequestError) as info:
        check_inputs(domain_servable, signature, _domain_request([b"d0", b"d1"], [[b"d1", b"d7", b""],
                                                                                  [b"d0", b"d1", b"d0"]]))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message == "input 'hist_domain' has value(s) not allowed: ['d7']; allowed: ['d0', 'd1', '']"
    # Padding is a sequence's only: the domain itself must be a domain.
    with pytest.raises(RequestError, match="input 'domain' has value"):
        check_inputs(domain_servable, signature, _domain_request([b"", b"d1"], [[b"d1"] * 3] * 2))
