"""End-to-end runs of the preprocessing job, read back with tf.data."""
import glob
import json
import os
import subprocess
import sys

import pytest

from mdr_contract import artifacts
from mdr_contract.feature_spec import FeatureSpec
from pipeline import preprocess
from pipeline.sources import InputError
from tests import helpers


def by_key(records):
    return {(r["user_id"], r["item_id"], r["timestamp"]): r for r in records}


def test_sample_reconciles_every_row(sample_data):
    out, meta = sample_data
    # 24 rows after the header: 15 good (one of them a duplicate) and 8 other bad rows.
    assert meta["rows_read"] == 24
    assert meta["rows_written"] == 15
    assert meta["rows_rejected"] == 9
    assert meta["rows_read"] == meta["rows_written"] + meta["rows_rejected"]
    assert meta["rows_written_per_split"] == {"train": 11, "eval": 4, "test": 0}
    assert preprocess.is_complete(out)


def test_sample_rejected_rows_have_reason_and_position(sample_data):
    out, _ = sample_data
    rejected = {int(r["ref"].rsplit(":", 1)[1]): r for r in helpers.read_rejected(out)}
    assert sorted(rejected) == list(range(17, 26))
    assert rejected[17]["reason"] == "wrong field count: expected 9, got 7"
    assert rejected[18]["reason"].startswith("bad number in price")
    assert rejected[19]["reason"] == "missing timestamp"
    assert rejected[20]["reason"] == "unknown domain 'd7'"
    assert rejected[21]["reason"].startswith("timestamp out of range")
    assert rejected[22]["reason"].startswith("duplicate row (first seen at ") and rejected[22]["reason"].endswith(":3)")
    assert rejected[23]["reason"] == "empty line"
    assert rejected[24]["reason"] == "empty user id"
    assert rejected[25]["reason"].startswith("not valid utf-8")
    assert rejected[20]["raw"] == "u3,i9,d7,1,1400,a3,2.0,z,Zc"


def test_sample_sequences_are_strictly_earlier_and_train_only(sample_data):
    out, _ = sample_data
    train = by_key(helpers.read_records(out, "train"))
    evals = by_key(helpers.read_records(out, "eval"))
    # u1 at t=1300 (i1): earlier positives i3@1200, i1@1000; i4 shares the second, so it is unseen.
    r = train[("u1", "i1", 1300)]
    assert r["hist_item_id"] == ["i3", "i1", "", ""] and r["hist_len"] == 2
    assert r["hist_domain"] == ["d1", "d0", "", ""]
    assert r["hist_category"] == ["Xc", "Xc", "", ""]
    assert train[("u1", "i4", 1300)]["hist_item_id"] == ["i3", "i1", "", ""]
    # The first event of a user has no history.
    assert train[("u1", "i1", 1000)]["hist_len"] == 0
    # Eval events see every earlier positive, most recent first, cut to T=4 (ties by file position).
    assert evals[("u1", "i2", 2000)]["hist_item_id"] == ["i4", "i1", "i3", "i1"]
    # u1's eval-window positive (i2@2000) must not appear in any of u1's train sequences.
    assert all("i2" not in r["hist_item_id"] for k, r in train.items() if k[0] == "u1")


def test_sample_statistics_see_the_train_window_only(sample_data):
    out, _ = sample_data
    evals = by_key(helpers.read_records(out, "eval"))
    # i2 in d1: one train impression (u2@1000, no click); u1's eval click at 2000 is not counted.
    r = evals[("u1", "i2", 2000)]
    assert (r["item_domain_impressions"], r["item_domain_clicks"]) == (1.0, 0.0)
    # u1 in d1: one train event (i3@1200, a click).
    assert (r["user_domain_events"], r["user_domain_clicks"]) == (1.0, 1.0)
    train = by_key(helpers.read_records(out, "train"))
    # u1 in d0: 1000 (click), 1100 (no), 1300 (click), 1300 (click).
    r = train[("u1", "i1", 1000)]
    assert (r["user_domain_events"], r["user_domain_clicks"]) == (4.0, 3.0)
    # Smoothed CTR (clicks + 5p) / (n + 5), p = d0's train CTR: u1 3 of 4, u3 1 of 2 -> 4/6.
    # (3 + 5 * 4/6) / (4 + 5) = 6.3333 / 9 = 0.70370
    assert r["user_domain_ctr"] == pytest.approx(0.70370, abs=1e-5)


def test_sample_vocabularies_spec_and_lists(sample_data):
    out, _ = sample_data
    spec = FeatureSpec.load(out)
    assert spec.domains == ["d0", "d1", "d2"]
    # i5 occurs only in the eval window: out of vocabulary; i9 only in rejected rows.
    assert set(spec.vocabulary("item_id")) == {"i1", "i2", "i3", "i4"}
    assert spec.vocabulary("item_id")[0] == "i1"  # the most frequent train item first
    assert spec["hist_item_id"].vocab_size == 4 and spec["hist_item_id"].input_dim == 6
    assert spec["genres"].length == 3
    assert spec["price"].boundaries  # quantile boundaries computed by Beam
    train = helpers.read_records(out, "train")
    genres = {r["item_id"]: r["genres"] for r in train}
    assert genres["i1"] == ["x", "y", ""]
    items = helpers.read_records(out, "items")
    assert {(r["item_id"], r["domain"]) for r in items} >= {("i5", "d0"), ("i5", "d2"), ("i1", "d2")}


