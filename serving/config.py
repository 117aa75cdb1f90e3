"""TF Serving's configuration files and version folders, as plain dataclasses.

A model server (stock TF Serving or our embedded `serving.server.ModelServer`) is told what to serve by:

- `models.config`: a `ModelServerConfig` text proto (`--model_config_file`), one `config { ... }` per
  model with its name, base path, version policy and version labels:

      model_config_list {
        config {
          name: "ranker"
          base_path: "/models/ranker"
          model_platform: "tensorflow"
          model_version_policy { latest { num_versions: 1 } }
          version_labels { key: "stable" value: 3 }
        }
      }

- the batching parameters file (`--batching_parameters_file`), a `BatchingParameters` text proto:
  `max_batch_size { value: 128 } batch_timeout_micros { value: 1000 } ...`.
- version folders `<base_path>/<version>/` (a SavedModel each). TF Serving polls the base path and
  treats every child whose name is a number as a version; anything else (`.tmp-2` being written,
  `README`) is ignored, which is what makes "write aside, then rename" an atomic publication.
- (ours) `<version>/assets.extra/serving_checks.json`: request constraints a model declares for the
  embedded server (`ServingChecks`; format in `serving.request_checks`). Stock TF Serving ignores
  `assets.extra`.

The dataclasses mirror the protos field for field, so a config written here is read unchanged by TF
Serving and vice versa. Files are written atomically (temporary file, then rename), since a server may
be polling them.

`BatchingParameters` is defined in TF Serving's `session_bundle_config.proto`, which the
`tensorflow-serving-api` wheel does not ship; this module declares the message (fields 1-7, names,
numbers and types as in that proto) in a private descriptor pool, so its text format is exactly TF
Serving's. Fields added in later TF Serving releases are not declared and are rejected when read.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

from mdr_contract import artifacts

# TF Serving's defaults (--file_system_poll_wait_seconds=1 and a latest-1 policy when none is given).
DEFAULT_POLL_SECONDS = 1.0
POLICY_KINDS = ("latest", "specific", "all")


# --------------------------------------------------------------------------------------------------
# Version policy and version folders.


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which of the versions present in a base path are served (`ServableVersionPolicy`).

    Args:
        kind: 'latest' (the `num_versions` largest version numbers), 'specific' (the listed
            `versions` that are present) or 'all' (every version present).
        num_versions: for 'latest', how many.
        versions: for 'specific', the version numbers.
    """

    kind: str = "latest"
    num_versions: int = 1
    versions: Sequence[int] = ()

    def __post_init__(self):
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"`kind` must be one of {POLICY_KINDS}. Received: kind={self.kind!r}")
        if self.kind == "latest" and (not isinstance(self.num_versions, int) or self.num_versions < 1):
            raise ValueError(f"`num_versions` must be an integer >= 1. Received: num_versions={self.num_versions!r}")
        if self.kind == "specific":
            if not self.versions or any(not isinstance(v, int) or v < 0 for v in self.versions):
                raise ValueError("`versions` must be a non-empty list of version numbers >= 0. "
                                 f"Received: versions={self.versions!r}")
        # A tuple keeps the frozen dataclass hashable and equal however `versions` was given.
        object.__setattr__(self, "versions", tuple(sorted(set(self.versions))))

    @classmethod
    def latest(cls, num_versions: int = 1) -> "VersionPolicy":
        return cls(kind="latest", num_versions=num_versions)

    @classmethod
    def specific(cls, versions: Iterable[int]) -> "VersionPolicy":
        return cls(kind="specific", versions=tuple(versions))

    @classmethod
    def all(cls) -> "VersionPolicy":
        return cls(kind="all")

    def select(self, available: Iterable[int]) -> List[int]:
        """The versions to serve among `available` (ascending), as TF Serving chooses them.

        A 'specific' version that is not present is simply not served (TF Serving waits for it to
        appear); 'latest' serves fewer than `num_versions` when fewer exist.
        """
        present = sorted(set(available))
        if self.kind == "latest":
            return present[-self.num_versions:]
        if self.kind == "specific":
            return [v for v in present if v in self.versions]
        return present

    def to_proto(self):
        proto = file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy()
        if self.kind == "latest":
            proto.latest.num_versions = self.num_versions
        elif self.kind == "specific":
            proto.specific.versions.extend(self.versions)
        else:
            proto.all.SetInParent()
        return proto

    @classmethod
    def from_proto(cls, proto) -> "VersionPolicy":
        which = proto.WhichOneof("policy_choice")
        if which is None:
            return cls.latest(1)  # TF Serving's default
        if which == "latest":
            # An unset num_versions (0) means 1 in TF Serving.
            return cls.latest(proto.latest.num_versions or 1)
        if which == "specific":
            return cls.specific(proto.specific.versions)
        return cls.all()


