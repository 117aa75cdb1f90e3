"""The composite transforms of the preprocessing job, each named by what it produces.

Raw lines -> events (+ rejected rows) -> domains -> splits -> statistics, sequences and records ->
vocabularies and quantile boundaries -> encoded `tf.train.Example`s. Bad rows are counted and routed
to the rejected output, never raised; only an unusable input (a truncated gzip file) fails the job.
"""
from __future__ import annotations

import bisect
import collections
import hashlib
import io
import os
import zlib
from typing import List, Optional, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from mdr_contract import artifacts
from mdr_contract import feature_spec as fs
from pipeline.sources import InputError, RowError, Source

REJECTED = "rejected"  # tag of the rejected rows' outputs
STORE = "store"        # tag of the feature store's output of `BehaviourSequences`
OTHER_DOMAIN = "other"


def rejected_record(ref: str, reason: str, raw: str) -> dict:
    """The one shape of a rejected-rows record: where the row was, why, and its raw text."""
    return {"ref": ref, "reason": reason, "raw": raw}


def reason_category(reason: str) -> str:
    """The counter name of a reason: its text up to the first ':' or '(' (no row values)."""
    for sep in (":", "(", "{", "'"):
        reason = reason.split(sep, 1)[0]
    return reason.strip()


def _emit_window(value):
    return GlobalWindows.windowed_value(value)


class _CountPerBundle(beam.DoFn):
    """Counts keys within a bundle (manual combiner lifting).

    Counting every token of every record through a CombineFn costs Python calls per element;
    `Counter.update` counts a record's keys in C, which is what lets the job reach its rows/s target
    on the local runner. `keys_fn(element)` returns the keys to count, repeats allowed.
    """

    def __init__(self, keys_fn):
        self._keys_fn = keys_fn

    def start_bundle(self):
        self._counts = collections.Counter()

    def process(self, element):
        self._counts.update(self._keys_fn(element))

    def finish_bundle(self):
        for kv in self._counts.items():
            yield _emit_window(kv)
        self._counts = collections.Counter()


class CountPerKey(beam.PTransform):
    """(key, count) of the keys `keys_fn(element)` returns for every element."""

    def __init__(self, keys_fn):
        super().__init__()
        self._keys_fn = keys_fn

    def expand(self, pcoll):
        return (pcoll
                | "CountPerBundle" >> beam.ParDo(_CountPerBundle(self._keys_fn))
                | "SumPerKey" >> beam.CombinePerKey(sum))


def _open_decompressed(readable_file):
    """A line-iterable binary file: gzip/bz2 by extension (Python's own readers: fast, and a
    truncated stream raises EOFError), else the raw file."""
    import bz2
    import gzip

    from apache_beam.io.filesystem import CompressionTypes

    raw = readable_file.open(compression_type=CompressionTypes.UNCOMPRESSED)
    path = readable_file.metadata.path
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if path.endswith(".bz2"):
        return bz2.BZ2File(raw, mode="rb")
    return io.BufferedReader(raw) if not hasattr(raw, "__iter__") else raw


class _ReadLinesFn(beam.DoFn):
    """Reads one file's lines with their position (`path:line`), decompressing by extension."""

    def __init__(self, skip_header: bool):
        self._skip_header = skip_header
        self._lines = Metrics.counter("mdr.read", "lines")

    def process(self, readable_file):
        path = readable_file.metadata.path
        n = 0
        try:
            with _open_decompressed(readable_file) as f:
                for n, line in enumerate(f, 1):
                    if n == 1 and self._skip_header:
                        continue
                    self._lines.inc()
                    yield f"{path}:{n}", line.rstrip(b"\r\n")
        except (EOFError, zlib.error, OSError) as e:
            # Rows after the break are unknowable, so the counts could not reconcile: fail clearly.
            raise InputError(f"{path}: truncated or corrupt file after line {n}: {e}") from e


