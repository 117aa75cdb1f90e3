"""Each composite transform on its own, with TestPipeline and assert_that."""
import gzip
import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from mdr_contract import feature_spec as fs
from pipeline import sources
from pipeline import transforms as T
from pipeline.tfrecords import WriteTFRecords


def event(user, item, domain, label, ts, line, split=None, **features):
    return {"user_id": user, "item_id": item, "domain": domain, "label": label, "timestamp": ts,
            "features": dict(features), "split": split, "ref": f"f.csv:{line}",
            "raw": f"{user},{item},{domain},{label},{ts}"}


def test_parse_events_routes_bad_rows():
    src = sources.TaobaoSource("unused")
    lines = [("f:1", b"1,10,7,pv,1511544070"), ("f:2", b"1,10,7,buy"), ("f:3", b"\xff\xfe"),
             ("f:4", b"1,10,7,click,1511544070"), ("f:5", b"")]
    with TestPipeline() as p:
        events, rejected = p | beam.Create(lines) | T.ParseEvents(src)
        assert_that(events | beam.Map(lambda e: (e["ref"], e["label"], e["domain"])),
                    equal_to([("f:1", 0, "7")]), label="CheckEvents")
        assert_that(rejected | beam.Map(lambda r: (r["ref"], r["reason"].split(":")[0])),
                    equal_to([("f:2", "wrong field count"), ("f:3", "not valid utf-8"),
                              ("f:4", "unknown behavior_type 'click'"),
                              ("f:5", "empty line")]), label="CheckRejected")


def test_assign_domains_keeps_the_most_frequent_and_folds_the_rest():
    evs = [event("u", "i", d, 1, 1, n) for n, d in enumerate("aaabbc")]
    with TestPipeline() as p:
        events, domains = p | beam.Create(evs) | T.AssignDomains(None, max_domains=2)
        assert_that(domains, equal_to([["a", "b", "other"]]), label="CheckDomains")
        assert_that(events | beam.Map(lambda e: e["domain"]), equal_to(["a", "a", "a", "b", "b", "other"]),
                    label="CheckEvents")


def test_split_events_by_explicit_time_cutoffs_and_source_column():
    evs = [event("u", "i", "a", 1, ts, n) for n, ts in enumerate([10, 20, 30, 40])]
    evs.append(event("u", "i", "a", 1, 5, 9, split="test"))  # the source's split column wins
    with TestPipeline() as p:
        out, cut = p | beam.Create(evs) | T.SplitEvents("time", eval_start=30, test_start=40)
        assert_that(out | beam.Map(lambda e: (e["timestamp"], e["split"])),
                    equal_to([(10, "train"), (20, "train"), (30, "eval"), (40, "test"), (5, "test")]))
        assert_that(cut, equal_to([{"eval_start": 30, "test_start": 40}]), label="CheckCutoffs")


def test_split_events_by_time_quantile():
    evs = [event("u", "i", "a", 1, ts, ts) for ts in range(1000)]
    with TestPipeline() as p:
        out, cut = p | beam.Create(evs) | T.SplitEvents("time", eval_fraction=0.2)
        evals = out | beam.Filter(lambda e: e["split"] == "eval") | beam.combiners.Count.Globally()
        # Approximate quantiles: the cutoff is the 0.8 quantile of 0..999 to within one value.
        assert_that(evals | beam.Map(lambda n: 199 <= n <= 201), equal_to([True]))
        assert_that(cut | beam.Map(lambda c: 798 <= c["eval_start"] <= 801), equal_to([True]), label="CheckCut")


def test_time_cutoffs_by_fraction_and_of_no_events():
    with TestPipeline() as p:
        cut = p | beam.Create([{"timestamp": ts} for ts in range(1000)]) | T.TimeCutoffs(0.2, 0.1)
        # eval from the 0.7 quantile, test from the 0.9 quantile of 0..999, to within one value
        assert_that(cut | beam.Map(lambda c: (699 <= c["eval_start"] <= 701, 899 <= c["test_start"] <= 901)),
                    equal_to([(True, True)]))
    with TestPipeline() as p:
        cut = p | beam.Create([]) | T.TimeCutoffs(0.1)
        assert_that(cut, equal_to([{}]))


