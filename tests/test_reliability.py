"""Reliability under faults, load and bad input, and safe defaults (issue 7).

Faults are injected for real: `mdr train`, `mdr preprocess` and `mdr export` run in their own process
group and get SIGKILL at a chosen point, then the same command runs again. The serving tests share one
export (a tiny ADI retrieval model and a tiny ranker, version 1) served by an in-process `ModelServer`
on 127.0.0.1, polled every `POLL_SECONDS`; later tests publish versions 2 and 3 into it while client
threads keep sending requests.

Figures (resume time, failed requests, p50/p99) are printed as `RELIABILITY {json}` lines: run with
`-s` to see them. What is already covered elsewhere is not repeated here: an in-process interruption
of training (tests/mdr_keras/test_training.py), one sender thread over a version swap and the
malformed-request matrix (tests/serving/test_server.py).
"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from benchmarks import serving_latency
from mdr import cli
from mdr_contract import artifacts
from mdr_keras import data
from serving import client as sc
from serving import config as cfg
from serving import export as ex
from serving.feature_store import FeatureStore, to_examples
from serving.server import ModelServer
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 20  # candidates per retrieval request of the test export
ITEMS_PER_SCORE = 20  # items per ranker request
POLL_SECONDS = 0.2
THREADS, REQUESTS = 8, 50
# Codes a well-behaved server may answer a bad request with; INTERNAL / UNKNOWN would be a crash path.
CLEAN_REFUSALS = {"INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "OUT_OF_RANGE"}


def report(name, **figures):
    """Prints the figures of a test on one line (`pytest -s` shows them)."""
    print(f"RELIABILITY {json.dumps({'test': name, **figures}, sort_keys=True)}", flush=True)


# --------------------------------------------------------------------------------------------------
# Processes killed for real


def spawn(args, log_path):
    """`mdr ARGS` in a new process group (so SIGKILL reaches all of it), output to `log_path`."""
    log = open(log_path, "w")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    process = subprocess.Popen([sys.executable, "-m", "mdr.cli", *args], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    process.log = log
    return process


def kill(process):
    """SIGKILL to the process group of `process` (started by `spawn`), then reaps it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)
    process.log.close()


def log_tail(path, chars=3000):
    with open(path) as f:
        return f.read()[-chars:]


