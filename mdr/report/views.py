"""The numbers the report shows, as numpy arrays and lists: metrics tables, attention per domain, curves.

Resolutions:
  - ADI's towers concatenate N feature embeddings of `e` dims each and the backbone's adaptation
    scores every unit (`num_fields=None`); the heatmap shows each feature's mean over its `e` units
    (in SE / attention mode all units of a field share a score when `num_fields = N`).
  - The attention is averaged over every row of the split (clicks and non-clicks): the adaptation
    and the DSFS attention read features only, not labels.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mdr.report.discovery import ModelRun
from mdr_contract import feature_spec as fs

ATTENTION_SPLITS = ("eval", "test")  # the split whose records feed the attention views, the first one present


# ---------------------------------------------------------------------------------------------- metrics tables
def retrieval_metric_names(runs: Sequence[ModelRun]) -> List[str]:
    """The Recall@K metrics the runs share (full-corpus recall, not sampled), by K; recall@50 first when there."""
    names = set()
    for r in runs:
        for m in (r.metrics or {}).get("overall", {}):
            if re.fullmatch(r"recall@\d+", m):
                names.add(m)
    ordered = sorted(names, key=lambda m: int(m.split("@")[1]))
    if "recall@50" in ordered:
        ordered.remove("recall@50")
        ordered.insert(0, "recall@50")
    return ordered


def metric_names(runs: Sequence[ModelRun], task: str) -> List[str]:
    """The metrics the bars show: Recall@K (retrieval) or AUC and logloss (ranking)."""
    if task == "retrieval":
        return retrieval_metric_names(runs)
    return [m for m in ("auc", "logloss") if any(m in (r.metrics or {}).get("overall", {}) for r in runs)]


# The models a run's others are compared with, per task, in order of preference: domain-blind or plain ones.
BASELINES = {"retrieval": ("dnn", "dnn-single", "dnn-domain"), "ranking": ("dnn", "din")}


def baseline_of(runs: Sequence[ModelRun], task: str) -> Optional[ModelRun]:
    """The evaluated run of `task` the others are compared with: the first of `BASELINES[task]` present."""
    evaluated = [r for r in runs if r.task == task and r.metrics is not None]
    for name in BASELINES.get(task, ()):
        for r in evaluated:
            if r.model == name:
                return r
    return None


def headline_metric(runs: Sequence[ModelRun], task: str) -> Optional[str]:
    """The summary's metric: recall@50 (else the first Recall@K) for retrieval, AUC for ranking."""
    names = metric_names([r for r in runs if r.metrics is not None], task)
    return names[0] if names else None


def short_labels(labels: Sequence[str]) -> List[str]:
    """Model folder names without their shared parent folders ('models/adi' -> 'adi') when still unique."""
    import os

    short = [os.path.basename(label.rstrip("/")) or label for label in labels]
    return short if len(set(short)) == len(short) else list(labels)


def metric_groups(runs: Sequence[ModelRun]) -> List[str]:
    """The rows of a metrics table: every domain of the evaluated runs' metrics, in order met, then 'overall'."""
    domains = []
    for r in runs:
        for d in r.metrics["per_domain"]:
            if d not in domains:
                domains.append(d)
    return domains + ["overall"]


def metric_value(run: ModelRun, group: str, metric: str) -> float:
    """`metric` of an evaluated run in a domain (or 'overall'); NaN when missing or not a number."""
    row = run.metrics["overall"] if group == "overall" else run.metrics["per_domain"].get(group, {})
    try:
        return float(row.get(metric, float("nan")))
    except (TypeError, ValueError):
        return float("nan")


# ---------------------------------------------------------------------------------------------- curves
def curve_metrics(runs: Sequence[ModelRun]) -> List[str]:
    """The base metric names of the runs' histories (loss, auc, ...; `val_x` is drawn with `x`)."""
    names = []
    for r in runs:
        for c in (r.history or {}):
            base = c[4:] if c.startswith("val_") else c
            if base not in ("epoch", "epoch_seconds", "lr", "learning_rate") and base not in names:
                names.append(base)
    return sorted(names, key=lambda m: (m != "loss", m))


def scann_batch_sizes(bench: dict) -> List[str]:
    """The batch sizes a `scann_vs_exact.json` measured, as the keys of its `queries_per_second`."""
    return [str(b) for b in bench.get("batch_sizes", [])] or sorted(
        {b for r in bench.get("results", []) for b in r.get("queries_per_second", {})}, key=int)


# ---------------------------------------------------------------------------------------------- attention
def per_domain_mean(values, domain_index, num_domains: int) -> np.ndarray:
    """The mean of the rows of `values` (`[B, ...]`) of each domain: `[num_domains, ...]`, NaN for a
    domain without rows; rows whose index is outside `[0, num_domains)` are left out."""
    values = np.asarray(values, dtype=np.float64)
    index = np.asarray(domain_index).reshape(-1)
    if values.shape[0] != index.shape[0]:
        raise ValueError(f"`values` and `domain_index` must have the same rows. Received: {values.shape[0]} "
                         f"and {index.shape[0]}")
    out = np.full((num_domains,) + values.shape[1:], np.nan)
    for d in range(num_domains):
        rows = index == d
        if rows.any():
            out[d] = values[rows].mean(axis=0)
    return out