def test_time_cutoffs_and_train_holdout_start():
    with TestPipeline() as p:
        cut = p | beam.Create([{"timestamp": ts} for ts in range(1000)]) | T.TimeCutoffs(0.2, 0.1)
        # train is 0..699 (before the 0.7 quantile): its latest 1 in 20 from its 0.95 quantile, 665, to within one
        assert_that(cut | beam.Map(lambda c: 664 <= c["holdout_start"] <= 666), equal_to([True]))
    with TestPipeline() as p:
        events = p | beam.Create([{"timestamp": ts} for ts in range(1000)])
        # eval given from 800: train is 0..799, its 0.95 quantile 760 (to within one value)
        start = events | "Given" >> T.TrainHoldoutStart(800)
        assert_that(start | beam.Map(lambda c: 759 <= c["holdout_start"] <= 761), equal_to([True]))
        assert_that(events | "NoTrain" >> T.TrainHoldoutStart(0), equal_to([{}]), label="CheckNoTrain")
    with TestPipeline() as p:
        # Days: 640 events on day 1, 360 on day 2. The 0.7 quantile is day 2, so eval starts there and train
        # is day 1 alone: every train event tied, no latest 1 in 20 to hold out by time (the job uses a hash).
        cut = p | beam.Create([{"timestamp": 1}] * 640 + [{"timestamp": 2}] * 360) | T.TimeCutoffs(0.3)
        assert_that(cut, equal_to([{"eval_start": 2}]))


def test_holdout_start_from_quantiles_unless_ties_hold_too_many():
    # The i/100 quantiles of 0..100: the 0.95 one is 95, and 5 of the 100 steps lie after it.
    assert T.holdout_start(list(range(101))) == 95
    # Days: day 2 from the 0.90 quantile on -> the start is day 2, 10% held out (within twice 5%).
    assert T.holdout_start([1] * 90 + [2] * 11) == 2
    # Day 2 from the 0.80 quantile: 20% held (over twice the share); one day only: every event held.
    assert T.holdout_start([1] * 80 + [2] * 21) is None and T.holdout_start([7] * 101) is None
    assert T.holdout_start([]) is None and T.holdout_start([3]) is None


def test_in_holdout_by_time_or_by_a_fixed_hash():
    rec = {fs.USER_ID: "u", fs.ITEM_ID: "i", fs.DOMAIN: "a", fs.TIMESTAMP: 50}
    assert T.in_holdout(rec, 50) and not T.in_holdout(rec, 51)
    recs = [{**rec, fs.USER_ID: f"u{n}"} for n in range(4000)]
    held = [T.in_holdout(r, None) for r in recs]
    assert 0.04 < sum(held) / len(recs) < 0.06  # one in 20, about
    assert held == [T.in_holdout(r, None) for r in recs]  # the same on every call (no salt, no process seed)


def test_random_unit_depends_on_file_name_not_folder():
    assert T.random_unit(1, "/a/x.csv:3") == T.random_unit(1, "gs://b/x.csv:3")
    assert T.random_unit(1, "/a/x.csv:3") != T.random_unit(2, "/a/x.csv:3")


def test_user_histories_drop_duplicates_and_sort():
    evs = [event("u", "i2", "a", 1, 20, 2), event("u", "i1", "a", 1, 10, 3), event("u", "i2", "a", 1, 20, 5)]
    with TestPipeline() as p:
        hist, rejected = p | beam.Create(evs) | T.UserHistories()
        assert_that(hist | beam.Map(lambda kv: [e["ref"] for e in kv[1]]),
                    equal_to([["f.csv:3", "f.csv:2"]]), label="CheckHistories")
        assert_that(rejected | beam.Map(lambda r: (r["ref"], r["reason"])),
                    equal_to([("f.csv:5", "duplicate row (first seen at f.csv:2)")]), label="CheckRejected")


def test_domain_statistics_count_the_train_window_only():
    evs = [event("u", "i1", "a", 1, 1, 1, split="train"), event("u", "i1", "a", 0, 2, 2, split="train"),
           event("v", "i1", "a", 1, 3, 3, split="eval"), event("v", "i2", "b", 1, 1, 4, split="train")]
    with TestPipeline() as p:
        ctr, items = p | beam.Create(evs) | T.DomainStatistics()
        assert_that(ctr, equal_to([{"a": 0.5, "b": 1.0}]), label="CheckCtr")
        assert_that(items, equal_to([(("i1", "a"), (2, 1)), (("i2", "b"), (1, 1))]), label="CheckItems")


