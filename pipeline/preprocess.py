"""The preprocessing job: raw interaction logs -> sharded TFRecords, vocabularies and the feature spec.

Run it through `mdr preprocess ...`, or as a plain Beam program on any runner:

    python -m pipeline.preprocess --source movielens-1m --input ../shared/datasets/movielens-1m \\
        --output gs://bucket/ml1m --runner DataflowRunner --project P --region R \\
        --temp_location gs://bucket/tmp --setup_file ./setup.py

Flags this module does not know are Beam's `PipelineOptions`. Without `--runner`, the local
DirectRunner runs with one worker per core (and no attempt to download the Prism runner).

Output layout (the names are `mdr_contract.artifacts`'):
    train/ eval/ test/   part-*.tfrecord.gz   gzip TFRecords of tf.train.Example (one interaction each)
    train/               holdout-*.tfrecord.gz  1 train record in 20, written apart: the validation rows of
                                              data without a test split (the latest of a time split)
    items/               part-*.tfrecord.gz   the item corpus: one record per (item, domain)
    store/               part-*.tfrecord.gz   the feature store: one record per (user, domain)
    rejected/            rejected-*.jsonl     {"ref": "file:line", "reason": ..., "raw": ...}
    vocab/<feature>.txt                       vocabularies, most frequent first
    feature_spec.json                         the concrete spec models are built from
    metadata.json                             counts (rows_read = rows_written + rows_rejected), domain priors,
                                              the split rule, time cutoffs and holdout
    _SUCCESS                                  written last: the output is complete
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import logging
import os
import re
import shutil
import time
from typing import List, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from mdr_contract import artifacts, files
from mdr_contract import feature_spec as fs
from pipeline import loopback, progress, sources
from pipeline import transforms as T
from pipeline.tfrecords import WriteTFRecords

LOCAL_RUNNER_ARGS = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                     "--default_sdk_harness_log_level=CRITICAL"]
IN_PROCESS_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]  # later flags win


class FlagError(ValueError):
    """A flag's value is refused; the message names the flag (`mdr` exits 2: misuse). `mdr train` raises it
    for its flags too."""


@dataclasses.dataclass
class PreprocessConfig:
    """What the job does (Beam's own options travel separately as `PipelineOptions`).

    Args:
        source: one of `sources.SOURCES`.
        input: input file, glob or folder (per source).
        output: output folder (local or any Beam filesystem).
        mapping: the csv source's column mapping (JSON file or inline JSON).
        split: 'time' (cutoffs) or 'random' (seeded ratios); a source's split column overrides both.
        seed: seed of the random split.
        ratios: train, eval[, test] fractions of the random split.
        eval_start, test_start: time cutoffs (timestamps or ISO dates); default from the fractions.
        eval_fraction, test_fraction: fractions of events after the computed time cutoffs.
        sequence_length: T, the behaviour sequence length.
        sequence_events: 'positive' (clicks only) or 'all' events make up behaviour sequences.
        min_count: tokens seen fewer times in train are out of vocabulary.
        min_stat_events: keys (user or item, domain) with fewer training events get the domain prior's
            clicks and CTR instead of their own (with so few, a record's own label would be its CTR).
        num_buckets: quantile buckets of numeric features.
        max_domains: keep this many most frequent domains, fold the rest into 'other' (sources
            without a fixed domain list only).
        num_shards: TFRecord shards per split (0: the runner decides).
        label_threshold: positives are labels (ratings) >= this (csv / movielens-1m).
        overwrite: replace an existing output folder.
    """

    source: str
    input: str
    output: str
    mapping: Optional[str] = None
    split: str = "time"
    seed: int = 2022
    ratios: Sequence[float] = (0.8, 0.1, 0.1)
    eval_start: Optional[str] = None
    test_start: Optional[str] = None
    eval_fraction: float = 0.1
    test_fraction: float = 0.0
    sequence_length: int = 50
    sequence_events: str = "positive"
    min_count: int = 1
    min_stat_events: int = fs.MIN_STAT_EVENTS
    num_buckets: int = 10
    max_domains: Optional[int] = None
    num_shards: int = 0
    label_threshold: Optional[float] = None
    overwrite: bool = False

    def validate(self, source: sources.Source) -> None:
        """Contradictory or missing values fail here, naming the flag, before any work starts."""
        if self.split not in ("time", "random"):
            raise FlagError(f"--split must be 'time' or 'random'. Received: --split {self.split}")
        mapping = getattr(source, "mapping", None)
        if self.split == "time" and not source.has_timestamp and not (mapping and mapping.split):
            raise FlagError("--split time needs timestamps, and this input has no timestamp column: "
                             "use --split random (or give the mapping a split column)")
        if not 2 <= len(self.ratios) <= 3 or any(r < 0 for r in self.ratios) or sum(self.ratios) <= 0:
            raise FlagError(f"--ratios takes 2 or 3 non-negative fractions. Received: --ratios {self.ratios}")
        if abs(sum(self.ratios) - 1.0) > 1e-6:
            raise FlagError(f"--ratios must sum to 1 (train,eval[,test]). Received: --ratios "
                             f"{','.join(str(r) for r in self.ratios)} (sum {sum(self.ratios):g})")
        if self.split == "random" and self.ratios[0] <= 0:
            raise FlagError(f"--ratios needs a positive train fraction. Received: --ratios {self.ratios}")
        if not 0 < self.eval_fraction + self.test_fraction < 1 or self.eval_fraction <= 0 or self.test_fraction < 0:
            raise FlagError("--eval-fraction must be in (0, 1), --test-fraction in [0, 1), their sum < 1. "
                             f"Received: --eval-fraction {self.eval_fraction} --test-fraction {self.test_fraction}")
        if self.test_start is not None and self.eval_start is None:
            raise FlagError("--test-start needs --eval-start")
        if self.sequence_length < 1:
            raise FlagError(f"--sequence-length must be >= 1. Received: --sequence-length {self.sequence_length}")
        if self.sequence_events not in ("positive", "all"):
            raise FlagError(f"--sequence-events must be 'positive' or 'all'. Received: {self.sequence_events}")
        if self.min_count < 1:
            raise FlagError(f"--min-count must be >= 1. Received: --min-count {self.min_count}")
        if self.min_stat_events < 1:
            raise FlagError(f"--min-stat-events must be >= 1. Received: --min-stat-events {self.min_stat_events}")
        if self.num_buckets < 2:
            raise FlagError(f"--num-buckets must be >= 2. Received: --num-buckets {self.num_buckets}")
        if self.max_domains is not None and self.max_domains < 1:
            raise FlagError(f"--max-domains must be >= 1. Received: --max-domains {self.max_domains}")
        if self.num_shards < 0:
            raise FlagError(f"--num-shards must be >= 0. Received: --num-shards {self.num_shards}")

    def time_cutoffs(self):
        eval_start = sources.parse_timestamp(self.eval_start) if self.eval_start is not None else None
        test_start = sources.parse_timestamp(self.test_start) if self.test_start is not None else None
        if eval_start is not None and test_start is not None and test_start < eval_start:
            raise FlagError(f"--test-start must not be before --eval-start. Received: {self.test_start} < "
                             f"{self.eval_start}")
        return eval_start, test_start


def sequence_order(source: sources.Source) -> str:
    if source.has_timestamp:
        return "time"
    mapping = getattr(source, "mapping", None)
    return "file" if mapping is not None and mapping.order_by_file else "none"


class _WriteSpecAndMetadata(beam.DoFn):
    """Writes vocabularies, `feature_spec.json` and `metadata.json`, once every count is known."""

    def __init__(self, config: PreprocessConfig, source: sources.Source, features: List[fs.Feature],
                 split_rule: str, holdout_start: Optional[int]):
        self._config = config
        self._source = source
        self._features = features
        self._split_rule = split_rule
        self._holdout_start = holdout_start

    def process(self, _, domains, vocabs, boundaries, cutoffs, rows_read, rejected, written, corpus, store,
                domain_ctr, held):
        out = self._config.output
        features = []
        for f in self._features:
            if f.name == fs.DOMAIN:
                tokens = list(domains)
            else:
                tokens = vocabs.get(f.name, []) if f.vocab_file else None
            if tokens is not None:
                files.write_text(os.path.join(out, f.vocab_file), "".join(t + "\n" for t in tokens))
                f = dataclasses.replace(f, vocab_size=len(tokens))
            elif f.vocab_from:  # sequence features index into their source feature's vocabulary
                src = next(g for g in features if g.name == f.vocab_from)
                f = dataclasses.replace(f, vocab_size=src.vocab_size, num_oov_buckets=src.num_oov_buckets)
            if f.kind == fs.KIND_NUMERIC:
                f = dataclasses.replace(f, boundaries=tuple(boundaries.get(f.name, [])))
            features.append(f)
        spec = fs.FeatureSpec(features=features, domains=list(domains),
                              sequence_length=self._config.sequence_length, source=self._source.name,
                              has_timestamp=self._source.has_timestamp)
        spec.save(out)

        per_split = {s: {d: 0 for d in domains} for s in fs.SPLITS}
        for (split, domain), n in written.items():
            per_split[split][domain] = n
        rows_written = sum(written.values())
        rows_rejected = sum(rejected.values())
        metadata = {
            "source": self._source.name,
            "input": self._config.input,
            "rows_read": rows_read,
            "rows_written": rows_written,
            "rows_rejected": rows_rejected,
            "rows_written_per_split": {s: sum(v.values()) for s, v in per_split.items()},
            "rows_written_per_split_domain": per_split,
            "rows_rejected_per_reason": dict(sorted(rejected.items())),
            "items_per_domain": {d: corpus.get(d, 0) for d in domains},
            "store_users_per_domain": {d: store.get(d, 0) for d in domains},
            "domains": list(domains),
            # The training CTR of each domain: the statistics of a key without training events.
            "domain_priors": {d: domain_ctr.get(d, 0.0) for d in domains},
            # Which rule put rows in their split: the input's split column, a time cutoff, or seeded ratios.
            "split_rule": self._split_rule,
            "time_cutoffs": cutoffs,
            # The train records written apart for validation (artifacts.HOLDOUT_PREFIX; counted in train too).
            "holdout": {"rule": "time" if self._holdout_start is not None else "hash",
                        "start": self._holdout_start, "rows": sum(held.values()),
                        "rows_per_domain": {d: held.get(d, 0) for d in domains}},
            "vocab_sizes": {f.name: f.vocab_size for f in features if f.vocab_file},
            "config": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(self._config).items()},
        }
        files.write_text(os.path.join(out, artifacts.METADATA), json.dumps(metadata, indent=2) + "\n")
        if rows_read != rows_written + rows_rejected:
            # Never a silent drop: a mismatch is a bug of the job, and the output must not be used.
            raise RuntimeError(f"reconciliation failed: rows_read={rows_read} != rows_written={rows_written}"
                               f" + rows_rejected={rows_rejected}")
        yield metadata


def split_rule(config: PreprocessConfig, source: sources.Source) -> str:
    """Which rule puts rows in their split: the input's split column, a time cutoff, or seeded ratios."""
    return "column" if getattr(getattr(source, "mapping", None), "split", None) else config.split


def build_pipeline(p: beam.Pipeline, config: PreprocessConfig, source: sources.Source,
                   progress_dir: Optional[str] = None, holdout_start: Optional[int] = None) -> None:
    """Adds the whole job to `p` (sources already checked); with `progress_dir`, the rows read, rejected
    and the records built are also tallied there as they pass (`pipeline.progress`, local runner only).

    `holdout_start` (a time split's, from the first pass: `compute_time_cutoffs`) makes the train records
    from that time on the holdout written apart for validation; without it (or with a split column) one
    train record in `artifacts.HOLDOUT_BUCKETS` by hash (`T.in_holdout`)."""
    out = config.output
    rule = split_rule(config, source)
    holdout_start = holdout_start if rule == "time" else None
    features = fs.record_features(source.side_features, source.category_feature, config.sequence_length)
    eval_start, test_start = config.time_cutoffs()

    lines = p | "ReadRawLines" >> T.ReadRawLines(source.input_patterns(), source.has_header)
    events, parse_rejected = lines | "ParseEvents" >> T.ParseEvents(source)
    events, domains = events | "AssignDomains" >> T.AssignDomains(
        source.domains, config.max_domains if not source.domains else None)
    events, cutoffs = events | "SplitEvents" >> T.SplitEvents(
        config.split, seed=config.seed, ratios=config.ratios, eval_start=eval_start, test_start=test_start,
        eval_fraction=config.eval_fraction, test_fraction=config.test_fraction)
    histories, duplicates = events | "UserHistories" >> T.UserHistories()
    events = histories | "UniqueEvents" >> beam.FlatMap(lambda kv: kv[1])
    domain_ctr, item_counts = events | "DomainStatistics" >> T.DomainStatistics()
    records, store = histories | "BehaviourSequences" >> T.BehaviourSequences(
        source.side_features, source.category_feature, config.sequence_length, config.sequence_events,
        sequence_order(source), domain_ctr, item_counts, config.min_stat_events)
    corpus = events | "ItemCorpus" >> T.ItemCorpus(
        [f for f in source.side_features if f.role == fs.ROLE_ITEM], domain_ctr, item_counts,
        config.min_stat_events)

    train_records = records | "KeepTrainRecords" >> beam.Filter(lambda r: r["split"] == "train")
    categorical = [f for f in features if f.vocab_file and f.role != fs.ROLE_DOMAIN]
    vocabs = train_records | "Vocabularies" >> T.Vocabularies(
        [f.name for f in categorical], [f.name for f in categorical if f.kind == fs.KIND_CATEGORICAL_LIST],
        config.min_count)
    boundaries = train_records | "QuantileBoundaries" >> T.QuantileBoundaries(
        [f.name for f in features if f.kind == fs.KIND_NUMERIC], config.num_buckets)

    def write(pcoll, folder, fields, label, prefix=artifacts.RECORD_PREFIX):
        return (pcoll
                | f"Encode{label}Examples" >> T.EncodeExamples(fields)
                | f"Write{label}TFRecords" >> WriteTFRecords(artifacts.record_prefix(out, folder, prefix),
                                                             config.num_shards))

    def split_index(r, n):  # the train records held out for validation go last, apart from the rest of train
        if r["split"] == "train" and T.in_holdout(r, holdout_start):
            return len(fs.SPLITS)
        return fs.SPLITS.index(r["split"])

    per_split = records | "PartitionRecordsBySplit" >> beam.Partition(split_index, len(fs.SPLITS) + 1)
    for split, pcoll in zip(fs.SPLITS, per_split):
        write(pcoll, split, features, split.capitalize())
    held = per_split[len(fs.SPLITS)]
    write(held, "train", features, "TrainHoldout", prefix=artifacts.HOLDOUT_PREFIX)
    write(corpus, artifacts.ITEMS, fs.item_corpus_features(features), "ItemCorpus")
    write(store, artifacts.STORE, fs.store_features(features), "FeatureStore")

    rejected = (parse_rejected, duplicates) | "CollectRejectedRows" >> beam.Flatten()
    if progress_dir:
        lines = lines | "TallyRowsRead" >> progress.TallyRows(progress_dir, progress.READ)
        rejected = rejected | "TallyRowsRejected" >> progress.TallyRows(progress_dir, progress.REJECTED)
        records = records | "TallyRecordsBuilt" >> progress.TallyRows(progress_dir, progress.RECORDS)
    (rejected
     | "RejectedRowsToJson" >> beam.Map(lambda r: json.dumps(r, ensure_ascii=False))
     | "WriteRejectedRows" >> beam.io.WriteToText(os.path.join(out, artifacts.REJECTED, artifacts.REJECTED_PREFIX),
                                                  file_name_suffix=artifacts.REJECTED_SUFFIX))

    rows_read = lines | "CountRowsRead" >> beam.combiners.Count.Globally()
    rejected_counts = (rejected
                       | "RejectReasonCategory" >> beam.Map(lambda r: T.reason_category(r["reason"]))
                       | "CountRejectedPerReason" >> beam.combiners.Count.PerElement())
    written_counts = records | "CountRecordsPerSplitDomain" >> T.CountPerKey(lambda r: ((r["split"], r["domain"]),))
    held_counts = held | "CountHoldoutRecordsPerDomain" >> T.CountPerKey(lambda r: (r[fs.DOMAIN],))
    corpus_counts = corpus | "CountItemsPerDomain" >> T.CountPerKey(lambda r: (r[fs.DOMAIN],))
    store_counts = store | "CountStoreUsersPerDomain" >> T.CountPerKey(lambda r: (r[fs.DOMAIN],))
    (p
     | "StartSpecAndMetadata" >> beam.Create([None])
     | "WriteSpecAndMetadata" >> beam.ParDo(
         _WriteSpecAndMetadata(config, source, features, rule, holdout_start),
         domains=beam.pvalue.AsSingleton(domains), vocabs=beam.pvalue.AsDict(vocabs),
         boundaries=beam.pvalue.AsDict(boundaries), cutoffs=beam.pvalue.AsSingleton(cutoffs),
         rows_read=beam.pvalue.AsSingleton(rows_read), rejected=beam.pvalue.AsDict(rejected_counts),
         written=beam.pvalue.AsDict(written_counts), corpus=beam.pvalue.AsDict(corpus_counts),
         store=beam.pvalue.AsDict(store_counts), domain_ctr=beam.pvalue.AsSingleton(domain_ctr),
         held=beam.pvalue.AsDict(held_counts)))


TIME_CUTOFFS_FILE = ".time-cutoffs.json"  # the first pass's answer, removed once read


def _write_cutoffs(cut: dict, path: str) -> None:
    files.write_text(path, json.dumps(cut))


def compute_time_cutoffs(config: PreprocessConfig, source: sources.Source, options: PipelineOptions) -> dict:
    """The time split's cutoffs by `--eval-fraction` / `--test-fraction` and the start of the train window's
    latest rows held out for validation (`holdout_start`), from a first pass over the input; with
    `--eval-start` given, only `holdout_start`.

    The main job then splits by explicit cutoffs. Computing them inside it (a side input from the same
    events) lost records on Beam's local multi-process runner at 3M rows (three runs, a different shortfall
    each; the same input and job with the cutoffs given reconciled: docs/results.md, "Cost against the
    work"). The pass reads and parses each file where it is read, and only the partial quantiles leave
    the worker; on the local runner it runs in this process (no worker processes to start or feed).
    """
    path = os.path.join(config.output, TIME_CUTOFFS_FILE)
    with beam.Pipeline(options=options) as p:
        lines = p | "ReadRawLines" >> T.ReadRawLines(source.input_patterns(), source.has_header, spread=False)
        events, _ = lines | "ParseEvents" >> T.ParseEvents(source)
        eval_start = config.time_cutoffs()[0]
        cutoffs = (events | "TimeCutoffs" >> T.TimeCutoffs(config.eval_fraction, config.test_fraction)
                   if eval_start is None else events | "TrainHoldoutStart" >> T.TrainHoldoutStart(eval_start))
        cutoffs | "WriteTimeCutoffs" >> beam.Map(_write_cutoffs, path)
    cut = json.loads(files.read_text(path))
    FileSystems.delete([path])
    return cut


def with_time_cutoffs(config: PreprocessConfig, cut: dict) -> PreprocessConfig:
    """`config` splitting at the computed `cut` (no events: every cutoff at 0, nothing to split)."""
    with_test = config.test_fraction > 0
    return dataclasses.replace(config, eval_start=str(cut.get("eval_start", 0)),
                               test_start=str(cut.get("test_start", 0)) if with_test else None)


def prepare_output(output: str, overwrite: bool) -> None:
    """Refuses to mix runs: an existing non-empty output needs `overwrite`, which clears it first."""
    existing = FileSystems.match([os.path.join(output, "**")])[0].metadata_list if FileSystems.exists(output) else []
    if not existing:
        return
    if not overwrite:
        raise FlagError(f"--output {output} is not empty; pass --overwrite to replace it")
    FileSystems.delete([m.path for m in existing])


def is_complete(output: str) -> bool:
    return FileSystems.exists(os.path.join(output, artifacts.SUCCESS))


def read_metadata(output: str) -> dict:
    files.check_complete(output)
    return json.loads(files.read_text(os.path.join(output, artifacts.METADATA)))


# Runners whose workers are processes of this machine (the progress tallies need a shared local folder).
LOCAL_RUNNERS = ("directrunner", "switchingdirectrunner", "bundlebaseddirectrunner", "fnapirunner")


def is_local_runner(args: List[str]) -> bool:
    """Whether the `--runner=` of normalized `args` (`runner_args`, then the local default) runs here."""
    runners = [a.split("=", 1)[1] for a in args if a.startswith("--runner=")]
    return bool(runners) and runners[-1].rsplit(".", 1)[-1].lower() in LOCAL_RUNNERS


# Runners Beam ships without resolving their plain names (`StandardOptions.ALL_KNOWN_RUNNERS` lacks them).
SHIPPED_RUNNERS = {"daskrunner": "apache_beam.runners.dask.dask_runner.DaskRunner"}
# Runners that cannot run this job, and why: refused before any work instead of failing inside it.
REFUSED_RUNNERS = {
    "apache_beam.runners.dask.dask_runner.DaskRunner":
        f"Beam {beam.__version__}'s DaskRunner hands every output of a multi-output step (ParDo.with_outputs, "
        "Partition) to each consumer and runs only the last branch of a job with several outputs "
        "(docs/scale-out.md has both reproductions); run the job on the portable runner, Flink, Spark or Dataflow"}


def runner_args(args: List[str]) -> List[str]:
    """`args` with a plain `--runner` name of a runner Beam ships resolved to its module path; ValueError
    (naming the flag) for a runner that cannot run this job."""
    out = []
    for i, arg in enumerate(args):
        if arg == "--runner" and i + 1 < len(args):
            continue  # the value follows: handled below as one `--runner=VALUE`
        if i and args[i - 1] == "--runner":
            arg = f"--runner={arg}"
        if arg.startswith("--runner="):
            name = arg.split("=", 1)[1]
            path = SHIPPED_RUNNERS.get(name.lower(), SHIPPED_RUNNERS.get(name.lower() + "runner", name))
            if path in REFUSED_RUNNERS:
                raise FlagError(f"--runner {name}: {REFUSED_RUNNERS[path]}")
            _check_runner(name, path)
            arg = f"--runner={path}"
        out.append(arg)
    return out


# How an InputError raised on a worker reads once the runner has turned it into text.
_WORKER_INPUT_ERROR = re.compile(r"InputError: (.+?)(?: \[while running [^\]]*\])*$", re.M)


def input_error_message(error: BaseException) -> Optional[str]:
    """The message of the InputError a failed job's exception is, or carries as a worker's text; None if none."""
    seen = error
    while seen is not None:
        if isinstance(seen, sources.InputError):
            return _WORKER_INPUT_ERROR.sub(r"\1", f"InputError: {seen}").strip()
        seen = seen.__cause__ or seen.__context__
    found = _WORKER_INPUT_ERROR.findall(str(error))
    return found[-1].strip() if found else None


def remove_temporary_folders(output: str) -> None:
    """Deletes the `beam-temp-*` folders a failed job's file sinks leave under `output`."""
    if "://" not in output:  # local: the folders may be empty, which a file match would not see
        for path in glob.glob(os.path.join(output, "**", "beam-temp-*"), recursive=True):
            shutil.rmtree(path, ignore_errors=True)
        return
    try:
        temps = [m.path for m in FileSystems.match([os.path.join(output, "**", "beam-temp-*")])[0].metadata_list]
    except Exception:  # noqa: BLE001 (nothing matched, or the filesystem is gone: nothing to clean)
        return
    folders = sorted({path[:path.index("beam-temp-")] + path[path.index("beam-temp-"):].split("/")[0] + "/"
                      for path in temps})
    if folders:
        FileSystems.delete(folders)


def _check_runner(name: str, path: str) -> None:
    """ValueError naming the flag when Beam cannot make the runner (unknown name, missing extra)."""
    from apache_beam.runners.runner import create_runner

    try:
        create_runner(path)
    except (ValueError, ImportError) as e:
        reason = " ".join(str(e).split())
        raise FlagError(f"--runner {name}: {reason}") from None


def preprocess(config: PreprocessConfig, pipeline_args: Optional[List[str]] = None,
               progress_callback: Optional[progress.Callback] = None, progress_every: float = 5.0) -> dict:
    """Runs the job; returns the metadata dict. Raises ValueError/InputError before any work on bad input.

    `progress_callback(counts, seconds, final)` is called every `progress_every` seconds while the job
    runs and once at its end, with the rows read, rejected and the records built so far
    (`pipeline.progress`; `progress.printer()` prints them); on the local runner only (elsewhere the
    runner's console shows Beam's counters).
    """
    args = runner_args(list(pipeline_args or []))
    source = sources.make_source(config.source, config.input, config.mapping, config.label_threshold)
    config.validate(source)
    config.time_cutoffs()
    source.check()
    prepare_output(config.output, config.overwrite)
    if not any(a.startswith("--runner") for a in args):
        args = LOCAL_RUNNER_ARGS + args
    local = is_local_runner(args)
    if not any(a.startswith("--direct_num_workers") for a in args):
        args.append(f"--direct_num_workers={os.cpu_count() or 1}")
    options = PipelineOptions(args)
    loopback.install()
    start = time.time()
    watcher = progress.Watcher(progress_callback, progress_every) if progress_callback and local else None
    try:
        holdout_start = None
        # A first pass for the cutoffs not given, and for the holdout's start of data split by time.
        if config.split == "time" and (config.time_cutoffs()[0] is None or split_rule(config, source) == "time"):
            first_pass = PipelineOptions(args + IN_PROCESS_ARGS) if local else options
            cut = compute_time_cutoffs(config, source, first_pass)
            if config.time_cutoffs()[0] is None:
                config = with_time_cutoffs(config, cut)
            holdout_start = cut.get("holdout_start")
        with watcher or contextlib.nullcontext():
            with beam.Pipeline(options=options) as p:
                build_pipeline(p, config, source, progress_dir=watcher.folder if watcher else None,
                               holdout_start=holdout_start)
    except Exception as e:
        remove_temporary_folders(config.output)
        message = input_error_message(e)
        if message is not None:  # an unusable input found by a worker: its one line, not the runner's traceback
            raise sources.InputError(message) from None
        raise
    metadata = json.loads(files.read_text(os.path.join(config.output, artifacts.METADATA)))
    metadata["wall_seconds"] = round(time.time() - start, 2)
    metadata["rows_per_second"] = round(metadata["rows_read"] / max(metadata["wall_seconds"], 1e-9), 1)
    files.write_text(os.path.join(config.output, artifacts.METADATA), json.dumps(metadata, indent=2) + "\n")
    files.write_text(os.path.join(config.output, artifacts.SUCCESS), "")
    return metadata


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's own flags (shared by `mdr preprocess` and `python -m pipeline.preprocess`)."""
    parser.add_argument("--source", required=True, choices=sources.SOURCES, help="input format")
    parser.add_argument("--input", required=True, help="input file, glob or folder")
    parser.add_argument("--output", required=True, help="output folder (local, gs://, ...)")
    parser.add_argument("--mapping", help="csv source: column mapping, a JSON file or inline JSON")
    parser.add_argument("--split", default="time", choices=("time", "random"),
                        help="train/eval split: by time cutoff, or random with --seed and --ratios")
    parser.add_argument("--seed", type=int, default=2022, help="seed of the random split")
    parser.add_argument("--ratios", default="0.8,0.1,0.1", help="train,eval[,test] fractions (random split)")
    parser.add_argument("--eval-start", help="time split: first eval timestamp (seconds or ISO date); a first "
                        "pass over the input still finds where the train rows held out for validation begin")
    parser.add_argument("--test-start", help="time split: first test timestamp (seconds or ISO date)")
    parser.add_argument("--eval-fraction", type=float, default=0.1,
                        help="time split without --eval-start: fraction of events in eval")
    parser.add_argument("--test-fraction", type=float, default=0.0,
                        help="time split without --test-start: fraction of events in test")
    parser.add_argument("--sequence-length", type=int, default=50, help="behaviour sequence length T")
    parser.add_argument("--sequence-events", default="positive", choices=("positive", "all"),
                        help="which earlier events make up the behaviour sequence")
    parser.add_argument("--min-count", type=int, default=1, help="vocabulary frequency threshold")
    parser.add_argument("--num-buckets", type=int, default=10, help="quantile buckets of numeric features")
    parser.add_argument("--min-stat-events", type=int, default=fs.MIN_STAT_EVENTS,
                        help="keys with fewer training events get the domain's prior clicks and CTR")
    parser.add_argument("--max-domains", type=int, default=None,
                        help="keep the N most frequent domains, fold the rest into 'other'")
    parser.add_argument("--num-shards", type=int, default=0, help="TFRecord shards per split (0: automatic)")
    parser.add_argument("--label-threshold", type=float, default=None,
                        help="positives are labels (ratings) >= this (csv, movielens-1m)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    try:
        ratios = tuple(float(x) for x in args.ratios.split(","))
    except ValueError:
        raise FlagError(f"--ratios takes comma-separated numbers. Received: --ratios {args.ratios}") from None
    max_domains = args.max_domains
    if max_domains is None and args.source == "taobao":
        max_domains = TAOBAO_DEFAULT_DOMAINS
    return PreprocessConfig(
        source=args.source, input=args.input, output=args.output, mapping=args.mapping, split=args.split,
        seed=args.seed, ratios=ratios, eval_start=args.eval_start, test_start=args.test_start,
        eval_fraction=args.eval_fraction, test_fraction=args.test_fraction,
        sequence_length=args.sequence_length, sequence_events=args.sequence_events, min_count=args.min_count,
        min_stat_events=args.min_stat_events, num_buckets=args.num_buckets, max_domains=max_domains,
        num_shards=args.num_shards, label_threshold=args.label_threshold, overwrite=args.overwrite)


# Taobao: the most frequent item categories become domains, the rest 'other'.
TAOBAO_DEFAULT_DOMAINS = 5


def summary(metadata: dict) -> str:
    """A short human-readable account of a run's counts."""
    lines = [f"rows read {metadata['rows_read']:,} = written {metadata['rows_written']:,}"
             f" + rejected {metadata['rows_rejected']:,}"]
    for split, per_domain in metadata["rows_written_per_split_domain"].items():
        if sum(per_domain.values()):
            lines.append(f"  {split:5s} " + "  ".join(f"{d}={n:,}" for d, n in per_domain.items()))
    held = metadata.get("holdout")
    if held:  # what training validates on when there is no test split
        which = f"the latest, from timestamp {held['start']}" if held["rule"] == "time" else "by hash"
        lines.append(f"  of train, held out for validation: {held['rows']:,} rows (1 in "
                     f"{artifacts.HOLDOUT_BUCKETS}, {which})")
    for reason, n in metadata["rows_rejected_per_reason"].items():
        lines.append(f"  rejected: {reason}: {n:,}")
    lines.append("  items per domain: " + "  ".join(f"{d}={n:,}" for d, n in metadata["items_per_domain"].items()))
    lines.append("  feature store, users per domain: "
                 + "  ".join(f"{d}={n:,}" for d, n in metadata["store_users_per_domain"].items()))
    if "wall_seconds" in metadata:
        lines.append(f"  {metadata['wall_seconds']} s, {metadata['rows_per_second']:,.0f} rows/s")
    return "\n".join(lines)


def run(argv=None) -> dict:
    """Entry point of `python -m pipeline.preprocess`: our flags, then Beam's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    known, pipeline_args = parser.parse_known_args(argv)
    metadata = preprocess(config_from_args(known), pipeline_args)
    print(summary(metadata))
    return metadata


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    run()
