"""The embedded model server, called over gRPC on 127.0.0.1 with TF Serving's stock stubs.

Tiny SavedModels stand in for ours (`tests/serving/saved_models.py`): `affine`, `rec`, `slow` (affine
behind a validator that sleeps, for deadlines), `swap` (affine, a version replaced while requests
run) and `dom` (below: a domain and a domain history, checked as the export checks them). The
checks themselves are tested in `test_request_checks.py` and version loading in `test_servables.py`;
here, that their answers reach a client as TF Serving's would.
"""
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     inference_pb2, model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from serving import config as cfg
from serving.server import ModelServer
from tests.serving.saved_models import write_affine, write_rec

SERVER_MAX_BATCH = 16
MAX_RECEIVE_BYTES = 1 << 20
SLOW_VALIDATOR_SECONDS = 0.6


def slow_validator(signature_name, inputs):
    time.sleep(SLOW_VALIDATOR_SECONDS)


class DomainHistory(tf.Module):
    """score = how many history positions are the row's domain; a StringLookup without OOV indices
    (as the ranker's encoder) fails inside TensorFlow on a value outside d0, d1 and "" padding."""

    def __init__(self):
        super().__init__()
        self.lookup = tf_keras.layers.StringLookup(vocabulary=["", "d0", "d1"], num_oov_indices=0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="domain"),
                                  tf.TensorSpec([None, None], tf.string, name="hist_domain")])
    def serve(self, domain, hist_domain):
        same = tf.equal(self.lookup(hist_domain), self.lookup(domain)[:, None])
        return {"score": tf.reduce_sum(tf.cast(same, tf.float32), axis=1)}


# What serving.export writes for inputs whose vocabulary is the domain list (test_request_checks.py).
DOM_CHECKS = cfg.ServingChecks(allowed_values={"domain": ["d0", "d1"], "hist_domain": ["d0", "d1", ""]})


def write_dom(path):
    module = DomainHistory()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve.get_concrete_function()})
    cfg.write_serving_checks(path, DOM_CHECKS)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_affine(str(root / "affine" / "1"), a=2, b=1)
    write_rec(str(root / "rec" / "1"))
    write_affine(str(root / "slow" / "1"), a=2, b=1)
    write_affine(str(root / "swap" / "1"), a=2, b=1)
    write_dom(str(root / "dom" / "1"))
    # Relative base paths: resolved against the config's folder.
    cfg.write_models_config(str(root / "models.config"), [
        cfg.ModelConfig("affine", "affine", version_labels={"stable": 1}),
        cfg.ModelConfig("rec", "rec"), cfg.ModelConfig("slow", "slow"), cfg.ModelConfig("swap", "swap"),
        cfg.ModelConfig("dom", "dom")])
    return root


@pytest.fixture(scope="module")
def server(export_dir):
    with ModelServer(str(export_dir / "models.config"), port=0, max_workers=4, poll_interval=0.3,
                     max_batch_size=SERVER_MAX_BATCH, max_receive_message_bytes=MAX_RECEIVE_BYTES,
                     validators={"slow": slow_validator}) as server:
        yield server


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def predict(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def request(model, signature=None, version=None, label=None, **inputs):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    if signature is not None:
        req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    for name, value in inputs.items():
        req.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return req


def outputs(response):
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


X = np.array([[0.0], [1.5], [-2.0]], np.float32)


def example(x):
    return tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))})).SerializeToString()


def test_server_binds_loopback_on_a_free_port(server):
    assert server.address == f"127.0.0.1:{server.port}" and server.port > 0
    assert server.model_names == ["affine", "dom", "rec", "slow", "swap"]


@pytest.mark.parametrize("spec", [{}, {"version": 1}, {"label": "stable"}, {"signature": "serving_default"}])
def test_predict(predict, spec):
    response = predict.Predict(request("affine", x=X, **spec), timeout=10)
    out = outputs(response)
    np.testing.assert_allclose(out["y"], [[1.0], [4.0], [-3.0]])  # 2x + 1
    np.testing.assert_allclose(out["x_squared"], [[0.0], [2.25], [4.0]])
    assert out["y"].dtype == np.float32
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("affine", 1, "serving_default")