def field_means(weights, num_fields: int) -> np.ndarray:
    """`[B, F]` per-unit weights as `[B, num_fields]`: the mean over each field's `F / num_fields` units."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or num_fields < 1 or weights.shape[1] % num_fields:
        raise ValueError(f"`num_fields` must divide the units of weights [B, F]. Received: "
                         f"weights.shape={weights.shape}, num_fields={num_fields}")
    return weights.reshape(weights.shape[0], num_fields, -1).mean(axis=-1)


def attention_received(attention) -> np.ndarray:
    """DSFS attention `A` `[B, N, N]` (rows over the keys sum to 1) -> `[B, N]`, the attention each field
    receives, averaged over the query fields: `mean_i A[:, i, j]` (each row sums to 1)."""
    attention = np.asarray(attention, dtype=np.float64)
    if attention.ndim != 3 or attention.shape[1] != attention.shape[2]:
        raise ValueError(f"`attention` must be [B, N, N]. Received: attention.shape={attention.shape}")
    return attention.mean(axis=1)


def eval_batches(data_dir: str, spec, max_examples: int, split: Optional[str] = None, batch_size: int = 512):
    """Up to `max_examples` rows of the first split of `ATTENTION_SPLITS` present (or `split`), as a list of
    raw feature batches parsed with `spec`, and the split's name."""
    import tensorflow as tf

    from mdr_keras import data

    splits = [split] if split else list(ATTENTION_SPLITS)
    for name in splits:
        try:
            data.record_files(data_dir, name)
        except FileNotFoundError:
            continue
        batches, rows = [], 0
        for batch in data.make_dataset(data_dir, name, min(batch_size, max_examples), spec=spec):
            n = int(tf.shape(batch["domain"])[0])
            if rows + n > max_examples:
                batch = {k: v[:max_examples - rows] for k, v in batch.items()}
                n = max_examples - rows
            batches.append(batch)
            rows += n
            if rows >= max_examples:
                break
        if rows:
            return batches, name
    raise FileNotFoundError(f"no {' or '.join(splits)} records in {data_dir}")


def per_domain_counts(batches, domains: Sequence[str]) -> List[int]:
    """Rows of each domain in the raw batches (their `domain` strings), in `domains` order."""
    names = np.concatenate([np.asarray(b["domain"]).reshape(-1) for b in batches])
    return [int((names == d.encode()).sum()) for d in domains]


def _domain_index(model, batch) -> np.ndarray:
    return np.asarray(model.encoder(batch)[fs.DOMAIN]).reshape(-1)


def adi_attention(model, batches) -> Dict[Tuple[str, str], Tuple[List[str], np.ndarray]]:
    """ADI's adaptation weights per domain: `{(tower, key): (field names, [D, N])}` (ADI Fig. 5).

    `model` is a `RetrievalModel`; each adaptation instance's `[B, F]` weights are averaged per field
    (`field_means`, N = the tower's fields when they divide F, else one column per unit) and per
    domain (`per_domain_mean`). Empty for a model without adaptation layers."""
    if not hasattr(model, "domain_attention_weights"):
        return {}
    towers = {"user": model.user_tower, "item": model.item_tower}
    weights, domains = {}, []
    for batch in batches:
        for tower, by_key in model.domain_attention_weights(batch).items():
            for key, w in by_key.items():
                weights.setdefault((tower, key), []).append(np.asarray(w, dtype=np.float64))
        domains.append(_domain_index(model, batch))
    if not weights:
        return {}
    domains = np.concatenate(domains)
    num_domains = len(model.domains)
    out = {}
    for (tower, key), parts in weights.items():
        w = np.concatenate(parts)
        names = list(getattr(towers[tower], "field_names", []))
        if names and w.shape[1] % len(names) == 0:
            w = field_means(w, len(names))
        else:
            names = [f"unit {i}" for i in range(w.shape[1])]
        out[(tower, key)] = (names, per_domain_mean(w, domains, num_domains))
    return out


def dsfs_field_names(model, num_fields: int) -> List[str]:
    """The names of the N fields DSFS attends over in a `RankerModel` (`RankerModel.forward`): the user,
    item and domain feature embeddings, then the pooled sequence cut into fields (one per sequence feature)."""
    f = model.features
    names = list(f["user"]) + list(f["item"]) + list(f["domain"])
    rest = num_fields - len(names)
    if rest == len(f["sequence"]):
        names += [f"{n} (pooled)" for n in f["sequence"]]
    else:
        names += [f"sequence {k}" for k in range(max(rest, 0))]
    return names[:num_fields]


def dsfs_attention(model, batches) -> Optional[Tuple[List[str], np.ndarray]]:
    """D3's feature-selection attention per domain: `(field names, [D, N])`, the attention each field
    receives (`attention_received`) averaged per domain; None for a model without DSFS."""
    if getattr(model, "dsfs", None) is None or not hasattr(model, "forward"):
        return None
    received, domains = [], []
    for batch in batches:
        _, extras = model.forward(batch, training=False)
        if extras is None:
            return None
        received.append(attention_received(extras["attention"]))
        domains.append(_domain_index(model, batch))
    received = np.concatenate(received)
    return dsfs_field_names(model, received.shape[1]), per_domain_mean(received, np.concatenate(domains),
                                                                       model.num_domains)
