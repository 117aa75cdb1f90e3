"""The feature store: the raw features of users and items per domain, as the models read them at query time.

The preprocessing job writes it (`store/` and `items/` of its output, `mdr_contract.artifacts`) with the
same transforms that write the training records, so a user's behaviour sequence and statistics at
query time follow the one sequence rule and the one statistics rule of the job; this module only
loads them (`FeatureStore.load`) and turns them into request arrays (`features`, `to_array`,
`to_examples`). Production would keep such a store current from the event stream.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mdr_contract import artifacts, files
from mdr_contract import feature_spec as fs



class FeatureStore:
    """Raw features of users and items per domain, as the models read them at query time.

    Contents, as the preprocessing job wrote them (see `load`):

    - per user: the user features of the user's latest event (`user_id` and the other `user`-role
      features) and the behaviour sequence (`hist_*`, `hist_len`) as of after the last logged event.
      The sequence is the user's across all domains (`hist_domain` says where each event happened).
    - per (user, domain): the user domain statistics (`user_domain_*`; training-window values, the
      same as on every record of the user in that domain).
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
                                 "query with default features: --cold-start (mdr query / recommend), cold_start=True "
                                 "(Python)")
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
        # The user's values are encoded once and the row repeated (references, for bytes): a 100-item ranker
        # request repeats three 50-string behaviour sequences, 15,000 strings to encode one by one otherwise.
        out = {k: np.repeat(to_array(self.spec[k], [v]), rows, axis=0) for k, v in user.items()}
        if item_ids is not None:
            out.update({k: to_array(self.spec[k], v) for k, v in self.item_features(item_ids, domain).items()})
        return out

    def _check_domain(self, domain: str) -> None:
        if domain not in self.spec.domains:
            raise ValueError(f"Unknown domain {domain!r}; domains: {self.spec.domains}")

    def _empty_stats(self, names: Sequence[str], domain: str) -> Dict[str, float]:
        # What the job writes with no training event: counts 0, CTR = the domain's prior.
        return {n: self.domain_priors[domain] if n.endswith("_ctr") else 0.0 for n in names}

    # -- loading ----------------------------------------------------------------------------------

    @classmethod
    def load(cls, data_dir: str, batch_size: int = 4096) -> "FeatureStore":
        """The store the preprocessing job wrote into `data_dir` (`mdr preprocess --output`).

        Users come from its `store/` records (one per user and domain with an event: the user features
        of the latest event, and the statistics and behaviour sequence the user's next record in that
        domain would carry), items from `items/` (one per item and domain), the domain priors from
        `metadata.json`. Nothing is recomputed here: the job's own rules made every value.

        Raises:
            FileNotFoundError: without a complete preprocessing output, or one written before the job
                wrote a store (rerun `mdr preprocess`).
        """
        files.check_complete(data_dir)
        if not tf.io.gfile.glob(artifacts.record_pattern(data_dir, artifacts.STORE)):
            raise FileNotFoundError(f"{data_dir} has no feature store ({artifacts.STORE}/): it was written by an "
                                    "older `mdr preprocess`; run it again")
        spec = fs.FeatureSpec.load(data_dir)
        metadata = json.loads(files.read_text(os.path.join(data_dir, artifacts.METADATA)))
        user_names = [f.name for f in spec.by_role(fs.ROLE_USER, fs.ROLE_SEQUENCE)]
        stat_names = [f.name for f in spec.by_role(fs.ROLE_USER_DOMAIN_STAT)]
        users, user_stats = {}, {}
        for row in _read_rows(data_dir, artifacts.STORE, spec, user_names + stat_names + [fs.DOMAIN], batch_size):
            users.setdefault(row[fs.USER_ID], {n: row[n] for n in user_names})
            user_stats[(row[fs.USER_ID], row[fs.DOMAIN])] = {n: row[n] for n in stat_names}
        item_names = [f.name for f in spec.by_role(fs.ROLE_ITEM)]
        stat_names = [f.name for f in spec.by_role(fs.ROLE_ITEM_DOMAIN_STAT)]
        items, item_stats = {}, {}
        for row in _read_rows(data_dir, artifacts.ITEMS, spec, item_names + stat_names + [fs.DOMAIN], batch_size):
            items.setdefault(row[fs.ITEM_ID], {n: row[n] for n in item_names})
            item_stats[(row[fs.ITEM_ID], row[fs.DOMAIN])] = {n: row[n] for n in stat_names}
        return cls(spec, users, user_stats, items, item_stats, domain_priors=metadata["domain_priors"])

    def __repr__(self) -> str:
        return (f"FeatureStore({len(self._users)} users, {len(self._items)} items, "
                f"domains {self.spec.domains})")


def _read_rows(data_dir: str, folder: str, spec: fs.FeatureSpec, names: Sequence[str],
               batch_size: int) -> Iterable[dict]:
    """Python rows of the records of `folder` (`names` only), in batches parsed by tf.data."""
    from mdr_keras import data

    if not tf.io.gfile.glob(artifacts.record_pattern(data_dir, folder)):
        return
    for batch in data.make_dataset(data_dir, folder, batch_size, spec=spec, names=sorted(set(names))):
        yield from _rows(batch)


def _rows(batch: Mapping[str, tf.Tensor]) -> Iterable[dict]:
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
