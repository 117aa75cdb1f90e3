"""The feature spec: names, types and roles of every feature.

One module shared by `pipeline/` (which writes the records and the concrete spec), `mdr_keras/`
(which builds models from that spec) and `serving/` (which exports and serves them), so they can
never disagree on a name, a dtype, a vocabulary or a bucket boundary. Reading it needs neither Beam
nor TensorFlow.

Record layout (one `tf.train.Example` per interaction) holds *raw* values: strings for categorical
features, floats for numeric ones. Vocabulary lookup and bucketization happen inside the model from
the spec (`categorical_index` / `bucket_index` define the index conventions), so training, export and
serving apply the one same mapping.

Index conventions, for every model input:
  - categorical: 0 is padding (the empty string), 1..num_oov_buckets are out-of-vocabulary buckets,
    then the vocabulary in file order. `input_dim = vocab_size + num_oov_buckets + 1`.
  - numeric: `bisect_right(boundaries, x)`, in [0, len(boundaries)]. `input_dim = len(boundaries) + 1`.
  - domain: the index of the domain name in `spec.domains`; unknown domains are rejected upstream.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence

from mdr_contract import artifacts, files
from mdr_contract.artifacts import SPLITS  # noqa: F401  (fs.SPLITS: the split names records carry)

SPEC_VERSION = 1

# Roles.
ROLE_USER = "user"
ROLE_ITEM = "item"
ROLE_USER_DOMAIN_STAT = "user_domain_stat"
ROLE_ITEM_DOMAIN_STAT = "item_domain_stat"
ROLE_DOMAIN = "domain"
ROLE_LABEL = "label"
ROLE_TIMESTAMP = "timestamp"
ROLE_SEQUENCE = "sequence"
ROLES = (ROLE_USER, ROLE_ITEM, ROLE_USER_DOMAIN_STAT, ROLE_ITEM_DOMAIN_STAT, ROLE_DOMAIN,
         ROLE_LABEL, ROLE_TIMESTAMP, ROLE_SEQUENCE)

# Kinds: how a raw value is stored and turned into a model index.
KIND_CATEGORICAL = "categorical"            # one string -> vocabulary index
KIND_CATEGORICAL_LIST = "categorical_list"  # up to `length` strings, padded with "" (e.g. genres)
KIND_NUMERIC = "numeric"                    # one float -> quantile bucket index
KIND_INT = "int"                            # one int64 used as is (label, timestamp, lengths)
KINDS = (KIND_CATEGORICAL, KIND_CATEGORICAL_LIST, KIND_NUMERIC, KIND_INT)

# Names every record has.
USER_ID = "user_id"
ITEM_ID = "item_id"
DOMAIN = "domain"
LABEL = "label"
TIMESTAMP = "timestamp"
HIST_ITEM_ID = "hist_item_id"
HIST_CATEGORY = "hist_category"
HIST_DOMAIN = "hist_domain"
HIST_LENGTH = "hist_len"
PAD = ""
MISSING_TIMESTAMP = -1

# Statistic features, computed by the job on the training window only.
USER_DOMAIN_STATS = ("user_domain_events", "user_domain_clicks", "user_domain_ctr")
ITEM_DOMAIN_CLICKS = "item_domain_clicks"  # also the in-batch sampling frequency of retrieval's logQ
ITEM_DOMAIN_STATS = ("item_domain_impressions", ITEM_DOMAIN_CLICKS, "item_domain_ctr")
# Smoothing strength of the CTR statistics: a key with n impressions gets (clicks + A*p) / (n + A),
# p the domain's training CTR, so rare keys do not get CTRs of exactly 0 or 1.
CTR_PRIOR_STRENGTH = 5.0


def smoothed_ctr(clicks: float, n: float, prior: float) -> float:
    return (clicks + CTR_PRIOR_STRENGTH * prior) / (n + CTR_PRIOR_STRENGTH)


# Keys with fewer training events than this get the prior's clicks and CTR (`domain_stat_values`).
# 20: on the Taobao head, 5 still let DNN read labels (train AUC 0.726, eval 0.632, logloss 0.356 above
# the constant CTR's 0.330); with 20: train 0.687, eval 0.644, logloss 0.323.
MIN_STAT_EVENTS = 20


def domain_stat_values(names: Sequence[str], n: float, clicks: float, prior: float,
                       min_events: int = MIN_STAT_EVENTS) -> Dict[str, float]:
    """The statistic features `names` (events or impressions, clicks, smoothed CTR) of a key with `n`
    training events, `clicks` of them positive, in a domain of training CTR `prior`.

    Every training record of a key carries the same values, its own label counted in. With few events
    that label *is* the statistic (one event: CTR (y + A p) / (1 + A)), so a key with fewer than
    `min_events` gets the prior's clicks `n * p`, hence CTR `p`; from `min_events` on, a record's own
    label weighs at most 1 / (min_events + A) in its CTR (1/25 at the default). (Leaving the record's
    own event out instead makes the records of one key differ by their label, which a model that knows
    the key reads back: measured on MovieLens-1M, the ranker fell from 0.795 to 0.761 AUC.)

    The one formula of the job (records, item corpus) and of the feature store (query time).
    """
    events, clicks_name, ctr = names
    if n < min_events:
        clicks = n * prior
    return {events: float(n), clicks_name: float(clicks), ctr: smoothed_ctr(clicks, n, prior)}


@dataclasses.dataclass(frozen=True)
class SideFeature:
    """A user or item feature a data source provides besides the ids.

    Args:
        name: feature name, also the record key.
        role: `ROLE_USER` or `ROLE_ITEM`.
        kind: `KIND_CATEGORICAL`, `KIND_CATEGORICAL_LIST` or `KIND_NUMERIC`.
        length: maximum number of values of a `KIND_CATEGORICAL_LIST` feature (longer lists are cut).
    """

    name: str
    role: str
    kind: str
    length: int = 1

    def __post_init__(self):
        if self.role not in (ROLE_USER, ROLE_ITEM):
            raise ValueError(f"A side feature's role must be 'user' or 'item'. Received: role={self.role!r}")
        if self.kind not in (KIND_CATEGORICAL, KIND_CATEGORICAL_LIST, KIND_NUMERIC):
            raise ValueError("A side feature's kind must be 'categorical', 'categorical_list' or 'numeric'. "
                             f"Received: kind={self.kind!r}")
        if self.length < 1 or (self.kind != KIND_CATEGORICAL_LIST and self.length != 1):
            raise ValueError(f"length must be 1, or >= 1 for a categorical_list. Received: length={self.length}")
        if self.name in RESERVED_NAMES:
            raise ValueError(f"Side feature name {self.name!r} is reserved. Received: name={self.name!r}")


RESERVED_NAMES = frozenset((USER_ID, ITEM_ID, DOMAIN, LABEL, TIMESTAMP, HIST_ITEM_ID, HIST_CATEGORY,
                            HIST_DOMAIN, HIST_LENGTH) + USER_DOMAIN_STATS + ITEM_DOMAIN_STATS)


@dataclasses.dataclass(frozen=True)
class Feature:
    """One feature of the concrete spec a preprocessing run used.

    Args:
        name: record key.
        role: one of `ROLES`.
        kind: one of `KINDS`.
        length: values per record (1 for scalars, T for sequences, the maximum for lists).
        vocab_file: vocabulary file, relative to the spec's folder, one token per line, most frequent first.
        vocab_size: number of tokens in the vocabulary (padding and OOV buckets not included).
        num_oov_buckets: out-of-vocabulary buckets.
        vocab_from: the feature whose vocabulary this one shares (sequence features share the item's).
        boundaries: quantile bucket boundaries of a numeric feature, increasing.
    """

    name: str
    role: str
    kind: str
    length: int = 1
    vocab_file: Optional[str] = None
    vocab_size: int = 0
    num_oov_buckets: int = 0
    vocab_from: Optional[str] = None
    boundaries: tuple = ()

    @property
    def is_list(self) -> bool:
        """Whether the record holds a fixed-length list (`length` values) rather than a scalar."""
        return self.kind == KIND_CATEGORICAL_LIST or (self.role == ROLE_SEQUENCE and self.kind != KIND_INT)

    @property
    def record_dtype(self) -> str:
        """The `tf.train.Feature` list type in the record: 'bytes', 'float' or 'int64'."""
        if self.kind in (KIND_CATEGORICAL, KIND_CATEGORICAL_LIST):
            return "bytes"
        if self.kind == KIND_NUMERIC:
            return "float"
        return "int64"

    @property
    def input_dim(self) -> int:
        """Number of distinct model indices (embedding table rows) of this feature."""
        if self.kind in (KIND_CATEGORICAL, KIND_CATEGORICAL_LIST):
            return self.vocab_size + self.num_oov_buckets + 1
        if self.kind == KIND_NUMERIC:
            return len(self.boundaries) + 1
        raise ValueError(f"Feature {self.name!r} of kind {self.kind!r} has no embedding input dim.")


@dataclasses.dataclass
class FeatureSpec:
    """The concrete spec of one preprocessing run, written next to its output as `feature_spec.json`.

    Args:
        features: every feature of the records, in record order.
        domains: domain names; a domain's index is its position here.
        sequence_length: T, the behaviour sequence length (positions past `hist_len` are padding).
        source: name of the data source.
        has_timestamp: whether events had timestamps (else sequences follow file order or are empty).
        path: folder the spec was loaded from; vocabulary files are relative to it.
    """

    features: List[Feature]
    domains: List[str]
    sequence_length: int
    source: str = ""
    has_timestamp: bool = True
    path: Optional[str] = None

    def __post_init__(self):
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"Feature names must be unique. Received: {names}")
        if not self.domains:
            raise ValueError("A spec needs at least one domain. Received: domains=[]")
        if self.sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1. Received: sequence_length={self.sequence_length}")
        self._by_name = {f.name: f for f in self.features}

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    def __getitem__(self, name: str) -> Feature:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"No feature {name!r} in the spec; it has {sorted(self._by_name)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def by_role(self, *roles: str) -> List[Feature]:
        return [f for f in self.features if f.role in roles]

    def vocab_path(self, name: str) -> str:
        feature = self[name]
        source = self[feature.vocab_from] if feature.vocab_from else feature
        if source.vocab_file is None:
            raise ValueError(f"Feature {name!r} has no vocabulary.")
        return os.path.join(self.path or "", source.vocab_file)

    def vocabulary(self, name: str) -> List[str]:
        """The tokens of `name`'s vocabulary, in index order (index = position + num_oov_buckets + 1)."""
        return read_vocabulary(self.vocab_path(name))

    def to_json(self) -> dict:
        return {
            "version": SPEC_VERSION,
            "source": self.source,
            "domains": list(self.domains),
            "num_domains": self.num_domains,
            "sequence_length": self.sequence_length,
            "has_timestamp": self.has_timestamp,
            "index_conventions": {
                "categorical": "0 = padding, 1..num_oov_buckets = OOV, then the vocabulary file order",
                "numeric": "bisect_right(boundaries, value)",
                "domain": "position in domains",
            },
            "features": [_feature_to_json(f) for f in self.features],
        }

    @classmethod
    def from_json(cls, obj: dict, path: Optional[str] = None) -> "FeatureSpec":
        if obj.get("version") != SPEC_VERSION:
            raise ValueError(f"Unsupported feature spec version. Received: version={obj.get('version')!r}, "
                             f"expected {SPEC_VERSION}")
        features = []
        for f in obj["features"]:
            f = dict(f)
            f["boundaries"] = tuple(f.get("boundaries", ()))
            features.append(Feature(**f))
        return cls(features=features, domains=list(obj["domains"]), sequence_length=obj["sequence_length"],
                   source=obj.get("source", ""), has_timestamp=obj.get("has_timestamp", True), path=path)

    def save(self, folder: str) -> str:
        """Writes `feature_spec.json` into `folder` (local, or any `tf.io.gfile` path); returns its path."""
        path = os.path.join(folder, artifacts.FEATURE_SPEC)
        files.write_text(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str) -> "FeatureSpec":
        """Loads a spec from its file or from the folder holding `feature_spec.json`."""
        if not path.endswith(".json"):
            path = os.path.join(path, artifacts.FEATURE_SPEC)
        try:
            text = files.read_text(path)
        except (OSError, IOError) as e:
            raise FileNotFoundError(f"No feature spec at {path!r}: run `mdr preprocess` first ({e})") from e
        return cls.from_json(json.loads(text), path=os.path.dirname(path))

    def tf_parse_spec(self, names: Optional[Sequence[str]] = None) -> Dict[str, object]:
        """The `tf.io.parse_example` spec of the records (all features, or `names`)."""
        import tensorflow as tf

        dtypes = {"bytes": tf.string, "float": tf.float32, "int64": tf.int64}
        defaults = {"bytes": PAD, "float": 0.0, "int64": 0}
        out = {}
        for f in self.features:
            if names is not None and f.name not in names:
                continue
            shape = [f.length] if f.is_list else []
            default = [defaults[f.record_dtype]] * f.length if shape else defaults[f.record_dtype]
            out[f.name] = tf.io.FixedLenFeature(shape, dtypes[f.record_dtype], default_value=default)
        return out


def _feature_to_json(f: Feature) -> dict:
    d = dataclasses.asdict(f)
    d["boundaries"] = list(f.boundaries)
    return {k: v for k, v in d.items() if v not in (None, (), [])}


def categorical_index(token: str, vocab_index: Dict[str, int], num_oov_buckets: int = 1) -> int:
    """Reference (pure Python) index of a token; the model's lookup must agree with it.

    `vocab_index` maps token -> position in the vocabulary file. The job always writes one OOV bucket
    (index 1), so no hash function has to agree between Python and TensorFlow.
    """
    if num_oov_buckets != 1:
        raise ValueError(f"Only one OOV bucket is supported. Received: num_oov_buckets={num_oov_buckets}")
    if token == PAD:
        return 0
    pos = vocab_index.get(token)
    return 1 if pos is None else pos + 2


def bucket_index(value: float, boundaries: Sequence[float]) -> int:
    """Reference bucket of a numeric value: the number of boundaries <= value (bisect_right)."""
    import bisect

    return bisect.bisect_right(list(boundaries), value)


def read_vocabulary(path: str) -> List[str]:
    return [line for line in files.read_text(path).split("\n") if line != ""]


def record_features(side_features: Sequence[SideFeature], category_feature: Optional[str],
                    sequence_length: int) -> List[Feature]:
    """The features of an interaction record, in record order, before vocabularies and boundaries.

    Categorical features get a vocabulary file `vocab/<name>.txt` and one OOV bucket; the domain's
    vocabulary is the domain list (no OOV: unknown domains never reach a record).
    """
    def categorical(name, role, kind=KIND_CATEGORICAL, length=1):
        return Feature(name, role, kind, length=length, vocab_file=artifacts.vocab_file(name), num_oov_buckets=1)

    def side(role):
        out = []
        for f in side_features:
            if f.role != role:
                continue
            if f.kind == KIND_NUMERIC:
                out.append(Feature(f.name, role, KIND_NUMERIC))
            else:
                out.append(categorical(f.name, role, f.kind, f.length))
        return out

    T = sequence_length
    features = [categorical(USER_ID, ROLE_USER)] + side(ROLE_USER)
    features += [categorical(ITEM_ID, ROLE_ITEM)] + side(ROLE_ITEM)
    features.append(Feature(DOMAIN, ROLE_DOMAIN, KIND_CATEGORICAL, vocab_file=artifacts.vocab_file(DOMAIN)))
    features += [Feature(n, ROLE_USER_DOMAIN_STAT, KIND_NUMERIC) for n in USER_DOMAIN_STATS]
    features += [Feature(n, ROLE_ITEM_DOMAIN_STAT, KIND_NUMERIC) for n in ITEM_DOMAIN_STATS]
    features.append(Feature(HIST_ITEM_ID, ROLE_SEQUENCE, KIND_CATEGORICAL, length=T, vocab_from=ITEM_ID))
    if category_feature is not None:
        features.append(Feature(HIST_CATEGORY, ROLE_SEQUENCE, KIND_CATEGORICAL, length=T,
                                vocab_from=category_feature))
    features.append(Feature(HIST_DOMAIN, ROLE_SEQUENCE, KIND_CATEGORICAL, length=T, vocab_from=DOMAIN))
    features.append(Feature(HIST_LENGTH, ROLE_SEQUENCE, KIND_INT))
    features.append(Feature(LABEL, ROLE_LABEL, KIND_INT))
    features.append(Feature(TIMESTAMP, ROLE_TIMESTAMP, KIND_INT))
    return features


def item_corpus_features(features: Sequence[Feature]) -> List[Feature]:
    """The features of an item-corpus record: the item's own, its domain and its domain statistics."""
    return [f for f in features if f.role in (ROLE_ITEM, ROLE_DOMAIN, ROLE_ITEM_DOMAIN_STAT)]


def store_features(features: Sequence[Feature]) -> List[Feature]:
    """The features of a feature-store record: a user's own, the domain, the user's domain statistics,
    the behaviour sequence and the time of the user's latest event."""
    return [f for f in features if f.role in (ROLE_USER, ROLE_DOMAIN, ROLE_USER_DOMAIN_STAT, ROLE_SEQUENCE,
                                              ROLE_TIMESTAMP)]