class ReadRawLines(beam.PTransform):
    """Raw lines of every file matching `patterns`, as (`path:line`, bytes), spread over workers.

    Args:
        patterns: file patterns (local, gs://, ...); .gz/.bz2 files are decompressed.
        skip_header: drop the first line of every file (CSV headers are not rows).
        spread: reshuffle the lines over the workers (a file is read by one worker); off for a pass
            whose work per line is small next to shipping the line (`TimeCutoffs`' first pass).
    """

    def __init__(self, patterns: Sequence[str], skip_header: bool, spread: bool = True):
        super().__init__()
        self._patterns = list(patterns)
        self._skip_header = skip_header
        self._spread = spread

    def expand(self, pbegin):
        lines = (pbegin
                 | "CreateFilePatterns" >> beam.Create(self._patterns)
                 | "MatchInputFiles" >> fileio.MatchAll()
                 | "OpenInputFiles" >> fileio.ReadMatches()
                 | "ReadLinesWithPosition" >> beam.ParDo(_ReadLinesFn(self._skip_header)))
        return lines | "SpreadLinesOverWorkers" >> beam.Reshuffle() if self._spread else lines


class _ParseEventsFn(beam.DoFn):
    def __init__(self, source: Source):
        self._source = source

    def setup(self):
        self._source.setup()

    def process(self, element):
        ref, raw = element
        try:
            text = raw.decode(self._source.encoding)
        except UnicodeDecodeError as e:
            yield self._reject(ref, f"not valid {self._source.encoding}: byte {e.start}",
                               raw.decode("utf-8", errors="replace"))
            return
        if not text.strip():
            yield self._reject(ref, "empty line", text)
            return
        try:
            event = self._source.parse(text)
        except RowError as e:
            yield self._reject(ref, str(e), text)
            return
        event["ref"] = ref
        event["raw"] = text
        yield event

    @staticmethod
    def _reject(ref, reason, raw):
        Metrics.counter("mdr.rejected", reason_category(reason)).inc()
        return beam.pvalue.TaggedOutput(REJECTED, rejected_record(ref, reason, raw))


class ParseEvents(beam.PTransform):
    """Events from raw lines; unusable lines go to the `rejected` output with their reason."""

    def __init__(self, source: Source):
        super().__init__()
        self._source = source

    def expand(self, lines):
        out = lines | "ParseRowsToEvents" >> beam.ParDo(_ParseEventsFn(self._source)).with_outputs(
            REJECTED, main="events")
        return out.events, out[REJECTED]


class AssignDomains(beam.PTransform):
    """The domain list, and events whose domain is one of it.

    With a fixed list (the source's), rows of other domains were already rejected by the parser.
    Otherwise the `max_domains` most frequent values become the domains, by frequency, and the
    rest are folded into 'other' (Taobao: item categories as domains).

    Returns:
        (events, domains): domains is a singleton PCollection holding the list.
    """

    def __init__(self, fixed_domains: Optional[List[str]], max_domains: Optional[int]):
        super().__init__()
        self._fixed = fixed_domains
        self._max = max_domains

    def expand(self, events):
        if self._fixed:
            domains = events.pipeline | "CreateFixedDomainList" >> beam.Create([list(self._fixed)])
            return events, domains
        counts = events | "CountEventsPerDomain" >> CountPerKey(lambda e: (e["domain"],))
        max_domains = self._max

        def top_domains(pairs):
            ranked = sorted(pairs, key=lambda kv: (-kv[1], kv[0]))
            if max_domains is None or len(ranked) <= max_domains:
                return [k for k, _ in ranked]
            return [k for k, _ in ranked[:max_domains]] + [OTHER_DOMAIN]

        domains = (counts
                   | "CollectDomainCounts" >> beam.combiners.ToList()
                   | "RankDomainsByFrequency" >> beam.Map(top_domains))

        def fold(event, domain_list):
            if event["domain"] not in domain_list:  # list of <= max_domains + 1 names
                event = dict(event, domain=OTHER_DOMAIN)
            return event

        return events | "FoldRareDomainsIntoOther" >> beam.Map(
            fold, domain_list=beam.pvalue.AsSingleton(domains)), domains