def wait_until(condition, process, log_path, timeout, poll=0.01):
    """Polls `condition()` until true; fails if `process` ends first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process ended (exit {process.returncode}) before the kill point:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            kill(process)
            pytest.fail(f"no kill point within {timeout} s:\n{log_tail(log_path)}")
        time.sleep(poll)


def run_to_end(args, log_path, timeout=400):
    """`mdr ARGS` to completion; returns its wall time in seconds."""
    start = time.monotonic()
    process = spawn(args, log_path)
    try:
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            kill(process)
        process.log.close()
    assert code == 0, log_tail(log_path)
    return time.monotonic() - start


# --------------------------------------------------------------------------------------------------
# Training killed mid-epoch


EPOCHS = 4


def train_args(data_dir, model_dir, seed=0, replicas=0, steps=None):
    return ["train", "--data", data_dir, "--model-dir", model_dir, "--model", "dnn", "--task", "retrieval",
            "--set", "dnn_units=[32,16]", "--epochs", str(EPOCHS), "--batch-size", "64", "--patience", "0",
            "--seed", str(seed), "--cpu-replicas", str(replicas), "--validation-split", "", "--verbose", "0",
            "--evaluate",
            *(["--steps-per-epoch", str(steps)] if steps else [])]


def history_epochs(model_dir):
    """The epoch column of history.csv (CSVLogger appends one row per finished epoch)."""
    path = os.path.join(model_dir, "history.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    return [int(line.split(",")[0]) for line in lines if line and not line.startswith("epoch")]


def overall(model_dir):
    with open(os.path.join(model_dir, artifacts.METRICS)) as f:
        metrics = json.load(f)["overall"]
    return {k: round(metrics[k], 4) for k in ("recall@10", "recall@50")}


def train_summary(model_dir):
    with open(os.path.join(model_dir, "train_summary.json")) as f:
        return json.load(f)


# Two uninterrupted runs of the same command that differ by their seed set the noise the metrics of a
# resumed run are compared with; the floor keeps one lucky pair of seeds from making the bound zero.
NOISE_FACTOR, NOISE_FLOOR = 2.0, 0.04


@pytest.mark.slow
@pytest.mark.parametrize("replicas, steps", [(0, None), (2, 15)], ids=["one-device", "2-cpu-replicas"])
def test_training_killed_mid_epoch_resumes_with_the_same_command(synthetic_data, tmp_path, replicas, steps):
    data_dir, _ = synthetic_data
    seeds = {"clean": 0, "noise": 1}
    dirs = {name: str(tmp_path / name) for name in [*seeds, "killed"]}
    # The uninterrupted runs and the run to be killed start together (the kill point is an event, not a time).
    uninterrupted = {name: spawn(train_args(data_dir, dirs[name], seed, replicas, steps), tmp_path / f"{name}.log")
                     for name, seed in seeds.items()}
    try:
        # SIGKILL right after the first epoch's row reaches history.csv: the second epoch is running.
        log = tmp_path / "killed.log"
        process = spawn(train_args(data_dir, dirs["killed"], 0, replicas, steps), log)
        started = time.monotonic()
        wait_until(lambda: len(history_epochs(dirs["killed"])) >= 1, process, log, timeout=300)
        kill(process)
        killed_after = time.monotonic() - started
        for name, other in uninterrupted.items():
            assert other.wait(timeout=400) == 0, log_tail(tmp_path / f"{name}.log")
    finally:
        for other in uninterrupted.values():
            if other.poll() is None:
                kill(other)
            other.log.close()
    killed = dirs["killed"]
    done_before = history_epochs(killed)
    assert 1 <= len(done_before) < EPOCHS, done_before
    assert os.path.isdir(os.path.join(killed, "backup"))
    assert not os.path.exists(os.path.join(killed, "train_summary.json"))

    # The same command again: it resumes after the last finished epoch instead of starting over.
    resume_seconds = run_to_end(train_args(data_dir, killed, 0, replicas, steps), tmp_path / "resumed.log")
    summary = train_summary(killed)
    assert summary["epochs_run"] == EPOCHS - len(done_before) < EPOCHS
    assert history_epochs(killed) == list(range(EPOCHS))  # every epoch exactly once
    assert not os.path.exists(os.path.join(killed, "backup"))  # removed once training ends

    reference, resumed = overall(dirs["clean"]), overall(killed)
    noise = {k: round(abs(overall(dirs["noise"])[k] - reference[k]), 4) for k in reference}
    gap = {k: round(abs(resumed[k] - reference[k]), 4) for k in reference}
    report("training_sigkill_resume", replicas=max(replicas, 1), steps_per_epoch=steps or "all",
           killed_after_s=round(killed_after, 1), epochs_before_kill=len(done_before),
           epochs_rerun=summary["epochs_run"], resumed_run_s=round(resume_seconds, 1),
           resumed_train_s=summary["train_seconds"], clean_train_s=train_summary(dirs["clean"])["train_seconds"],
           clean=reference, resumed=resumed, gap=gap, seed_noise=noise)
    for k in reference:
        assert gap[k] <= max(NOISE_FACTOR * noise[k], NOISE_FLOOR), (k, resumed, reference, noise)


# --------------------------------------------------------------------------------------------------
# Beam job killed half-way


def preprocess_args(raw, output, *extra):
    return ["preprocess", "--source", "synthetic", "--input", raw, "--output", output, "--sequence-length", "8",
            *extra, *helpers.FAST_BEAM_ARGS]


def canonical_records(data_dir, split):
    """Every tf.Example of a split as a sorted list of canonical JSON strings (shards and order aside)."""
    out = []
    for serialized in tf.data.TFRecordDataset(data.record_files(data_dir, split), compression_type="GZIP"):
        example = tf.train.Example.FromString(serialized.numpy())
        out.append(json.dumps({name: [v.decode("latin-1") if isinstance(v, bytes) else v
                                      for v in getattr(f, f.WhichOneof("kind")).value]
                               for name, f in example.features.feature.items()}, sort_keys=True))
    return sorted(out)


def comparable_metadata(data_dir):
    with open(os.path.join(data_dir, "metadata.json")) as f:
        metadata = json.load(f)
    for key in ("wall_seconds", "rows_per_second"):
        metadata.pop(key, None)
    metadata["config"].pop("output")
    return metadata


def files_under(folder, pattern):
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, pattern), recursive=True)):
        with open(path, "rb") as f:
            out[os.path.relpath(path, folder)] = f.read()
    return out


def assert_refused_as_incomplete(data_dir, tmp_path, capsys):
    """Nothing reads `data_dir` as a finished job: tf.data, `mdr train`, the feature store, the metadata."""
    from pipeline import preprocess

    with pytest.raises(FileNotFoundError, match="no _SUCCESS"):
        data.make_dataset(data_dir, "train", 8)
    with pytest.raises(FileNotFoundError, match="no _SUCCESS"):
        FeatureStore.load(data_dir)
    with pytest.raises(FileNotFoundError, match="no _SUCCESS"):
        preprocess.read_metadata(data_dir)
    capsys.readouterr()
    code = cli.main(["train", "--data", data_dir, "--model-dir", str(tmp_path / "refused"), "--model", "dnn",
                     "--task", "retrieval", "--epochs", "1", "--verbose", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "mdr train: error:" in err and "run `mdr preprocess`" in err, err
    return err.strip()


def test_beam_job_killed_half_way_is_refused_and_a_rerun_matches_a_clean_run(synthetic_raw, synthetic_data,
                                                                             tmp_path, capsys):
    clean_dir, _ = synthetic_data
    out = str(tmp_path / "data")
    log = tmp_path / "preprocess.log"
    process = spawn(preprocess_args(synthetic_raw, out), log)
    started = time.monotonic()
    # Kill once records are being written (a temporary shard) or the spec is: the job is well under way.
    wait_until(lambda: glob.glob(os.path.join(out, "*", "beam-temp-*", "*.tfrecord.gz"))
               or os.path.exists(os.path.join(out, "feature_spec.json")), process, log, timeout=300)
    kill(process)
    killed_after = time.monotonic() - started
    left = sorted(os.path.relpath(p, out) for p in glob.glob(os.path.join(out, "**"), recursive=True))
    assert not os.path.exists(os.path.join(out, "_SUCCESS"))
    killed_error = assert_refused_as_incomplete(out, tmp_path, capsys)

    # Everything written but the marker (a kill between metadata.json and _SUCCESS) is refused too.
    unmarked = str(tmp_path / "unmarked")
    shutil.copytree(clean_dir, unmarked)
    os.remove(os.path.join(unmarked, "_SUCCESS"))
    unmarked_error = assert_refused_as_incomplete(unmarked, tmp_path, capsys)

    # The same command refuses to mix runs; with --overwrite it starts over and completes.
    assert cli.main(preprocess_args(synthetic_raw, out)) == 2  # misuse of --output (a flag), exit 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli.main(preprocess_args(synthetic_raw, out, "--overwrite")) == 0
    capsys.readouterr()
    assert os.path.exists(os.path.join(out, "_SUCCESS"))
    # The killed run's temporary shards are gone (prepare_output leaves their empty folders).
    temporary = glob.glob(os.path.join(out, "**", "beam-temp-*", "**"), recursive=True)
    assert not [p for p in temporary if os.path.isfile(p)]

    # Identical to the clean run of the same log: records, rejected rows, vocabularies, spec, counts.
    for split in ("train", "eval", "test", "items"):
        records = canonical_records(clean_dir, split)
        assert records or split == "test", split  # no test fraction: an empty shard
        assert canonical_records(out, split) == records, split
    assert helpers.read_rejected(out) == helpers.read_rejected(clean_dir)
    assert files_under(out, "vocab/*.txt") == files_under(clean_dir, "vocab/*.txt")
    assert files_under(out, "feature_spec.json") == files_under(clean_dir, "feature_spec.json")
    metadata = comparable_metadata(out)
    assert metadata == comparable_metadata(clean_dir)
    assert metadata["rows_read"] == metadata["rows_written"] + metadata["rows_rejected"]
    report("beam_sigkill", killed_after_s=round(killed_after, 2), left_behind=len(left),
           left_sample=left[:6], rows=metadata["rows_written"], killed_error=killed_error[:160],
           unmarked_error=unmarked_error[:160])


# --------------------------------------------------------------------------------------------------
# Serving: one export, one server


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory):
    """The session's tiny ADI retrieval model and ranker, exported as version 1, and the store."""
    data_dir, retrieval_dir, ranker_dir = tiny_models
    root = tmp_path_factory.mktemp("reliability")
    export_dir = str(root / "export")
    ex.export_models(retrieval_dir, ranker_dir, data_dir, export_dir, k=K)
    return {"data": data_dir, "retrieval": retrieval_dir, "ranker": ranker_dir, "export": export_dir,
            "config": os.path.join(export_dir, artifacts.MODELS_CONFIG),
            "store": FeatureStore.load(data_dir)}


