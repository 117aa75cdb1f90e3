"""The synthetic generator: determinism, overlap, and a planted structure a domain-blind model misses."""
import collections
import csv
import filecmp
import math
import os

from pipeline import synthetic
from tests import helpers


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = synthetic.SyntheticConfig(num_users=100, num_items=80, seed=3)
    synthetic.generate(str(tmp_path / "a"), cfg)
    synthetic.generate(str(tmp_path / "b"), cfg)
    synthetic.generate(str(tmp_path / "c"), synthetic.SyntheticConfig(num_users=100, num_items=80, seed=4))
    name = synthetic.EVENTS_FILENAME
    assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)
    assert not filecmp.cmp(tmp_path / "a" / name, tmp_path / "c" / name, shallow=False)


def test_domains_differ_in_size_and_overlap(synthetic_raw):
    import json

    info = json.load(open(os.path.join(synthetic_raw, synthetic.INFO_FILENAME)))
    sizes = list(info["events_per_domain"].values())
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 2.5 * sizes[-1]
    assert 0.35 < info["users_in_2plus_domains"] < 0.65
    assert 0.6 < info["items_in_2plus_domains"] < 0.95


def test_category_click_rates_shift_across_domains(synthetic_raw):
    # The same category is clicked at clearly different rates in different domains, so a model that
    # ignores the domain cannot fit every domain at once. Compare each category's CTR in d0 and d1
    # where both have >= 30 impressions. Without a shift, the log-odds of each is off by at most
    # 2 / sqrt(30) = 0.37 (one standard error), the gap by 0.52, and its mean absolute value would be
    # about 0.8 * 0.52 = 0.41; we require more than twice that (seed 0 gives 1.46).
    counts = collections.defaultdict(lambda: [0, 0])
    with open(os.path.join(synthetic_raw, synthetic.EVENTS_FILENAME)) as f:
        for row in csv.DictReader(f):
            c = counts[(row["category"], row["domain"])]
            c[0] += 1
            c[1] += int(row["label"])

    def logit(c):
        p = (c[1] + 0.5) / (c[0] + 1)
        return math.log(p / (1 - p))

    gaps = [abs(logit(counts[(cat, "d0")]) - logit(counts[(cat, "d1")]))
            for cat in {k[0] for k in counts}
            if counts[(cat, "d0")][0] >= 30 and counts[(cat, "d1")][0] >= 30]
    assert len(gaps) >= 5
    assert sum(gaps) / len(gaps) > 0.9


def test_timestamps_ordered_per_user(synthetic_raw):
    last = {}
    with open(os.path.join(synthetic_raw, synthetic.EVENTS_FILENAME)) as f:
        for row in csv.DictReader(f):
            ts = int(row["timestamp"])
            assert ts >= last.get(row["user_id"], 0)
            last[row["user_id"]] = ts
    assert helpers.SMALL_SYNTHETIC.num_users >= len(last) > 0.9 * helpers.SMALL_SYNTHETIC.num_users


def test_single_domain_users_stay_home_while_items_are_shared(tmp_path):
    info = synthetic.generate(str(tmp_path), synthetic.SyntheticConfig(num_users=300, num_items=200,
                                                                         single_domain_users=True, seed=1))
    assert info["users_in_2plus_domains"] == 0.0
    assert info["items_in_2plus_domains"] > 0.5
    domains = collections.defaultdict(set)
    with open(os.path.join(tmp_path, synthetic.EVENTS_FILENAME)) as f:
        for row in csv.DictReader(f):
            domains[row["user_id"]].add(row["domain"])
    assert len(domains) > 250 and all(len(d) == 1 for d in domains.values())
    sizes = list(info["events_per_domain"].values())
    assert sizes == sorted(sizes, reverse=True)  # still geometric: small domains exist