def test_predict_examples_signature(predict):
    serialized = np.array([example(0.0), example(1.5), example(-2.0)], dtype=object)
    out = outputs(predict.Predict(request("affine", signature="examples", examples=serialized), timeout=10))
    np.testing.assert_allclose(out["y"], [[1.0], [4.0], [-3.0]])


def test_predict_string_and_sequence_inputs(predict):
    out = outputs(predict.Predict(request("rec", domain=np.array([b"d0", b"d1"], dtype=object),
                                          hist_item_id=np.array([[1, 2, 3], [4, 5, 0]], np.int64)), timeout=10))
    np.testing.assert_allclose(out["score"], [6.0, 109.0])  # 1+2+3, 4+5+0 + 100
    assert out["domain_upper"].tolist() == [b"D0", b"D1"]


def test_output_filter(predict):
    req = request("affine", x=X)
    req.output_filter.append("y")
    assert set(predict.Predict(req, timeout=10).outputs) == {"y"}


def test_get_model_metadata(predict):
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "affine"
    req.metadata_field.append("signature_def")
    response = predict.GetModelMetadata(req, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("affine", 1)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    defs = signature_map.signature_def
    assert {"serving_default", "examples", "sqrt"} <= set(defs)
    x = defs["serving_default"].inputs["x"]
    assert x.dtype == tf.float32.as_datatype_enum and [d.size for d in x.tensor_shape.dim] == [-1, 1]
    assert set(defs["serving_default"].outputs) == {"y", "x_squared"}
    assert defs["examples"].inputs["examples"].dtype == tf.string.as_datatype_enum
    assert defs["serving_default"].method_name == "tensorflow/serving/predict"


def test_get_model_status(models):
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "affine"
    (status,) = models.GetModelStatus(req, timeout=10).model_version_status
    assert status.version == 1 and status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0 and status.status.error_message == ""


def _metadata_request(name, fields):
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = name
    req.metadata_field.extend(fields)
    return req


def _status_request(name, version=None):
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    return req


INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
H2 = np.array([[1, 2], [3, 4]], np.int64)

MALFORMED = {
    # The checks themselves: test_request_checks.py. These two show the server hands them its own
    # maximum batch size and the version's serving_checks.json.
    "batch over the server maximum": (lambda: request("affine", x=np.zeros([SERVER_MAX_BATCH + 1, 1], np.float32)),
                                      INVALID, ["batch size 17", "maximum batch size 16"]),
    "disallowed value": (lambda: request("rec", domain=np.array([b"d0", b"d9"], dtype=object), hist_item_id=H2),
                         INVALID, ["'domain'", "d9", "not allowed", "['d0', 'd1']"]),
    "error inside the model": (lambda: request("affine", signature="sqrt", x=X), INVALID, ["x must be >= 0"]),
    # Refused before TensorFlow runs (the model's runs are counted in test_checked_before_the_model_runs).
    "NaN in a float input": (lambda: request("affine", x=np.array([[1.0], [np.nan], [2.0]], np.float32)), INVALID,
                             ["input 'x' has non-finite value(s) [nan] (1 of 3 values, first at index [1, 0])"]),
    "Inf in a float input": (lambda: request("affine", x=np.array([[np.inf], [-np.inf], [2.0]], np.float32)),
                             INVALID, ["input 'x' has non-finite value(s) [inf, -inf]"]),
    "unknown domain in the history": (lambda: request("dom", domain=DOM, hist_domain=HIST_D7), INVALID,
                                      ["input 'hist_domain' has value(s) not allowed: ['d7']; "
                                       "allowed: ['d0', 'd1', '']"]),
    "fewer values than the shape": (lambda: _with_input(request("affine"), "x", SHORT_X), INVALID,
                                    ["input 'x' declares shape [3, 1] (3 values) but holds 2 values in float_val"]),
    "unknown output": (lambda: _with_filter(request("affine", x=X), "z"), INVALID, ["'z'", "['x_squared', 'y']"]),
    "unknown model": (lambda: request("ranker", x=X), NOT_FOUND,
                      ["'ranker'", "['affine', 'dom', 'rec', 'slow', 'swap']"]),
    "empty model name": (lambda: request("", x=X), INVALID, ["model_spec.name is empty"]),
    "unknown version": (lambda: request("affine", version=7, x=X), NOT_FOUND, ["version 7", "loaded versions: [1]"]),
    "unknown label": (lambda: request("affine", label="canary", x=X), NOT_FOUND, ["'canary'", "'stable': 1"]),
    "unknown signature": (lambda: request("affine", signature="score", x=X), NOT_FOUND,
                          ["'score'", "['examples', 'serving_default', 'sqrt']"]),
}


DOM = np.array([b"d0", b"d1"], dtype=object)
HIST = np.array([[b"d0", b"d0", b""], [b"d0", b"d1", b""]], dtype=object)
HIST_D7 = np.array([[b"d0", b"d7", b""], [b"d0", b"d1", b""]], dtype=object)
# float32 [3, 1] with 2 values: tf.make_ndarray would pad it to [1, 2, 2].
SHORT_X = tensor_pb2.TensorProto(
    dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0],
    tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3),
                                                        tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))


