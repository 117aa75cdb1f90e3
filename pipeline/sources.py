"""Data sources: each turns one raw line into one event, or says why it cannot.

An event is a plain dict (cheap to pickle between Beam stages):
  `user_id`, `item_id`, `domain` (str), `label` (0/1), `timestamp` (int seconds, or
  `MISSING_TIMESTAMP`), `features` ({side feature name: str | float | list of str}), and `split`
  (a split name when the source dictates it, else None).

A source never raises on a bad row: `parse` raises `RowError(reason)` and the job routes the row to
its rejected output. Problems that make a whole input unusable (no files, a missing column) are
found by `check()` in the driver, before any work starts.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from mdr_contract import feature_spec as fs

# Timestamps outside [1970, 2100) are not plausible event times (milliseconds, typos, sentinels).
MIN_TIMESTAMP = 0
MAX_TIMESTAMP = 4102444800
SPLIT_ALIASES = {"train": "train", "training": "train", "eval": "eval", "valid": "eval",
                 "validation": "eval", "val": "eval", "dev": "eval", "test": "test"}


class RowError(ValueError):
    """A row that cannot be used; the message is the reason written to the rejected output."""


class InputError(ValueError):
    """An input that cannot be used at all (clear error before any work starts)."""


def parse_timestamp(value: str) -> int:
    """Seconds since the epoch from an integer, a float or an ISO-8601 string."""
    value = value.strip()
    if not value:
        raise RowError("missing timestamp")
    try:
        ts = float(value)
    except ValueError:
        try:
            dt = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise RowError(f"bad timestamp {value[:40]!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=datetime.timezone.utc)
        ts = dt.timestamp()
    if not math.isfinite(ts) or not MIN_TIMESTAMP <= ts < MAX_TIMESTAMP:
        hint = " (milliseconds?)" if math.isfinite(ts) and MIN_TIMESTAMP <= ts / 1000 < MAX_TIMESTAMP else ""
        raise RowError(f"timestamp out of range 1970..2100: {value[:40]}{hint}")
    return int(ts)


def parse_float(value: str, column: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise RowError(f"bad number in {column}: {value[:40]!r}") from None
    if not math.isfinite(x):
        raise RowError(f"non-finite number in {column}: {value[:40]!r}")
    return x


def parse_label(value: str, threshold: float, column: str) -> int:
    v = value.strip().lower()
    if v in ("true", "yes"):
        return 1
    if v in ("false", "no"):
        return 0
    return int(parse_float(v, column) >= threshold)


def require_id(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise RowError(f"empty {what}")
    return value


class Source:
    """Base class of the data sources.

    Attributes:
        name: source name, recorded in the spec.
        side_features: the user and item features the source provides.
        category_feature: the item feature used as the category of behaviour-sequence items, or None.
        domains: the fixed domain list (rows of other domains are rejected), or None to learn the
            domains from the data.
        has_timestamp: whether events carry timestamps.
        has_header: whether each input file starts with a header line (not a row).
        encoding: text encoding of the rows; undecodable rows are rejected.
    """

    name = "source"
    side_features: Tuple[fs.SideFeature, ...] = ()
    category_feature: Optional[str] = None
    domains: Optional[List[str]] = None
    has_timestamp = True
    has_header = False
    encoding = "utf-8"

    def input_patterns(self) -> List[str]:
        raise NotImplementedError

    def check(self) -> None:
        """Driver-side validation; raises `InputError` with a clear message."""
        from apache_beam.io.filesystems import FileSystems

        for pattern in self.input_patterns():
            matches = FileSystems.match([pattern])[0].metadata_list
            if not matches:
                raise InputError(f"{self.name}: no input file matches {pattern!r}")

    def setup(self) -> None:
        """Worker-side loading of side tables; called once per DoFn instance."""

    def parse(self, text: str) -> dict:
        raise NotImplementedError


@dataclasses.dataclass
class ColumnMapping:
    """How the columns of a user's CSV/JSONL logs map onto an event.

    Args:
        user: user id column.
        item: item id column.
        domain: domain column.
        label: label column; a value >= `label_threshold` (or true/yes) is a positive.
        timestamp: timestamp column (int/float seconds or ISO-8601), or None: then no time split,
            and sequences follow file order only with `order_by_file=True`.
        split: optional split column (train / eval / test, or valid / validation / val / dev);
            the job then honours it instead of splitting.
        user_features: {column: kind} of user side features ('categorical', 'numeric',
            'categorical_list').
        item_features: {column: kind} of item side features.
        category: item feature whose value is the category of behaviour-sequence items.
        format: 'csv' (first line is the header) or 'jsonl' (one object per line).
        delimiter: CSV field delimiter; also splits nothing else.
        list_delimiter: separator of the values of a 'categorical_list' feature.
        list_length: maximum kept values of a 'categorical_list' feature.
        label_threshold: positives are labels >= this.
        domains: the fixed domain list, or None to learn it from the data.
        order_by_file: without timestamps, order each user's events by file position.
    """

    user: str
    item: str
    domain: str
    label: str
    timestamp: Optional[str] = None
    split: Optional[str] = None
    user_features: Dict[str, str] = dataclasses.field(default_factory=dict)
    item_features: Dict[str, str] = dataclasses.field(default_factory=dict)
    category: Optional[str] = None
    format: str = "csv"
    delimiter: str = ","
    list_delimiter: str = "|"
    list_length: int = 8
    label_threshold: float = 1.0
    domains: Optional[List[str]] = None
    order_by_file: bool = False

    def __post_init__(self):
        if self.format not in ("csv", "jsonl"):
            raise InputError(f"mapping format must be 'csv' or 'jsonl'. Received: format={self.format!r}")
        if self.category is not None and self.category not in self.item_features:
            raise InputError(f"mapping category must be one of item_features. Received: category={self.category!r}")
        overlap = set(self.user_features) & set(self.item_features)
        if overlap:
            raise InputError(f"a column cannot be both a user and an item feature. Received: {sorted(overlap)}")
        if self.domains is not None and not self.domains:
            raise InputError("mapping domains must be a non-empty list or null. Received: domains=[]")

    @classmethod
    def load(cls, path_or_json: str) -> "ColumnMapping":
        """From a JSON file, or a JSON object given inline."""
        text = path_or_json
        if not path_or_json.lstrip().startswith("{"):
            try:
                with open(path_or_json, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise InputError(f"cannot read the column mapping {path_or_json!r}: {e}") from e
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"the column mapping is not valid JSON: {e}") from e
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(obj) - fields
        missing = {"user", "item", "domain", "label"} - set(obj)
        if unknown or missing:
            raise InputError(f"column mapping: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
                             f"allowed keys are {sorted(fields)}")
        return cls(**obj)

    def side_features(self) -> Tuple[fs.SideFeature, ...]:
        out = []
        for role, cols in ((fs.ROLE_USER, self.user_features), (fs.ROLE_ITEM, self.item_features)):
            for col, kind in cols.items():
                try:
                    out.append(fs.SideFeature(col, role, kind,
                                              self.list_length if kind == fs.KIND_CATEGORICAL_LIST else 1))
                except ValueError as e:
                    raise InputError(f"column mapping, feature {col!r}: {e}") from e
        return tuple(out)


class CsvSource(Source):
    """Generic CSV / JSONL logs with a `ColumnMapping` (a user's own logs, without code).

    Args:
        input: file path or glob (local, gs://, ...; .gz files are read decompressed).
        mapping: the `ColumnMapping`.
    """

    name = "csv"

    def __init__(self, input: str, mapping: ColumnMapping):
        self.input = input
        self.mapping = mapping
        self.side_features = mapping.side_features()
        self.category_feature = mapping.category
        self.domains = list(mapping.domains) if mapping.domains else None
        self.has_timestamp = mapping.timestamp is not None
        self.has_header = mapping.format == "csv"
        self._domain_set = set(self.domains) if self.domains else None
        self._index: Optional[Dict[str, int]] = None
        self._kinds = {**mapping.user_features, **mapping.item_features}

    def input_patterns(self):
        if os.path.isdir(self.input):
            return [os.path.join(self.input, "*")]
        return [self.input]

    def required_columns(self) -> List[str]:
        m = self.mapping
        cols = [m.user, m.item, m.domain, m.label] + [c for c in (m.timestamp, m.split) if c]
        return cols + list(m.user_features) + list(m.item_features)

    def check(self):
        super().check()
        if not self.has_header:
            return
        from apache_beam.io.filesystems import FileSystems

        # Rows are parsed far from their file's first line, so every file must share one header,
        # which travels with the source to the workers.
        first_header = None
        for pattern in self.input_patterns():
            for meta in FileSystems.match([pattern])[0].metadata_list:
                try:
                    with FileSystems.open(meta.path) as f:
                        first = f.readline()
                except Exception as e:  # a corrupt compressed file fails here already
                    raise InputError(f"{meta.path}: cannot read the header line: {e}") from e
                if not first.strip():
                    raise InputError(f"{meta.path}: empty file (a CSV input needs a header line)")
                header = self._split(first.decode(self.encoding, errors="replace").rstrip("\r\n"))
                missing = [c for c in self.required_columns() if c not in header]
                if missing:
                    raise InputError(f"{meta.path}: missing column(s) {missing}; the header has {header}")
                if first_header is not None and header != first_header:
                    raise InputError(f"{meta.path}: header {header} differs from the first file's {first_header}")
                first_header = header
        self._index = {name: i for i, name in enumerate(first_header)}

    def _split(self, line: str) -> List[str]:
        return next(csv.reader([line], delimiter=self.mapping.delimiter))

    def _record(self, text: str) -> Dict[str, str]:
        if self.mapping.format == "jsonl":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise RowError(f"invalid JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise RowError("a JSONL row must be an object")
            rec = {}
            for col in self.required_columns():
                if col not in obj or obj[col] is None:
                    raise RowError(f"missing field {col}")
                v = obj[col]
                rec[col] = self.mapping.list_delimiter.join(map(str, v)) if isinstance(v, list) else str(v)
            return rec
        if self._index is None:
            raise RowError("no header seen before this row")
        try:
            values = self._split(text)
        except csv.Error as e:
            raise RowError(f"unparseable CSV: {e}") from None
        if len(values) != len(self._index):
            raise RowError(f"wrong field count: expected {len(self._index)}, got {len(values)}")
        return {col: values[self._index[col]] for col in self.required_columns()}

    def parse(self, text):
        m = self.mapping
        rec = self._record(text)
        domain = require_id(rec[m.domain], "domain")
        if self._domain_set is not None and domain not in self._domain_set:
            raise RowError(f"unknown domain {domain[:40]!r}")
        features = {}
        for col, kind in self._kinds.items():
            value = rec[col].strip()
            if kind == fs.KIND_NUMERIC:
                features[col] = parse_float(value, col)
            elif kind == fs.KIND_CATEGORICAL_LIST:
                features[col] = [v for v in value.split(m.list_delimiter) if v][:m.list_length]
            else:
                features[col] = value
        split = None
        if m.split:
            split = SPLIT_ALIASES.get(rec[m.split].strip().lower())
            if split is None:
                raise RowError(f"unknown split {rec[m.split][:40]!r}")
        return {
            "user_id": require_id(rec[m.user], "user id"),
            "item_id": require_id(rec[m.item], "item id"),
            "domain": domain,
            "label": parse_label(rec[m.label], m.label_threshold, m.label),
            "timestamp": parse_timestamp(rec[m.timestamp]) if m.timestamp else fs.MISSING_TIMESTAMP,
            "features": features,
            "split": split,
        }


def synthetic_mapping(domains: Optional[Sequence[str]] = None) -> ColumnMapping:
    """The column mapping of `mdr generate`'s `events.csv`."""
    return ColumnMapping(
        user="user_id", item="item_id", domain="domain", label="label", timestamp="timestamp",
        user_features={"gender": "categorical", "age_group": "categorical", "city": "categorical",
                       "tenure_days": "numeric"},
        item_features={"category": "categorical", "brand": "categorical", "price": "numeric"},
        category="category", domains=list(domains) if domains else None)


class SyntheticSource(CsvSource):
    """The logs of `mdr generate` (a folder with `events.csv` and `generator.json`)."""

    name = "synthetic"

    def __init__(self, input: str):
        from pipeline import synthetic

        domains = None
        info_path = os.path.join(input, synthetic.INFO_FILENAME)
        if os.path.exists(info_path):
            with open(info_path, encoding="utf-8") as f:
                domains = json.load(f)["domains"]
        path = os.path.join(input, synthetic.EVENTS_FILENAME) if os.path.isdir(input) else input
        super().__init__(path, synthetic_mapping(domains))


# MovieLens-1M age codes -> the three domains of the D3 paper and Scenario-Wise-Rec.
MOVIELENS_AGE_DOMAINS = {"1": "age_under25", "18": "age_under25", "25": "age_25_34",
                         "35": "age_35plus", "45": "age_35plus", "50": "age_35plus", "56": "age_35plus"}
_YEAR = re.compile(r"\((\d{4})\)\s*$")


class MovieLensSource(Source):
    """GroupLens MovieLens-1M (`ratings.dat`, `users.dat`, `movies.dat` in one folder).

    Domains by user age as in D3 and Scenario-Wise-Rec: {1, 18}, {25}, {35, 45, 50, 56}.
    Click = rating >= `label_threshold` (4, i.e. rating > 3).

    Args:
        input: the ml-1m folder.
        label_threshold: smallest rating that counts as a click.
    """

    name = "movielens-1m"
    side_features = (
        fs.SideFeature("gender", fs.ROLE_USER, fs.KIND_CATEGORICAL),
        fs.SideFeature("age", fs.ROLE_USER, fs.KIND_CATEGORICAL),
        fs.SideFeature("occupation", fs.ROLE_USER, fs.KIND_CATEGORICAL),
        fs.SideFeature("zip", fs.ROLE_USER, fs.KIND_CATEGORICAL),
        fs.SideFeature("genres", fs.ROLE_ITEM, fs.KIND_CATEGORICAL_LIST, length=6),
        fs.SideFeature("primary_genre", fs.ROLE_ITEM, fs.KIND_CATEGORICAL),
        fs.SideFeature("year", fs.ROLE_ITEM, fs.KIND_NUMERIC),
    )
    category_feature = "primary_genre"
    domains = ["age_under25", "age_25_34", "age_35plus"]
    encoding = "latin-1"  # movies.dat is Latin-1; ratings are ASCII either way

    def __init__(self, input: str, label_threshold: int = 4):
        self.input = input
        self.label_threshold = label_threshold
        self._users = None
        self._movies = None

    def input_patterns(self):
        return [os.path.join(self.input, "ratings.dat")]

    def check(self):
        for name in ("ratings.dat", "users.dat", "movies.dat"):
            if not os.path.exists(os.path.join(self.input, name)) and "://" not in self.input:
                raise InputError(f"movielens-1m: {name} not found in {self.input!r}")
        super().check()

    def setup(self):
        from apache_beam.io.filesystems import FileSystems

        def lines(name):
            with FileSystems.open(os.path.join(self.input, name), compression_type="uncompressed") as f:
                return f.read().decode("latin-1").splitlines()

        self._users = {}
        for line in lines("users.dat"):
            uid, gender, age, occupation, zipcode = line.split("::")
            self._users[uid] = {"gender": gender, "age": age, "occupation": occupation,
                                "zip": zipcode, "_domain": MOVIELENS_AGE_DOMAINS[age]}
        self._movies = {}
        for line in lines("movies.dat"):
            mid, title, genres = line.split("::")
            year = _YEAR.search(title)
            genre_list = genres.split("|")
            self._movies[mid] = {"genres": genre_list[:6], "primary_genre": genre_list[0],
                                 "year": float(year.group(1)) if year else 0.0}

    def parse(self, text):
        parts = text.split("::")
        if len(parts) != 4:
            raise RowError(f"wrong field count: expected 4, got {len(parts)}")
        uid, mid, rating, ts = parts
        user = self._users.get(uid.strip())
        if user is None:
            raise RowError(f"unknown user id {uid[:20]!r} (not in users.dat)")
        movie = self._movies.get(mid.strip())
        if movie is None:
            raise RowError(f"unknown movie id {mid[:20]!r} (not in movies.dat)")
        r = parse_float(rating, "rating")
        features = {k: v for k, v in user.items() if k != "_domain"}
        features.update(movie)
        return {"user_id": uid.strip(), "item_id": mid.strip(), "domain": user["_domain"],
                "label": int(r >= self.label_threshold), "timestamp": parse_timestamp(ts),
                "features": features, "split": None}


TAOBAO_BEHAVIOURS = {"pv": 0, "cart": 1, "fav": 1, "buy": 1}


class TaobaoSource(Source):
    """Alibaba Tianchi UserBehavior.csv (`user_id,item_id,category_id,behavior_type,timestamp`).

    Domains are item categories (ADS): the job keeps the most frequent categories as domains and maps
    the rest to 'other' (`--max-domains`). Positive = cart / fav / buy, negative = pv.

    Args:
        input: the CSV file (or a glob).
    """

    name = "taobao"
    side_features = (fs.SideFeature("category", fs.ROLE_ITEM, fs.KIND_CATEGORICAL),)
    category_feature = "category"

    def __init__(self, input: str):
        self.input = input

    def input_patterns(self):
        return [self.input]

    def parse(self, text):
        parts = text.split(",")
        if len(parts) != 5:
            raise RowError(f"wrong field count: expected 5, got {len(parts)}")
        uid, iid, cid, behaviour, ts = (p.strip() for p in parts)
        if behaviour not in TAOBAO_BEHAVIOURS:
            raise RowError(f"unknown behavior_type {behaviour[:20]!r}")
        return {"user_id": require_id(uid, "user id"), "item_id": require_id(iid, "item id"),
                "domain": require_id(cid, "category id"), "label": TAOBAO_BEHAVIOURS[behaviour],
                "timestamp": parse_timestamp(ts), "features": {"category": cid}, "split": None}


SOURCES = ("synthetic", "movielens-1m", "taobao", "csv")


def make_source(name: str, input: str, mapping: Optional[str] = None, label_threshold: Optional[float] = None
                ) -> Source:
    """The source called `name` reading `input` (`mapping`: the csv source's column mapping)."""
    if name != "csv" and mapping:
        raise InputError(f"--mapping is only for --source csv. Received: --source {name}")
    if name == "synthetic":
        return SyntheticSource(input)
    if name == "movielens-1m":
        return MovieLensSource(input, label_threshold=4 if label_threshold is None else label_threshold)
    if name == "taobao":
        return TaobaoSource(input)
    if name == "csv":
        if not mapping:
            raise InputError("--source csv needs --mapping (a JSON file or inline JSON column mapping)")
        cm = ColumnMapping.load(mapping)
        if label_threshold is not None:
            cm.label_threshold = label_threshold
        return CsvSource(input, cm)
    raise InputError(f"unknown source. Received: --source {name!r}; expected one of {SOURCES}")
