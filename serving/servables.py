"""Servable loading: SavedModel versions read with their signatures and checks, and version polling.

- A version is a SavedModel folder `<base_path>/<version>/` (`serving.config.version_dirs`: numeric
  names only, so `.tmp-2` being written is never loaded). `load_servable` reads its SignatureDefs from
  the MetaGraphDef (what GetModelMetadata returns, as TF Serving does), its
  `assets.extra/serving_checks.json` (`serving.config.ServingChecks`), and loads it with
  `tf.saved_model.load`, importing `scann` first when the graph holds ScaNN ops.
- `ServedModel.sync` brings a configured model in line with its version folders, as TF Serving's
  file system poller does. Availability-preserving, as TF Serving's default policy: a new version is
  loaded first, and the versions the policy drops are unloaded only once some wanted version is
  loaded, so requests never find the model missing. A version that fails to load is reported in the
  status (END with the error) and retried when its folder changes; the old version keeps serving
  meanwhile. Readers take a snapshot of the loaded versions (a dict replaced whole, never mutated), so
  requests need no lock.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2

from mdr_contract import artifacts
from serving import config as cfg

logger = logging.getLogger(__name__)

_State = get_model_status_pb2.ModelVersionStatus.State
# Long TensorFlow messages carry graph dumps; clients need the first lines only.
MAX_ERROR_CHARS = 2000


def shape_str(shape) -> str:
    """`[?, 1]`: a shape as the server's messages write it (`?` for a dimension of any size)."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


@dataclasses.dataclass(frozen=True)
class TensorSignature:
    """A dense tensor of a signature: dtype and shape (None: unknown rank; a None dim: any size)."""

    dtype: tf.DType
    shape: Optional[Tuple[Optional[int], ...]]

    @classmethod
    def from_tensor_info(cls, info: meta_graph_pb2.TensorInfo) -> "TensorSignature":
        shape = None if info.tensor_shape.unknown_rank else tuple(
            None if d.size < 0 else d.size for d in info.tensor_shape.dim)
        return cls(dtype=tf.dtypes.as_dtype(info.dtype), shape=shape)

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.dtype.name} of any shape"
        return f"{self.dtype.name} of shape {shape_str(self.shape)}"


@dataclasses.dataclass
class Signature:
    """One callable signature of a loaded version.

    Args:
        name: the signature key.
        function: the loaded concrete function (called with the inputs as keyword arguments).
        inputs, outputs: name -> TensorSignature.
        unsupported: why the server cannot call it (sparse or composite tensors), or None.
    """

    name: str
    function: Callable
    inputs: Dict[str, TensorSignature]
    outputs: Dict[str, TensorSignature]
    unsupported: Optional[str] = None


@dataclasses.dataclass
class Servable:
    """One loaded version of a model.

    Args:
        name, version, path: model name, version number and version folder.
        signatures: signature key -> Signature (the callable ones).
        signature_defs: the MetaGraphDef's SignatureDef map (what GetModelMetadata returns).
        checks: the version's `serving_checks.json`, or None.
        loaded: the object from `tf.saved_model.load` (kept alive while the version is served).
    """

    name: str
    version: int
    path: str
    signatures: Dict[str, Signature]
    signature_defs: Dict[str, meta_graph_pb2.SignatureDef]
    checks: Optional[cfg.ServingChecks]
    loaded: object = None


def read_signature_defs(path: str) -> Dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the `serve` MetaGraphDef of the SavedModel at `path`."""
    saved_model = saved_model_pb2.SavedModel()
    pb, pbtxt = os.path.join(path, artifacts.SAVED_MODEL_PB), os.path.join(path, artifacts.SAVED_MODEL_PBTXT)
    if tf.io.gfile.exists(pb):
        with tf.io.gfile.GFile(pb, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        with tf.io.gfile.GFile(pbtxt, "r") as f:
            text_format.Parse(f.read(), saved_model)
    graphs = [g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags] or list(saved_model.meta_graphs)
    if not graphs:
        raise ValueError(f"{path}: the SavedModel has no MetaGraphDef")
    return dict(graphs[0].signature_def)


def _uses_scann(path: str) -> bool:
    """Whether the SavedModel's graph holds ScaNN ops (their op names start with 'Scann')."""
    with tf.io.gfile.GFile(os.path.join(path, artifacts.SAVED_MODEL_PB), "rb") as f:
        return b"Scann" in f.read()