@pytest.fixture(scope="module")
def server(exported):
    with ModelServer(exported["config"], port=0, max_workers=THREADS, poll_interval=POLL_SECONDS) as server:
        yield server


def test_one_call_recommend_answers_as_the_two_calls(exported, server):
    # The recommender SavedModel (retrieval + ranker in one graph) against retrieval then ranker over gRPC.
    store = exported["store"]
    with sc.Client(server.address, timeout=30) as client:
        assert client.recommender_k() == K
        for domain, user, _ in queries(store, 6):
            one = client.recommend(domain, user, store, n=K, k=K)
            two = client.recommend(domain, user, store, n=K, k=K, recommender_model=None)
            assert one and sorted(i for i, _ in one) == sorted(i for i, _ in two), (domain, user)
            np.testing.assert_allclose([p for _, p in sorted(one)], [p for _, p in sorted(two)], atol=1e-6)
            assert [p for _, p in one] == sorted((p for _, p in one), reverse=True)
            assert len(client.recommend(domain, user, store, n=3, k=K)) == 3
        # k below the recommender's K: two calls (retrieval's first k are what the ranker may reorder)
        assert client.recommend(domain, user, store, n=3, k=2) == client.recommend(
            domain, user, store, n=3, k=2, recommender_model=None)
        # Scores: the recommender's `rank` signature (the user's features once) as the ranker's rows.
        for domain, user, items in queries(store, 6):
            np.testing.assert_allclose(client.scores(domain, user, items, store),
                                       client.scores(domain, user, items, store, recommender_model=None), atol=1e-6)