def test_behaviour_sequences_are_strictly_earlier():
    evs = [event("u", "i1", "a", 1, 10, 1, split="train", cat="c1"),
           event("u", "i2", "a", 1, 10, 2, split="train", cat="c2"),  # same second as i1
           event("u", "i3", "b", 0, 20, 3, split="train", cat="c1"),  # a negative: not in sequences
           event("u", "i4", "a", 1, 30, 4, split="eval", cat="c2"),
           event("u", "i5", "a", 1, 40, 5, split="train", cat="c1")]  # a later train row (random split)
    side = (fs.SideFeature("cat", fs.ROLE_ITEM, fs.KIND_CATEGORICAL),)
    with TestPipeline() as p:
        ctr = p | "Ctr" >> beam.Create([{"a": 0.5, "b": 0.5}])
        items = p | "Items" >> beam.Create([(("i1", "a"), (4, 2))])
        records, store = (p | "Hist" >> beam.Create([("u", evs)])
                          | T.BehaviourSequences(side, "cat", 3, "positive", "time", ctr, items, min_stat_events=1))
        # From 4 events on a key keeps its own clicks: i1 in a (4 events) does, u in a (3) and b (1) get
        # the prior's clicks 3 * 0.5 and 1 * 0.5, and CTR 0.5.
        prior_rule, _ = (p | "Hist4" >> beam.Create([("u", evs)])
                         | "Min4" >> T.BehaviourSequences(side, "cat", 3, "positive", "time", ctr, items,
                                                          min_stat_events=4))
        assert_that(prior_rule | beam.Map(lambda r: (r["item_id"], r["item_domain_clicks"], r["user_domain_clicks"],
                                                     r["user_domain_ctr"])),
                    equal_to([("i1", 2.0, 1.5, 0.5), ("i2", 0.0, 1.5, 0.5), ("i3", 0.0, 0.5, 0.5),
                              ("i4", 0.0, 1.5, 0.5), ("i5", 0.0, 1.5, 0.5)]), label="CheckPriorRule")
        assert_that(records | beam.Map(lambda r: (r["item_id"], r["hist_item_id"], r["hist_category"],
                                                  r["hist_len"])),
                    equal_to([("i1", ["", "", ""], ["", "", ""], 0),
                              ("i2", ["", "", ""], ["", "", ""], 0),
                              ("i3", ["i2", "i1", ""], ["c2", "c1", ""], 2),
                              ("i4", ["i2", "i1", ""], ["c2", "c1", ""], 2),
                              # a train row never sees the eval row i4, however late it comes
                              ("i5", ["i2", "i1", ""], ["c2", "c1", ""], 2)]))
        # (2 + 5 * 0.5) / (4 + 5) = 0.5 for i1 in a; unseen items get the prior 0.5 exactly.
        assert_that(records | beam.Map(lambda r: (r["item_id"], r["item_domain_ctr"], r["user_domain_events"])),
                    equal_to([("i1", 0.5, 3.0), ("i2", 0.5, 3.0), ("i3", 0.5, 1.0), ("i4", 0.5, 3.0),
                              ("i5", 0.5, 3.0)]), label="CheckStats")
        # The store: per domain of the user, what the next record (after ts 40, seeing every split) carries:
        # clicks i1, i2 (ts 10, file order), i4 (eval), i5, most recent first, cut to 3; u in a has 3 train
        # events (3 clicks), in b 1 (no click); latest timestamp 40.
        assert_that(store | beam.Map(lambda r: (r["domain"], r["hist_item_id"], r["hist_category"], r["hist_domain"],
                                                r["hist_len"], r["user_domain_events"], r["user_domain_clicks"],
                                                r["timestamp"], r["user_id"])),
                    equal_to([("a", ["i5", "i4", "i2"], ["c1", "c2", "c2"], ["a", "a", "a"], 3, 3.0, 3.0, 40, "u"),
                              ("b", ["i5", "i4", "i2"], ["c1", "c2", "c2"], ["a", "a", "a"], 3, 1.0, 0.0, 40, "u")]),
                    label="CheckStore")