def random_unit(seed: int, ref: str) -> float:
    """A uniform number in [0, 1) from the seed and the row's file name and line (not its folder)."""
    key = f"{seed}:{os.path.basename(ref)}".encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0 ** 64


class _TimeQuantiles(beam.PTransform):
    """Timestamps -> a singleton list of their approximate i/1000 quantiles (1001 of them; [] for none)."""

    def expand(self, stamps):
        return (stamps
                | "BatchTimestamps" >> beam.BatchElements(min_batch_size=1024, max_batch_size=65536)
                | "ApproximateQuantiles" >> beam.ApproximateQuantiles.Globally(1001, input_batched=True))


class TimeCutoffs(beam.PTransform):
    """The time cutoffs that leave `eval_fraction` (and `test_fraction`) of the events after them: a
    singleton dict {'eval_start': ts[, 'test_start': ts][, 'holdout_start': ts]} from approximate quantiles
    of the event times (to within 0.1% of the events); {} when there are no events. `holdout_start` begins
    the train window's latest 1 in `HOLDOUT_BUCKETS` events (`holdout_start`).

    `mdr preprocess` computes them in a first pass of their own and hands them to `SplitEvents` as
    explicit cutoffs: on Beam's local multi-process runner, a split whose cutoffs are a side input
    computed from the same events lost records at 3M rows (docs/results.md, "Cost against the work").
    """

    def __init__(self, eval_fraction: float, test_fraction: float = 0.0):
        super().__init__()
        self._eval_q = 1.0 - eval_fraction - test_fraction
        self._test_q = 1.0 - test_fraction
        self._with_test = test_fraction > 0

    def expand(self, events):
        eval_q, test_q, with_test = self._eval_q, self._test_q, self._with_test

        def to_cutoffs(quantiles):
            if not quantiles:
                return {}
            # quantiles[i] is the i/1000 quantile of the event times.
            cut = {"eval_start": int(quantiles[int(round(eval_q * 1000))])}
            if with_test:
                cut["test_start"] = int(quantiles[int(round(test_q * 1000))])
            # The train window's quantiles: those before eval_start (times tied at the cutoff are eval's),
            # and eval_start closing it.
            end = bisect.bisect_left(quantiles, cut["eval_start"])
            start = holdout_start(quantiles[:end + 1])
            if start is not None and start < cut["eval_start"]:
                cut["holdout_start"] = start
            return cut

        return (events
                | "TimestampsOfEvents" >> beam.Map(lambda e: e["timestamp"])
                | "TimeQuantiles" >> _TimeQuantiles()
                | "QuantilesToCutoffs" >> beam.Map(to_cutoffs))


def holdout_start(train_quantiles: Sequence[int]) -> Optional[int]:
    """The first timestamp of the train window's latest 1 in `artifacts.HOLDOUT_BUCKETS` events, from the
    i/n quantiles of its event times (n + 1 of them, sorted); None when there are none, or when coarse
    timestamps (days) tie so many events at the cutoff that the holdout would pass twice its share or hold
    every event (the holdout is then by hash: `in_holdout`)."""
    n = len(train_quantiles) - 1
    if n < 1:
        return None
    start = int(train_quantiles[min(int(round(n * (1 - 1 / artifacts.HOLDOUT_BUCKETS))), n - 1)])
    first = bisect.bisect_left(train_quantiles, start)  # the share of events before `start` is about first / n
    if first == 0 or 1 - first / n > 2 / artifacts.HOLDOUT_BUCKETS:
        return None
    return start


class TrainHoldoutStart(beam.PTransform):
    """`{'holdout_start': ts}` for a time split at a given `eval_start`: the start of the latest 1 in
    `artifacts.HOLDOUT_BUCKETS` train events (`holdout_start`) from approximate quantiles of the times of the
    events before `eval_start`; {} when there are none or ties at the cutoff hold too many."""

    def __init__(self, eval_start: int):
        super().__init__()
        self._eval_start = eval_start

    def expand(self, events):
        eval_start = self._eval_start

        def to_start(quantiles):
            start = holdout_start(quantiles or [])
            return {} if start is None else {"holdout_start": start}

        return (events
                | "TimestampsOfTrainEvents" >> beam.FlatMap(
                    lambda e: [e["timestamp"]] if e["timestamp"] < eval_start else [])
                | "TimeQuantiles" >> _TimeQuantiles()
                | "QuantilesToHoldoutStart" >> beam.Map(to_start))