def _with_input(req, name, proto):
    req.inputs[name].CopyFrom(proto)
    return req


def _with_filter(req, name):
    req.output_filter.append(name)
    return req


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_predict_requests(predict, case):
    make, code, fragments = MALFORMED[case]
    with pytest.raises(grpc.RpcError) as info:
        predict.Predict(make(), timeout=10)
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details()
    # The server stays up and answers the next request.
    after = predict.Predict(request("affine", x=X), timeout=10)
    np.testing.assert_allclose(outputs(after)["y"], [[1.0], [4.0], [-3.0]])


@pytest.mark.parametrize("call, code, fragment", [
    (lambda p, m: p.GetModelMetadata(_metadata_request("affine", []), timeout=10), INVALID, "metadata_field is empty"),
    (lambda p, m: p.GetModelMetadata(_metadata_request("affine", ["graph"]), timeout=10), INVALID, "['graph']"),
    (lambda p, m: p.GetModelMetadata(_metadata_request("nope", ["signature_def"]), timeout=10), NOT_FOUND, "'nope'"),
    (lambda p, m: m.GetModelStatus(_status_request("nope"), timeout=10), NOT_FOUND, "'nope'"),
    (lambda p, m: m.GetModelStatus(_status_request("affine", 3), timeout=10), NOT_FOUND, "versions: [1]"),
    (lambda p, m: p.Classify(classification_pb2.ClassificationRequest(), timeout=10),
     grpc.StatusCode.UNIMPLEMENTED, "Classify is not implemented"),
    (lambda p, m: p.Predict(request("affine", x=np.zeros([MAX_RECEIVE_BYTES // 4 + 10, 1], np.float32)), timeout=10),
     grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
])
def test_other_bad_requests(predict, models, call, code, fragment):
    with pytest.raises(grpc.RpcError) as info:
        call(predict, models)
    assert info.value.code() == code and fragment in (info.value.details() or ""), info.value.details()


def test_checked_before_the_model_runs(server, predict):
    # A domain-valued sequence with a known domain or "" padding runs the model ...
    out = outputs(predict.Predict(request("dom", domain=DOM, hist_domain=HIST), timeout=10))
    np.testing.assert_allclose(out["score"], [2.0, 1.0])
    # ... one outside the domains is refused without running it (TensorFlow's StringLookup would fail).
    runs = server.stats()["model_runs"]
    for make in (lambda: request("dom", domain=DOM, hist_domain=HIST_D7),
                 lambda: request("affine", x=np.array([[np.nan]], np.float32)),
                 lambda: _with_input(request("affine"), "x", SHORT_X)):
        with pytest.raises(grpc.RpcError) as info:
            predict.Predict(make(), timeout=10)
        assert info.value.code() == INVALID and "\n" not in info.value.details(), info.value.details()
    assert server.stats()["model_runs"] == runs


UNIMPLEMENTED_CALLS = {
    "Classify": lambda p, m: p.Classify(classification_pb2.ClassificationRequest(), timeout=10),
    "Regress": lambda p, m: p.Regress(regression_pb2.RegressionRequest(), timeout=10),
    "MultiInference": lambda p, m: p.MultiInference(inference_pb2.MultiInferenceRequest(), timeout=10),
    "HandleReloadConfigRequest": lambda p, m: m.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(),
                                                                          timeout=10),
}


@pytest.mark.parametrize("method", sorted(UNIMPLEMENTED_CALLS))
def test_unimplemented_methods_log_one_line(predict, models, caplog, method):
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(grpc.RpcError) as info:
            UNIMPLEMENTED_CALLS[method](predict, models)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert info.value.details().startswith(f"{method} is not implemented by the embedded model server")
    # One line of ours, no traceback (gRPC logs one at ERROR when a handler raises).
    records = [r for r in caplog.records if method in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING], [r.getMessage() for r in records]
    assert "\n" not in records[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    # The server answers the next request.
    after = predict.Predict(request("affine", x=X), timeout=10)
    np.testing.assert_allclose(outputs(after)["y"], [[1.0], [4.0], [-3.0]])


def test_deadline_passed_before_the_model_runs(server, predict):
    # `slow`'s validator takes SLOW_VALIDATOR_SECONDS: with a shorter deadline, the deadline has passed
    # when the server is about to run the model; it must answer without running it.
    runs = server.stats().get("model_runs", 0)
    with pytest.raises(grpc.RpcError) as info:
        predict.Predict(request("slow", x=X), timeout=SLOW_VALIDATOR_SECONDS / 3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    waited = time.monotonic()
    while server.stats().get("Predict.DEADLINE_EXCEEDED", 0) < 1 and time.monotonic() - waited < 5:
        time.sleep(0.05)
    assert server.stats()["Predict.DEADLINE_EXCEEDED"] == 1
    assert server.stats().get("model_runs", 0) == runs
    # With time enough, the same model answers.
    out = outputs(predict.Predict(request("slow", x=X), timeout=10))
    np.testing.assert_allclose(out["y"], [[1.0], [4.0], [-3.0]])


def test_version_swap_while_requests_run(server, export_dir, predict, models):
    base = export_dir / "swap"
    answers, errors, stop = [], [], threading.Event()

    def send():
        while not stop.is_set():
            try:
                response = predict.Predict(request("swap", x=np.array([[1.0]], np.float32)), timeout=10)
                answers.append((response.model_spec.version.value, float(outputs(response)["y"][0, 0])))
            except grpc.RpcError as e:
                errors.append(f"{e.code()}: {e.details()}")

    sender = threading.Thread(target=send)
    sender.start()
    try:
        time.sleep(0.3)
        # Written aside under a name the server ignores, then published by one rename.
        write_affine(str(base / ".tmp-2"), a=10, b=0)
        os.rename(base / ".tmp-2", base / "2")
        deadline = time.monotonic() + 20
        while not any(v == 2 for v, _ in answers) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        sender.join()
    assert not errors, errors[:3]
    assert answers[0] == (1, 3.0) and answers[-1] == (2, 10.0)  # 2*1+1, then 10*1+0
    assert set(answers) == {(1, 3.0), (2, 10.0)}
    first_v2 = answers.index((2, 10.0))
    assert all(a == (2, 10.0) for a in answers[first_v2:])  # never back to version 1
    assert server.loaded_versions("swap") == [2]
    status = models.GetModelStatus(_status_request("swap"), timeout=10)
    states = {s.version: s.state for s in status.model_version_status}
    assert states == {1: get_model_status_pb2.ModelVersionStatus.END,
                      2: get_model_status_pb2.ModelVersionStatus.AVAILABLE}


def test_broken_new_version_keeps_the_old_one(tmp_path):
    write_affine(str(tmp_path / "m" / "1"), a=2, b=1)
    models = [cfg.ModelConfig("m", str(tmp_path / "m"))]
    with ModelServer(models=models, poll_interval=0) as server, grpc.insecure_channel(server.address) as channel:
        os.makedirs(tmp_path / "m" / "2")
        (tmp_path / "m" / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
        errors = server.poll()  # what the poller does, without waiting for it
        assert len(errors) == 1 and "version 2" in errors[0]
        assert server.loaded_versions("m") == [1]
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request("m", x=X), timeout=10)
        assert response.model_spec.version.value == 1
        statuses = {s.version: s for s in model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            _status_request("m"), timeout=10).model_version_status}
        assert statuses[1].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert statuses[2].state == get_model_status_pb2.ModelVersionStatus.END
        assert statuses[2].status.error_code != 0 and "failed to load" in statuses[2].status.error_message
        assert server.poll() == []  # unchanged folder: not retried on every poll


def test_start_refuses_a_broken_model(tmp_path):
    os.makedirs(tmp_path / "m" / "1")
    (tmp_path / "m" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(RuntimeError, match="version 1"):
        ModelServer(models=[cfg.ModelConfig("m", str(tmp_path / "m"))], poll_interval=0).start()


def test_serve_blocks_until_sigterm(export_dir):
    # What `mdr serve` runs, in its own process: it prints the port when ready and stops cleanly on SIGTERM.
    code = ("import sys; from serving.server import serve; "
            "serve(sys.argv[1], port=0, on_ready=lambda s: print(s.port, flush=True), grace=1)")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen([sys.executable, "-c", code, str(export_dir / "models.config")], cwd=repo, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(process.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request("affine", x=X), timeout=10)
        np.testing.assert_allclose(outputs(response)["y"], [[1.0], [4.0], [-3.0]])
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("kwargs, match", [
    ({}, "Exactly one of"),
    ({"models": [], "model_config_file": "x"}, "Exactly one of"),
    ({"models": []}, "No models"),
    ({"models": [cfg.ModelConfig("m", "/m")], "port": -1}, "`port`"),
    ({"models": [cfg.ModelConfig("m", "/m")], "max_workers": 0}, "`max_workers`"),
    ({"models": [cfg.ModelConfig("m", "/m")], "max_batch_size": 0}, "`max_batch_size`"),
    ({"models": [cfg.ModelConfig("m", "/m")], "validators": {"n": slow_validator}}, "unknown models"),
])
def test_server_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelServer(**kwargs)


@pytest.mark.parametrize("intra_op, inter_op, name", [(-1, 0, "intra_op"), (0, 1.5, "inter_op"), (True, 0, "intra_op")])
def test_thread_pools_refuse_bad_counts(intra_op, inter_op, name):
    from serving.server import set_tensorflow_threads

    with pytest.raises(ValueError, match=f"`{name}` must be an int >= 0"):
        set_tensorflow_threads(intra_op, inter_op)


def test_thread_pools_are_set_before_tensorflow_runs_and_refused_after():
    """In a fresh process the pools take the counts; once an op ran, other counts get a one-line error."""
    code = ("import tensorflow as tf\n"
            "from serving.server import set_tensorflow_threads\n"
            "set_tensorflow_threads(1, 2)\n"
            "tf.constant(1.0) + 1.0\n"
            "print(tf.config.threading.get_intra_op_parallelism_threads(),"
            " tf.config.threading.get_inter_op_parallelism_threads())\n"
            "set_tensorflow_threads(1, 2)  # the same counts again: nothing to change\n"
            "try:\n"
            "    set_tensorflow_threads(2, 2)\n"
            "except ValueError as error:\n"
            "    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "1 2"
    assert lines[1].startswith("TensorFlow already runs in this process with intra_op=1, inter_op=2")
    assert "Received: intra_op=2, inter_op=2" in lines[1]