def test_vocabularies_threshold_and_order():
    recs = [{"user_id": u, "genres": g} for u, g in [("a", ["x", ""]), ("b", ["x", "y"]), ("a", ["z", ""])]]
    with TestPipeline() as p:
        vocab = p | beam.Create(recs) | T.Vocabularies(["user_id", "genres"], ["genres"], min_count=1)
        assert_that(vocab, equal_to([("user_id", ["a", "b"]), ("genres", ["x", "y", "z"])]))
    with TestPipeline() as p:
        vocab = p | beam.Create(recs) | T.Vocabularies(["user_id", "genres"], ["genres"], min_count=2)
        assert_that(vocab, equal_to([("user_id", ["a"]), ("genres", ["x"])]))


def test_quantile_boundaries():
    recs = [{"x": float(v)} for v in range(101)]
    with TestPipeline() as p:
        b = p | beam.Create(recs) | T.QuantileBoundaries(["x"], num_buckets=4)
        assert_that(b, equal_to([("x", [25.0, 50.0, 75.0])]))
    assert T.boundaries_from_quantiles([0, 1, 1, 1, 5]) == [1.0]


def test_item_corpus_latest_features_and_stats():
    evs = [event("u", "i1", "a", 1, 10, 1, price=1.0), event("v", "i1", "a", 0, 20, 2, price=2.0),
           event("v", "i1", "b", 0, 5, 3, price=3.0)]
    side = [fs.SideFeature("price", fs.ROLE_ITEM, fs.KIND_NUMERIC)]
    with TestPipeline() as p:
        ctr = p | "Ctr" >> beam.Create([{"a": 0.5, "b": 0.0}])
        items = p | "Items" >> beam.Create([(("i1", "a"), (2, 1))])
        corpus = p | "Events" >> beam.Create(evs) | T.ItemCorpus(side, ctr, items)
        assert_that(corpus | beam.Map(lambda r: (r["item_id"], r["domain"], r["price"],
                                                 r["item_domain_impressions"], r["item_domain_ctr"])),
                    equal_to([("i1", "a", 2.0, 2.0, 0.5), ("i1", "b", 3.0, 0.0, 0.0)]))


def test_encode_and_write_tfrecords_read_back(tmp_path):
    import tensorflow as tf

    features = [fs.Feature("s", fs.ROLE_USER, fs.KIND_CATEGORICAL),
                fs.Feature("h", fs.ROLE_SEQUENCE, fs.KIND_CATEGORICAL, length=2),
                fs.Feature("x", fs.ROLE_ITEM, fs.KIND_NUMERIC), fs.Feature("n", fs.ROLE_LABEL, fs.KIND_INT)]
    recs = [{"s": f"é{i}", "h": [str(i), ""], "x": i / 2, "n": i} for i in range(1000)]
    prefix = str(tmp_path / "part")
    with TestPipeline() as p:
        _ = p | beam.Create(recs) | T.EncodeExamples(features) | WriteTFRecords(prefix, num_shards=2)
    files = sorted(tf.io.gfile.glob(prefix + "*"))
    assert len(files) == 2 and all(f.endswith(".tfrecord.gz") for f in files)
    gzip.decompress(open(files[0], "rb").read())  # a valid, complete gzip stream
    spec = {"s": tf.io.FixedLenFeature([], tf.string), "h": tf.io.FixedLenFeature([2], tf.string),
            "x": tf.io.FixedLenFeature([], tf.float32), "n": tf.io.FixedLenFeature([], tf.int64)}
    got = {}
    for ser in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.io.parse_single_example(ser, spec)
        got[int(ex["n"])] = (ex["s"].numpy().decode(), list(ex["h"].numpy()), float(ex["x"]))
    assert len(got) == 1000
    assert got[7] == ("é7", [b"7", b""], 3.5)


def test_read_raw_lines_positions_headers_and_gzip(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"h1,h2\nx,1\r\ny,2\n")
    (tmp_path / "b.csv.gz").write_bytes(gzip.compress(b"h1,h2\nz,3"))
    with TestPipeline() as p:
        lines = p | T.ReadRawLines([str(tmp_path / "*")], skip_header=True)
        assert_that(lines | beam.MapTuple(lambda ref, raw: (os.path.basename(ref), raw)),
                    equal_to([("a.csv:2", b"x,1"), ("a.csv:3", b"y,2"), ("b.csv.gz:2", b"z,3")]))