def in_holdout(record: dict, start: Optional[int]) -> bool:
    """Whether a train record is held out for validation: at or after `start` (a time split's
    `holdout_start`), else when `start` is None one in `artifacts.HOLDOUT_BUCKETS` by a hash of the record's
    user, item, domain and time, the same on every run and runner."""
    if start is not None:
        return record[fs.TIMESTAMP] >= start
    key = "\x1f".join(str(record[k]) for k in (fs.USER_ID, fs.ITEM_ID, fs.DOMAIN, fs.TIMESTAMP)).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % artifacts.HOLDOUT_BUCKETS == 0


class SplitEvents(beam.PTransform):
    """Events with their `split`: the source's split column, a time cutoff, or a seeded random draw.

    Args:
        method: 'time' or 'random' (ignored for events whose source dictates their split).
        seed: seed of the random split.
        ratios: fractions of train, eval (and test) of the random split.
        eval_start, test_start: explicit time cutoffs (timestamps); events at or after `eval_start`
            are eval (test from `test_start`).
        eval_fraction, test_fraction: without explicit cutoffs, the cutoffs are the time quantiles
            that leave these fractions of the events after them.

    Returns:
        (events, cutoffs): cutoffs is a singleton dict {'eval_start': ts, 'test_start': ts} (time
        split) or {} (random split).
    """

    def __init__(self, method: str, seed: int = 2022, ratios: Sequence[float] = (0.8, 0.1, 0.1),
                 eval_start: Optional[int] = None, test_start: Optional[int] = None,
                 eval_fraction: float = 0.1, test_fraction: float = 0.0):
        super().__init__()
        if method not in ("time", "random"):
            raise ValueError(f"split method must be 'time' or 'random'. Received: method={method!r}")
        self._method = method
        self._seed = seed
        self._ratios = tuple(ratios)
        self._eval_start = eval_start
        self._test_start = test_start
        self._eval_fraction = eval_fraction
        self._test_fraction = test_fraction

    def expand(self, events):
        if self._method == "random":
            cum = []
            total = 0.0
            for r in self._ratios:
                total += r
                cum.append(total / sum(self._ratios))
            seed = self._seed

            def assign_random(event):
                if event["split"] is None:
                    u = random_unit(seed, event["ref"])
                    event["split"] = fs.SPLITS[next(i for i, c in enumerate(cum) if u < c or i == len(cum) - 1)]
                return event

            cutoffs = events.pipeline | "NoTimeCutoffs" >> beam.Create([{}])
            return events | "AssignRandomSplit" >> beam.Map(assign_random), cutoffs

        if self._eval_start is not None:
            cut = {"eval_start": self._eval_start}
            if self._test_start is not None:
                cut["test_start"] = self._test_start
            cutoffs = events.pipeline | "CreateTimeCutoffs" >> beam.Create([cut])
        else:
            cutoffs = events | "TimeCutoffs" >> TimeCutoffs(self._eval_fraction, self._test_fraction)

        def assign_time(event, cut):
            if event["split"] is None:
                ts = event["timestamp"]
                if "test_start" in cut and ts >= cut["test_start"]:
                    event["split"] = "test"
                elif ts >= cut["eval_start"]:
                    event["split"] = "eval"
                else:
                    event["split"] = "train"
            return event

        return events | "AssignTimeSplit" >> beam.Map(
            assign_time, cut=beam.pvalue.AsSingleton(cutoffs)), cutoffs


def _sum_pairs(pairs):
    n = clicks = 0
    for a, b in pairs:
        n += a
        clicks += b
    return n, clicks


