"""An embedded model server speaking TF Serving's gRPC API, for machines without the TF Serving binary.

`ModelServer` serves the models of a `models.config` (see `serving.config`) the way TF Serving does,
so the stock `PredictionServiceStub` / `ModelServiceStub` and any TF Serving client work unchanged:

- `PredictionService.Predict` and `PredictionService.GetModelMetadata` (the `signature_def` field: a
  `SignatureDefMap` packed in an `Any`, read from the SavedModel's MetaGraphDef as TF Serving does),
  and `ModelService.GetModelStatus`. Classify, Regress, MultiInference and HandleReloadConfigRequest
  answer UNIMPLEMENTED, logged in one line (no traceback).
- Versions: every numeric child folder of a model's base path is a version; the model's version
  policy (latest N, specific, all) picks those served. `model_spec.version` asks for one version,
  `model_spec.version_label` for a labelled one, neither for the latest loaded; `signature_name`
  defaults to `serving_default`.
- A poller re-lists the base paths every `poll_interval` seconds (TF Serving's
  `--file_system_poll_wait_seconds`) and loads new versions while serving, availability-preserving
  (`serving.servables`: loading, unloading, failed versions).
- Requests are checked before TensorFlow runs (`serving.request_checks`: inputs against the
  signature, batch sizes, values against declared shapes, non-finite floats, the model's
  `serving_checks.json`), with INVALID_ARGUMENT and a message naming the input. Unknown model,
  version, label or signature give NOT_FOUND listing what exists. An error raised inside the model is
  returned with TensorFlow's code and message (INVALID_ARGUMENT for bad values, INTERNAL otherwise)
  and the server stays up.
- Deadlines: the remaining time is checked on arrival and again just before the model runs; a
  request whose deadline has passed gets DEADLINE_EXCEEDED without running the model (a running
  TensorFlow call cannot be interrupted).
- Resources: a bounded worker pool (`max_workers` threads), `maximum_concurrent_rpcs` (RPCs beyond it
  get RESOURCE_EXHAUSTED), bounded send/receive message sizes, and 127.0.0.1 unless told otherwise
  (port 0 picks a free port, exposed as `server.port`).

Batching: with `enable_batching` (TF Serving's `--enable_batching`), concurrent requests to one version
and signature are merged into one model call following the batching parameters file (`max_batch_size`,
`batch_timeout_micros`, `max_enqueued_batches`, `num_batch_threads`, `allowed_batch_sizes`; see
`serving.batching`); without it each request runs as its own batch. Either way `max_batch_size` is the
largest batch one request may carry.

For checks that need code, `validators={"model name": fn}` installs a Python callable
`fn(signature_name, inputs)` (inputs: name -> numpy array) that raises `ValueError(message)` to reject
a request with INVALID_ARGUMENT.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import signal
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from mdr_contract import artifacts
from mdr_keras.layers.plumbing import check_int
from serving import config as cfg
from serving.batching import BatchScheduler, batchable
from serving.request_checks import RequestError, check_inputs, describe_signature
from serving.servables import MAX_ERROR_CHARS, Servable, ServedModel
from serving.tensors import tensor_proto

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8500  # TF Serving's gRPC port
DEFAULT_MESSAGE_BYTES = 64 * 1024 * 1024
METADATA_SIGNATURE_DEF = "signature_def"
IMPLEMENTED_METHODS = ("Predict", "GetModelMetadata", "GetModelStatus")
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}

Validator = Callable[[str, Dict[str, np.ndarray]], None]


class ModelServer:
    """Serves SavedModels over TF Serving's gRPC API (see the module docstring).

    Args:
        model_config_file: a `models.config` (ModelServerConfig text); relative base paths are taken
            relative to its folder, so an export folder can be moved as a whole.
        models: the models as `serving.config.ModelConfig`s, instead of `model_config_file`.
        host: address to bind (127.0.0.1: this machine only; 0.0.0.0 or [::] to expose it).
        port: port to bind; 0 picks a free one (see `port` after `start()`).
        max_workers: threads handling requests (the worker pool).
        maximum_concurrent_rpcs: RPCs in progress beyond which new ones get RESOURCE_EXHAUSTED
            (None: no limit besides the worker pool's queue).
        max_send_message_bytes, max_receive_message_bytes: largest response / request.
        poll_interval: seconds between polls of the base paths for new versions (0: no polling).
        max_batch_size: the largest batch a request may carry (None: no limit).
        batching_parameters_file: a TF Serving batching parameters file; its `max_batch_size` is used
            when `max_batch_size` is None, and all of it with `enable_batching`.
        enable_batching: merge concurrent requests into batches (for what the batching parameters file
            leaves out, or for all of it without one, TF Serving's defaults but one batch thread: see
            `serving.batching.DEFAULT_BATCH_THREADS`).
        validators: model name -> `fn(signature_name, inputs)` raising ValueError to reject a request.
    """

    def __init__(self, model_config_file: Optional[str] = None, models: Optional[Sequence[cfg.ModelConfig]] = None,
                 host: str = "127.0.0.1", port: int = 0, max_workers: int = 8,
                 maximum_concurrent_rpcs: Optional[int] = None,
                 max_send_message_bytes: int = DEFAULT_MESSAGE_BYTES,
                 max_receive_message_bytes: int = DEFAULT_MESSAGE_BYTES,
                 poll_interval: float = cfg.DEFAULT_POLL_SECONDS, max_batch_size: Optional[int] = None,
                 batching_parameters_file: Optional[str] = None, enable_batching: bool = False,
                 validators: Optional[Mapping[str, Validator]] = None):
        if (model_config_file is None) == (models is None):
            raise ValueError("Exactly one of `model_config_file` and `models` must be given. "
                             f"Received: model_config_file={model_config_file!r}, models={models!r}")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"`port` must be an integer in [0, 65535]. Received: port={port!r}")
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"`max_workers` must be an integer >= 1. Received: max_workers={max_workers!r}")
        if maximum_concurrent_rpcs is not None and maximum_concurrent_rpcs < 1:
            raise ValueError("`maximum_concurrent_rpcs` must be >= 1 or None. "
                             f"Received: maximum_concurrent_rpcs={maximum_concurrent_rpcs!r}")
        for arg, value in (("max_send_message_bytes", max_send_message_bytes),
                           ("max_receive_message_bytes", max_receive_message_bytes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be an integer >= 1. Received: {arg}={value!r}")
        if poll_interval < 0:
            raise ValueError(f"`poll_interval` must be >= 0. Received: poll_interval={poll_interval!r}")
        batching = cfg.read_batching_config(batching_parameters_file) if batching_parameters_file else None
        if max_batch_size is None and batching is not None:
            max_batch_size = batching.max_batch_size
        if max_batch_size is not None and (not isinstance(max_batch_size, int) or max_batch_size < 1):
            raise ValueError("`max_batch_size` must be an integer >= 1 or None. "
                             f"Received: max_batch_size={max_batch_size!r}")

        if model_config_file is not None:
            models = cfg.read_models_config(model_config_file)
            root = os.path.dirname(os.path.abspath(model_config_file))
        else:
            models, root = list(models), os.getcwd()
        if not models:
            raise ValueError("No models to serve: the model config is empty.")
        self._models: Dict[str, ServedModel] = {}
        for model in models:
            if model.name in self._models:
                raise ValueError(f"Model names must be unique. Received a second {model.name!r}")
            base = model.base_path if "://" in model.base_path else os.path.join(root, model.base_path)
            self._models[model.name] = ServedModel(model, base)
        unknown = sorted(set(validators or {}) - set(self._models))
        if unknown:
            raise ValueError(f"`validators` names unknown models {unknown}; models: {sorted(self._models)}")

        self._host = host
        self._requested_port = port
        self._max_workers = max_workers
        self._maximum_concurrent_rpcs = maximum_concurrent_rpcs
        self._max_send = max_send_message_bytes
        self._max_receive = max_receive_message_bytes
        self._poll_interval = poll_interval
        self._max_batch_size = max_batch_size
        self._batcher = (BatchScheduler.from_config(batching or cfg.BatchingConfig()) if enable_batching else None)
        self._validators = dict(validators or {})
        self._port: Optional[int] = None
        self._grpc_server = None
        self._poller: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._sync_lock = threading.Lock()
        self._stats = collections.Counter()
        self._stats_lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------------------

    def start(self) -> "ModelServer":
        """Loads the models, binds the port and starts serving and polling.

        Raises:
            RuntimeError: when a version fails to load (as TF Serving refuses to start) or the port
                cannot be bound.
        """
        if self._grpc_server is not None:
            raise RuntimeError("The server is already started.")
        errors = self.poll()
        if errors:
            raise RuntimeError("Model versions failed to load:\n  " + "\n  ".join(errors))
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="mdr-serving"),
            options=[("grpc.max_send_message_length", self._max_send),
                     ("grpc.max_receive_message_length", self._max_receive),
                     # Without this a second server could silently share an explicit port.
                     ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=self._maximum_concurrent_rpcs)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionServicer(self), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelServicer(self), server)
        host = _bracketed(self._host)
        try:
            port = server.add_insecure_port(f"{host}:{self._requested_port}")
        except RuntimeError as e:
            raise RuntimeError(f"Cannot bind {host}:{self._requested_port}: {e}") from e
        if not port:
            raise RuntimeError(f"Cannot bind {host}:{self._requested_port}")
        server.start()
        self._grpc_server, self._port = server, port
        self._stopping.clear()
        if self._poll_interval > 0:
            self._poller = threading.Thread(target=self._poll_loop, name="mdr-serving-poller", daemon=True)
            self._poller.start()
        logger.info("Serving %s on %s", {n: self.loaded_versions(n) for n in self._models}, self.address)
        return self

    def stop(self, grace: Optional[float] = None) -> None:
        """Stops polling and serving; RPCs in progress get `grace` seconds to finish (None: none)."""
        self._stopping.set()
        if self._poller is not None:
            self._poller.join()
            self._poller = None
        if self._grpc_server is not None:
            self._grpc_server.stop(grace).wait()
            self._grpc_server = None
        if self._batcher is not None:
            self._batcher.stop()

    def wait_for_termination(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the server stops or `timeout` passes; True when it stopped."""
        # grpc answers whether the wait timed out.
        return self._grpc_server is None or not self._grpc_server.wait_for_termination(timeout)

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(grace=1.0)

    @property
    def port(self) -> Optional[int]:
        """The bound port (after `start()`)."""
        return self._port

    @property
    def address(self) -> str:
        """`host:port`, for `grpc.insecure_channel`."""
        return f"{_bracketed(self._host)}:{self._port}"

    @property
    def model_names(self) -> List[str]:
        return sorted(self._models)

    def loaded_versions(self, model_name: str) -> List[int]:
        """The versions of `model_name` being served, ascending."""
        return sorted(self._models[model_name].servables)

    def stats(self) -> Dict[str, int]:
        """Counters: `<Method>.<STATUS CODE>` per answered RPC, and `model_runs`."""
        with self._stats_lock:
            return dict(self._stats)

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self._stats[key] += 1

    # -- versions -----------------------------------------------------------------------------------

    def poll(self) -> List[str]:
        """Brings every model in line with its version folders now; returns the load errors."""
        with self._sync_lock:
            errors = []
            for model in self._models.values():
                errors += model.sync()
            return errors

    def _poll_loop(self) -> None:
        while not self._stopping.wait(self._poll_interval):
            try:
                self.poll()
            except Exception:  # the poller must survive anything a file system can do
                logger.exception("Polling the model base paths failed")

    # -- request handling ---------------------------------------------------------------------------

    def _handle(self, method: str, fn, request, context):
        try:
            _check_deadline(context, "on arrival")
            response = fn(request, context)
        except RequestError as e:
            code, message = e.code, e.message
            if code == grpc.StatusCode.UNIMPLEMENTED:
                logger.warning("%s answered UNIMPLEMENTED: %s", method, message.splitlines()[0] if message else "")
        except Exception as e:  # a bug of ours: answer, log, keep serving
            logger.exception("%s failed", method)
            code, message = grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"
        else:
            self._count(f"{method}.OK")
            return response
        self._count(f"{method}.{code.name}")
        context.abort(code, message[:MAX_ERROR_CHARS])

    @staticmethod
    def _unimplemented(method: str):
        """A handler answering UNIMPLEMENTED for `method` (the generated servicer's default raises, which
        gRPC logs as a full traceback at ERROR)."""
        def handler(request, context):
            raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                               f"{method} is not implemented by the embedded model server; it serves "
                               f"{', '.join(IMPLEMENTED_METHODS)}")
        return handler

    def _model(self, name: str) -> ServedModel:
        if not name:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"model_spec.name is empty; models: {sorted(self._models)}")
        model = self._models.get(name)
        if model is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no model named {name!r}; models: {sorted(self._models)}")
        return model

    def _version_asked(self, model: ServedModel, model_spec) -> Optional[int]:
        """The version a ModelSpec names (None: the latest)."""
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version":
            return model_spec.version.value
        if choice == "version_label":
            label = model_spec.version_label
            labels = model.config.version_labels
            if label not in labels:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"model {model.config.name!r} has no version label {label!r}; labels: "
                                   f"{dict(sorted(labels.items()))}")
            return labels[label]
        return None

    def _servable(self, model_spec) -> Servable:
        model = self._model(model_spec.name)
        servables = model.servables  # one snapshot for the whole request
        version = self._version_asked(model, model_spec)
        if version is None:
            if not servables:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {model.config.name!r} has no loaded version")
            return servables[max(servables)]
        if version not in servables:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model {model.config.name!r} has no loaded version {version}; "
                               f"loaded versions: {sorted(servables)}")
        return servables[version]

    def _predict(self, request, context):
        servable = self._servable(request.model_spec)
        key = request.model_spec.signature_name or artifacts.DEFAULT_SIGNATURE
        signature = servable.signatures.get(key)
        if signature is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model {servable.name!r} version {servable.version} has no signature {key!r}; "
                               f"signatures: {sorted(servable.signatures)}")
        where = describe_signature(servable, key)
        if signature.unsupported:
            raise RequestError(grpc.StatusCode.UNIMPLEMENTED, f"{where}: {signature.unsupported}")
        wanted = list(request.output_filter) or sorted(signature.outputs)
        unknown = sorted(set(wanted) - set(signature.outputs))
        if unknown:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output_filter names unknown output(s) {unknown}; {where} has "
                               f"outputs {sorted(signature.outputs)}")
        arrays = check_inputs(servable, signature, request.inputs, self._max_batch_size)
        validator = self._validators.get(servable.name)
        if validator is not None:
            try:
                validator(key, arrays)
            except ValueError as e:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
        _check_deadline(context, "before the model ran")

        def run(inputs, names=tuple(signature.outputs)):  # a merged batch needs every output, one request `wanted`
            self._count("model_runs")
            try:
                return call_signature(signature, inputs, names)
            except tf.errors.OpError as e:
                code = _GRPC_CODES.get(e.error_code, grpc.StatusCode.INTERNAL)
                if code == grpc.StatusCode.OK:
                    code = grpc.StatusCode.INTERNAL
                raise RequestError(code, f"{where} failed: {_tf_message(e.message)}") from e
            except (TypeError, ValueError) as e:  # raised while tracing/converting arguments
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{where} failed: {e}") from e

        if self._batcher is not None and batchable(signature.inputs, signature.outputs):
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            outputs = self._batcher.run((servable.name, servable.version, key), run, arrays, deadline, where)
        else:
            outputs = run(arrays, wanted)
        return predict_response(servable, key, outputs, wanted)

    def _get_model_metadata(self, request, context):
        fields = list(request.metadata_field)
        if not fields:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"metadata_field is empty; supported: [{METADATA_SIGNATURE_DEF!r}]")
        unsupported = sorted(set(fields) - {METADATA_SIGNATURE_DEF})
        if unsupported:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"metadata field(s) {unsupported} not supported; "
                               f"supported: [{METADATA_SIGNATURE_DEF!r}]")
        servable = self._servable(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig_def in servable.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(sig_def)
        response.metadata[METADATA_SIGNATURE_DEF].Pack(signature_map)
        return response

    def _get_model_status(self, request, context):
        model = self._model(request.model_spec.name)
        status = dict(model.status)
        version = self._version_asked(model, request.model_spec)
        if version is not None:
            if version not in status:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"model {model.config.name!r} has no version {version}; versions: {sorted(status)}")
            versions = [version]
        else:
            versions = sorted(status)
            if not versions:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"model {model.config.name!r} has no versions under {model.base_path}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in versions:
            state, code, message = status[v]
            entry = response.model_version_status.add(version=v, state=state)
            entry.status.error_code = code
            entry.status.error_message = message
        return response


