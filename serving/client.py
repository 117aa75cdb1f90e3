"""Client of the model servers: gRPC calls and two-stage recommendation over the feature store.

`Client`: TF Serving's stock `PredictionServiceStub` over one gRPC channel. `predict` is the raw
call; `candidates` (retrieval in a domain), `scores` (the ranker over given items: the `recommender`'s
`rank` signature where served) and `recommend` (one call to the `recommender` where served, else
candidates, then the ranker over them in one request; top N) build the request tensors from a
`serving.feature_store.FeatureStore` (the raw features the preprocessing job wrote for query time).
Works against stock TF Serving and the embedded `serving.server.ModelServer` alike.

Request tensors follow the export contract (`serving.export`): a `serving_default` signature over named
raw inputs (string `[B]` categorical, string `[B, L]` categorical lists, float32 `[B]` numeric, int64
`[B]` int features, string `[B, T]` behaviour sequences) and an `examples` signature over serialized
`tf.train.Example`s. Which inputs a model takes, with their dtypes and shapes, is read from the server
(`GetModelMetadata`, cached), so the client sends exactly what the served version expects; with
`use_examples=True` it sends every feature the store has as `tf.train.Example`s instead (the graph
parses the ones it reads).

Errors: a failed RPC raises `ServingError` with the gRPC status code (`code_name`, e.g. `NOT_FOUND`,
`DEADLINE_EXCEEDED`) and the server's message; every call has a deadline (`timeout`). Unknown users,
items or domains in the store raise `ValueError` before anything is sent.
"""
from __future__ import annotations

import logging
import math
import threading
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from mdr_contract.artifacts import (DEFAULT_SIGNATURE, EXAMPLES_INPUT, EXAMPLES_SIGNATURE, RANK_ITEMS_INPUT,
                                    RANK_SIGNATURE, RANKER, RECOMMENDER, RETRIEVAL)
from serving.feature_store import FeatureStore, to_examples
from serving.tensors import tensor_proto, to_ndarray

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
DEFAULT_MESSAGE_BYTES = 64 * 1024 * 1024  # the embedded server's default