def queries(store, n):
    """`n` (domain, user, items) triples cycling over the domains and their users (the benchmark's own)."""
    return serving_latency.queries(store, n, ITEMS_PER_SCORE)


class Load:
    """`threads` clients (one channel each) alternating `Client.candidates` and `Client.scores`.

    Each thread first sends one request of each kind (warm-up: its channel, the signature cache; timed
    apart), then at least `min_requests`, then goes on until `stop` is set (or `max_requests`), waiting
    `pause` seconds between requests; every request's kind, latency and error (None when it succeeded)
    are kept.
    """

    def __init__(self, address, store, threads=THREADS, min_requests=REQUESTS, max_requests=10_000, pause=0.0,
                 timeout=30.0):
        self.address, self.store = address, store
        self.min_requests, self.max_requests, self.timeout = min_requests, max_requests, timeout
        self.pause = pause
        self.stop = threading.Event()
        self.results = []  # (kind, seconds, error)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index):
        work = queries(self.store, 64)
        with sc.Client(self.address, timeout=self.timeout) as client:
            n = -2
            while n < self.max_requests and (n < self.min_requests or not self.stop.is_set()):
                domain, user, items = work[(index * 5 + n) % len(work)]
                kind = ("warmup-" if n < 0 else "") + ("candidates" if n % 2 == 0 else "scores")
                start = time.perf_counter()
                error = None
                try:
                    if kind.endswith("candidates"):
                        assert len(client.candidates(domain, user, K, self.store)) > 0
                    else:
                        assert len(client.scores(domain, user, items, self.store)) == len(items)
                except (sc.ServingError, AssertionError) as e:
                    error = f"{type(e).__name__}: {e}"
                with self._lock:
                    self.results.append((kind, time.perf_counter() - start, error))
                n += 1
                if self.pause:
                    time.sleep(self.pause)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self._threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in self._threads), "a client thread hangs"

    def errors(self):
        return [e for _, _, e in self.results if e is not None]

    def requests(self):
        return sum(not k.startswith("warmup") for k, _, _ in self.results)

    def percentiles(self, kind=None):
        seconds = np.array([s for k, s, e in self.results
                            if e is None and not k.startswith("warmup") and kind in (None, k)])
        return {"n": int(seconds.size), "p50_ms": round(float(np.percentile(seconds, 50)) * 1e3, 2),
                "p99_ms": round(float(np.percentile(seconds, 99)) * 1e3, 2)}


def wait_for_versions(server, version, timeout=120):
    """Until every model serves `version` only (the poller loads it, then unloads the older one)."""
    deadline = time.monotonic() + timeout
    while any(server.loaded_versions(m) != [version] for m in server.model_names):
        assert time.monotonic() < deadline, {m: server.loaded_versions(m) for m in server.model_names}
        time.sleep(0.05)


def example_request(store, model):
    """A valid `examples`-signature PredictRequest of `model` (serialized tf.Examples from the store)."""
    domain = store.domains[0]
    items = store.item_ids(domain)[:3] if model in (artifacts.RANKER, artifacts.ITEM_TOWER) else None
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = artifacts.EXAMPLES_SIGNATURE
    serialized = to_examples(store.features(store.user_ids(domain)[0], domain, items))
    request.inputs[artifacts.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(serialized))
    return request


