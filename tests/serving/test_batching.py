"""serving.batching: concurrent requests merged into one call and split back, each with its own deadline and
errors; then the embedded server with `enable_batching` over gRPC with the stock stub."""
import concurrent.futures
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import config as cfg
from serving.batching import BatchScheduler, batchable
from serving.request_checks import RequestError
from serving.servables import TensorSignature
from serving.server import ModelServer
from tests.serving.saved_models import write_affine


def test_defaults_are_tf_servings_but_one_batch_thread():
    scheduler = BatchScheduler.from_config(cfg.BatchingConfig())
    assert (scheduler.max_batch_size, scheduler.timeout, scheduler.max_queued_rows) == (1000, 0.0, 10 * 1000)
    assert scheduler.num_batch_threads == 1  # TF Serving: one per core; here each call already uses every core


class Model:
    """`y = 2 x + row-independent nothing`; records each call's batch; the first call can be held."""

    def __init__(self, hold=None):
        self.calls, self.hold = [], hold

    def __call__(self, arrays):
        self.calls.append(arrays["x"].shape[0])
        if self.hold is not None:
            self.hold.wait(10)
            self.hold = None
        return {"y": arrays["x"] * 2.0}


def rows(start, n, width=1):
    return {"x": np.arange(start, start + n * width, dtype=np.float32).reshape(n, width)}


def submit_all(scheduler, model, requests, key="m", deadline=None):
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(scheduler.run, key, model, r, deadline) for r in requests]
        return [f.result() for f in futures]


def test_concurrent_requests_share_calls_and_get_their_own_rows_back():
    hold = threading.Event()
    model, scheduler = Model(hold), BatchScheduler(max_batch_size=8, num_batch_threads=1)
    requests = [rows(10 * i, 1 + i % 3) for i in range(12)]  # 1, 2 or 3 rows each: 24 rows
    threading.Timer(0.3, hold.set).start()  # the first call holds the thread while the rest queue up
    answers = submit_all(scheduler, model, requests)
    for request, answer in zip(requests, answers):
        np.testing.assert_array_equal(answer["y"], request["x"] * 2)
    # 12 requests, 24 rows: the first alone, then batches of at most 8 rows.
    assert len(model.calls) < 12 and max(model.calls) <= 8 and sum(model.calls) == 24, model.calls
    scheduler.stop()


def test_batches_are_padded_to_an_allowed_size_and_cut_back():
    model = Model()
    scheduler = BatchScheduler(max_batch_size=8, allowed_batch_sizes=(4, 8))
    answer = scheduler.run("m", model, rows(0, 3), None)
    assert model.calls == [4]  # 3 rows padded to 4 (the last row repeated)
    np.testing.assert_array_equal(answer["y"], rows(0, 3)["x"] * 2)
    scheduler.stop()


def test_inputs_of_other_inner_shapes_are_not_merged():
    hold = threading.Event()
    model, scheduler = Model(hold), BatchScheduler(max_batch_size=8, num_batch_threads=1)
    threading.Timer(0.3, hold.set).start()
    requests = [rows(0, 1)] + [rows(i, 1, width=1 + i % 2) for i in range(6)]
    answers = submit_all(scheduler, model, requests)
    for request, answer in zip(requests, answers):
        np.testing.assert_array_equal(answer["y"], request["x"] * 2)
    scheduler.stop()