def version_dirs(base_path: str) -> Dict[int, str]:
    """Version number -> version folder, for the children of `base_path` whose name is a number.

    Other children (`.tmp-2` still being written, files, `README`) are ignored, as TF Serving does.
    Local paths use `os`; URLs (`gs://...`) go through `tf.io.gfile`.

    Raises:
        OSError: when `base_path` cannot be listed (missing, not a folder).
    """
    if "://" in base_path:
        import tensorflow as tf

        names = [n.rstrip("/") for n in tf.io.gfile.listdir(base_path)]
        is_dir = tf.io.gfile.isdir
    else:
        names = os.listdir(base_path)
        is_dir = os.path.isdir
    found = {}
    # Sorted so that, should both `7` and `007` exist, the choice does not depend on listing order.
    for name in sorted(names):
        if name.isascii() and name.isdigit() and is_dir(os.path.join(base_path, name)):
            found.setdefault(int(name), os.path.join(base_path, name))
    return found


def list_versions(base_path: str) -> List[int]:
    """The version numbers under `base_path`, ascending (see `version_dirs`)."""
    return sorted(version_dirs(base_path))


# --------------------------------------------------------------------------------------------------
# models.config


@dataclasses.dataclass
class ModelConfig:
    """One model of `models.config` (`ModelConfig` proto).

    Args:
        name: the model name clients put in `model_spec.name`.
        base_path: folder holding the version folders. A relative path is resolved by the server
            (TF Serving: against its working directory; `ModelServer`: against the config's folder).
        version_policy: which versions are served.
        version_labels: label -> version (clients may ask for `model_spec.version_label`).
        model_platform: always 'tensorflow' for SavedModels.
    """

    name: str
    base_path: str
    version_policy: VersionPolicy = dataclasses.field(default_factory=VersionPolicy)
    version_labels: Dict[str, int] = dataclasses.field(default_factory=dict)
    model_platform: str = "tensorflow"

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"`name` must be a non-empty string. Received: name={self.name!r}")
        if not self.base_path:
            raise ValueError(f"`base_path` must be a non-empty path. Received: base_path={self.base_path!r}")
        for label, version in self.version_labels.items():
            if not label or not isinstance(version, int) or version < 0:
                raise ValueError("`version_labels` must map non-empty labels to version numbers >= 0. "
                                 f"Received: version_labels={self.version_labels!r}")


def models_config_to_proto(models: Sequence[ModelConfig]):
    """The `ModelServerConfig` proto of `models`."""
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"Model names must be unique. Received: names={names}")
    proto = model_server_config_pb2.ModelServerConfig()
    for model in models:
        entry = proto.model_config_list.config.add()
        entry.name = model.name
        entry.base_path = model.base_path
        entry.model_platform = model.model_platform
        entry.model_version_policy.CopyFrom(model.version_policy.to_proto())
        for label, version in sorted(model.version_labels.items()):
            entry.version_labels[label] = version
    return proto


def models_config_from_proto(proto) -> List[ModelConfig]:
    """The `ModelConfig`s of a `ModelServerConfig` proto (a `model_config_list` one)."""
    if proto.WhichOneof("config") == "custom_model_config":
        raise ValueError("Only `model_config_list` configs are supported; this one has `custom_model_config`.")
    models = []
    for entry in proto.model_config_list.config:
        models.append(ModelConfig(
            name=entry.name, base_path=entry.base_path,
            version_policy=VersionPolicy.from_proto(entry.model_version_policy),
            version_labels=dict(entry.version_labels),
            model_platform=entry.model_platform or "tensorflow"))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"Model names must be unique. Received: names={names}")
    return models


def models_config_to_text(models: Sequence[ModelConfig]) -> str:
    """`models.config` text (`ModelServerConfig` text proto) for `models`."""
    return text_format.MessageToString(models_config_to_proto(models))


def parse_models_config(text: str) -> List[ModelConfig]:
    """The models of a `models.config` text.

    Raises:
        ValueError: on text that is not a `ModelServerConfig`, or one TF Serving would refuse.
    """
    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as e:
        raise ValueError(f"Not a ModelServerConfig text proto: {e}") from e
    return models_config_from_proto(proto)


def write_models_config(path: str, models: Sequence[ModelConfig]) -> None:
    """Writes `models.config` at `path` atomically."""
    write_atomically(path, models_config_to_text(models))


def read_models_config(path: str) -> List[ModelConfig]:
    """Reads the models of the `models.config` file at `path` (base paths as written)."""
    try:
        return parse_models_config(_read_text(path))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