def call_signature(signature, inputs, names=None):
    """One run of a signature's function: numpy `inputs`, converted to its input dtypes; numpy outputs
    `names` (default: all). What a Predict call's model work is, in the server and in the benchmark
    that times the call's pieces (`benchmarks.serving_latency --mode breakdown`)."""
    tensors = {k: tf.convert_to_tensor(a, dtype=signature.inputs[k].dtype) for k, a in inputs.items()}
    outputs = signature.function(**tensors)
    return {name: outputs[name].numpy() for name in (signature.outputs if names is None else names)}


def predict_response(servable, key, outputs, wanted):
    """The PredictResponse of signature `key` of `servable`: numpy `outputs`, those `wanted`."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = key
    for name in wanted:
        response.outputs[name].CopyFrom(tensor_proto(outputs[name]))
    return response


def _bracketed(host: str) -> str:
    """`host` as it goes before `:port`: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _tf_message(message: str) -> str:
    """TensorFlow's error message without the 'Graph execution error' preamble and stack frames."""
    noise = ("Graph execution error:", "Detected at node", "<stack traces unavailable>", "  File ")
    lines = [line for line in message.splitlines() if line.strip() and not line.startswith(noise)]
    return "\n".join(lines) or message


def _check_deadline(context, when: str) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded {when} ({remaining:.3f} s left)")


