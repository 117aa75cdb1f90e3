"""Evaluation of trained models on a split of the preprocessing output: `mdr evaluate`'s metrics.

Retrieval: per-domain Recall@K over each domain's full item corpus and over sampled candidates
(`evaluate_recall`). Ranking: per-domain exact AUC and logloss (`evaluate_ranker`), and ADS's AUC
improvement between two models (`auc_improvement`). The models only compute; reading the data and
scoring it live here, and `mdr_keras.training.evaluate` calls them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from mdr_contract import artifacts
from mdr_contract import feature_spec as fs
from mdr_keras import data

if TYPE_CHECKING:  # annotations only: the models need not be imported to evaluate one
    from mdr_keras.models.ranker import RankerModel
    from mdr_keras.models.retrieval import RetrievalModel

LOGLOSS_EPSILON = 1e-7


# -------------------------------------------------------------------- retrieval
# How the sampled protocol draws its negatives: uniformly over the domain's corpus ("uniform"), uniformly over
# the items the user did not click in training ("unseen"), or by the domain's training clicks ("popularity").
SAMPLINGS = ("uniform", "unseen", "popularity")
QUERY_CHUNK = 1024  # queries scored at once: with ITEM_CHUNK, memory is bounded whatever the corpus size
ITEM_CHUNK = 16384
RESAMPLING_ROUNDS = 20


def check_sampling(sampled_negatives: int, sampling: str) -> None:
    if not isinstance(sampled_negatives, int) or sampled_negatives < 1:
        raise ValueError(f"`sampled_negatives` must be an int >= 1. Received: sampled_negatives={sampled_negatives!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"`sampling` must be one of {SAMPLINGS}. Received: sampling={sampling!r}")


def _corpus(data_dir, spec, batch_size, embed=None):
    """(item ids, domains, embeddings or None) of the per-domain item corpus (`artifacts.ITEMS`)."""
    ids, doms, emb = [], [], []
    for batch in data.make_dataset(data_dir, artifacts.ITEMS, batch_size, spec=spec):
        ids.append(batch[fs.ITEM_ID].numpy().reshape(-1))
        doms.append(batch[fs.DOMAIN].numpy().reshape(-1))
        if embed is not None:
            emb.append(embed(batch).numpy())
    return np.concatenate(ids), np.concatenate(doms), (np.concatenate(emb) if embed is not None else None)


def _positives(data_dir, spec, split, batch_size, embed=None, holdout=None):
    """(user ids, item ids, domains, user embeddings or None) of the positive rows of `split`."""
    users, items, doms, emb = [], [], [], []
    for batch in data.make_dataset(data_dir, split, batch_size, spec=spec, holdout=holdout):
        positive = tf.equal(tf.reshape(batch[fs.LABEL], [-1]), 1)
        if not bool(tf.reduce_any(positive)):
            continue
        batch = {k: tf.boolean_mask(v, positive) for k, v in batch.items()}  # embed the queries only
        users.append(batch[fs.USER_ID].numpy().reshape(-1))
        items.append(batch[fs.ITEM_ID].numpy().reshape(-1))
        doms.append(batch[fs.DOMAIN].numpy().reshape(-1))
        if embed is not None:
            emb.append(embed(batch).numpy())
    if not users:
        return (np.zeros(0, object),) * 3 + (None,)
    return (np.concatenate(users), np.concatenate(items), np.concatenate(doms),
            np.concatenate(emb) if embed is not None else None)


class _Train:
    """The train split's positives against the corpus rows `(item_ids, item_dom)`: the clicks of each corpus
    row, and the (user, item) pairs as sorted int64 keys for fast membership tests of many pairs at once."""

    def __init__(self, data_dir, spec, batch_size, item_ids, item_dom):
        users, items, doms, _ = _positives(data_dir, spec, artifacts.SPLITS[0], batch_size)
        row_of = {(i, d): j for j, (i, d) in enumerate(zip(item_ids, item_dom))}
        self.clicks = np.zeros(item_ids.size)
        for key in zip(items, doms):
            j = row_of.get(key)
            if j is not None:
                self.clicks[j] += 1
        self.user_index = {u: j for j, u in enumerate(np.unique(users))}
        self.item_index = {iid: j for j, iid in enumerate(item_ids)}
        u = np.array([self.user_index[x] for x in users], np.int64)
        i = np.array([self.item_index.get(x, -1) for x in items], np.int64)
        self.width = max(len(self.item_index), 1)
        self.keys = np.unique(u * self.width + i)

    def clicked(self, user_codes, item_codes):
        """Whether each (user, item) pair is a training click."""
        keys = user_codes * self.width + item_codes
        pos = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        return self.keys[pos] == keys if len(self.keys) else np.zeros(keys.shape, bool)


def _recall(spec, queries, corpus, scorer, ks, sampled_negatives, sampling, train, rng):
    """The per-domain and overall recalls of `scorer` (full corpus and sampled protocols)."""
    q_users, q_items, q_dom = queries
    item_ids, item_dom = corpus
    names = [f"recall@{k}" for k in ks] + [f"sampled_recall@{k}" for k in ks]
    per_domain, hits_all = {}, {n: 0 for n in names}
    for d in spec.domains:
        cand = np.flatnonzero(item_dom == d.encode())
        rows = np.flatnonzero(q_dom == d.encode())
        if not rows.size:
            continue
        index = {iid: j for j, iid in enumerate(item_ids[cand])}
        target = np.array([index.get(i, -1) for i in q_items[rows]])
        found = target >= 0
        corpus_size = cand.size
        p = None
        if sampling == "unseen":
            cand_codes = np.array([train.item_index[x] for x in item_ids[cand]], np.int64)
        if sampling == "popularity":  # add-one: items never clicked in training can be drawn
            p = (train.clicks[cand] + 1.0) / (train.clicks[cand] + 1.0).sum()
        rank = np.zeros(rows.size, np.int64)
        sampled_rank = np.zeros(rows.size, np.int64)
        for lo in range(0, rows.size, QUERY_CHUNK):
            q = rows[lo:lo + QUERY_CHUNK]
            t = target[lo:lo + QUERY_CHUNK]
            pos = np.where(t >= 0, scorer.gathered(q, cand[np.maximum(t, 0)][:, None])[:, 0], np.inf)
            for c0 in range(0, corpus_size, ITEM_CHUNK):  # rank = items scoring above the target, chunk by chunk
                above = scorer.full(q, cand[c0:c0 + ITEM_CHUNK]) > pos[:, None]
                # never the target itself: its score here and `pos` come from different products (an ulp apart)
                inside = np.flatnonzero((t >= c0) & (t < c0 + above.shape[1]))
                above[inside, t[inside] - c0] = False
                rank[lo:lo + q.size] += above.sum(axis=1)
            # Sampled protocol: S other items of the domain per query, with replacement (the corpus may hold
            # fewer than S); a draw equal to the target (or, for "unseen", clicked by the user in training)
            # is drawn again (up to RESAMPLING_ROUNDS times), then one equal to the target moves to the next item.
            draws = (rng.choice(corpus_size, size=(q.size, sampled_negatives), p=p) if p is not None
                     else rng.integers(corpus_size, size=(q.size, sampled_negatives)))
            if sampling == "unseen":
                users = np.array([train.user_index.get(u, -1) for u in q_users[q]], np.int64)[:, None]
            for _ in range(RESAMPLING_ROUNDS):
                bad = draws == t[:, None]
                if sampling == "unseen":
                    bad |= train.clicked(users, cand_codes[draws])
                if not bad.any():
                    break
                draws = np.where(bad, rng.integers(corpus_size, size=draws.shape), draws)
            if corpus_size > 1:
                draws = np.where(draws == t[:, None], (draws + 1) % corpus_size, draws)
            sampled_rank[lo:lo + q.size] = (scorer.gathered(q, cand[draws]) > pos[:, None]).sum(axis=1)
        result = {"queries": int(rows.size), "corpus": int(corpus_size)}
        for k in ks:
            for name, r in ((f"recall@{k}", rank), (f"sampled_recall@{k}", sampled_rank)):
                hit = found & (r < k)
                result[name] = float(hit.mean())
                hits_all[name] += int(hit.sum())
        per_domain[d] = result
    n = sum(r["queries"] for r in per_domain.values())
    overall = {"queries": n, **{name: hits_all[name] / max(n, 1) for name in names}}
    return {"per_domain": per_domain, "overall": overall,
            "protocol": {"sampled_negatives": sampled_negatives, "sampling": sampling}}


class _EmbeddingScorer:
    """Scores of queries against items: inner products of the towers' embeddings."""

    def __init__(self, query_emb, item_emb):
        self.q, self.items = query_emb, item_emb

    def full(self, q, items):  # [len(q), len(items)]
        return self.q[q] @ self.items[items].T

    def gathered(self, q, items):  # items [len(q), S] -> [len(q), S]
        return np.einsum("qo,qso->qs", self.q[q], self.items[items])