def test_a_request_whose_deadline_passes_in_the_queue_never_runs():
    hold = threading.Event()
    model, scheduler = Model(hold), BatchScheduler(max_batch_size=1, num_batch_threads=1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(scheduler.run, "m", model, rows(0, 1), None)
        time.sleep(0.1)  # the first one runs (held), so the second waits in the queue
        late = pool.submit(scheduler.run, "m", model, rows(5, 1), time.monotonic() + 0.2)
        with pytest.raises(RequestError) as info:
            late.result()
        hold.set()
        first.result()
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert model.calls == [1]  # only the first ran
    scheduler.stop()


def test_a_full_queue_refuses_with_unavailable_and_errors_reach_every_request_of_their_batch():
    hold = threading.Event()
    model, scheduler = Model(hold), BatchScheduler(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = pool.submit(scheduler.run, "m", model, rows(0, 1), None)
        time.sleep(0.1)
        queued = pool.submit(scheduler.run, "m", model, rows(1, 2), None)  # fills the queue (2 rows)
        time.sleep(0.1)
        with pytest.raises(RequestError) as info:
            scheduler.run("m", model, rows(3, 1), None)
        hold.set()
        running.result(), queued.result()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and "queue" in info.value.message

    def broken(arrays):
        raise RequestError(grpc.StatusCode.INTERNAL, "boom")

    with pytest.raises(RequestError, match="boom"):
        scheduler.run("other", broken, rows(0, 2), None)
    scheduler.stop()


def test_arguments_and_batchable_signatures():
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchScheduler(max_batch_size=0)
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        BatchScheduler(max_batch_size=8, allowed_batch_sizes=(4, 6))
    scheduler = BatchScheduler.from_config(cfg.BatchingConfig(max_batch_size=64, batch_timeout_micros=500))
    assert (scheduler.max_batch_size, scheduler.timeout, scheduler.max_queued_rows) == (64, 0.0005, 640)
    any_rows = TensorSignature(tf.float32, (None, 1))
    assert batchable({"x": any_rows}, {"y": any_rows})
    assert not batchable({"x": TensorSignature(tf.float32, (3, 1))}, {"y": any_rows})
    assert not batchable({"x": any_rows}, {"y": TensorSignature(tf.float32, ())})


def predict_affine(address, x):
    """One Predict of the `affine` model over gRPC with the stock stub: its outputs as arrays."""
    with grpc.insecure_channel(address) as channel:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "affine"
        req.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=30)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


@pytest.fixture(scope="module")
def affine_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    write_affine(str(root / "affine" / "1"), a=2, b=1)
    cfg.write_models_config(str(root / "models.config"), [cfg.ModelConfig("affine", "affine")])
    path = str(root / "batching.config")
    cfg.write_batching_config(path, cfg.BatchingConfig(max_batch_size=64, batch_timeout_micros=20000,
                                                       num_batch_threads=1))
    return str(root / "models.config"), path


def test_the_server_merges_concurrent_predicts_and_answers_each_as_alone(affine_config):
    models_config, batching = affine_config
    inputs = [np.array([[float(i)], [i + 0.5]], np.float32) for i in range(16)]

    def ask(server, x):
        return predict_affine(server.address, x)

    answers = {}
    for enable in (False, True):
        with ModelServer(models_config, port=0, max_workers=16, poll_interval=0, enable_batching=enable,
                         batching_parameters_file=batching) as server:
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                answers[enable] = list(pool.map(lambda x: ask(server, x), inputs))
            runs = server.stats()["model_runs"]
        assert runs < 16 if enable else runs == 16, (enable, runs)
    for alone, batched in zip(answers[False], answers[True]):
        assert alone.keys() == batched.keys()
        for name in alone:
            np.testing.assert_allclose(batched[name], alone[name], rtol=1e-6)


def test_a_bad_request_among_batched_ones_gets_its_own_error_and_the_others_their_answers(affine_config):
    # Wrong dtype and wrong inner shape, sent with good requests at once: each bad one is refused alone with
    # INVALID_ARGUMENT naming its input; the good ones are still merged and answered as alone (2 x + 1).
    models_config, batching = affine_config
    good = [np.array([[float(i)], [i + 0.5]], np.float32) for i in range(12)]
    bad = [np.array([[1], [2]], np.int64), np.zeros((2, 3), np.float32)]

    def ask(server, x):
        try:
            return predict_affine(server.address, x)["y"]
        except grpc.RpcError as e:
            return e.code(), e.details()

    with ModelServer(models_config, port=0, max_workers=16, poll_interval=0, enable_batching=True,
                     batching_parameters_file=batching) as server:
        with concurrent.futures.ThreadPoolExecutor(14) as pool:
            answers = list(pool.map(lambda x: ask(server, x), good[:6] + bad + good[6:]))
        runs = server.stats()["model_runs"]
    for x, answer in zip(good, answers[:6] + answers[8:]):
        np.testing.assert_allclose(answer, 2 * x + 1, rtol=1e-6)
    for code, details in answers[6:8]:
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "'x'" in details, details
    assert runs < 12, runs  # the good ones still shared calls
