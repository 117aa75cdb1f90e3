"""mdr_keras.evaluation: Recall@K and AUC / logloss of known scorers against counts taken from the records,
exact AUC / logloss / AUC Imp. by hand."""
import math
import zlib
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from mdr_contract import artifacts
from mdr_contract import feature_spec as fs
from mdr_keras.evaluation import (auc_improvement, binary_auc, binary_logloss, evaluate_popularity, evaluate_ranker,
                                  evaluate_recall)
from tests import helpers


class OneHotItems:
    """A retrieval 'model' whose query is its own item: user and item embeddings are one-hot item ids, so a
    query scores 1 with its item and 0 with every other one (rank 0 when its item is in the corpus)."""

    def __init__(self, vocabulary, sign=1.0):
        self.index = {token.encode(): i for i, token in enumerate(vocabulary)}
        self.sign = sign

    def _one_hot(self, ids):
        return tf.one_hot([self.index.get(i, -1) for i in ids.numpy()], len(self.index))

    def item_embedding(self, batch):
        return self._one_hot(batch[fs.ITEM_ID])

    def user_embedding(self, batch):
        return self.sign * self._one_hot(batch[fs.ITEM_ID])


def test_recall_of_a_perfect_and_a_reversed_scorer(synthetic_data):
    data_dir, meta = synthetic_data
    spec = fs.FeatureSpec.load(data_dir)
    corpus = {}
    for r in helpers.read_records(data_dir, artifacts.ITEMS):
        corpus.setdefault(r[fs.DOMAIN], set()).add(r[fs.ITEM_ID])
    positives = [r for r in helpers.read_records(data_dir, "eval") if r[fs.LABEL] == 1]
    result = evaluate_recall(OneHotItems(spec.vocabulary(fs.ITEM_ID)), data_dir, ks=(1,), batch_size=100)
    assert set(result["per_domain"]) == {r[fs.DOMAIN] for r in positives}
    found = 0
    for d, r in result["per_domain"].items():
        queries = [p for p in positives if p[fs.DOMAIN] == d]
        in_corpus = sum(p[fs.ITEM_ID] in corpus[d] for p in queries)
        found += in_corpus
        assert r["queries"] == len(queries) and r["corpus"] == len(corpus[d])
        # Its own item is the only one scoring 1: a hit at K = 1 exactly when the item is in the corpus.
        assert r["recall@1"] == r["sampled_recall@1"] == pytest.approx(in_corpus / len(queries))
    assert result["overall"]["queries"] == len(positives)
    assert result["overall"]["recall@1"] == pytest.approx(found / len(positives))
    # Reversed (its own item scores -1, the others 0): ranked last of the corpus, never in the top 10.
    reversed_ = evaluate_recall(OneHotItems(spec.vocabulary(fs.ITEM_ID), sign=-1.0), data_dir, ks=(10,))
    assert min(meta["items_per_domain"].values()) > 10
    assert reversed_["overall"]["recall@10"] == 0.0


def test_auc_and_logloss_of_an_oracle_and_a_constant_scorer(synthetic_data):
    data_dir, _ = synthetic_data
    rows = helpers.read_records(data_dir, "eval")

    def oracle(batch, training=False):  # 0.9 for the clicks, 0.1 for the others
        return {"probability": tf.where(tf.equal(batch[fs.LABEL], 1), 0.9, 0.1)}

    result = evaluate_ranker(oracle, data_dir, batch_size=100)
    overall = result["overall"]
    labels = np.array([r[fs.LABEL] for r in rows])
    assert overall["rows"] == len(rows) and overall["ctr"] == pytest.approx(labels.mean())
    assert overall["auc"] == 1.0
    assert overall["logloss"] == pytest.approx(-math.log(0.9))  # every row: -ln 0.9 = 0.1054
    for d, r in result["per_domain"].items():
        assert r["rows"] == sum(row[fs.DOMAIN] == d for row in rows)
    constant = evaluate_ranker(lambda batch, training=False: {"probability": tf.fill(tf.shape(batch[fs.LABEL]), 0.5)},
                               data_dir)
    assert constant["overall"]["auc"] == 0.5  # all tied
    assert constant["overall"]["logloss"] == pytest.approx(math.log(2))  # -ln 0.5 = 0.6931
