"""Client of the model servers: raw features at query time, gRPC calls, two-stage recommendation.

Two pieces:

- `FeatureStore`: where the raw features of a (user, domain) and of an (item, domain) come from at
  query time. Production would read them from a feature store kept current by the event stream; here
  the store is built from `mdr preprocess`'s output (`FeatureStore.from_data_dir`) and saved as a
  small JSON-lines file (`save` / `load`).
- `Client`: TF Serving's stock `PredictionServiceStub` over one gRPC channel. `predict` is the raw
  call; `candidates` (retrieval in a domain), `scores` (the ranker over given items) and `recommend`
  (candidates, then the ranker over them in one request, top N) build the request tensors from the
  store. Works against stock TF Serving and the embedded `serving.server.ModelServer` alike.

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

import gzip
import json
import logging
import math
import os
import threading
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from mdr_keras import feature_spec as fs
from serving.config import write_atomically

logger = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
EXAMPLES_SIGNATURE = "examples"
EXAMPLES_INPUT = "examples"
RETRIEVAL = "retrieval"
RANKER = "ranker"
DEFAULT_TIMEOUT = 5.0
DEFAULT_MESSAGE_BYTES = 64 * 1024 * 1024  # the embedded server's default
STORE_FORMAT = "mdr-feature-store"
STORE_VERSION = 1
_SPLIT_RANK = {"train": 0, "eval": 1, "test": 2}  # on equal timestamps, a later split's record is the later one


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
# Feature store


class FeatureStore:
    """Raw features of users and items per domain, as the models read them at query time.

    Contents, from the records of `mdr preprocess` (see `from_data_dir`):

    - per user: the user features (`user_id` and the other `user`-role features) and the behaviour
      sequence (`hist_*`, `hist_len`). The sequence is the user's across all domains (`hist_domain`
      says where each event happened), so it comes from the user's latest record in any domain.
    - per (user, domain): the user domain statistics (`user_domain_*`; training-window values, the
      same on every record of the user in that domain).
    - per item: the item features; per (item, domain): the item domain statistics.
    - per domain: the CTR prior, the value the job gives `*_ctr` when there is no event.

    Fallbacks (what the job itself would write for a first event there):

    - user known, but never seen in `domain`: the user's features and cross-domain behaviour sequence,
      with empty domain statistics (0 events, 0 clicks, CTR = the domain's prior). The sequence is
      kept rather than emptied: the job's record of a user's first event in a new domain carries the
      user's whole cross-domain history too, so this is what the models were trained on.
    - user unknown: `ValueError`, unless `cold_start=True`: the given `user_id` (the model maps it to
      its OOV bucket), "" (padding) for the other categorical features, the median over users for
      numeric ones, an empty sequence and empty domain statistics.
    - item known, but not listed in `domain`: its features with empty item domain statistics.
    - item unknown, or a domain not in the spec: `ValueError`.

    Args:
        spec: the feature spec of the data (names, kinds, domains, T).
        users: user id -> {feature: raw value} with the user features and the sequence features.
        user_domain_stats: (user id, domain) -> {user domain statistic: value}.
        items: item id -> {item feature: raw value}.
        item_domain_stats: (item id, domain) -> {item domain statistic: value}.
        domain_priors: domain -> CTR prior (missing domains: 0.0, as the job does).
        user_defaults: the cold-start user features (default: "" for categorical features, the median
            over `users` for numeric ones, an empty sequence).

    Raw values: str for categorical features, list of str for categorical lists and sequences (padded
    with "" to their length), float for numeric and int for int features.
    """

    def __init__(self, spec: fs.FeatureSpec, users: Mapping[str, Mapping],
                 user_domain_stats: Mapping[Tuple[str, str], Mapping], items: Mapping[str, Mapping],
                 item_domain_stats: Mapping[Tuple[str, str], Mapping],
                 domain_priors: Optional[Mapping[str, float]] = None, user_defaults: Optional[Mapping] = None):
        self.spec = spec
        self.user_names = [f.name for f in spec.by_role(fs.ROLE_USER)]
        self.user_stat_names = [f.name for f in spec.by_role(fs.ROLE_USER_DOMAIN_STAT)]
        self.sequence_names = [f.name for f in spec.by_role(fs.ROLE_SEQUENCE)]
        self.item_names = [f.name for f in spec.by_role(fs.ROLE_ITEM)]
        self.item_stat_names = [f.name for f in spec.by_role(fs.ROLE_ITEM_DOMAIN_STAT)]
        unknown = sorted(set(domain_priors or {}) - set(spec.domains))
        if unknown:
            raise ValueError(f"`domain_priors` names domains {unknown} not in the spec's {spec.domains}")
        for (_, domain) in list(user_domain_stats) + list(item_domain_stats):
            if domain not in spec.domains:
                raise ValueError(f"Domain statistics for domain {domain!r}, not in the spec's {spec.domains}")
        self._users = {str(k): dict(v) for k, v in users.items()}
        self._user_stats = {(str(u), str(d)): dict(v) for (u, d), v in user_domain_stats.items()}
        self._items = {str(k): dict(v) for k, v in items.items()}
        self._item_stats = {(str(i), str(d)): dict(v) for (i, d), v in item_domain_stats.items()}
        self.domain_priors = {d: float((domain_priors or {}).get(d, 0.0)) for d in spec.domains}
        self.user_defaults = dict(user_defaults) if user_defaults is not None else self._default_user()
        for name, group in (("users", self._users), ("items", self._items)):
            wanted = self.user_names + self.sequence_names if name == "users" else self.item_names
            for key, values in group.items():
                missing = sorted(set(wanted) - set(values))
                if missing:
                    raise ValueError(f"{name}[{key!r}] lacks features {missing}")
                break  # one row is enough to catch a wrong layout
        self._user_domains: Dict[str, List[str]] = {}
        for (u, d) in self._user_stats:
            self._user_domains.setdefault(u, []).append(d)
        self._domain_items: Dict[str, List[str]] = {d: [] for d in spec.domains}
        for (i, d) in self._item_stats:
            self._domain_items[d].append(i)

    # -- building -----------------------------------------------------------------------------------

    @classmethod
    def from_data_dir(cls, data_dir: str, splits: Sequence[str] = ("train", "eval"), include_latest_events: bool = True,
                      batch_size: int = 4096) -> "FeatureStore":
        """The store of a finished `mdr preprocess` output.

        - Users: from the records of `splits`, the latest record (by timestamp; on equal timestamps
          the later split, then the longer history) of each user gives the user features and the
          behaviour sequence; the user's `train` records per domain give its domain statistics
          (counted as the job counts them, `fs.domain_stat_values`).
          A record's sequence holds the events strictly before it; with `include_latest_events`
          the events of the user's latest timestamp are put in front of it (those the job puts in
          sequences: clicks, or every event with `--sequence-events all`, per `metadata.json`), so
          the sequence is the user's as of after the last logged event, as at query time. Needs
          timestamps (`spec.has_timestamp`); without them the latest record's sequence is kept.
        - Domain CTR priors: clicks / events of the `train` records per domain (the job's prior).
        - Items: the `items` split (one record per item and domain).

        Args:
            data_dir: output folder of `mdr preprocess`.
            splits: interaction splits to read users from (the test split is held out by default).
            include_latest_events: put the latest events in front of the latest record's sequence.
            batch_size: records per parsed batch.

        Raises:
            FileNotFoundError: without a complete preprocessing output, or with no record in `splits`.
        """
        from mdr_keras import data

        if not tf.io.gfile.exists(os.path.join(data_dir, "_SUCCESS")):
            raise FileNotFoundError(f"{data_dir} holds no complete preprocessing output (no _SUCCESS); "
                                    "run `mdr preprocess` to completion first")
        spec = fs.FeatureSpec.load(data_dir)
        job = _job_config(data_dir)
        sequence_events = job.get("sequence_events", "positive")
        min_stat_events = job.get("min_stat_events", 1)  # outputs written before the rule had none
        user_names = [f.name for f in spec.by_role(fs.ROLE_USER)]
        seq_names = [f.name for f in spec.by_role(fs.ROLE_SEQUENCE)]
        category = spec[fs.HIST_CATEGORY].vocab_from if fs.HIST_CATEGORY in spec else None
        names = set(user_names + seq_names + [fs.DOMAIN, fs.ITEM_ID, fs.LABEL, fs.TIMESTAMP])
        if category:
            names.add(category)
        T = spec.sequence_length

        latest_user: Dict[str, tuple] = {}    # user -> (key, record)
        user_counts: Dict[tuple, List[int]] = {}  # (user, domain) -> [train events, clicks]
        last_events: Dict[str, tuple] = {}    # user -> (timestamp, [(item, category, domain, label)])
        train_counts: Dict[str, List[int]] = {d: [0, 0] for d in spec.domains}
        read = 0
        for split in splits:
            if not tf.io.gfile.glob(os.path.join(data_dir, split, "*.tfrecord.gz")):
                continue
            for batch in data.make_dataset(data_dir, split, batch_size, spec=spec, names=sorted(names)):
                for row in _rows(batch, spec):
                    read += 1
                    user, domain, ts = row[fs.USER_ID], row[fs.DOMAIN], row[fs.TIMESTAMP]
                    key = (ts, _SPLIT_RANK.get(split, 0), row[fs.HIST_LENGTH] if fs.HIST_LENGTH in row else 0)
                    # Counted here, with the job's formula below: the values every record of the key carries.
                    stats = user_counts.setdefault((user, domain), [0, 0])
                    if split == "train":
                        for counts in (train_counts.setdefault(domain, [0, 0]), stats):
                            counts[0] += 1
                            counts[1] += row[fs.LABEL]
                    if user not in latest_user or key >= latest_user[user][0]:
                        latest_user[user] = (key, {n: row[n] for n in user_names + seq_names})
                    event = (row[fs.ITEM_ID], row[category] if category else fs.PAD, domain, row[fs.LABEL])
                    seen = last_events.get(user)
                    if seen is None or ts > seen[0]:
                        last_events[user] = (ts, [event])
                    elif ts == seen[0]:
                        seen[1].append(event)
        if not read:
            raise FileNotFoundError(f"no records of splits {list(splits)} in {data_dir}")

        users = {}
        for user, (_, record) in latest_user.items():
            if include_latest_events and spec.has_timestamp and fs.HIST_ITEM_ID in record:
                new = [e for e in reversed(last_events[user][1]) if e[3] == 1 or sequence_events == "all"]
                if new:
                    record = _prepend_events(record, new, T)
            users[user] = record
        priors = {d: (c[1] / c[0] if c[0] else 0.0) for d, c in train_counts.items() if d in spec.domains}

        item_names = [f.name for f in spec.by_role(fs.ROLE_ITEM)]
        item_stat_names = [f.name for f in spec.by_role(fs.ROLE_ITEM_DOMAIN_STAT)]
        items, item_stats = {}, {}
        if tf.io.gfile.glob(os.path.join(data_dir, data.ITEMS, "*.tfrecord.gz")):
            for batch in data.make_dataset(data_dir, data.ITEMS, batch_size, spec=spec,
                                           names=item_names + item_stat_names + [fs.DOMAIN]):
                for row in _rows(batch, spec):
                    items.setdefault(row[fs.ITEM_ID], {n: row[n] for n in item_names})
                    item_stats.setdefault((row[fs.ITEM_ID], row[fs.DOMAIN]), {n: row[n] for n in item_stat_names})
        user_stats = {(u, d): fs.domain_stat_values(fs.USER_DOMAIN_STATS, n, clicks, priors.get(d, 0.0),
                                                    min_stat_events)
                      for (u, d), (n, clicks) in user_counts.items()}
        return cls(spec, users, user_stats, items, item_stats, priors)

    def _default_user(self) -> dict:
        """Cold-start user features: "" for categorical ones, the median over users for numeric ones."""
        out = {}
        for name in self.user_names + self.sequence_names:
            f = self.spec[name]
            if f.kind == fs.KIND_NUMERIC:
                values = [u[name] for u in self._users.values()]
                out[name] = float(np.median(values)) if values else 0.0
            elif f.kind == fs.KIND_INT:
                out[name] = 0
            elif f.is_list:
                out[name] = [fs.PAD] * f.length
            else:
                out[name] = fs.PAD
        return out

    # -- queries ------------------------------------------------------------------------------------

    @property
    def domains(self) -> List[str]:
        return list(self.spec.domains)

    def user_ids(self, domain: Optional[str] = None) -> List[str]:
        """The known users (in `domain`: those with statistics there), sorted."""
        if domain is None:
            return sorted(self._users)
        self._check_domain(domain)
        return sorted(u for (u, d) in self._user_stats if d == domain)

    def item_ids(self, domain: Optional[str] = None) -> List[str]:
        """The known items (in `domain`: those listed there), sorted."""
        if domain is None:
            return sorted(self._items)
        self._check_domain(domain)
        return sorted(self._domain_items[domain])

    def has_user(self, user_id: str, domain: Optional[str] = None) -> bool:
        return user_id in self._users if domain is None else (user_id, domain) in self._user_stats

    def has_item(self, item_id: str, domain: Optional[str] = None) -> bool:
        return item_id in self._items if domain is None else (item_id, domain) in self._item_stats

    def user_features(self, user_id: str, domain: str, cold_start: bool = False) -> Dict[str, object]:
        """The raw user-side features of `user_id` querying in `domain` (fallbacks: see the class).

        Returns:
            {feature: raw value}: the user features, the user domain statistics, `domain` and the
            sequence features.

        Raises:
            ValueError: for a domain not in the spec, or an unknown user without `cold_start`.
        """
        self._check_domain(domain)
        base = self._users.get(user_id)
        if base is None:
            if not cold_start:
                raise ValueError(f"Unknown user {user_id!r}: not in the feature store ({len(self._users)} users); "
                                 "pass cold_start=True to query with default features")
            base = {**self.user_defaults, fs.USER_ID: user_id}
        stats = self._user_stats.get((user_id, domain))
        if stats is None:
            stats = self._empty_stats(self.user_stat_names, domain)
        out = {k: list(v) if isinstance(v, list) else v for k, v in base.items()}
        out.update(stats)
        out[fs.DOMAIN] = domain
        return out

    def item_features(self, item_ids: Sequence[str], domain: str) -> Dict[str, list]:
        """Columns of raw item-side features of `item_ids` in `domain` (fallbacks: see the class).

        Returns:
            {feature: [value per item]}: the item features, the item domain statistics and `domain`.

        Raises:
            ValueError: for a domain not in the spec or unknown items.
        """
        self._check_domain(domain)
        item_ids = [str(i) for i in item_ids]
        unknown = [i for i in item_ids if i not in self._items]
        if unknown:
            raise ValueError(f"Unknown item(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
                             f"({len(unknown)} of {len(item_ids)}): not in the feature store")
        empty = self._empty_stats(self.item_stat_names, domain)
        rows = [{**self._items[i], **self._item_stats.get((i, domain), empty)} for i in item_ids]
        out = {n: [r[n] for r in rows] for n in self.item_names + self.item_stat_names}
        out[fs.DOMAIN] = [domain] * len(item_ids)
        return out

    def features(self, user_id: str, domain: str, item_ids: Optional[Sequence[str]] = None,
                 cold_start: bool = False) -> Dict[str, np.ndarray]:
        """Request arrays: the user's features replicated once per item of `item_ids` (one row without).

        Returns:
            {feature: array [B] or [B, L]}: bytes (object) for categorical features and sequences,
            float32 for numeric and int64 for int features.
        """
        user = self.user_features(user_id, domain, cold_start=cold_start)
        rows = 1 if item_ids is None else len(item_ids)
        columns = {k: [v] * rows for k, v in user.items()}
        if item_ids is not None:
            columns.update(self.item_features(item_ids, domain))
        return {k: to_array(self.spec[k], v) for k, v in columns.items()}

    def _check_domain(self, domain: str) -> None:
        if domain not in self.spec.domains:
            raise ValueError(f"Unknown domain {domain!r}; domains: {self.spec.domains}")

    def _empty_stats(self, names: Sequence[str], domain: str) -> Dict[str, float]:
        # What the job writes with no training event: counts 0, CTR = the domain's prior.
        return {n: self.domain_priors[domain] if n.endswith("_ctr") else 0.0 for n in names}

    # -- persistence --------------------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Writes the store as JSON lines (gzip when `path` ends with .gz), atomically."""
        lines = [{"kind": "header", "format": STORE_FORMAT, "version": STORE_VERSION, "spec": self.spec.to_json(),
                  "domain_priors": self.domain_priors, "user_defaults": self.user_defaults}]
        lines += [{"kind": "user", "id": u, "features": v} for u, v in sorted(self._users.items())]
        lines += [{"kind": "user_stats", "user": u, "domain": d, "stats": v}
                  for (u, d), v in sorted(self._user_stats.items())]
        lines += [{"kind": "item", "id": i, "features": v} for i, v in sorted(self._items.items())]
        lines += [{"kind": "item_stats", "item": i, "domain": d, "stats": v}
                  for (i, d), v in sorted(self._item_stats.items())]
        data = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode("utf-8")
        if path.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        write_atomically(path, data)

    @classmethod
    def load(cls, path: str) -> "FeatureStore":
        """Reads a store written by `save`.

        Raises:
            ValueError: on a file that is not a feature store of this version.
        """
        with open(path, "rb") as f:
            data = f.read()
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        users, user_stats, items, item_stats, header = {}, {}, {}, {}, None
        for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                kind = obj["kind"]
                if kind == "header":
                    header = obj
                elif kind == "user":
                    users[obj["id"]] = obj["features"]
                elif kind == "user_stats":
                    user_stats[(obj["user"], obj["domain"])] = obj["stats"]
                elif kind == "item":
                    items[obj["id"]] = obj["features"]
                elif kind == "item_stats":
                    item_stats[(obj["item"], obj["domain"])] = obj["stats"]
                else:
                    raise ValueError(f"unknown kind {kind!r}")
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: not a feature store line: {e}") from e
        if header is None or header.get("format") != STORE_FORMAT or header.get("version") != STORE_VERSION:
            raise ValueError(f"{path}: not a feature store of format {STORE_FORMAT!r} version {STORE_VERSION}")
        return cls(fs.FeatureSpec.from_json(header["spec"]), users, user_stats, items, item_stats,
                   domain_priors=header["domain_priors"], user_defaults=header["user_defaults"])

    def __repr__(self) -> str:
        return (f"FeatureStore({len(self._users)} users, {len(self._items)} items, "
                f"domains {self.spec.domains})")


def _job_config(data_dir: str) -> dict:
    """The preprocessing job's config (metadata.json), {} when unreadable."""
    try:
        with tf.io.gfile.GFile(os.path.join(data_dir, "metadata.json"), "r") as f:
            return json.load(f).get("config", {})
    except (tf.errors.NotFoundError, ValueError):
        return {}


def _rows(batch: Mapping[str, tf.Tensor], spec: fs.FeatureSpec) -> Iterable[dict]:
    """Python rows (str, list of str, float, int) of a parsed batch."""
    columns = {}
    for name, tensor in batch.items():
        array = tensor.numpy()
        if array.dtype == object:
            columns[name] = [[v.decode("utf-8") for v in row] if array.ndim > 1 else row.decode("utf-8")
                             for row in array]
        else:
            columns[name] = array.tolist()
    n = len(next(iter(columns.values()))) if columns else 0
    for i in range(n):
        yield {k: v[i] for k, v in columns.items()}


def _prepend_events(record: dict, events: List[tuple], T: int) -> dict:
    """`record` with `events` (most recent first) in front of its sequence, cut to T."""
    record = dict(record)
    old_len = record.get(fs.HIST_LENGTH, T)
    for name, pos in ((fs.HIST_ITEM_ID, 0), (fs.HIST_CATEGORY, 1), (fs.HIST_DOMAIN, 2)):
        if name in record:
            real = record[name][:old_len]
            values = ([e[pos] for e in events] + real)[:T]
            record[name] = values + [fs.PAD] * (T - len(values))
    if fs.HIST_LENGTH in record:
        record[fs.HIST_LENGTH] = min(T, old_len + len(events))
    return record


def to_array(feature: fs.Feature, values: Sequence) -> np.ndarray:
    """The request array of raw `values` of `feature` (one per row): bytes, float32 or int64."""
    if feature.kind == fs.KIND_NUMERIC:
        return np.asarray(values, dtype=np.float32)
    if feature.kind == fs.KIND_INT:
        return np.asarray(values, dtype=np.int64)
    encode = (lambda v: v if isinstance(v, bytes) else str(v).encode("utf-8"))
    if feature.is_list:
        out = np.empty((len(values), feature.length), dtype=object)
        for i, row in enumerate(values):
            row = list(row)[:feature.length]
            out[i] = [encode(v) for v in row] + [b""] * (feature.length - len(row))
        return out
    out = np.empty(len(values), dtype=object)
    out[:] = [encode(v) for v in values]
    return out


def to_examples(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Serialized `tf.train.Example`s, one per row of `columns` (arrays as `FeatureStore.features` gives)."""
    n = len(next(iter(columns.values()))) if columns else 0
    out = np.empty(n, dtype=object)
    for i in range(n):
        feature = {}
        for name, array in columns.items():
            value = np.atleast_1d(array[i])
            if array.dtype == object:
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=list(value)))
            elif np.issubdtype(array.dtype, np.floating):
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value.tolist()))
            else:
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value.tolist()))
        out[i] = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    return out


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
        self._signatures: Dict[tuple, Dict[str, TensorInfo]] = {}
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

    def predict(self, model: str, inputs: Mapping[str, np.ndarray], signature: str = DEFAULT_SIGNATURE,
                version: Optional[int] = None, output_filter: Sequence[str] = (),
                timeout: Optional[float] = None) -> Dict[str, np.ndarray]:
        """One `Predict` RPC.

        Args:
            model: the model name.
            inputs: input name -> array (strings as bytes/str, numbers with the dtype the signature
                declares; `tf.make_tensor_proto` keeps the array's dtype).
            signature: the signature name.
            version: a version number, or None for the latest the server has.
            output_filter: the outputs wanted (default all).
            timeout: this call's deadline (default the client's).

        Returns:
            output name -> numpy array (strings as bytes).

        Raises:
            ServingError: the RPC failed (status code and the server's message).
        """
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
            request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
        response = self._call(self._predict.Predict, request, model, timeout)
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def signature_inputs(self, model: str, signature: str = DEFAULT_SIGNATURE, version: Optional[int] = None,
                         refresh: bool = False) -> Dict[str, TensorInfo]:
        """The inputs of a served signature: name -> (dtype, shape; None for unknown sizes).

        Read with `GetModelMetadata` and cached per (model, signature, version) until `refresh`.
        """
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
        inputs = {}
        for name, info in signature_map.signature_def[signature].inputs.items():
            shape = None if info.tensor_shape.unknown_rank else tuple(
                None if d.size < 0 else d.size for d in info.tensor_shape.dim)
            inputs[name] = (tf.dtypes.as_dtype(info.dtype), shape)
        with self._lock:
            self._signatures[key] = inputs
        return inputs

    def model_status(self, model: str, timeout: Optional[float] = None) -> Dict[int, str]:
        """Version -> state name ('AVAILABLE', 'LOADING', 'END', ...) of `model` (`GetModelStatus`)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = self._call(self._models.GetModelStatus, request, model, timeout)
        states = get_model_status_pb2.ModelVersionStatus.State
        return {s.version: states.Name(s.state) for s in response.model_version_status}

    def run(self, model: str, columns: Mapping[str, np.ndarray], version: Optional[int] = None,
            timeout: Optional[float] = None) -> Dict[str, np.ndarray]:
        """Calls `model` on feature columns (as `FeatureStore.features` gives them).

        `serving_default`: the columns the signature takes, conformed to its dtypes and sequence
        widths; the signature is re-read once when the server refuses the inputs (a new version with
        other inputs). `examples` (`use_examples`): every column, as serialized `tf.train.Example`s.

        Raises:
            ValueError: the model takes an input the columns do not have.
            ServingError: the RPC failed.
        """
        if self.use_examples:
            return self.predict(model, {EXAMPLES_INPUT: to_examples(columns)}, signature=EXAMPLES_SIGNATURE,
                                version=version, timeout=timeout)
        for attempt in range(2):
            signature = self.signature_inputs(model, version=version, refresh=attempt > 0)
            missing = sorted(set(signature) - set(columns))
            if missing:
                raise ValueError(f"Model {model!r} takes input(s) {missing} that the feature store does not provide "
                                 f"(it provides {sorted(columns)})")
            inputs = {name: _conform(columns[name], dtype, shape) for name, (dtype, shape) in signature.items()}
            try:
                return self.predict(model, inputs, version=version, timeout=timeout)
            except ServingError as e:
                if attempt or e.code != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                if self.signature_inputs(model, version=version, refresh=True) == signature:
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
        found = []
        for item, score in zip(out["item_ids"][0].tolist(), out["scores"][0].tolist()):
            item = item.decode("utf-8") if isinstance(item, bytes) else str(item)
            if item and math.isfinite(score):
                found.append((item, float(score)))
        return found[:k]

    def scores(self, domain: str, user_id: str, item_ids: Sequence[str], store: FeatureStore, model: str = RANKER,
               cold_start: bool = False, timeout: Optional[float] = None) -> List[float]:
        """The ranker's click probability of each of `item_ids` for `user_id` in `domain`.

        One request of len(item_ids) rows (the user's features replicated), or chunks of
        `max_batch_size`.

        Raises:
            ValueError: unknown domain, user or items.
            ServingError: the RPC failed.
        """
        item_ids = [str(i) for i in item_ids]
        if not item_ids:
            return []
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

    def recommend(self, domain: str, user_id: str, store: FeatureStore, n: int = 10, k: int = 100,
                  retrieval_model: str = RETRIEVAL, ranker_model: str = RANKER, cold_start: bool = False,
                  timeout: Optional[float] = None) -> List[Tuple[str, float]]:
        """Two-stage recommendation: `k` candidates of retrieval in `domain`, scored by the ranker in
        one request; the `n` most probable (item id, probability), best first (ties: retrieval order).

        Candidates the store does not know (an index newer than the store) are dropped with a warning.

        Raises:
            ValueError: unknown domain or user, or n < 1.
            ServingError: an RPC failed.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be an integer >= 1. Received: n={n!r}")
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