def test_synthetic_job_counts_and_readback(synthetic_data):
    out, meta = synthetic_data
    assert meta["rows_rejected"] == 0
    assert meta["rows_read"] == meta["rows_written"] > 1000
    train = helpers.read_records(out, "train")
    evals = helpers.read_records(out, "eval")
    assert len(train) == meta["rows_written_per_split"]["train"]
    assert len(evals) == meta["rows_written_per_split"]["eval"]
    # Time split: every eval event is at or after the cutoff, every train event before it.
    cut = meta["time_cutoffs"]["eval_start"]
    assert meta["split_rule"] == "time"
    assert max(r["timestamp"] for r in train) < cut <= min(r["timestamp"] for r in evals)
    assert 0.05 < len(evals) / (len(train) + len(evals)) < 0.15
    assert any(r["hist_len"] == 8 for r in train)
    # The cutoffs came from a first pass (preprocess.compute_time_cutoffs), whose answer file is gone.
    assert meta["config"]["eval_start"] == str(cut)
    assert not os.path.exists(os.path.join(out, preprocess.TIME_CUTOFFS_FILE))
    _check_time_holdout(out, meta, train)


def _check_time_holdout(out, meta, train):
    """The train window's latest 1 in 20 records are written apart (holdout-* shards), counted in train."""
    held = helpers.read_records(out, "train", artifacts.HOLDOUT_PREFIX)
    rest = helpers.read_records(out, "train", artifacts.RECORD_PREFIX)
    start = meta["holdout"]["start"]
    assert meta["holdout"]["rule"] == "time" and len(held) + len(rest) == len(train)
    assert max(r["timestamp"] for r in rest) < start == min(r["timestamp"] for r in held)
    assert meta["holdout"]["rows"] == len(held) and 0.04 < len(held) / len(train) < 0.06
    assert meta["holdout"]["rows_per_domain"] == {d: sum(r["domain"] == d for r in held) for d in meta["domains"]}


def test_time_split_at_a_given_cutoff_holds_out_the_latest_train_records(tmp_path, synthetic_raw, synthetic_data):
    _, computed = synthetic_data
    out = str(tmp_path / "given")
    meta = helpers.run_job("synthetic", synthetic_raw, out, sequence_length=8,
                           eval_start=str(computed["time_cutoffs"]["eval_start"]))
    # The same train window as the computed cutoff's: a first pass of its own finds the holdout's start.
    assert meta["rows_written_per_split"] == computed["rows_written_per_split"]
    _check_time_holdout(out, meta, helpers.read_records(out, "train"))


def test_random_split_is_seeded(tmp_path, synthetic_raw):
    a = helpers.run_job("synthetic", synthetic_raw, str(tmp_path / "a"), split="random", seed=7)
    b = helpers.run_job("synthetic", synthetic_raw, str(tmp_path / "b"), split="random", seed=7)
    assert a["rows_written_per_split_domain"] == b["rows_written_per_split_domain"]
    assert a["split_rule"] == "random"
    # Not split by time: the train records held out for validation are 1 in 20 by hash, the same each run.
    assert a["holdout"] == b["holdout"] and a["holdout"]["rule"] == "hash" and a["holdout"]["start"] is None
    assert 0.03 < a["holdout"]["rows"] / a["rows_written_per_split"]["train"] < 0.07
    n = a["rows_written"]
    for split, ratio in zip(("train", "eval", "test"), (0.8, 0.1, 0.1)):
        assert abs(a["rows_written_per_split"][split] / n - ratio) < 0.02


def test_split_column_holds_out_by_hash(tmp_path, synthetic_raw):
    # The synthetic log with a split column: rows before the given time are train, the rest eval.
    meta = helpers.run_job("synthetic", synthetic_raw, str(tmp_path / "time"))
    cut = meta["time_cutoffs"]["eval_start"]
    path = str(tmp_path / "events.csv")
    rows = [r for r in helpers.read_records(str(tmp_path / "time"), "train")]
    rows += helpers.read_records(str(tmp_path / "time"), "eval")
    with open(path, "w") as f:
        f.write("user,item,domain,label,ts,part\n")
        f.writelines(f"{r['user_id']},{r['item_id']},{r['domain']},{r['label']},{r['timestamp']},"
                     f"{'train' if r['timestamp'] < cut else 'eval'}\n" for r in rows)
    mapping = {"user": "user", "item": "item", "domain": "domain", "label": "label", "timestamp": "ts",
               "split": "part"}
    col = helpers.run_job("csv", path, str(tmp_path / "column"), mapping=json.dumps(mapping))
    # The column decided the split, not a time cutoff: the held-out train rows are 1 in 20 by hash.
    assert col["split_rule"] == "column" and col["rows_written_per_split"] == meta["rows_written_per_split"]
    assert col["holdout"]["rule"] == "hash" and col["holdout"]["start"] is None
    assert 0.03 < col["holdout"]["rows"] / col["rows_written_per_split"]["train"] < 0.07
    assert col["holdout"]["rows"] == len(helpers.read_records(str(tmp_path / "column"), "train", artifacts.HOLDOUT_PREFIX))