def test_binary_auc_by_hand():
    # Positives score 0.35 and 0.8, negatives 0.1 and 0.4: of the 4 (positive, negative) pairs the positive
    # wins (0.35, 0.1), (0.8, 0.1), (0.8, 0.4) and loses (0.35, 0.4): AUC = 3 / 4.
    assert binary_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # A tie counts 1/2: positives 0.5 and 0.9, negatives 0.5 and 0.2: pairs (0.5, 0.5) = 1/2,
    # (0.5, 0.2) = 1, (0.9, 0.5) = 1, (0.9, 0.2) = 1 -> 3.5 / 4.
    assert binary_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert binary_auc([1, 1, 0], [0.3, 0.3, 0.3]) == pytest.approx(0.5)  # all tied
    assert math.isnan(binary_auc([1, 1], [0.2, 0.7]))  # one class only
    # Agrees with the pairwise definition on random data with many ties.
    rng = np.random.default_rng(0)
    y, s = rng.integers(2, size=300), rng.integers(10, size=300) / 10
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert binary_auc(y, s) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_binary_logloss_by_hand():
    # -(ln 0.5 + ln(1 - 0.2)) / 2 = (0.693147 + 0.223144) / 2 = 0.458145
    assert binary_logloss([1, 0], [0.5, 0.2]) == pytest.approx(0.4581454)
    # A certain wrong prediction is clipped to 1e-7: -ln(1e-7) = 16.118096
    assert binary_logloss([1], [0.0]) == pytest.approx(16.118096)


def test_auc_improvement_is_ads_eq_14():
    # ADS Table 2, Taobao, against DNN 0.6490: DeepFM (0.6503 - 0.5) / (0.6490 - 0.5) - 1 = 0.1503 / 0.1490 - 1
    # = 0.008725 ("+0.87%"); DIN+ADS 0.1507 / 0.1490 - 1 = 0.011409 ("+1.14%").
    assert auc_improvement(0.6503, 0.6490) == pytest.approx(0.008725, abs=1e-6)
    assert auc_improvement(0.6507, 0.6490) == pytest.approx(0.011409, abs=1e-6)
    assert auc_improvement(0.6490, 0.6490) == 0.0
    assert math.isnan(auc_improvement(0.7, 0.5))


def test_popularity_ranking_lies_within_the_bounds_of_its_ties(synthetic_data):
    data_dir, meta = synthetic_data
    clicks = Counter((r[fs.ITEM_ID], r[fs.DOMAIN]) for r in helpers.read_records(data_dir, "train") if r[fs.LABEL])
    corpus = {}
    for r in helpers.read_records(data_dir, artifacts.ITEMS):
        corpus.setdefault(r[fs.DOMAIN], []).append(r[fs.ITEM_ID])
    positives = [r for r in helpers.read_records(data_dir, "eval") if r[fs.LABEL] == 1]
    result = evaluate_popularity(data_dir, ks=(10,))
    assert result["protocol"] == {"sampled_negatives": 100, "sampling": "uniform"}
    for d, r in result["per_domain"].items():
        counts = np.array([clicks[(i, d)] for i in corpus[d]])
        sure = possible = 0
        for q in (p for p in positives if p[fs.DOMAIN] == d):
            if q[fs.ITEM_ID] not in corpus[d]:
                continue
            c = clicks[(q[fs.ITEM_ID], d)]
            above, tied = (counts > c).sum(), (counts == c).sum()  # tied counts the item itself
            sure += above + tied <= 10  # a hit whatever the order of its ties
            possible += above < 10  # a hit for some order of its ties
        hits = r["recall@10"] * r["queries"]
        assert sure - 1e-6 <= hits <= possible + 1e-6, (d, sure, hits, possible)
        # The bestsellers of a domain find far more than a random top 10 would (10 / corpus).
        assert r["recall@10"] > 2 * 10 / len(corpus[d]), (d, r)


def share_in_corpus(data_dir, domain):
    """The share of the eval positives of `domain` whose item is in the domain's corpus."""
    corpus = {r[fs.ITEM_ID] for r in helpers.read_records(data_dir, artifacts.ITEMS) if r[fs.DOMAIN] == domain}
    items = [r[fs.ITEM_ID] for r in helpers.read_records(data_dir, "eval") if r[fs.LABEL] and r[fs.DOMAIN] == domain]
    return sum(i in corpus for i in items) / len(items)