@pytest.mark.slow
def test_a_killed_export_is_never_loaded_and_its_rerun_is(exported, server, tmp_path):
    export_dir, store = exported["export"], exported["store"]
    before = {m: server.loaded_versions(m) for m in server.model_names}
    version = ex.next_version(export_dir)
    args = ["export", "--retrieval-model-dir", exported["retrieval"], "--ranker-model-dir", exported["ranker"],
            "--data", exported["data"], "--export-dir", export_dir, "-k", str(K)]
    with Load(server.address, store, threads=2, min_requests=1, pause=0.1) as load:
        log = tmp_path / "export.log"
        process = spawn(args, log)
        # Killed while the first model's SavedModel is being written to its temporary folder.
        wait_until(lambda: glob.glob(os.path.join(export_dir, "*", f"{artifacts.EXPORT_TMP_PREFIX}{version}")),
                   process, log, timeout=300)
        kill(process)
        leftovers = sorted(os.path.relpath(p, export_dir) for p in glob.glob(os.path.join(export_dir, "*", ".tmp-*")))
        assert leftovers
        assert not glob.glob(os.path.join(export_dir, "*", str(version)))  # nothing was published
        # A hand-made half-written version, as a killed writer of any model would leave it.
        partial = os.path.join(export_dir, artifacts.RANKER, f"{artifacts.EXPORT_TMP_PREFIX}{version + 7}")
        os.makedirs(os.path.join(partial, "variables"))
        latest = os.path.join(export_dir, artifacts.RANKER, str(before[artifacts.RANKER][-1]))
        with open(os.path.join(latest, "saved_model.pb"), "rb") as f:
            head = f.read(1000)
        with open(os.path.join(partial, "saved_model.pb"), "wb") as f:
            f.write(head)
        time.sleep(3 * POLL_SECONDS)
        assert server.poll() == []  # the poller never tries a temporary folder, so nothing fails to load
        assert {m: server.loaded_versions(m) for m in server.model_names} == before
        with sc.Client(server.address) as client:  # not even seen: no status, no failed load
            assert not {version, version + 7} & set(client.model_status(artifacts.USER_TOWER))
            assert not {version, version + 7} & set(client.model_status(artifacts.RANKER))
        during = len(load.results)

        # The same export again: it replaces the leftovers and publishes the complete version.
        ex.export_models(exported["retrieval"], exported["ranker"], exported["data"], export_dir, k=K)
        wait_for_versions(server, version)
    shutil.rmtree(partial)
    assert not glob.glob(os.path.join(export_dir, "*", ".tmp-*"))
    with grpc.insecure_channel(server.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for model in server.model_names:
            assert stub.Predict(example_request(store, model), timeout=30).model_spec.version.value == version
    assert not load.errors(), load.errors()[:3]
    report("export_sigkill", leftovers=leftovers, requests_while_killed=during, requests=load.requests(),
           failed=len(load.errors()), **load.percentiles())


@pytest.mark.slow
def test_a_version_published_under_concurrent_load_loses_no_request(exported, server):
    export_dir, store = exported["export"], exported["store"]
    old, new = server.loaded_versions(artifacts.RANKER)[-1], ex.next_version(export_dir)
    probe = {"versions": [], "errors": []}
    stop_probe = threading.Event()

    def watch():  # which version answers, request after request
        with grpc.insecure_channel(server.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not stop_probe.is_set():
                try:
                    probe["versions"].append(
                        stub.Predict(example_request(store, artifacts.RANKER), timeout=30).model_spec.version.value)
                except grpc.RpcError as e:
                    probe["errors"].append(f"{e.code()}: {e.details()}")
                time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    start = time.monotonic()
    with Load(server.address, store, pause=0.2) as load:  # ~30 requests/s: the export gets CPU too
        watcher.start()
        time.sleep(0.5)
        ex.export_models(exported["retrieval"], exported["ranker"], exported["data"], export_dir, k=K)
        published = time.monotonic() - start
        wait_for_versions(server, new)
        switched = time.monotonic() - start
        time.sleep(0.5)  # requests after the switch
    stop_probe.set()
    watcher.join(timeout=60)
    seconds = time.monotonic() - start

    assert not load.errors(), load.errors()[:3]
    assert not probe["errors"], probe["errors"][:3]
    assert load.requests() >= THREADS * REQUESTS
    versions = probe["versions"]
    assert versions[0] == old and versions[-1] == new, versions
    assert versions == sorted(versions), versions  # never back to the old version
    with sc.Client(server.address) as client:
        assert client.model_status(artifacts.RANKER)[old] == "END"
        assert client.model_status(artifacts.RANKER)[new] == "AVAILABLE"
    report("publish_under_load", threads=THREADS, requests=load.requests(), failed=len(load.errors()),
           published_after_s=round(published, 1), all_models_switched_after_s=round(switched, 1),
           seconds=round(seconds, 1), probe_versions={v: versions.count(v) for v in sorted(set(versions))},
           **load.percentiles())


def test_load_has_no_errors_and_overload_sheds_instead_of_queueing(exported, server):
    store = exported["store"]
    start = time.monotonic()
    with Load(server.address, store, min_requests=REQUESTS, max_requests=REQUESTS) as load:
        pass
    seconds = time.monotonic() - start
    assert not load.errors(), load.errors()[:3]
    assert load.requests() == THREADS * REQUESTS
    figures = {"candidates": load.percentiles("candidates"), "scores": load.percentiles("scores")}
    report("load", threads=THREADS, requests=load.requests(), failed=0, seconds=round(seconds, 2),
           requests_per_s=round(len(load.results) / seconds, 1), **figures)

    # Overload: 2 RPCs at most in progress, each held 0.5 s by a slow check, and 16 arriving at once.
    def slow(signature, inputs):
        time.sleep(0.5)

    ranker = cfg.ModelConfig(artifacts.RANKER, os.path.join(exported["export"], artifacts.RANKER))
    with ModelServer(models=[ranker], port=0, max_workers=4, maximum_concurrent_rpcs=2, poll_interval=0,
                     validators={artifacts.RANKER: slow}) as small, sc.Client(small.address, timeout=10) as client:
        domain, user, items = queries(store, 1)[0]
        client.signature_inputs(artifacts.RANKER)  # cached: the burst is Predict calls only
        barrier, outcomes = threading.Barrier(16), []

        def call():
            barrier.wait()
            begun = time.monotonic()
            try:
                client.scores(domain, user, items, store)
                code = "OK"
            except sc.ServingError as e:
                code = e.code_name
            outcomes.append((code, time.monotonic() - begun))

        callers = [threading.Thread(target=call, daemon=True) for _ in range(16)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in callers), "a request hangs"
        codes = [c for c, _ in outcomes]
        assert len(codes) == 16
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}, codes
        shed = sum(c != "OK" for c in codes)
        assert 1 <= codes.count("OK") and shed >= 1, codes
        slowest = max(s for _, s in outcomes)
        assert slowest < 10  # answered, not queued without bound
        assert len(client.scores(domain, user, items, store)) == len(items)  # still serving afterwards
    report("overload", concurrent=16, maximum_concurrent_rpcs=2, ok=codes.count("OK"), shed=shed,
           codes=sorted(set(codes)), slowest_s=round(slowest, 2),
           fastest_shed_ms=round(1e3 * min((s for c, s in outcomes if c != "OK"), default=0), 1))


# --------------------------------------------------------------------------------------------------
# Fuzzed requests


FUZZ_MODELS = (artifacts.RANKER, artifacts.RETRIEVAL, artifacts.RETRIEVAL_SCANN, artifacts.USER_TOWER,
               artifacts.ITEM_TOWER)
ARRAY_MUTATIONS = ("drop", "extra", "dtype", "empty_batch", "batch_mismatch", "width", "rank", "random_bytes",
                   "special_floats", "extreme_ints", "random_domain", "long_string")
PROTO_MUTATIONS = ("fill_from_one_value", "bad_dtype_enum", "bad_content", "huge_batch", "negative_dim",
                   "unknown_rank")


def random_bytes(rng, n):
    return rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()  # mostly not UTF-8


def mutate_array(rng, op, name, inputs):
    """Applies one array-level mutation to `inputs[name]` (in place)."""
    a = inputs[name]
    if op == "drop":
        del inputs[name]
    elif op == "extra":
        inputs[f"unknown_{rng.integers(100)}"] = np.zeros([len(a)], np.float32)
    elif op == "dtype":
        dtype = rng.choice(["float64", "float32", "float16", "int32", "int64", "uint8", "bool", "bytes"])
        inputs[name] = np.full(a.shape, b"1", object) if dtype == "bytes" else np.zeros(a.shape, dtype)
    elif op == "empty_batch":
        for k in inputs:
            inputs[k] = inputs[k][:0] if inputs[k].ndim else inputs[k]
    elif op == "batch_mismatch":
        inputs[name] = np.concatenate([a, a[:1]])
    elif op == "width" and a.ndim == 2:
        inputs[name] = np.full((len(a), int(rng.choice([0, 1, a.shape[1] - 1, a.shape[1] + 1, 10 * a.shape[1]]))),
                               b"x" if a.dtype == object else 0, a.dtype)
    elif op == "rank":
        inputs[name] = a[..., None] if rng.random() < 0.5 or not a.size else np.asarray(a.ravel()[0])
    elif op == "random_bytes" and a.dtype == object:
        inputs[name] = np.array([random_bytes(rng, int(rng.integers(0, 40))) for _ in range(a.size)],
                                object).reshape(a.shape)
    elif op == "special_floats" and a.dtype.kind == "f":
        inputs[name] = rng.choice(np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, -0.0, 1e-45], a.dtype), a.shape)
    elif op == "extreme_ints" and a.dtype.kind in "iu":
        info = np.iinfo(a.dtype)
        inputs[name] = rng.choice(np.array([info.max, info.min, -1, 0], a.dtype), a.shape)
    elif op == "random_domain" and "domain" in inputs:
        d = inputs["domain"]
        inputs["domain"] = np.array([random_bytes(rng, 3) for _ in range(d.size)], object).reshape(d.shape)
    elif op == "long_string" and a.dtype == object and a.size:
        a = a.copy()
        a.flat[0] = random_bytes(rng, 200_000)
        inputs[name] = a