# --------------------------------------------------------------------------------------------------
# Batching parameters


def _batching_parameters_class():
    """The `tensorflow.serving.BatchingParameters` message class (session_bundle_config.proto)."""
    try:  # the real one, where a TF Serving build ships it
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2

        return session_bundle_config_pb2.BatchingParameters
    except ImportError:
        pass
    # A private pool: declaring the message in the default pool could clash with a later import of
    # the real file.
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="mdr/tensorflow_serving/session_bundle_config_batching.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate([
            ("max_batch_size", ".google.protobuf.Int64Value"),
            ("batch_timeout_micros", ".google.protobuf.Int64Value"),
            ("max_enqueued_batches", ".google.protobuf.Int64Value"),
            ("num_batch_threads", ".google.protobuf.Int64Value"),
            ("thread_pool_name", ".google.protobuf.StringValue"),
            ("allowed_batch_sizes", F.TYPE_INT64),
            ("pad_variable_length_inputs", F.TYPE_BOOL)], start=1):
        field = message.field.add(name=name, number=number, json_name=_camel(name))
        if isinstance(kind, str):
            field.type, field.type_name, field.label = F.TYPE_MESSAGE, kind, F.LABEL_OPTIONAL
        else:
            field.type = kind
            field.label = F.LABEL_REPEATED if name == "allowed_batch_sizes" else F.LABEL_OPTIONAL
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


BatchingParametersProto = _batching_parameters_class()


@dataclasses.dataclass
class BatchingConfig:
    """TF Serving's batching parameters (`BatchingParameters`); None leaves TF Serving's default.

    The embedded server reads `max_batch_size` as the largest batch a request may carry and, with
    `enable_batching`, every field (`serving.batching.BatchScheduler.from_config`).

    Args:
        max_batch_size: the largest batch.
        batch_timeout_micros: how long a partial batch may wait for more requests.
        max_enqueued_batches: the queue length, in batches.
        num_batch_threads: threads processing batches.
        thread_pool_name: name of that thread pool.
        allowed_batch_sizes: batch sizes batches are padded to (increasing, last = max_batch_size).
        pad_variable_length_inputs: whether variable-length inputs are padded when batched.
    """

    max_batch_size: Optional[int] = None
    batch_timeout_micros: Optional[int] = None
    max_enqueued_batches: Optional[int] = None
    num_batch_threads: Optional[int] = None
    thread_pool_name: Optional[str] = None
    allowed_batch_sizes: Sequence[int] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be an integer >= 1 or None. Received: {name}={value!r}")
        if self.batch_timeout_micros is not None and self.batch_timeout_micros < 0:
            raise ValueError("`batch_timeout_micros` must be >= 0 or None. "
                             f"Received: batch_timeout_micros={self.batch_timeout_micros!r}")
        sizes = list(self.allowed_batch_sizes)
        # TF Serving's own requirement (it refuses to start otherwise).
        if sizes and (sizes != sorted(set(sizes)) or
                      (self.max_batch_size is not None and sizes[-1] != self.max_batch_size)):
            raise ValueError("`allowed_batch_sizes` must be increasing and end with `max_batch_size`. "
                             f"Received: allowed_batch_sizes={sizes}, max_batch_size={self.max_batch_size}")
        self.allowed_batch_sizes = tuple(sizes)

    def to_proto(self):
        proto = BatchingParametersProto()
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                     "thread_pool_name"):
            if getattr(self, name) is not None:
                getattr(proto, name).value = getattr(self, name)
        proto.allowed_batch_sizes.extend(self.allowed_batch_sizes)
        proto.pad_variable_length_inputs = self.pad_variable_length_inputs
        return proto

    @classmethod
    def from_proto(cls, proto) -> "BatchingConfig":
        values = {name: getattr(proto, name).value if proto.HasField(name) else None
                  for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                               "num_batch_threads", "thread_pool_name")}
        return cls(allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
                   pad_variable_length_inputs=proto.pad_variable_length_inputs, **values)


def batching_config_to_text(config: BatchingConfig) -> str:
    """The batching parameters file text (`BatchingParameters` text proto)."""
    return text_format.MessageToString(config.to_proto())


def parse_batching_config(text: str) -> BatchingConfig:
    """The `BatchingConfig` of a batching parameters text.

    Raises:
        ValueError: on text that is not a `BatchingParameters` text proto.
    """
    proto = BatchingParametersProto()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as e:
        raise ValueError(f"Not a BatchingParameters text proto: {e}") from e
    return BatchingConfig.from_proto(proto)


def write_batching_config(path: str, config: BatchingConfig) -> None:
    """Writes the batching parameters file at `path` atomically."""
    write_atomically(path, batching_config_to_text(config))