class _PopularityScorer:
    """Every query ranks the items by their training clicks in the query's domain (ties broken at random)."""

    def __init__(self, scores):
        self.scores = scores

    def full(self, q, items):
        return np.broadcast_to(self.scores[items], (len(q), len(items)))

    def gathered(self, q, items):
        return self.scores[items]


def evaluate_recall(model: "RetrievalModel", data_dir: str, split: str = "eval", ks: Sequence[int] = (10, 50),
                    batch_size: int = 2048, sampled_negatives: int = 100, sampling: str = "uniform", seed: int = 0,
                    holdout: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Per-domain and overall Recall@K, over each domain's full item corpus and over sampled candidates.

    Each positive row of `split` is a query: its user embedding (in its domain) is scored against
    the item tower's embedding of every item of that domain's corpus (exact search, in chunks of
    queries and items, so memory does not grow with the corpus).
      - `recall@K`: the row's item ranks in the top K of the whole corpus of its domain.
      - `sampled_recall@K` (the sampled-candidates protocol): the row's item ranks in the top K
        among itself and `sampled_negatives` other items of the domain, drawn (seeded) by `sampling`:
        `"uniform"` over the domain's corpus, `"unseen"` uniformly over the items the user did not
        click in the train split, `"popularity"` in proportion to the domain's training clicks + 1.
    Rows whose item is not in the domain's corpus count as misses. `holdout` selects rows of `split` as
    `data.make_dataset` does (`"only"`: the validation rows carved out of the train split).

    Returns:
        {'per_domain': {domain: {'recall@K': r, 'sampled_recall@K': r, 'queries': n, 'corpus': c}},
         'overall': {...}, 'protocol': {'sampled_negatives': S, 'sampling': ...}}
    """
    check_sampling(sampled_negatives, sampling)
    spec = fs.FeatureSpec.load(data_dir)
    item_ids, item_dom, item_emb = _corpus(data_dir, spec, batch_size, model.item_embedding)
    q_users, q_items, q_dom, q_emb = _positives(data_dir, spec, split, batch_size, model.user_embedding, holdout)
    train = _Train(data_dir, spec, batch_size, item_ids, item_dom) if sampling != "uniform" else None
    return _recall(spec, (q_users, q_items, q_dom), (item_ids, item_dom), _EmbeddingScorer(q_emb, item_emb), ks,
                   sampled_negatives, sampling, train, np.random.default_rng(seed))


def evaluate_popularity(data_dir: str, split: str = "eval", ks: Sequence[int] = (10, 50), batch_size: int = 2048,
                        sampled_negatives: int = 100, sampling: str = "uniform", seed: int = 0
                        ) -> Dict[str, Dict[str, float]]:
    """`evaluate_recall` of the per-domain popularity ranking: every query of domain d gets the items of
    d ordered by their clicks in d in the train split (ties in random order). The floor every model must
    clear: a model below it has learned less about the users than their domain's bestsellers say."""
    check_sampling(sampled_negatives, sampling)
    spec = fs.FeatureSpec.load(data_dir)
    item_ids, item_dom, _ = _corpus(data_dir, spec, batch_size)
    train = _Train(data_dir, spec, batch_size, item_ids, item_dom)
    rng = np.random.default_rng(seed)
    scores = train.clicks + rng.uniform(0.0, 0.5, size=item_ids.size)  # < 1: breaks ties only
    q_users, q_items, q_dom, _ = _positives(data_dir, spec, split, batch_size)
    return _recall(spec, (q_users, q_items, q_dom), (item_ids, item_dom), _PopularityScorer(scores), ks,
                   sampled_negatives, sampling, train, rng)


# -------------------------------------------------------------------- ranking
def binary_auc(labels, scores) -> float:
    """Exact ROC AUC: the probability that a random positive scores above a random negative, ties
    counting 1/2 (Mann-Whitney U from average ranks). NaN when a class is absent."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # 1-based rank of each distinct score, averaged over its ties: the ranks c - n + 1 .. c share (2c - n + 1) / 2.
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def binary_logloss(labels, probabilities, epsilon: float = LOGLOSS_EPSILON) -> float:
    """Mean binary cross-entropy, probabilities clipped to [epsilon, 1 - epsilon]."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), epsilon, 1.0 - epsilon)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p))) if y.size else float("nan")


def _summary(labels, probabilities) -> Dict[str, float]:
    return {"auc": binary_auc(labels, probabilities), "logloss": binary_logloss(labels, probabilities),
            "rows": int(len(labels)), "ctr": float(np.mean(labels)) if len(labels) else float("nan")}


def evaluate_ranker(model: "RankerModel", data_dir: str, split: str = "eval", batch_size: int = 2048
                    ) -> Dict[str, Dict]:
    """Per-domain and overall AUC and logloss of `model` on `split` of `data_dir`.

    AUC is exact (`binary_auc`, ties averaged), logloss clips probabilities to [1e-7, 1 - 1e-7];
    both use the unweighted predictions (no DBO). A domain without rows of one class has AUC NaN.

    Returns:
        {'per_domain': {domain: {'auc', 'logloss', 'rows', 'ctr'}}, 'overall': {...}}
    """
    spec = fs.FeatureSpec.load(data_dir)
    predict = tf.function(lambda batch: model(batch, training=False)["probability"], reduce_retracing=True)
    labels, probs, domains = [], [], []
    for batch in data.make_dataset(data_dir, split, batch_size, spec=spec):
        probs.append(predict(batch).numpy())
        labels.append(batch[fs.LABEL].numpy().reshape(-1))
        domains.append(batch[fs.DOMAIN].numpy().reshape(-1))
    labels, probs, domains = (np.concatenate(a) if a else np.zeros(0) for a in (labels, probs, domains))
    per_domain = {}
    for d in spec.domains:
        rows = domains == d.encode()
        if rows.any():
            per_domain[d] = _summary(labels[rows], probs[rows])
    return {"per_domain": per_domain, "overall": _summary(labels, probs)}


def auc_improvement(auc: float, base_auc: float) -> float:
    """ADS eq. 14, as a fraction: `(auc - 0.5) / (base_auc - 0.5) - 1` (0.0114 = the paper's "+1.14%")."""
    if not base_auc > 0.5:
        return float("nan")  # a baseline at chance has no lift to compare with
    return (auc - 0.5) / (base_auc - 0.5) - 1.0