def mutate_proto(rng, op, proto):
    """Applies one TensorProto-level mutation (what no numpy array can express)."""
    if op == "fill_from_one_value" and proto.tensor_shape.dim:  # TF's rule: one value fills the shape
        values = tf.make_ndarray(proto)
        if values.size:
            shape = list(proto.tensor_shape.dim)
            proto.CopyFrom(tf.make_tensor_proto(values.ravel()[:1]))
            proto.tensor_shape.Clear()
            proto.tensor_shape.dim.extend(shape)
    elif op == "bad_dtype_enum":
        proto.dtype = int(rng.choice([0, 7, 10, 14, 20, 23, 101, 999, 2**31 - 5]))
    elif op == "bad_content":
        proto.tensor_content = proto.tensor_content[:-1] if proto.tensor_content else random_bytes(rng, 7)
    elif op == "huge_batch" and proto.tensor_shape.dim:  # a few bytes declaring billions of values
        proto.tensor_shape.dim[0].size = int(rng.choice([5000, 10**6, 10**9, 2**40]))
    elif op == "negative_dim" and proto.tensor_shape.dim:
        proto.tensor_shape.dim[0].size = -int(rng.integers(1, 5))
    elif op == "unknown_rank":
        proto.tensor_shape.unknown_rank = True