def read_batching_config(path: str) -> BatchingConfig:
    """Reads the batching parameters file at `path`."""
    try:
        return parse_batching_config(_read_text(path))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


# --------------------------------------------------------------------------------------------------
# serving_checks.json (ours; format documented in serving.request_checks)


@dataclasses.dataclass
class ServingChecks:
    """Request constraints a model version declares in `assets.extra/serving_checks.json`.

    Args:
        allowed_values: input name -> the values it may hold (strings for string inputs, numbers
            for numeric ones), e.g. `{"domain": ["d0", "d1"]}`.
        max_length: input name -> the largest size of its axis 1 (the sequence axis after the
            batch axis), e.g. `{"hist_item_id": 50}`.
        max_batch_size: the largest batch (axis 0) a request may carry, or None.
        reject_non_finite: whether NaN, +Inf and -Inf in float inputs are refused (a file without
            the key: True).
    """

    allowed_values: Dict[str, List] = dataclasses.field(default_factory=dict)
    max_length: Dict[str, int] = dataclasses.field(default_factory=dict)
    max_batch_size: Optional[int] = None
    reject_non_finite: bool = True

    def __post_init__(self):
        for name, values in self.allowed_values.items():
            if not isinstance(values, (list, tuple)) or not values or not all(
                    isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError("`allowed_values` must map input names to non-empty lists of strings or numbers. "
                                 f"Received: allowed_values[{name!r}]={values!r}")
        for name, length in self.max_length.items():
            if not isinstance(length, int) or isinstance(length, bool) or length < 1:
                raise ValueError("`max_length` must map input names to integers >= 1. "
                                 f"Received: max_length[{name!r}]={length!r}")
        if self.max_batch_size is not None and (not isinstance(self.max_batch_size, int) or self.max_batch_size < 1):
            raise ValueError(f"`max_batch_size` must be an integer >= 1 or None. "
                             f"Received: max_batch_size={self.max_batch_size!r}")
        if not isinstance(self.reject_non_finite, bool):
            raise ValueError("`reject_non_finite` must be true or false. "
                             f"Received: reject_non_finite={self.reject_non_finite!r}")

    def to_json(self) -> dict:
        out = {"allowed_values": {k: list(v) for k, v in self.allowed_values.items()},
               "max_length": dict(self.max_length), "reject_non_finite": self.reject_non_finite}
        if self.max_batch_size is not None:
            out["max_batch_size"] = self.max_batch_size
        return out

    @classmethod
    def from_json(cls, data: dict) -> "ServingChecks":
        if not isinstance(data, dict):
            raise ValueError(f"serving checks must be a JSON object. Received: {data!r}")
        unknown = sorted(set(data) - {"allowed_values", "max_length", "max_batch_size", "reject_non_finite"})
        if unknown:
            raise ValueError(f"Unknown serving check keys {unknown}; known: allowed_values, max_length, "
                             "max_batch_size, reject_non_finite")
        # Exports written before `reject_non_finite` existed get the default: refused.
        return cls(allowed_values=dict(data.get("allowed_values", {})), max_length=dict(data.get("max_length", {})),
                   max_batch_size=data.get("max_batch_size"), reject_non_finite=data.get("reject_non_finite", True))


def write_serving_checks(version_dir: str, checks: ServingChecks) -> None:
    """Writes `checks` to `<version_dir>/assets.extra/serving_checks.json`."""
    path = os.path.join(version_dir, artifacts.SERVING_CHECKS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomically(path, json.dumps(checks.to_json(), indent=2, sort_keys=True) + "\n")


def read_serving_checks(version_dir: str) -> Optional[ServingChecks]:
    """The checks a version folder declares, or None when it has no `serving_checks.json`.

    Raises:
        ValueError: on a file that is not valid JSON or not of the format.
    """
    path = os.path.join(version_dir, artifacts.SERVING_CHECKS)
    try:
        text = _read_text(path)
    except FileNotFoundError:
        return None
    try:
        return ServingChecks.from_json(json.loads(text))
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: {e}") from e


# --------------------------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    if "://" in path:
        import tensorflow as tf

        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(path)
        with tf.io.gfile.GFile(path, "r") as f:
            return f.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_atomically(path: str, data) -> None:
    """Writes `data` (str or bytes) to `path` so a reader sees the old file or the new one, never half
    of one; the file is world-readable (0644) like a plain write, so a server of another user can read it."""
    binary = isinstance(data, bytes)
    if "://" in path:  # object stores replace objects atomically anyway
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "wb" if binary else "w") as f:
            f.write(data)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=artifacts.EXPORT_TMP_PREFIX, suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