def load_servable(name: str, version: int, path: str) -> Servable:
    """Loads the SavedModel version at `path` with its signatures and serving checks.

    Raises:
        ValueError / OSError / tf.errors.OpError: when the version cannot be loaded.
    """
    # Read the small files first, so a malformed checks file fails before the (slower) model load.
    checks = cfg.read_serving_checks(path)
    signature_defs = read_signature_defs(path)
    if _uses_scann(path):
        import scann  # noqa: F401  registers the Scann* ops the graph holds (retrieval_scann)
    loaded = tf.saved_model.load(path, tags=["serve"])
    signatures = {}
    for key, function in loaded.signatures.items():
        sig_def = signature_defs.get(key)
        if sig_def is None:
            continue
        infos = list(sig_def.inputs.items()) + list(sig_def.outputs.items())
        composite = sorted(k for k, info in infos if info.WhichOneof("encoding") != "name")
        signatures[key] = Signature(
            name=key, function=function,
            inputs={k: TensorSignature.from_tensor_info(i) for k, i in sig_def.inputs.items()},
            outputs={k: TensorSignature.from_tensor_info(i) for k, i in sig_def.outputs.items()},
            unsupported=f"sparse or composite tensors {composite} are not supported" if composite else None)
    if checks is not None:
        known = {k for s in signatures.values() for k in s.inputs}
        for key in sorted((set(checks.allowed_values) | set(checks.max_length)) - known):
            logger.warning("%s version %d: %s names %r, an input of no signature", name, version,
                           os.path.basename(artifacts.SERVING_CHECKS), key)
    return Servable(name=name, version=version, path=path, signatures=signatures,
                    signature_defs=signature_defs, checks=checks, loaded=loaded)


class ServedModel:
    """A configured model: its loaded versions and the status of every version seen.

    Args:
        config: the model's `models.config` entry.
        base_path: its base path, resolved (the config's may be relative).
    """

    def __init__(self, config: cfg.ModelConfig, base_path: str):
        self.config = config
        self.base_path = base_path
        # Replaced whole on every change, never mutated: a request's snapshot stays consistent.
        self.servables: Dict[int, Servable] = {}
        self.status: Dict[int, Tuple[int, int, str]] = {}  # version -> (state, tf error code, message)
        self.failed: Dict[int, Optional[float]] = {}  # version -> folder mtime when its load failed
        self.list_error: Optional[str] = None

    def sync(self) -> List[str]:
        """Loads the versions the policy wants and unloads the others (see the module docstring);
        returns the load errors. Callers serialize calls (one poll at a time)."""
        name = self.config.name
        try:
            dirs = cfg.version_dirs(self.base_path)
        except OSError as e:
            # Keep serving what is loaded: an unreadable base path is not a request to unload.
            message = f"cannot list base path {self.base_path} of model {name!r}: {e}"
            if self.list_error != message:
                logger.warning("%s", message)
            self.list_error = message
            return []
        self.list_error = None
        wanted = self.config.version_policy.select(dirs)
        if not dirs and self.servables:
            logger.warning("No versions of model %r under %s any more: unloading (as TF Serving does)",
                           name, self.base_path)
        errors = []
        for version in wanted:
            if version in self.servables:
                continue
            path = dirs[version]
            mtime = _mtime(path)
            if version in self.failed and self.failed[version] == mtime:
                continue  # unchanged since it failed; retried once the folder changes
            self.status[version] = (_State.LOADING, 0, "")
            started = time.monotonic()
            try:
                servable = load_servable(name, version, path)
            except Exception as e:
                message = f"model {name!r} version {version} ({path}) failed to load: {type(e).__name__}: {e}"
                logger.error("%s", message)
                self.failed[version] = mtime
                self.status[version] = (_State.END, getattr(e, "error_code", 2) or 2, message[:MAX_ERROR_CHARS])
                errors.append(message)
                continue
            self.servables = {**self.servables, version: servable}
            self.failed.pop(version, None)
            self.status[version] = (_State.AVAILABLE, 0, "")
            logger.info("Loaded model %r version %d in %.2f s", name, version, time.monotonic() - started)
        # Availability-preserving: drop versions only once a wanted one serves (or none is wanted).
        stale = sorted(set(self.servables) - set(wanted))
        if stale and (not wanted or any(v in self.servables for v in wanted)):
            self.servables = {v: s for v, s in self.servables.items() if v in wanted}
            for version in stale:
                self.status[version] = (_State.END, 0, "")
                logger.info("Unloaded model %r version %d", name, version)
        return errors


def _mtime(path: str) -> Optional[float]:
    try:
        return os.stat(path).st_mtime if "://" not in path else None
    except OSError:
        return None