def _domain_ctr(label_counts):
    """{domain: training CTR} from [((domain, label), count)]."""
    n, clicks = collections.Counter(), collections.Counter()
    for (domain, label), count in label_counts:
        n[domain] += count
        clicks[domain] += count * label
    return {d: clicks[d] / n[d] for d in n}


class DomainStatistics(beam.PTransform):
    """Training-window statistics: each domain's CTR, and each (item, domain)'s impressions and clicks.

    Only events of the train split are counted, so no statistic ever sees the eval window.

    Returns:
        (domain_ctr, item_domain_counts): a singleton {domain: ctr} and (item, domain) -> (n, clicks).
    """

    def expand(self, events):
        train = events | "KeepTrainEvents" >> beam.Filter(lambda e: e["split"] == "train")
        domain_counts = train | "CountTrainEventsPerDomainLabel" >> CountPerKey(
            lambda e: ((e["domain"], e["label"]),))
        domain_ctr = (domain_counts
                      | "CollectDomainCounts" >> beam.combiners.ToList()
                      | "DomainCtr" >> beam.Map(_domain_ctr))
        item_counts = (train
                       | "CountTrainEventsPerItemDomainLabel" >> CountPerKey(
                           lambda e: ((e["item_id"], e["domain"], e["label"]),))
                       | "KeyLabelCountsByItemDomain" >> beam.Map(
                           lambda kv: ((kv[0][0], kv[0][1]), (kv[1], kv[1] * kv[0][2])))
                       | "SumImpressionsAndClicks" >> beam.CombinePerKey(_sum_pairs))
        return domain_ctr, item_counts


def item_stat_values(counts, prior, min_events):
    """The item domain statistics of training-window `counts` (n, clicks) (`fs.domain_stat_values`)."""
    n, clicks = counts if counts else (0, 0)
    return fs.domain_stat_values(fs.ITEM_DOMAIN_STATS, n, clicks, prior, min_events)


