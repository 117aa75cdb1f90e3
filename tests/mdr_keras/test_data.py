"""tf.data pipelines over the job's TFRecords."""
import json
import os
import shutil

import numpy as np
import pytest

from mdr_keras import data
from tests import helpers


def test_batches_hold_every_record_once(synthetic_data):
    out, meta = synthetic_data
    ds = data.make_dataset(out, "train", batch_size=256)
    ids = np.concatenate([b["label"].numpy() for b in ds])
    assert len(ids) == meta["rows_written_per_split"]["train"]
    b = next(iter(ds))
    assert b["hist_item_id"].shape == (256, 8) and b["user_id"].shape == (256,)


def test_items_split_and_names(synthetic_data):
    out, meta = synthetic_data
    ds = data.make_dataset(out, "items", batch_size=10000)
    (b,) = list(ds)
    assert set(b) >= {"item_id", "domain", "item_domain_ctr", "price"} and "user_id" not in b
    assert len(b["item_id"]) == sum(meta["items_per_domain"].values())
    (b,) = list(data.make_dataset(out, "eval", batch_size=100000, names=["label"]))
    assert list(b) == ["label"]


def test_seeded_shuffle_is_repeatable(synthetic_data):
    out, _ = synthetic_data

    def first(seed):
        return next(iter(data.make_dataset(out, "train", 64, shuffle=True, seed=seed)))["timestamp"].numpy()

    np.testing.assert_array_equal(first(1), first(1))
    assert not np.array_equal(first(1), first(2))


def test_incomplete_output_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="_SUCCESS"):
        data.make_dataset(str(tmp_path), "train", 8)
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        data.make_dataset(helpers.TESTDATA, "train", 0)


def _holdout_timestamps(out, holdout, **kw):
    return sorted(np.concatenate([b["timestamp"].numpy() for b in data.make_dataset(
        out, "train", 512, names=["timestamp"], holdout=holdout, **kw)]).tolist())


def _partition(out, meta):
    """(kept, held) train timestamps: together every train record once, the same however shuffled."""
    kept, held = _holdout_timestamps(out, "exclude", shuffle=True, seed=3), _holdout_timestamps(out, "only")
    every = _holdout_timestamps(out, None)
    assert len(kept) + len(held) == len(every) == meta["rows_written_per_split"]["train"]
    assert sorted(kept + held) == every
    assert _holdout_timestamps(out, "exclude", shuffle=True, seed=4) == kept
    return kept, held


def _as_before_holdout_shards(out, tmp_path):
    """A copy of `out` as a job wrote it before it wrote the holdout apart: no "holdout" in metadata.json
    (its holdout shards then count as any train shard), so the holdout is chosen while reading."""
    copy = str(tmp_path / "before")
    shutil.copytree(out, copy)
    path = os.path.join(copy, "metadata.json")
    with open(path) as f:
        meta = json.load(f)
    del meta["holdout"]
    with open(path, "w") as f:
        json.dump(meta, f)
    return copy


@pytest.mark.parametrize("written", [True, False], ids=["written-apart", "chosen-while-read"])
def test_holdout_of_a_time_split_is_the_latest_train_records(synthetic_data, tmp_path, written):
    out, meta = synthetic_data
    assert meta["split_rule"] == "time"
    out = out if written else _as_before_holdout_shards(out, tmp_path)
    kept, held = _partition(out, meta)
    # Eval comes after the train window, so its stand-in does too: the last 1 in 20 records by time.
    assert max(kept) < min(held) == data.holdout_start(out)
    assert 0.045 < len(held) / (len(kept) + len(held)) < 0.06
    assert data.holdout_of(out) == (meta["holdout"] if written else None)
    assert len(held) == meta["holdout"]["rows"] or not written
    with pytest.raises(ValueError, match="holdout must be one of"):
        data.make_dataset(out, "train", 8, holdout="some")
    with pytest.raises(ValueError, match="holdout selects rows of the train split. Received: split='eval'"):
        data.make_dataset(out, "eval", 8, holdout="only")


def test_latest_cutoff_holds_out_one_in_twenty_unless_ties_would_hold_out_more():
    # 100 distinct times: the 95% quantile, 'higher', is the 96th value; rows 95..99 (5 of 100) are held out.
    assert data.latest_cutoff(np.arange(100)) == 95
    # Days: 90 rows on day 1, 10 on day 2 -> the cutoff is day 2, 10 rows held out (10%, within twice 5%).
    assert data.latest_cutoff(np.array([1] * 90 + [2] * 10)) == 2
    # 80 / 20: day 2 would hold out 20% (over twice the share); one day only: nothing left to train on.
    assert data.latest_cutoff(np.array([1] * 80 + [2] * 20)) is None
    assert data.latest_cutoff(np.full(50, 7)) is None and data.latest_cutoff(np.array([], np.int64)) is None


@pytest.mark.parametrize("written", [True, False], ids=["written-apart", "chosen-while-read"])
def test_holdout_of_a_random_split_is_a_fixed_hash_sample(synthetic_raw, tmp_path, written):
    out = str(tmp_path / "random")
    meta = helpers.run_job("synthetic", synthetic_raw, out, split="random", seed=7)
    out = out if written else _as_before_holdout_shards(out, tmp_path)
    assert data.holdout_start(out) is None
    kept, held = _partition(out, meta)
    # One record in 20 by a hash: about 5%, spread over the window, the same whatever the shuffling.
    assert 0.03 < len(held) / (len(kept) + len(held)) < 0.07 and min(held) < max(kept)
    assert len(held) == meta["holdout"]["rows"] or not written