def test_default_local_runner_with_worker_processes(tmp_path):
    meta = helpers.run_job("csv", helpers.SAMPLE_CSV, str(tmp_path / "mp"), mapping=helpers.SAMPLE_MAPPING,
                           beam_args=[])
    assert (meta["rows_read"], meta["rows_written"], meta["rows_rejected"]) == (24, 15, 9)


def test_gzip_input_and_truncated_gzip(tmp_path):
    import gzip

    data = open(helpers.SAMPLE_CSV, "rb").read()
    good = tmp_path / "events.csv.gz"
    good.write_bytes(gzip.compress(data))
    meta = helpers.run_job("csv", str(good), str(tmp_path / "out"), mapping=helpers.SAMPLE_MAPPING)
    assert (meta["rows_read"], meta["rows_rejected"]) == (24, 9)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "events.csv.gz").write_bytes(gzip.compress(data * 50)[:400])
    with pytest.raises(InputError, match=r"^[^\n]*truncated or corrupt file after line \d+[^\n]*$"):
        helpers.run_job("csv", str(bad_dir), str(tmp_path / "out2"), mapping=helpers.SAMPLE_MAPPING)
    assert not preprocess.is_complete(str(tmp_path / "out2"))
    assert not glob.glob(str(tmp_path / "out2" / "**" / "beam-temp-*"), recursive=True)  # no leftovers
    # The command: one line on stderr (the workers print their tracebacks to a log file it names). A random
    # split, so that the worker processes meet the file (a time split's first pass reads it in this process:
    # that is the run_job above).
    done = subprocess.run([sys.executable, "-m", "mdr.cli", "preprocess", "--source", "csv", "--input", str(bad_dir),
                           "--mapping", helpers.SAMPLE_MAPPING, "--output", str(tmp_path / "out3"), "--split", "random"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "truncated or corrupt file after line" in lines[0], done.stderr[-3000:]
    log = lines[0].rsplit("(the workers' log: ", 1)[1].rstrip(")")
    assert "Traceback" in open(log).read()
    os.remove(log)


@pytest.mark.parametrize("overrides, message", [
    (dict(split="time", mapping=json.dumps({"user": "user_id", "item": "item_id", "domain": "domain",
                                            "label": "label"})), "--split time needs timestamps"),
    (dict(ratios=(0.5,)), "--ratios"),
    (dict(ratios=(0.5, 0.6)), r"--ratios must sum to 1 \(train,eval\[,test\]\). Received: --ratios 0.5,0.6 \(sum 1.1\)"),
    (dict(eval_fraction=1.5), "--eval-fraction"),
    (dict(test_start="2000"), "--test-start needs --eval-start"),
    (dict(sequence_length=0), "--sequence-length"),
    (dict(split="random", mapping=json.dumps({"user": "nope", "item": "item_id", "domain": "domain",
                                              "label": "label"})), r"missing column\(s\) \['nope'\]"),
])
def test_bad_configs_fail_before_any_work(tmp_path, overrides, message):
    overrides.setdefault("mapping", helpers.SAMPLE_MAPPING)
    with pytest.raises((ValueError, InputError), match=message):
        helpers.run_job("csv", helpers.SAMPLE_CSV, str(tmp_path / "out"), **overrides)
    assert not os.path.exists(tmp_path / "out" / "metadata.json")


def test_empty_file_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty file"):
        helpers.run_job("csv", str(empty), str(tmp_path / "out"), mapping=helpers.SAMPLE_MAPPING)


def test_existing_output_needs_overwrite(sample_data):
    out, _ = sample_data
    with pytest.raises(ValueError, match="--overwrite"):
        preprocess.prepare_output(out, overwrite=False)


@pytest.mark.skipif(helpers.shared_dataset("taobao-userbehavior-head") is None,
                    reason="../shared/datasets/taobao-userbehavior-head is absent (fresh clone)")
def test_taobao_head_rejects_exactly_its_truncated_last_line(tmp_path):
    path = os.path.join(helpers.shared_dataset("taobao-userbehavior-head"), "UserBehavior-head.csv")
    meta = helpers.run_job("taobao", path, str(tmp_path / "tb"), max_domains=5, beam_args=[])
    assert meta["rows_read"] == 84476
    assert meta["rows_rejected"] == 1
    assert meta["rows_written"] == 84475
    (rejected,) = helpers.read_rejected(str(tmp_path / "tb"))
    assert rejected["ref"].endswith(":84476")
    assert rejected["raw"] == "100370,1968385,1875258,pv"
    assert rejected["reason"] == "wrong field count: expected 5, got 4"
    assert len(meta["domains"]) == 6 and meta["domains"][-1] == "other"