class _PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService: Predict and GetModelMetadata (the rest answer UNIMPLEMENTED)."""

    def __init__(self, server: ModelServer):
        self._server = server

    def Predict(self, request, context):
        return self._server._handle("Predict", self._server._predict, request, context)

    def GetModelMetadata(self, request, context):
        return self._server._handle("GetModelMetadata", self._server._get_model_metadata, request, context)

    def Classify(self, request, context):
        return self._server._handle("Classify", self._server._unimplemented("Classify"), request, context)

    def Regress(self, request, context):
        return self._server._handle("Regress", self._server._unimplemented("Regress"), request, context)

    def MultiInference(self, request, context):
        return self._server._handle("MultiInference", self._server._unimplemented("MultiInference"), request,
                                    context)


class _ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService: GetModelStatus (HandleReloadConfigRequest answers UNIMPLEMENTED)."""

    def __init__(self, server: ModelServer):
        self._server = server

    def GetModelStatus(self, request, context):
        return self._server._handle("GetModelStatus", self._server._get_model_status, request, context)

    def HandleReloadConfigRequest(self, request, context):
        return self._server._handle("HandleReloadConfigRequest",
                                    self._server._unimplemented("HandleReloadConfigRequest"), request, context)


def set_tensorflow_threads(intra_op: int = 0, inter_op: int = 0) -> None:
    """Sizes TensorFlow's thread pools for this process (TF Serving's `--tensorflow_intra_op_parallelism`
    and `--tensorflow_inter_op_parallelism`); 0 leaves TensorFlow's choice (one thread per core each).

    A model server runs many small calls at once: threads splitting one small op (intra-op) mostly
    wait on each other, while independent ops and concurrent requests (inter-op) can use the cores.
    Must run before TensorFlow runs any op in the process.

    Raises:
        ValueError: a count is not an integer >= 0, or TensorFlow already runs with other pool sizes.
    """
    check_int("intra_op", intra_op, low=0)
    check_int("inter_op", inter_op, low=0)
    current = (tf.config.threading.get_intra_op_parallelism_threads(),
               tf.config.threading.get_inter_op_parallelism_threads())
    if current == (intra_op, inter_op):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:  # TensorFlow's runtime already started: its pools are fixed for the process
        raise ValueError(f"TensorFlow already runs in this process with intra_op={current[0]}, "
                         f"inter_op={current[1]}: set the thread pools before any model is loaded. "
                         f"Received: intra_op={intra_op}, inter_op={inter_op}") from None


