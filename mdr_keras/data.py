"""tf.data input pipelines over the job's TFRecords, parsed with the feature spec."""
from __future__ import annotations

import functools
import json
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from mdr_contract import artifacts, files
from mdr_contract import feature_spec as fs

# Validation rows carved out of the train split when the data has no split left unseen for reporting, one
# record in HOLDOUT_BUCKETS: the latest by time when the data was split by time (the reported split comes
# after the train window, so the validation rows must too: a random sample of the window rewards fitting
# the window's tastes after the later rows have stopped improving), else by hash. Either way the same rows
# on every run and machine. The job writes them apart (`artifacts.HOLDOUT_PREFIX`, `holdout_of`); a folder
# written before it did has them chosen while it is read (by the time quantile, else a hash of the bytes).
HOLDOUT = "holdout"
HOLDOUT_BUCKETS = artifacts.HOLDOUT_BUCKETS
HOLDOUT_MODES = (None, "exclude", "only")


def validation_rows(validation: str):
    """`(split, holdout)` to pass to `make_dataset` for the rows of a validation split name or `HOLDOUT`."""
    return ("train", "only") if validation == HOLDOUT else (validation, None)


def holdout_of(data_dir: str) -> Optional[dict]:
    """`metadata.json`'s "holdout": the train records the job wrote apart for validation (`rule` "time" or
    "hash", the time `start`, `rows`, `rows_per_domain`); None for a folder written before it did."""
    files.check_complete(data_dir)
    return json.loads(files.read_text(os.path.join(data_dir, artifacts.METADATA))).get("holdout")


def holdout_start(data_dir: str) -> Optional[int]:
    """The first timestamp of the holdout when the data was split by time (`metadata.json`'s `split_rule`):
    the train split's (1 - 1 / HOLDOUT_BUCKETS) quantile of `timestamp`; None for data split otherwise, or
    when ties at that quantile would hold out more than twice the share (the holdout is then by hash).
    The job's when it wrote the holdout apart (`holdout_of`), else read from the train split."""
    metadata = files.read_text(os.path.join(data_dir, artifacts.METADATA))
    meta = json.loads(metadata)
    if "holdout" in meta:
        return meta["holdout"]["start"]
    if meta.get("split_rule") != "time" or fs.TIMESTAMP not in fs.FeatureSpec.load(data_dir):
        return None
    return _train_time_quantile(data_dir, metadata)


@functools.lru_cache(maxsize=16)
def _train_time_quantile(data_dir: str, metadata: str) -> Optional[int]:
    """One read of the train timestamps per data folder and job (`metadata`: a job written anew is read anew)."""
    parse = {fs.TIMESTAMP: tf.io.FixedLenFeature([], tf.int64)}
    ds = tf.data.TFRecordDataset(record_files(data_dir, "train"), compression_type="GZIP",
                                 num_parallel_reads=tf.data.AUTOTUNE)
    ds = ds.batch(65536).map(lambda x: tf.io.parse_example(x, parse)[fs.TIMESTAMP], num_parallel_calls=tf.data.AUTOTUNE)
    return latest_cutoff(np.concatenate([b.numpy() for b in ds] or [np.zeros([0], np.int64)]))


def latest_cutoff(stamps: np.ndarray) -> Optional[int]:
    """The first timestamp of the latest 1 in `HOLDOUT_BUCKETS` of `stamps`, or None when there are none or
    when coarse timestamps (days) tie so many rows at the cutoff, all held out, that the holdout would pass
    twice its share or leave nothing to train on."""
    if not len(stamps):
        return None
    start = int(np.quantile(stamps, 1.0 - 1.0 / HOLDOUT_BUCKETS, method="higher"))
    held = int(np.sum(stamps >= start))
    if held == len(stamps) or held > 2 * len(stamps) / HOLDOUT_BUCKETS:
        return None
    return start


def record_files(data_dir: str, split: str, prefix: str = "") -> list:
    """The TFRecord shards of a split (`train`, `eval`, `test` or `artifacts.ITEMS`) of a finished job;
    with `prefix`, those written under it (`artifacts.HOLDOUT_PREFIX`: the train split's holdout)."""
    files.check_complete(data_dir)
    shards = sorted(tf.io.gfile.glob(artifacts.record_pattern(data_dir, split, prefix)))
    if not shards:
        raise FileNotFoundError(f"no {split} records{' under ' + prefix if prefix else ''} in {data_dir}")
    return shards


def make_dataset(data_dir: str, split: str, batch_size: int, spec: Optional[fs.FeatureSpec] = None,
                 names: Optional[Sequence[str]] = None, shuffle: bool = False, repeat: bool = False,
                 seed: Optional[int] = None, drop_remainder: bool = False,
                 shuffle_buffer: int = 10000, holdout: Optional[str] = None) -> tf.data.Dataset:
    """Batches of raw feature dicts {name: tensor} of a split.

    Shards are read in parallel (interleaved), batches are parsed at once (`parse_example` on the
    batch, not per record) and prefetched, so the input is not what limits training.

    Args:
        data_dir: output folder of `mdr preprocess`.
        split: 'train', 'eval', 'test' or 'items' (the item corpus).
        batch_size: records per batch (the global batch under a distribution strategy).
        spec: the feature spec (default: the one in `data_dir`).
        names: parse only these features (default: all the split has).
        shuffle, repeat, seed: training-time options; shuffling is seeded when `seed` is given.
        drop_remainder: drop a last partial batch.
        shuffle_buffer: records in the shuffle buffer.
        holdout: None (every record), `"exclude"` (all but the holdout records) or `"only"` (the holdout
            records: one train record in `HOLDOUT_BUCKETS`, the latest when the data was split by time
            (`holdout_start`), else by hash; the job's shards of each when it wrote them apart).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    if holdout not in HOLDOUT_MODES:
        raise ValueError(f"holdout must be one of {HOLDOUT_MODES}. Received: holdout={holdout!r}")
    if holdout is not None and split != "train":
        raise ValueError(f"holdout selects rows of the train split. Received: split={split!r}")
    # The job's holdout shards, or the rest of train's; a folder without them filters while reading (below).
    written = holdout is not None and holdout_of(data_dir) is not None
    prefix = (artifacts.HOLDOUT_PREFIX if holdout == "only" else artifacts.RECORD_PREFIX) if written else ""
    files = record_files(data_dir, split, prefix)
    spec = spec or fs.FeatureSpec.load(data_dir)
    if names is None and split == artifacts.ITEMS:
        names = [f.name for f in fs.item_corpus_features(spec.features)]
    parse_spec = spec.tf_parse_spec(names)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                       cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=seed is not None or not shuffle)
    if holdout is not None and not written:
        start = holdout_start(data_dir)
        if start is not None:
            stamp = {fs.TIMESTAMP: tf.io.FixedLenFeature([], tf.int64)}
            later = tf.greater_equal if holdout == "only" else tf.less
            ds = ds.filter(lambda record: later(tf.io.parse_single_example(record, stamp)[fs.TIMESTAMP], start))
        else:
            keep = tf.equal if holdout == "only" else tf.not_equal
            ds = ds.filter(lambda record: keep(tf.strings.to_hash_bucket_fast(record, HOLDOUT_BUCKETS), 0))
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda x: tf.io.parse_example(x, parse_spec), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