class _SequencesFn(beam.DoFn):
    """One user's events -> records with behaviour sequences and user statistics, and the user's
    feature-store records (tagged `STORE`)."""

    def __init__(self, side_features, category_feature, sequence_length, sequence_events, order,
                 min_stat_events=fs.MIN_STAT_EVENTS):
        if order not in ("time", "file", "none"):
            raise ValueError(f"order must be 'time', 'file' or 'none'. Received: order={order!r}")
        self._min_events = min_stat_events
        self._side = [f.name for f in side_features]
        self._user_features = [f.name for f in side_features if f.role == fs.ROLE_USER]
        self._list_lengths = {f.name: f.length for f in side_features if f.kind == fs.KIND_CATEGORICAL_LIST}
        self._category = category_feature
        self._T = sequence_length
        self._positive_only = sequence_events == "positive"
        self._order = order

    def process(self, element, domain_ctr, item_counts):
        _, unique = element  # one user's events, duplicates removed, in time order
        user_counts = collections.defaultdict(lambda: [0, 0])
        for e in unique:
            if e["split"] == "train":
                c = user_counts[e["domain"]]
                c[0] += 1
                c[1] += e["label"]

        T = self._T
        hist_train = collections.deque(maxlen=T)  # eligible train events, for train records
        hist_all = collections.deque(maxlen=T)    # eligible events of any split, for eval/test records
        i = 0
        while i < len(unique):
            # Events sharing a timestamp do not see each other: history is *strictly* earlier.
            j = i + 1
            if self._order == "time":
                while j < len(unique) and unique[j]["timestamp"] == unique[i]["timestamp"]:
                    j += 1
            group = unique[i:j]
            for e in group:
                history = hist_train if e["split"] == "train" else hist_all
                yield self._record(e, history, user_counts, domain_ctr, item_counts)
            if self._order != "none":
                for e in group:
                    if e["label"] == 1 or not self._positive_only:
                        entry = (e["item_id"], e["features"].get(self._category, fs.PAD) if self._category
                                 else fs.PAD, e["domain"])
                        hist_all.append(entry)
                        if e["split"] == "train":
                            hist_train.append(entry)
            i = j
        # The feature store: what the user's next record (after the last event, so seeing every
        # split) would carry, once per domain the user has events in.
        latest = unique[-1]
        # The user's features and cross-domain sequence are the same in every domain; the statistics are not.
        user = {fs.USER_ID: latest["user_id"], fs.TIMESTAMP: latest["timestamp"], **self._sequence(hist_all),
                **{name: self._side_value(latest, name) for name in self._user_features}}
        for domain in sorted({e["domain"] for e in unique}):
            yield beam.pvalue.TaggedOutput(STORE, {**user, fs.DOMAIN: domain,
                                                   **self._user_stats(domain, user_counts, domain_ctr)})

    def _sequence(self, history):
        """The behaviour sequence features of `history` (oldest first): most recent first, padded to T."""
        recent = list(reversed(history))
        pad = [fs.PAD] * (self._T - len(recent))
        return {
            fs.HIST_ITEM_ID: [h[0] for h in recent] + pad,
            fs.HIST_CATEGORY: [h[1] for h in recent] + pad,
            fs.HIST_DOMAIN: [h[2] for h in recent] + pad,
            fs.HIST_LENGTH: len(recent),
        }

    def _user_stats(self, domain, user_counts, domain_ctr):
        """The user domain statistics of the user in `domain` (`fs.domain_stat_values`)."""
        n, clicks = user_counts.get(domain, (0, 0))
        return fs.domain_stat_values(fs.USER_DOMAIN_STATS, n, clicks, domain_ctr.get(domain, 0.0), self._min_events)

    def _side_value(self, e, name):
        value = e["features"][name]
        if name in self._list_lengths:
            value = list(value) + [fs.PAD] * (self._list_lengths[name] - len(value))
        return value

    def _record(self, e, history, user_counts, domain_ctr, item_counts):
        domain = e["domain"]
        rec = {
            fs.USER_ID: e["user_id"], fs.ITEM_ID: e["item_id"], fs.DOMAIN: domain,
            fs.LABEL: e["label"], fs.TIMESTAMP: e["timestamp"],
            **self._user_stats(domain, user_counts, domain_ctr), **self._sequence(history),
            "split": e["split"],
        }
        rec.update(item_stat_values(item_counts.get((e["item_id"], domain)), domain_ctr.get(domain, 0.0),
                                    self._min_events))
        for name in self._side:
            rec[name] = self._side_value(e, name)
        return rec


def _position(ref: str):
    path, _, line = ref.rpartition(":")
    return path, int(line)


def _event_order(e):
    return e["timestamp"], _position(e["ref"])


class _DropDuplicatesFn(beam.DoFn):
    def process(self, element):
        user, events = element
        # Duplicates: the same raw row again; the first by file position is kept.
        seen = {}
        unique = []
        for e in sorted(events, key=lambda e: _position(e["ref"])):
            first = seen.setdefault(e["raw"], e["ref"])
            if first != e["ref"]:
                Metrics.counter("mdr.rejected", "duplicate row").inc()
                yield beam.pvalue.TaggedOutput(REJECTED, rejected_record(
                    e["ref"], f"duplicate row (first seen at {first})", e["raw"]))
            else:
                unique.append(e)
        unique.sort(key=_event_order)
        yield user, unique


class UserHistories(beam.PTransform):
    """(user, events in time order) with duplicate rows removed (they go to the rejected output).

    Duplicates are dropped here, before any statistic is computed, so a repeated row never counts
    twice. Ties in time are ordered by file position.

    Returns:
        (histories, rejected)
    """

    def expand(self, events):
        out = (events
               | "KeyEventsByUser" >> beam.Map(lambda e: (e["user_id"], e))
               | "GroupEventsByUser" >> beam.GroupByKey()
               | "DropDuplicateRows" >> beam.ParDo(_DropDuplicatesFn()).with_outputs(REJECTED, main="histories"))
        return out.histories, out[REJECTED]