def fuzzed_request(rng, store, signatures):
    """A PredictRequest made from a valid one by 1 to 3 random mutations (or random `examples` bytes)."""
    model = str(rng.choice(FUZZ_MODELS))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if rng.random() < 0.1:  # the examples signature over garbage or truncated tf.Examples
        request.model_spec.signature_name = artifacts.EXAMPLES_SIGNATURE
        good = example_request(store, model).inputs[artifacts.EXAMPLES_INPUT].string_val[0]
        values = [random_bytes(rng, int(rng.integers(0, 64))), good[:int(rng.integers(0, len(good)))], good]
        request.inputs[artifacts.EXAMPLES_INPUT].CopyFrom(tf.make_tensor_proto(np.array(
            [values[i] for i in rng.integers(0, 3, size=int(rng.integers(0, 4)))], object)))
        return request, ["examples"]
    domain = str(rng.choice(store.domains))
    users, items = store.user_ids(domain), store.item_ids(domain)
    chosen = [items[i] for i in rng.integers(0, len(items), size=int(rng.integers(1, 6)))]
    columns = store.features(users[rng.integers(len(users))], domain,
                             chosen if model in (artifacts.RANKER, artifacts.ITEM_TOWER) else None)
    inputs = {n: sc._conform(columns[n], dtype, shape) for n, (dtype, shape) in signatures[model].items()}
    done, proto_ops = [], {}
    for _ in range(int(rng.integers(1, 4))):
        op = str(rng.choice(ARRAY_MUTATIONS + PROTO_MUTATIONS))
        name = str(rng.choice(sorted(inputs))) if inputs else None
        if name is None or inputs[name].ndim == 0:
            continue
        done.append(f"{op}:{name}")
        if op in PROTO_MUTATIONS:
            proto_ops[name] = op
        else:
            mutate_array(rng, op, name, inputs)
    for name, array in inputs.items():
        proto = tf.make_tensor_proto(array)
        if name in proto_ops:
            mutate_proto(rng, proto_ops[name], proto)
        request.inputs[name].CopyFrom(proto)
    return request, done


def test_fuzzed_requests_get_clean_answers_and_the_server_survives(exported, server):
    store = exported["store"]
    rng = np.random.default_rng(7)
    with sc.Client(server.address) as client, grpc.insecure_channel(server.address) as channel:
        signatures = {m: client.signature_inputs(m) for m in FUZZ_MODELS}
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        codes, bad, slowest = {}, [], 0.0
        internal_before = sum(v for k, v in server.stats().items() if k.endswith((".INTERNAL", ".UNKNOWN")))
        for _ in range(200):
            request, what = fuzzed_request(rng, store, signatures)
            start = time.monotonic()
            try:
                stub.Predict(request, timeout=30)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
                if code not in CLEAN_REFUSALS:
                    bad.append((request.model_spec.name, what, code, (e.details() or "")[:300]))
            slowest = max(slowest, time.monotonic() - start)
            codes[code] = codes.get(code, 0) + 1
        assert not bad, bad[:5]
        assert slowest < 5, slowest  # a huge declared shape is refused before it is allocated
        internal = sum(v for k, v in server.stats().items() if k.endswith((".INTERNAL", ".UNKNOWN")))
        assert internal == internal_before
        domain, user, items = queries(store, 1)[0]
        assert len(client.scores(domain, user, items, store)) == len(items)
        assert client.candidates(domain, user, K, store)
    report("fuzz", requests=200, codes=codes, slowest_s=round(slowest, 3))