class ClickedFirst:
    """Scores an item 1 when the query's user clicked it in training, 0.5 for the query's own item, else 0:
    every training click of the user outranks the target, nothing else does."""

    def __init__(self, data_dir, vocabulary):
        self.index = {token.encode(): i for i, token in enumerate(vocabulary)}
        self.clicked = {}
        for r in helpers.read_records(data_dir, "train"):
            if r[fs.LABEL]:
                self.clicked.setdefault(r[fs.USER_ID].encode(), set()).add(self.index[r[fs.ITEM_ID].encode()])

    def item_embedding(self, batch):
        return tf.one_hot([self.index.get(i, -1) for i in batch[fs.ITEM_ID].numpy()], len(self.index))

    def user_embedding(self, batch):
        rows = []
        for user, item in zip(batch[fs.USER_ID].numpy(), batch[fs.ITEM_ID].numpy()):
            row = np.zeros(len(self.index), np.float32)
            row[list(self.clicked.get(user, ()))] = 1.0
            if item in self.index:  # an item unseen in training is never in the corpus
                row[self.index[item]] = max(row[self.index[item]], 0.5)
            rows.append(row)
        return tf.constant(np.stack(rows))


def test_unseen_sampling_never_draws_the_users_training_clicks(synthetic_data):
    data_dir, _ = synthetic_data
    scorer = ClickedFirst(data_dir, fs.FeatureSpec.load(data_dir).vocabulary(fs.ITEM_ID))
    unseen = evaluate_recall(scorer, data_dir, ks=(1,), sampling="unseen", sampled_negatives=50)
    uniform = evaluate_recall(scorer, data_dir, ks=(1,), sampling="uniform", sampled_negatives=50)
    assert unseen["protocol"] == {"sampled_negatives": 50, "sampling": "unseen"}
    for d, r in unseen["per_domain"].items():
        # Among unseen negatives the target (0.5) is first unless the user clicked it in training too
        # (then it scores 1, still first): recall@1 is the share of queries whose item is in the corpus.
        in_corpus = share_in_corpus(data_dir, d)
        assert r["sampled_recall@1"] == pytest.approx(in_corpus), d
        # Uniform draws hit some of the user's training clicks, which outrank the target.
        assert uniform["per_domain"][d]["sampled_recall@1"] < r["sampled_recall@1"] - 0.05, d
    with pytest.raises(ValueError, match=r"`sampling` must be one of .* Received: sampling='nope'"):
        evaluate_recall(scorer, data_dir, sampling="nope")
    with pytest.raises(ValueError, match=r"`sampled_negatives` must be an int >= 1. Received: sampled_negatives=0"):
        evaluate_popularity(data_dir, sampled_negatives=0)


class NoisyItems(OneHotItems):
    """Random item vectors; a query is its own item's vector plus noise, so its item ranks anywhere near the top."""

    def __init__(self, vocabulary, noise=1.5, dim=8):
        super().__init__(vocabulary)
        rng = np.random.default_rng(0)
        self.table = rng.normal(size=(len(self.index) + 1, dim)).astype(np.float32)  # last row: unknown ids
        self.noise = noise

    def _vectors(self, ids):
        return self.table[[self.index.get(i, -1) for i in ids.numpy()]]

    def item_embedding(self, batch):
        return tf.constant(self._vectors(batch[fs.ITEM_ID]))

    def user_embedding(self, batch):
        ids = batch[fs.ITEM_ID].numpy()
        noise = np.stack([np.random.default_rng(zlib.crc32(i)).normal(size=self.table.shape[1]) for i in ids])
        return tf.constant(self._vectors(batch[fs.ITEM_ID]) + self.noise * noise.astype(np.float32))


def test_full_corpus_recall_does_not_depend_on_the_chunks(synthetic_data, monkeypatch):
    # Queries and items scored a few at a time (chunks that divide nothing evenly) rank every query as the
    # whole matrix at once does: the chunks bound memory, not the answer.
    from mdr_keras import evaluation

    data_dir, _ = synthetic_data
    model = NoisyItems(fs.FeatureSpec.load(data_dir).vocabulary(fs.ITEM_ID))
    whole = evaluate_recall(model, data_dir, ks=(1, 5, 20))
    assert 0.05 < whole["overall"]["recall@5"] < 0.95  # neither every query found nor none
    monkeypatch.setattr(evaluation, "QUERY_CHUNK", 7)
    monkeypatch.setattr(evaluation, "ITEM_CHUNK", 3)
    chunked = evaluate_recall(model, data_dir, ks=(1, 5, 20))
    for d, r in whole["per_domain"].items():
        for k in (1, 5, 20):
            assert chunked["per_domain"][d][f"recall@{k}"] == r[f"recall@{k}"], (d, k)