class BehaviourSequences(beam.PTransform):
    """Records: each event with its user's behaviour sequence and user/item domain statistics; and
    the feature store: each user's latest features, statistics and sequence, per domain.

    The sequence of an event holds the user's `sequence_length` most recent *strictly earlier*
    events (positives only by default), most recent first; records of the train split only see
    train events, so nothing of the eval window leaks into training. Statistics are the training
    window's, the same on every record of a key; keys with fewer than `min_stat_events` training
    events get the prior's clicks and CTR (`fs.domain_stat_values`).

    The store holds, for every (user, domain) with an event, the user features of the user's latest
    event and the statistics and sequence that the user's next record in that domain would carry
    (after the end of the data, so every split's events are in it): query time reads exactly what
    the one sequence rule and the one statistics rule give, never a second implementation.

    Args:
        order: 'time' (events sharing a timestamp do not see each other), 'file' (no timestamps:
            file position orders the events) or 'none' (no order known: empty sequences).

    Returns:
        (records, store)
    """

    def __init__(self, side_features, category_feature, sequence_length, sequence_events, order,
                 domain_ctr, item_counts, min_stat_events=fs.MIN_STAT_EVENTS):
        super().__init__()
        self._fn = _SequencesFn(side_features, category_feature, sequence_length, sequence_events, order,
                                min_stat_events)
        self._domain_ctr = domain_ctr
        self._item_counts = item_counts

    def expand(self, histories):
        out = histories | "BuildSequencesAndUserStats" >> beam.ParDo(
            self._fn, domain_ctr=beam.pvalue.AsSingleton(self._domain_ctr),
            item_counts=beam.pvalue.AsDict(self._item_counts)).with_outputs(STORE, main="records")
        return out.records, out[STORE]


def _token_keys(names, list_names):
    scalars = [n for n in names if n not in list_names]
    lists = [n for n in names if n in list_names]

    def keys(rec):
        out = [(n, rec[n]) for n in scalars]
        for n in lists:
            out.extend((n, v) for v in rec[n])
        return out  # padding ("") is counted too and dropped once, after the sums
    return keys


class Vocabularies(beam.PTransform):
    """(feature, [tokens]) of every categorical feature, from the train records.

    Tokens seen fewer than `min_count` times are left out (they map to the OOV bucket); the rest
    are ordered by frequency, then token, so the file is deterministic.
    """

    def __init__(self, names: Sequence[str], list_names: Sequence[str], min_count: int):
        super().__init__()
        self._names = list(names)
        self._list_names = set(list_names)
        self._min_count = min_count

    def expand(self, train_records):
        min_count = self._min_count
        return (train_records
                | "CountTokens" >> CountPerKey(_token_keys(self._names, self._list_names))
                | "DropPaddingAndRareTokens" >> beam.Filter(lambda kv: kv[1] >= min_count and kv[0][1] != fs.PAD)
                | "KeyTokensByFeature" >> beam.Map(lambda kv: (kv[0][0], (kv[1], kv[0][1])))
                | "GroupTokensByFeature" >> beam.GroupByKey()
                | "SortTokensByFrequency" >> beam.MapTuple(
                    lambda name, pairs: (name, [t for _, t in sorted(pairs, key=lambda p: (-p[0], p[1]))])))


class _BatchValuesPerBundle(beam.DoFn):
    def __init__(self, names):
        self._names = list(names)

    def start_bundle(self):
        self._acc = {n: [] for n in self._names}

    def process(self, rec):
        for n in self._names:
            self._acc[n].append(rec[n])

    def finish_bundle(self):
        for n, values in self._acc.items():
            if values:
                yield _emit_window((n, values))
        self._acc = {n: [] for n in self._names}


def boundaries_from_quantiles(quantiles: Sequence[float]) -> List[float]:
    """Distinct inner quantiles: the bucket boundaries (ends dropped, repeats of heavy values merged)."""
    inner = list(quantiles[1:-1])
    out = []
    for q in inner:
        q = float(q)
        if not out or q > out[-1]:
            out.append(q)
    return out