def test_what_fuzzing_found_is_refused_cleanly_and_fast(exported, server):
    """Regressions: an unknown dtype enum was an INTERNAL error (TypeError formatting the message); a
    request of a few bytes declaring a batch of 2,000,000 took 20 s and GBs of memory before its batch
    size was refused (one value fills the declared shape when decoded)."""
    store = exported["store"]
    good = example_request(store, artifacts.RANKER)
    with sc.Client(server.address) as client, grpc.insecure_channel(server.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        signature = client.signature_inputs(artifacts.RANKER)
        unknown_dtype = predict_pb2.PredictRequest()
        unknown_dtype.model_spec.name = artifacts.RANKER
        for name in signature:
            unknown_dtype.inputs[name].dtype = 999
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(unknown_dtype, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown dtype enum 999" in info.value.details()

        huge = predict_pb2.PredictRequest()
        huge.model_spec.name = artifacts.RANKER
        for name, (dtype, shape) in signature.items():
            proto = huge.inputs[name]
            proto.dtype = dtype.as_datatype_enum
            proto.tensor_shape.dim.add(size=2_000_000_000)
            for d in shape[1:]:
                proto.tensor_shape.dim.add(size=d)
            {tf.string: proto.string_val, tf.float32: proto.float_val, tf.int64: proto.int64_val}[dtype].append(
                b"d0" if dtype == tf.string else 1)
        assert huge.ByteSize() < 2000
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(huge, timeout=10)
        assert time.monotonic() - start < 2
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "maximum batch size 4096" in info.value.details()
        assert stub.Predict(good, timeout=10).outputs["probability"].tensor_shape.dim[0].size == 3


# --------------------------------------------------------------------------------------------------
# Safe defaults


def test_safe_defaults(exported, server):
    # Loopback unless a flag opens it: the server, `mdr serve` and `mdr demo`.
    assert server.address.startswith("127.0.0.1:")
    parser = cli.build_parser()
    assert parser.parse_args(["serve", "--model-config-file", "x"]).host == "127.0.0.1"
    assert parser.parse_args(["demo"]).host == "127.0.0.1"

    # Models load only from the configured base paths: a SavedModel copied next to them, or a path as
    # a model name, is nothing the server knows.
    export_dir = exported["export"]
    rogue = os.path.join(export_dir, "rogue")
    shutil.copytree(os.path.join(export_dir, artifacts.RANKER, str(server.loaded_versions(artifacts.RANKER)[-1])),
                    os.path.join(rogue, "1"))
    try:
        assert server.poll() == [] and "rogue" not in server.model_names
        with grpc.insecure_channel(server.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for name in ("rogue", rogue, "../ranker", os.path.join(export_dir, artifacts.RANKER)):
                request = example_request(exported["store"], artifacts.RANKER)
                request.model_spec.name = name
                with pytest.raises(grpc.RpcError) as info:
                    stub.Predict(request, timeout=10)
                assert info.value.code() == grpc.StatusCode.NOT_FOUND, name
    finally:
        shutil.rmtree(rogue)

    # Requests are bounded by the export: batch size and the length of every sequence input.
    checks = cfg.read_serving_checks(os.path.join(export_dir, artifacts.RANKER,
                                                  str(server.loaded_versions(artifacts.RANKER)[-1])))
    spec = exported["store"].spec
    assert checks.max_batch_size == ex.MAX_BATCH_SIZE
    assert checks.max_length == {f.name: f.length for f in spec.features
                                 if f.is_list and f.name in ex.model_inputs(spec, artifacts.RANKER)}
    assert checks.max_length and checks.allowed_values == {"domain": list(spec.domains),
                                                           "hist_domain": list(spec.domains) + [""]}
    assert checks.reject_non_finite

    # Nothing is unpickled from a request or a data file: no pickle-like loader in the project's code.
    loader = re.compile(r"\b(import (c?pickle|dill|marshal|shelve)|pickle\.loads?|allow_pickle\s*=\s*True|"
                        r"yaml\.(unsafe_)?load\()")
    found = []
    for package in ("serving", "mdr_keras", "pipeline"):
        for path in glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True):
            with open(path, encoding="utf-8") as f:
                found += [f"{os.path.relpath(path, REPO)}: {line.strip()}" for line in f if loader.search(line)]
    assert not found, found
