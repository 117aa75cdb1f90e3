"""Evaluation of trained models on a split of the preprocessing output: `mdr evaluate`'s metrics.

Retrieval: per-domain Recall@K over each domain's full item corpus and over sampled candidates
(`evaluate_recall`). Ranking: per-domain exact AUC and logloss (`evaluate_ranker`), and ADS's AUC
improvement between two models (`auc_improvement`). The models only compute; reading the data and
scoring it live here, and `mdr_keras.training.evaluate` calls them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Sequence

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
def evaluate_recall(model: "RetrievalModel", data_dir: str, split: str = "eval", ks: Sequence[int] = (10, 50),
                    batch_size: int = 2048, sampled_negatives: int = 100, seed: int = 0
                    ) -> Dict[str, Dict[str, float]]:
    """Per-domain and overall Recall@K, over each domain's full item corpus and over sampled candidates.

    Each positive row of `split` is a query: its user embedding (in its domain) is scored against
    the item tower's embedding of every item of that domain's corpus (exact search).
      - `recall@K`: the row's item ranks in the top K of the whole corpus of its domain.
      - `sampled_recall@K` (the sampled-candidates protocol): the row's item ranks in the top K
        among itself and `sampled_negatives` other items of the domain drawn uniformly (seeded).
    Rows whose item is not in the domain's corpus count as misses.

    Returns:
        {'per_domain': {domain: {'recall@K': r, 'sampled_recall@K': r, 'queries': n}}, 'overall': {...}}
    """
    spec = fs.FeatureSpec.load(data_dir)
    rng = np.random.default_rng(seed)
    item_ids, item_dom, item_emb = [], [], []
    for batch in data.make_dataset(data_dir, artifacts.ITEMS, batch_size, spec=spec):
        item_ids.append(batch[fs.ITEM_ID].numpy())
        item_dom.append(batch[fs.DOMAIN].numpy())
        item_emb.append(model.item_embedding(batch).numpy())
    item_ids, item_dom, item_emb = map(np.concatenate, (item_ids, item_dom, item_emb))
    q_ids, q_dom, q_emb = [], [], []
    for batch in data.make_dataset(data_dir, split, batch_size, spec=spec):
        positive = tf.equal(batch[fs.LABEL], 1)
        if not bool(tf.reduce_any(positive)):
            continue
        batch = {k: tf.boolean_mask(v, positive) for k, v in batch.items()}  # embed the queries only
        q_ids.append(batch[fs.ITEM_ID].numpy())
        q_dom.append(batch[fs.DOMAIN].numpy())
        q_emb.append(model.user_embedding(batch).numpy())
    q_ids, q_dom, q_emb = map(np.concatenate, (q_ids, q_dom, q_emb))
    names = [f"recall@{k}" for k in ks] + [f"sampled_recall@{k}" for k in ks]
    per_domain, hits_all = {}, {n: 0 for n in names}
    for d in spec.domains:
        cand = item_dom == d.encode()
        rows = q_dom == d.encode()
        if not rows.any():
            continue
        scores = q_emb[rows] @ item_emb[cand].T
        index = {iid: j for j, iid in enumerate(item_ids[cand])}
        target = np.array([index.get(i, -1) for i in q_ids[rows]])
        found = target >= 0
        pos_score = np.where(found, scores[np.arange(len(target)), np.maximum(target, 0)], np.inf)
        rank = (scores > pos_score[:, None]).sum(axis=1)
        # Sampled protocol: S of the corpus' other items per query, uniform with replacement (the corpus
        # may hold fewer than S items); a draw equal to the target is moved to the next item.
        corpus = scores.shape[1]
        draws = rng.integers(corpus, size=(len(target), sampled_negatives))
        if corpus > 1:
            draws = np.where(draws == target[:, None], (draws + 1) % corpus, draws)
        sampled_rank = (np.take_along_axis(scores, draws, axis=1) > pos_score[:, None]).sum(axis=1)
        result = {"queries": int(rows.sum()), "corpus": int(corpus)}
        for k in ks:
            for name, r in ((f"recall@{k}", rank), (f"sampled_recall@{k}", sampled_rank)):
                hit = found & (r < k)
                result[name] = float(hit.mean())
                hits_all[name] += int(hit.sum())
        per_domain[d] = result
    n = sum(r["queries"] for r in per_domain.values())
    overall = {"queries": n, **{name: hits_all[name] / max(n, 1) for name in names}}
    return {"per_domain": per_domain, "overall": overall}


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
