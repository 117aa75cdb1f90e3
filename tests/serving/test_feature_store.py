"""serving/feature_store.py on the job's own output: the store the Beam job writes, loaded as the client does.

The values are checked against the job's training records, and the store's sequence and statistics
of a user against what the job itself puts on that user's next record (a second run of the job over
the same log with one later event appended per user).
"""
import collections
import csv
import shutil

import numpy as np
import pytest

from serving.feature_store import FeatureStore
from tests import helpers


@pytest.fixture(scope="module")
def synthetic_store(synthetic_data):
    return FeatureStore.load(synthetic_data[0])


def read_split(data_dir, split):
    """Every record of a split as a dict of Python values (batched parsing: tests/helpers.read_records'
    per-record parsing takes ~20 s here)."""
    from mdr_keras import data

    def py(v):
        return [py(x) for x in v] if getattr(v, "ndim", 0) else v.decode() if isinstance(v, bytes) else v.item()

    rows = []
    for batch in data.make_dataset(data_dir, split, 4096):
        columns = {k: v.numpy() for k, v in batch.items()}
        rows += [{k: py(v[i]) for k, v in columns.items()} for i in range(len(columns["domain"]))]
    return rows


@pytest.fixture(scope="module")
def synthetic_records(synthetic_data):
    return {split: read_split(synthetic_data[0], split) for split in ("train", "eval", "items")}


def test_store_users(synthetic_data, synthetic_store, synthetic_records):
    store, spec = synthetic_store, synthetic_store.spec
    records = synthetic_records["train"] + synthetic_records["eval"]
    by_user = collections.defaultdict(list)
    for r in records:
        by_user[r["user_id"]].append(r)
    assert store.user_ids() == sorted(by_user)
    checked = 0
    for user, rows in by_user.items():
        got = store.user_features(user, rows[0]["domain"])
        for name in ("age_group", "city", "gender", "tenure_days"):
            assert got[name] == rows[0][name], name
        # Independently of the records' own sequences: the user's clicks, most recent first, cut to T
        # (sequence_events 'positive'), where no two clicks share a timestamp.
        clicks = sorted((r for r in rows if r["label"] == 1), key=lambda r: r["timestamp"])
        if len({r["timestamp"] for r in clicks}) != len(clicks):
            continue
        recent = clicks[::-1][:spec.sequence_length]
        pad = [""] * (spec.sequence_length - len(recent))
        assert got["hist_item_id"] == [r["item_id"] for r in recent] + pad, user
        assert got["hist_category"] == [r["category"] for r in recent] + pad, user
        assert got["hist_domain"] == [r["domain"] for r in recent] + pad, user
        assert got["hist_len"] == len(recent)
        checked += 1
    assert checked > 100
    for r in records[:300]:  # domain statistics: the records' own values
        got = store.user_features(r["user_id"], r["domain"])
        for name in ("user_domain_events", "user_domain_clicks", "user_domain_ctr"):
            assert got[name] == pytest.approx(r[name], rel=1e-6), name
    per_domain = {d: len(store.user_ids(d)) for d in store.domains}
    assert per_domain == synthetic_data[1]["store_users_per_domain"]


def test_store_priors_are_what_the_job_writes_without_events(synthetic_store, synthetic_records):
    train = synthetic_records["train"]
    for d in synthetic_store.domains:
        labels = [r["label"] for r in train if r["domain"] == d]
        assert synthetic_store.domain_priors[d] == pytest.approx(sum(labels) / len(labels))
    # The job's own records with no training event in their domain carry exactly that prior.
    zero = [r for r in synthetic_records["eval"] if r["user_domain_events"] == 0]
    assert zero
    for r in zero:
        assert synthetic_store.domain_priors[r["domain"]] == pytest.approx(r["user_domain_ctr"], rel=1e-6)


def test_store_items_and_fallbacks(synthetic_store, synthetic_records):
    store = synthetic_store
    for r in synthetic_records["items"][:200]:
        got = store.item_features([r["item_id"]], r["domain"])
        for name in ("category", "brand", "price", "item_domain_impressions", "item_domain_ctr"):
            assert got[name][0] == r[name], name
    # A user seen in some domains only: the others get empty statistics and keep the sequence.
    user = next(u for u in store.user_ids() if not all(store.has_user(u, d) for d in store.domains))
    seen = next(d for d in store.domains if store.has_user(user, d))
    unseen = next(d for d in store.domains if not store.has_user(user, d))
    a, b = store.user_features(user, seen), store.user_features(user, unseen)
    assert (b["user_domain_events"], b["user_domain_clicks"]) == (0.0, 0.0)
    assert b["user_domain_ctr"] == store.domain_priors[unseen]
    assert b["hist_item_id"] == a["hist_item_id"] and b["city"] == a["city"] and b["domain"] == unseen
    item = next(i for i in store.item_ids() if not store.has_item(i, unseen))
    got = store.item_features([item], unseen)
    assert got["item_domain_impressions"] == [0.0] and got["item_domain_ctr"] == [store.domain_priors[unseen]]
    cold = store.user_features("nobody", seen, cold_start=True)
    tenures = [store.user_features(u, seen)["tenure_days"] for u in store.user_ids()]
    assert cold["tenure_days"] == pytest.approx(float(np.median(tenures))) and cold["city"] == ""
    with pytest.raises(ValueError, match="Unknown user 'nobody'"):
        store.user_features("nobody", seen)
    with pytest.raises(ValueError, match="Unknown domain 'x'"):
        store.user_features(user, "x")
    with pytest.raises(ValueError, match="Unknown item"):
        store.item_features(["no-such-item"], seen)


def test_store_is_the_users_next_record(synthetic_raw, synthetic_data, synthetic_store, tmp_path):
    """The store's sequence and statistics of a user in a domain equal those the job puts on the
    user's next record there: the same log with one later event per user, preprocessed again with the
    same cutoff, gives records whose user side is the first run's store."""
    data_dir, metadata = synthetic_data
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    events = raw / "events.csv"
    with open(events, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    last = {}
    for row in rows:  # the user's latest row: its user features and domain
        if row["user_id"] not in last or int(row["timestamp"]) >= int(last[row["user_id"]]["timestamp"]):
            last[row["user_id"]] = row
    later = max(int(r["timestamp"]) for r in rows) + 3600
    users = sorted(last)[::5]
    with open(events, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        for user in users:
            writer.writerow(dict(last[user], item_id=rows[0]["item_id"], label="0", timestamp=str(later)))
    out = str(tmp_path / "data")
    helpers.run_job("synthetic", str(raw), out, sequence_length=synthetic_store.spec.sequence_length,
                    eval_start=str(metadata["time_cutoffs"]["eval_start"]))
    next_records = [r for r in read_split(out, "eval") if r["timestamp"] == later]
    assert sorted(r["user_id"] for r in next_records) == users
    for r in next_records:
        got = synthetic_store.user_features(r["user_id"], r["domain"])
        for name in synthetic_store.sequence_names:
            assert got[name] == r[name], (r["user_id"], name)
        for name in synthetic_store.user_stat_names:
            assert got[name] == pytest.approx(r[name], rel=1e-6), (r["user_id"], name)
    assert sum(r["hist_len"] > 0 for r in next_records) > len(users) // 2