class QuantileBoundaries(beam.PTransform):
    """(feature, boundaries) of every numeric feature: approximate quantiles of the train records."""

    def __init__(self, names: Sequence[str], num_buckets: int):
        super().__init__()
        self._names = list(names)
        self._num_buckets = num_buckets

    def expand(self, train_records):
        return (train_records
                | "BatchNumericValues" >> beam.ParDo(_BatchValuesPerBundle(self._names))
                | "NumericQuantiles" >> beam.ApproximateQuantiles.PerKey(self._num_buckets + 1, input_batched=True)
                | "QuantilesToBoundaries" >> beam.MapTuple(lambda n, q: (n, boundaries_from_quantiles(q))))


class ItemCorpus(beam.PTransform):
    """One record per (item, domain) seen in the logs: the item's latest features and its statistics."""

    def __init__(self, item_features, domain_ctr, item_counts, min_stat_events=fs.MIN_STAT_EVENTS):
        super().__init__()
        self._min_events = min_stat_events
        self._item_features = item_features
        self._domain_ctr = domain_ctr
        self._item_counts = item_counts

    def expand(self, events):
        names = [f.name for f in self._item_features]
        lists = {f.name: f.length for f in self._item_features if f.kind == fs.KIND_CATEGORICAL_LIST}
        min_events = self._min_events

        def latest(values):
            return max(values, key=lambda v: v[0])

        def to_record(kv, domain_ctr, item_counts):
            key, (_, features) = kv
            item, domain = key
            rec = {fs.ITEM_ID: item, fs.DOMAIN: domain}
            for n in names:
                v = features[n]
                rec[n] = list(v) + [fs.PAD] * (lists[n] - len(v)) if n in lists else v
            rec.update(item_stat_values(item_counts.get(key), domain_ctr.get(domain, 0.0), min_events))
            return rec

        return (events
                | "KeyItemFeaturesByItemDomain" >> beam.Map(
                    lambda e: ((e["item_id"], e["domain"]),
                               (_event_order(e), {n: e["features"][n] for n in names})))
                | "LatestItemFeatures" >> beam.CombinePerKey(latest)
                | "ItemCorpusRecords" >> beam.Map(
                    to_record, domain_ctr=beam.pvalue.AsSingleton(self._domain_ctr),
                    item_counts=beam.pvalue.AsDict(self._item_counts)))


class _EncodeExamplesFn(beam.DoFn):
    """Batches of record dicts -> serialized `tf.train.Example`s, encoded by tfx-bsl in C++."""

    def __init__(self, features: Sequence[fs.Feature]):
        self._features = list(features)

    def setup(self):
        from tfx_bsl.coders import example_coder

        self._encoder = example_coder.RecordBatchToExamplesEncoder()

    def process(self, batch):
        import numpy as np
        import pyarrow as pa

        arrays, names = [], []
        n = len(batch)
        for f in self._features:
            L = f.length
            col = [r[f.name] for r in batch]
            if f.is_list:
                flat = [v for values in col for v in values]
            else:
                flat = col
            if f.record_dtype == "bytes":
                values = pa.array(flat, type=pa.binary())  # takes str as UTF-8, in C
            elif f.record_dtype == "float":
                values = pa.array(flat, type=pa.float32())
            else:
                values = pa.array(flat, type=pa.int64())
            offsets = pa.array(np.arange(0, n * L + 1, L, dtype=np.int32))
            arrays.append(pa.ListArray.from_arrays(offsets, values))
            names.append(f.name)
        yield self._encoder.encode(pa.RecordBatch.from_arrays(arrays, names))


class EncodeExamples(beam.PTransform):
    """Batches (lists) of serialized `tf.train.Example`s of records, with exactly `features`.

    Batches, not single examples, travel on: the TFRecord writer frames a batch per call.
    """

    def __init__(self, features: Sequence[fs.Feature]):
        super().__init__()
        self._features = list(features)

    def expand(self, records):
        return (records
                | "BatchRecords" >> beam.BatchElements(min_batch_size=256, max_batch_size=4096)
                | "EncodeBatchesAsExamples" >> beam.ParDo(_EncodeExamplesFn(self._features)))