def serve(model_config_file: str, port: int = DEFAULT_PORT, host: str = "127.0.0.1",
          poll_interval: float = cfg.DEFAULT_POLL_SECONDS, max_workers: int = 8,
          maximum_concurrent_rpcs: Optional[int] = None, max_batch_size: Optional[int] = None,
          batching_parameters_file: Optional[str] = None, enable_batching: bool = False,
          max_message_bytes: int = DEFAULT_MESSAGE_BYTES, intra_op_threads: int = 0, inter_op_threads: int = 0,
          on_ready: Optional[Callable[[ModelServer], None]] = None, grace: float = 5.0) -> None:
    """Serves `model_config_file` until interrupted (Ctrl-C or SIGTERM); what `mdr serve` runs.

    Args:
        model_config_file: the `models.config`.
        port: gRPC port (0: a free one; `on_ready` receives the server to read it).
        host: address to bind.
        poll_interval: seconds between polls for new versions.
        max_workers, maximum_concurrent_rpcs, max_batch_size, batching_parameters_file, enable_batching:
            see `ModelServer`.
        max_message_bytes: largest request and response.
        intra_op_threads, inter_op_threads: TensorFlow's thread pools (`set_tensorflow_threads`).
        on_ready: called with the started server (e.g. to print its address).
        grace: seconds RPCs in progress get to finish on shutdown.
    """
    set_tensorflow_threads(intra_op_threads, inter_op_threads)
    server = ModelServer(model_config_file, host=host, port=port, max_workers=max_workers,
                         maximum_concurrent_rpcs=maximum_concurrent_rpcs, max_send_message_bytes=max_message_bytes,
                         max_receive_message_bytes=max_message_bytes, poll_interval=poll_interval,
                         max_batch_size=max_batch_size, batching_parameters_file=batching_parameters_file,
                         enable_batching=enable_batching)
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (docker stop, kill) ends as cleanly as Ctrl-C.
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    try:
        if on_ready is not None:
            on_ready(server)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        logger.info("Stopping the model server on %s", server.address)
        server.stop(grace)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
