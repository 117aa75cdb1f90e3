"""tf.data input pipelines over the job's TFRecords, parsed with the feature spec."""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from mdr_contract import artifacts, files
from mdr_contract import feature_spec as fs

# Validation rows carved out of the train split when the data has no split left unseen for reporting:
# one record in HOLDOUT_BUCKETS, by a hash of its serialized bytes (the same rows on every run and machine).
HOLDOUT = "holdout"
HOLDOUT_BUCKETS = 20
HOLDOUT_MODES = (None, "exclude", "only")


def validation_rows(validation: str):
    """`(split, holdout)` to pass to `make_dataset` for the rows of a validation split name or `HOLDOUT`."""
    return ("train", "only") if validation == HOLDOUT else (validation, None)


def record_files(data_dir: str, split: str) -> list:
    """The TFRecord shards of a split (`train`, `eval`, `test` or `artifacts.ITEMS`) of a finished job."""
    files.check_complete(data_dir)
    shards = sorted(tf.io.gfile.glob(artifacts.record_pattern(data_dir, split)))
    if not shards:
        raise FileNotFoundError(f"no {split} records in {data_dir}")
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
            records: one in `HOLDOUT_BUCKETS`, chosen by a hash of the record's bytes).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    if holdout not in HOLDOUT_MODES:
        raise ValueError(f"holdout must be one of {HOLDOUT_MODES}. Received: holdout={holdout!r}")
    files = record_files(data_dir, split)
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
    if holdout is not None:
        keep = tf.equal if holdout == "only" else tf.not_equal
        ds = ds.filter(lambda record: keep(tf.strings.to_hash_bucket_fast(record, HOLDOUT_BUCKETS), 0))
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda x: tf.io.parse_example(x, parse_spec), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