class ServingError(Exception):
    """A failed RPC: the gRPC status code and the server's message.

    Args:
        code: the `grpc.StatusCode`.
        message: the server's message (`details()`), or the client's explanation.
        model: the model called, when there was one.
    """

    def __init__(self, code: grpc.StatusCode, message: str, model: Optional[str] = None):
        self.code = code
        self.message = message or ""
        self.model = model
        where = f"model {model!r}: " if model else ""
        super().__init__(f"{where}{code.name}: {self.message}")

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. 'NOT_FOUND'."""
        return self.code.name


# --------------------------------------------------------------------------------------------------
# Client


TensorInfo = Tuple[tf.DType, Optional[Tuple[Optional[int], ...]]]


class Client:
    """TF Serving's gRPC API (stock `PredictionServiceStub`) for the exported models.

    Args:
        address: `host:port` of a TF Serving or `mdr serve` gRPC endpoint.
        timeout: deadline of every RPC, in seconds.
        max_message_bytes: largest request and response.
        use_examples: call the `examples` signatures (serialized `tf.train.Example`s of every feature
            the store has) instead of `serving_default` (named raw tensors).
        max_batch_size: the largest batch of one ranker request; longer item lists are scored in
            several requests (None: always one request).

    Use as a context manager, or `close()` it.
    """

    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT, max_message_bytes: int = DEFAULT_MESSAGE_BYTES,
                 use_examples: bool = False, max_batch_size: Optional[int] = None):
        if not address or ":" not in address:
            raise ValueError(f"`address` must be 'host:port'. Received: address={address!r}")
        if not timeout or timeout <= 0:
            raise ValueError(f"`timeout` must be > 0 seconds. Received: timeout={timeout!r}")
        if not isinstance(max_message_bytes, int) or max_message_bytes < 1:
            raise ValueError("`max_message_bytes` must be an integer >= 1. "
                             f"Received: max_message_bytes={max_message_bytes!r}")
        if max_batch_size is not None and (not isinstance(max_batch_size, int) or max_batch_size < 1):
            raise ValueError("`max_batch_size` must be an integer >= 1 or None. "
                             f"Received: max_batch_size={max_batch_size!r}")
        self.address = address
        self.timeout = float(timeout)
        self.use_examples = use_examples
        self.max_batch_size = max_batch_size
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)])
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._signatures: Dict[tuple, object] = {}  # (model, signature, version) -> SignatureDef
        self._lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- raw calls ----------------------------------------------------------------------------------

    def _call(self, method, request, model: Optional[str], timeout: Optional[float]):
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
            message = e.details() if callable(getattr(e, "details", None)) else str(e)
            if code == grpc.StatusCode.UNAVAILABLE:
                message = f"{message} (is a model server running at {self.address}?)"
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                message = f"{message or 'Deadline Exceeded'} (timeout {self.timeout if timeout is None else timeout} s)"
            raise ServingError(code, message, model) from None

    def predict_request(self, model: str, inputs: Mapping[str, np.ndarray], signature: str = DEFAULT_SIGNATURE,
                        version: Optional[int] = None, output_filter: Sequence[str] = ()
                        ) -> predict_pb2.PredictRequest:
        """The `PredictRequest` that `predict` sends (same arguments): for load tests and other callers
        that send requests themselves."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        request.output_filter.extend(output_filter)
        for name, value in inputs.items():
            array = np.asarray(value)
            if array.dtype.kind == "U":  # numpy unicode: send UTF-8 bytes
                array = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array)
            request.inputs[name].CopyFrom(tensor_proto(array))
        return request

    def predict(self, model: str, inputs: Mapping[str, np.ndarray], signature: str = DEFAULT_SIGNATURE,
                version: Optional[int] = None, output_filter: Sequence[str] = (),
                timeout: Optional[float] = None) -> Dict[str, np.ndarray]:
        """One `Predict` RPC.

        Args:
            model: the model name.
            inputs: input name -> array (strings as bytes/str, numbers with the dtype the signature
                declares; the array's dtype is kept, as `tf.make_tensor_proto` keeps it).
            signature: the signature name.
            version: a version number, or None for the latest the server has.
            output_filter: the outputs wanted (default all).
            timeout: this call's deadline (default the client's).

        Returns:
            output name -> numpy array (strings as bytes).

        Raises:
            ServingError: the RPC failed (status code and the server's message).
        """
        request = self.predict_request(model, inputs, signature, version, output_filter)
        response = self._call(self._predict.Predict, request, model, timeout)
        return {k: to_ndarray(v) for k, v in response.outputs.items()}

    def _signature_def(self, model: str, signature: str = DEFAULT_SIGNATURE, version: Optional[int] = None,
                       refresh: bool = False):
        """The served `SignatureDef` (`GetModelMetadata`), cached per (model, signature, version) until `refresh`."""
        key = (model, signature, version)
        with self._lock:
            if not refresh and key in self._signatures:
                return self._signatures[key]
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        request.metadata_field.append("signature_def")
        response = self._call(self._predict.GetModelMetadata, request, model, None)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        if signature not in signature_map.signature_def:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"no signature {signature!r}; signatures: {sorted(signature_map.signature_def)}", model)
        found = signature_map.signature_def[signature]
        with self._lock:
            self._signatures[key] = found
        return found

    def signature_inputs(self, model: str, signature: str = DEFAULT_SIGNATURE, version: Optional[int] = None,
                         refresh: bool = False) -> Dict[str, TensorInfo]:
        """The inputs of a served signature: name -> (dtype, shape; None for unknown sizes).

        Read with `GetModelMetadata` and cached per (model, signature, version) until `refresh`.
        """
        return _tensor_infos(self._signature_def(model, signature, version, refresh).inputs)

    def signature_outputs(self, model: str, signature: str = DEFAULT_SIGNATURE, version: Optional[int] = None,
                          refresh: bool = False) -> Dict[str, TensorInfo]:
        """The outputs of a served signature, as `signature_inputs` gives the inputs."""
        return _tensor_infos(self._signature_def(model, signature, version, refresh).outputs)

    def model_status(self, model: str, timeout: Optional[float] = None) -> Dict[int, str]:
        """Version -> state name ('AVAILABLE', 'LOADING', 'END', ...) of `model` (`GetModelStatus`)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = self._call(self._models.GetModelStatus, request, model, timeout)
        states = get_model_status_pb2.ModelVersionStatus.State
        return {s.version: states.Name(s.state) for s in response.model_version_status}

    def run(self, model: str, columns: Mapping[str, np.ndarray], version: Optional[int] = None,
            timeout: Optional[float] = None, signature: str = DEFAULT_SIGNATURE) -> Dict[str, np.ndarray]:
        """Calls `model` on feature columns (as `FeatureStore.features` gives them).

        `signature` (default `serving_default`): the columns it takes, conformed to its dtypes and
        sequence widths; the signature is re-read once when the server refuses the inputs (a new version
        with other inputs). `examples` (`use_examples`, for `serving_default` only): every column, as
        serialized `tf.train.Example`s.

        Raises:
            ValueError: the model takes an input the columns do not have.
            ServingError: the RPC failed.
        """
        if self.use_examples and signature == DEFAULT_SIGNATURE:
            return self.predict(model, {EXAMPLES_INPUT: to_examples(columns)}, signature=EXAMPLES_SIGNATURE,
                                version=version, timeout=timeout)
        name = signature
        for attempt in range(2):
            signature = self.signature_inputs(model, name, version=version, refresh=attempt > 0)
            missing = sorted(set(signature) - set(columns))
            if missing:
                raise ValueError(f"Model {model!r} takes input(s) {missing} that the feature store does not provide "
                                 f"(it provides {sorted(columns)})")
            inputs = {name: _conform(columns[name], dtype, shape) for name, (dtype, shape) in signature.items()}
            try:
                return self.predict(model, inputs, signature=name, version=version, timeout=timeout)
            except ServingError as e:
                if attempt or e.code != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                if self.signature_inputs(model, name, version=version, refresh=True) == signature:
                    raise
                logger.info("Model %r changed its inputs; retrying with the new signature", model)
        raise AssertionError("unreachable")

    # -- recommendation -----------------------------------------------------------------------------

    def candidates(self, domain: str, user_id: str, k: int, store: FeatureStore, model: str = RETRIEVAL,
                   cold_start: bool = False, timeout: Optional[float] = None) -> List[Tuple[str, float]]:
        """Up to `k` (item id, score) of `model` (retrieval in `domain`), best first.

        The exported retrieval returns a fixed K per row; the first `k` are kept (fewer when K < k or
        the domain has fewer items: padding ids "" / non-finite scores are dropped).

        Raises:
            ValueError: unknown domain or user (see `FeatureStore.user_features`), or k < 1.
            ServingError: the RPC failed.
        """
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"`k` must be an integer >= 1. Received: k={k!r}")
        out = self.run(model, store.features(user_id, domain, cold_start=cold_start), timeout=timeout)
        for name in ("item_ids", "scores"):
            if name not in out:
                raise ServingError(grpc.StatusCode.INTERNAL,
                                   f"the response lacks output {name!r} (outputs: {sorted(out)})", model)
        return _answered(out["item_ids"][0], out["scores"][0])[:k]

    def scores(self, domain: str, user_id: str, item_ids: Sequence[str], store: FeatureStore, model: str = RANKER,
               cold_start: bool = False, timeout: Optional[float] = None,
               recommender_model: Optional[str] = RECOMMENDER) -> List[float]:
        """The ranker's click probability of each of `item_ids` for `user_id` in `domain`.

        One call to the `rank` signature of `recommender_model` when the server has it (the user's
        features sent once, the items' looked up in its graph) and it knows every item; otherwise, or
        with `recommender_model=None`, `model` on len(item_ids) rows (the user's features replicated,
        the items' from `store`), in chunks of `max_batch_size`. Both give the same probabilities.

        Raises:
            ValueError: unknown domain, user or items.
            ServingError: the RPC failed.
        """
        item_ids = [str(i) for i in item_ids]
        if not item_ids:
            return []
        if (recommender_model is not None and not self.use_examples and all(store.has_item(i) for i in item_ids)
                and self._has_rank(recommender_model)):  # (unknown items: the store's ValueError, before any RPC)
            user = store.features(user_id, domain, cold_start=cold_start)  # an unknown user fails before any RPC
            out = self.run(recommender_model, {**user, RANK_ITEMS_INPUT: np.array([item_ids], dtype=object)},
                           timeout=timeout, signature=RANK_SIGNATURE)
            if bool(np.all(out["known"])):
                return np.reshape(out["probabilities"], [-1]).astype(float).tolist()
            # Items the export's table lacks (a store newer than the export): the ranker, with the store's features.
        step = self.max_batch_size or len(item_ids)
        probabilities = []
        for start in range(0, len(item_ids), step):
            columns = store.features(user_id, domain, item_ids[start:start + step], cold_start=cold_start)
            out = self.run(model, columns, timeout=timeout)
            if "probability" not in out:
                raise ServingError(grpc.StatusCode.INTERNAL,
                                   f"the response lacks output 'probability' (outputs: {sorted(out)})", model)
            probabilities += np.reshape(out["probability"], [-1]).astype(float).tolist()
        return probabilities

    def _has_rank(self, model: str) -> bool:
        """Whether the server has `model` with a `rank` signature."""
        try:
            self.signature_inputs(model, RANK_SIGNATURE)
        except ServingError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def recommender_k(self, model: str = RECOMMENDER) -> Optional[int]:
        """K of a served one-call `recommender` (the candidates it ranks), or None when the server has none."""
        try:
            shape = self.signature_outputs(model).get("item_ids", (None, None))[1]
        except ServingError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return shape[-1] if shape and shape[-1] else None

    def recommend(self, domain: str, user_id: str, store: FeatureStore, n: int = 10, k: int = 100,
                  retrieval_model: str = RETRIEVAL, ranker_model: str = RANKER, cold_start: bool = False,
                  timeout: Optional[float] = None, recommender_model: Optional[str] = RECOMMENDER
                  ) -> List[Tuple[str, float]]:
        """Two-stage recommendation: `k` candidates of retrieval in `domain`, scored by the ranker; the `n`
        most probable (item id, probability), best first (ties: retrieval order).

        One call to `recommender_model` when the server has it and it ranks exactly the `k` candidates
        two calls would (its K, read once from its signature, equals the retrieval's K and `k` is at least
        that: retrieval returns K per row). Otherwise, or with `recommender_model=None`, two calls:
        retrieval, then the ranker on the candidates in one request; candidates the store does not know
        (an index newer than the store) are then dropped with a warning. Both give the same answer.

        Raises:
            ValueError: unknown domain or user, or n < 1.
            ServingError: an RPC failed.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be an integer >= 1. Received: n={n!r}")
        user = store.features(user_id, domain, cold_start=cold_start)  # an unknown user or domain fails before any RPC
        if recommender_model is not None:
            one_k = self.recommender_k(recommender_model)
            if one_k is not None and k >= one_k:
                out = self.run(recommender_model, user, timeout=timeout)
                return _answered(out["item_ids"][0], out["probabilities"][0])[:n]
        found = [item for item, _ in self.candidates(domain, user_id, k, store, model=retrieval_model,
                                                     cold_start=cold_start, timeout=timeout)]
        known = [item for item in found if store.has_item(item)]
        if len(known) < len(found):
            logger.warning("Dropping %d candidate(s) unknown to the feature store: %s", len(found) - len(known),
                           [i for i in found if not store.has_item(i)][:5])
        if not known:
            return []
        probabilities = self.scores(domain, user_id, known, store, model=ranker_model, cold_start=cold_start,
                                    timeout=timeout)
        order = sorted(range(len(known)), key=lambda i: -probabilities[i])  # stable: ties keep retrieval order
        return [(known[i], probabilities[i]) for i in order[:n]]


def _answered(ids: np.ndarray, values: np.ndarray) -> List[Tuple[str, float]]:
    """(item id, value) of one answered row, padding dropped (ids "", non-finite scores)."""
    found = []
    for item, value in zip(ids.tolist(), values.tolist()):
        item = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        if item and math.isfinite(value):
            found.append((item, float(value)))
    return found


def _tensor_infos(infos) -> Dict[str, TensorInfo]:
    """name -> (dtype, shape) of a SignatureDef's `inputs` or `outputs` map (None for unknown sizes)."""
    out = {}
    for name, info in infos.items():
        shape = None if info.tensor_shape.unknown_rank else tuple(
            None if d.size < 0 else d.size for d in info.tensor_shape.dim)
        out[name] = (tf.dtypes.as_dtype(info.dtype), shape)
    return out


def _conform(array: np.ndarray, dtype: tf.DType, shape: Optional[tuple]) -> np.ndarray:
    """`array` in the signature's dtype, with a fixed sequence width met (padding or cutting axis 1)."""
    array = np.asarray(array)
    if dtype == tf.string:
        if array.dtype != object:
            array = array.astype(str).astype(object)
            array = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array) if array.size else array
    elif array.dtype != dtype.as_numpy_dtype:
        array = array.astype(dtype.as_numpy_dtype)
    if shape is None:
        return array
    if len(shape) == array.ndim + 1 and shape[-1] in (1, None):
        array = array[..., None]
    if len(shape) == 2 and array.ndim == 2 and shape[1] is not None and array.shape[1] != shape[1]:
        width = shape[1]
        if array.shape[1] > width:  # sequences are most recent first: keep the front
            array = array[:, :width]
        else:
            pad = np.full((array.shape[0], width - array.shape[1]), b"" if dtype == tf.string else 0,
                          dtype=array.dtype)
            array = np.concatenate([array, pad], axis=1)
    return array


# --------------------------------------------------------------------------------------------------
# Printable tables (`mdr query`, `mdr recommend`)


def format_table(header: Sequence[str], rows: Sequence[Sequence], title: Optional[str] = None) -> str:
    """A plain-text table: left-aligned text, right-aligned numbers (floats with 4 decimals)."""
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) for r in rows) for i in range(len(header))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = ([title] if title else []) + [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in cells] if cells else ["(none)"]
    return "\n".join(out)


def format_candidates(domain: str, user_id: str, candidates: Sequence[Tuple[str, float]],
                      model: str = RETRIEVAL) -> str:
    """The table of `Client.candidates`' answer."""
    return format_table(["rank", "item_id", "score"], [(i + 1, item, s) for i, (item, s) in enumerate(candidates)],
                        title=f"{model} candidates for user {user_id!r} in domain {domain!r}")


def format_scores(domain: str, user_id: str, item_ids: Sequence[str], scores: Sequence[float],
                  model: str = RANKER) -> str:
    """The table of `Client.scores`' answer, in the order the items were given."""
    return format_table(["item_id", "probability"], list(zip(item_ids, [float(s) for s in scores])),
                        title=f"{model} click probabilities for user {user_id!r} in domain {domain!r}")


def format_recommendations(domain: str, user_id: str, recommendations: Sequence[Tuple[str, float]]) -> str:
    """The table of `Client.recommend`'s answer."""
    return format_table(["rank", "item_id", "probability"],
                        [(i + 1, item, p) for i, (item, p) in enumerate(recommendations)],
                        title=f"recommendations for user {user_id!r} in domain {domain!r} (retrieval -> ranker)")
