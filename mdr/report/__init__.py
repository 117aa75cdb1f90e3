"""`mdr report RUN_DIR`: one HTML page (and PNGs) of a run folder, to look at instead of reading logs.

The page (`RUN_DIR/report/index.html` by default, its PNGs beside it, referenced relatively; no
JavaScript, no external resources) has a section per view, each with a plot and the numbers:

  1. Per-domain metrics of every model folder found under the run folder (any folder with a
     `train_config.json`, as `mdr train` writes), grouped by task: grouped bars (domains on x, one
     bar per model) of Recall@K for retrieval, AUC and logloss for ranking, and tables.
  2. Training curves from each `history.csv` (train solid, validation dashed).
  3. ADI's domain interest adaptation weights per domain (ADI Fig. 5): the eval records through
     each ADI model, the weights of every adaptation instance (per tower and placement) averaged
     per field and per domain; a heatmap domains x fields.
  4. D3's feature-selection attention per domain (D3 Fig. 4): the DSFS attention each field
     *receives* (the mean over the query fields of `A[:, i, j]`, so a row sums to 1), averaged
     per domain; a heatmap domains x fields.
  5. The ScaNN recall / throughput curve from a `scann_vs_exact.json` under the run folder
     (`python -m benchmarks.scann_vs_exact --json ...`), and the per-domain recall of the ScaNN
     index of every export (`export_report_v<N>.json`).

A part that cannot be drawn (no metrics.json, no data, an ablation without attention, ...) says why
and how to produce it; only a run folder without any model folder is an error.

Resolutions:
  - ADI's towers concatenate N feature embeddings of `e` dims each and the backbone's adaptation
    scores every unit (`num_fields=None`); the heatmap shows each feature's mean over its `e` units
    (in SE / attention mode all units of a field share a score when `num_fields = N`).
  - The attention is averaged over every row of the split (clicks and non-clicks): the adaptation
    and the DSFS attention read features only, not labels.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import fnmatch
import html
import json
import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

REPORT_DIRNAME = "report"
PAGE = "index.html"
SCANN_JSON = "scann_vs_exact.json"
ATTENTION_SPLITS = ("eval", "test")  # the split whose records feed the attention views, the first one present
_MODEL_INTERNALS = {"weights", "logs", "vocab", "backup"}  # sub-folders of a model folder: no models in them
_SCANN_COMMAND = ("python -m benchmarks.scann_vs_exact --items 100000 --leaves-to-search 5,10,20,40 "
                  "--json {run}/bench/scann_vs_exact.json")

# The ranking models with D3's head by name (`ranker.build_ranker_model`); the baselines have it with d3_head.
D3_RANKERS = ("ranker", "ranker-no-pcrg", "ranker-no-pcrg-psrg", "ranker-no-dbo")
_NO_DSFS_HOW = "the ranker and its ablations but ranker-no-dsfs have it, a baseline with `--set d3_head=true`"

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- discovery
@dataclasses.dataclass
class ModelRun:
    """What a model folder holds, read from its files (no TensorFlow).

    Attributes:
        path: the model folder.
        label: its path relative to the run folder (the name in plots and tables).
        model, task: from train_config.json.
        config: train_config.json.
        metrics: metrics.json, or None (not evaluated).
        history: history.csv as {column: values per epoch}, or None.
        summary: train_summary.json, or None.
    """

    path: str
    label: str
    model: str
    task: str
    config: dict
    metrics: Optional[dict] = None
    history: Optional[Dict[str, List[float]]] = None
    summary: Optional[dict] = None


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _walk(run_dir: str, skip: Sequence[str] = ()):
    """`os.walk` of `run_dir`, sorted, not descending into a model's own sub-folders (weights/, logs/, ...),
    a preprocessing output (its splits), or the folders of `skip` (the report's own output)."""
    skip = {os.path.abspath(s) for s in skip}
    for root, dirs, files in os.walk(run_dir):
        if "_SUCCESS" in files and "feature_spec.json" in files:
            dirs[:] = []
        else:
            internal = _MODEL_INTERNALS if "train_config.json" in files else set()
            dirs[:] = sorted(d for d in dirs
                             if d not in internal and os.path.abspath(os.path.join(root, d)) not in skip)
        yield root, files


def find_model_dirs(run_dir: str, skip: Sequence[str] = ()) -> List[str]:
    """Every folder under `run_dir` (itself included) holding a `train_config.json`, sorted."""
    return sorted(root for root, files in _walk(run_dir, skip) if "train_config.json" in files)


def read_history(path: str) -> Dict[str, List[float]]:
    """A Keras CSVLogger file as {column: [value per epoch]}; on a resumed run (rows appended again
    for an epoch) the last row of an epoch wins."""
    rows = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                rows[int(float(row["epoch"]))] = row
            except (KeyError, TypeError, ValueError):
                continue
    columns = sorted({k for r in rows.values() for k in r if k and k != "epoch"})
    out = {"epoch": [float(e) for e in sorted(rows)]}
    for c in columns:
        values = []
        for e in sorted(rows):
            try:
                values.append(float(rows[e].get(c)))
            except (TypeError, ValueError):
                values.append(float("nan"))
        out[c] = values
    return out


def load_model_run(path: str, run_dir: str) -> Optional[ModelRun]:
    """The `ModelRun` of a model folder, or None when its train_config.json is unreadable."""
    config = _read_json(os.path.join(path, "train_config.json"))
    if not isinstance(config, dict) or "model" not in config:
        return None
    task = config.get("task") or ""
    if task not in ("retrieval", "ranking"):
        try:
            from mdr_keras import training

            task = training.task_of(config["model"], task)
        except ValueError:
            return None
    label = os.path.relpath(path, run_dir)
    if label == ".":
        label = os.path.basename(os.path.abspath(path))
    history = None
    if os.path.exists(os.path.join(path, "history.csv")):
        try:
            history = read_history(os.path.join(path, "history.csv"))
        except (OSError, csv.Error):
            history = None
    metrics = _read_json(os.path.join(path, "metrics.json"))
    if not (isinstance(metrics, dict) and isinstance(metrics.get("per_domain"), dict)):
        metrics = None
    return ModelRun(path=path, label=label, model=config["model"], task=task, config=config, metrics=metrics,
                    history=history, summary=_read_json(os.path.join(path, "train_summary.json")))


def find_files(run_dir: str, pattern: str, skip: Sequence[str] = ()) -> List[str]:
    """Files under `run_dir` whose name matches the glob `pattern`, sorted (model internals skipped)."""
    return sorted(os.path.join(root, f) for root, files in _walk(run_dir, skip) for f in files
                  if fnmatch.fnmatch(f, pattern))


# ---------------------------------------------------------------------------------------------- numbers
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


def _domain_index(model, batch) -> np.ndarray:
    from mdr_keras import feature_spec as fs

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


# ---------------------------------------------------------------------------------------------- plots
def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    return fig


def _save(fig, path: str) -> str:
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


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


def _groups(runs: Sequence[ModelRun]) -> List[str]:
    domains = []
    for r in runs:
        for d in r.metrics["per_domain"]:
            if d not in domains:
                domains.append(d)
    return domains + ["overall"]


def _value(run: ModelRun, group: str, metric: str) -> float:
    row = run.metrics["overall"] if group == "overall" else run.metrics["per_domain"].get(group, {})
    try:
        return float(row.get(metric, float("nan")))
    except (TypeError, ValueError):
        return float("nan")


def plot_metric_bars(runs: Sequence[ModelRun], metrics: Sequence[str], path: str, title: str) -> str:
    """Grouped bars, one panel per metric: domains (and overall) on x, one bar per model."""
    groups = _groups(runs)
    n = len(runs)
    width = max(6.0, 0.35 * len(groups) * max(n, 2) + 2.0)
    fig = _figure(width, 3.4 * len(metrics))
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    x = np.arange(len(groups))
    bar = 0.8 / max(n, 1)
    colors = _colors(n)
    for ax, metric in zip(axes, metrics):
        values_all = []
        for i, run in enumerate(runs):
            values = np.array([_value(run, g, metric) for g in groups])
            values_all.append(values)
            pos = x - 0.4 + bar * (i + 0.5)
            ax.bar(pos, np.nan_to_num(values), bar * 0.95, label=run.label, color=colors[i])
            if len(groups) * n <= 48:
                for p, v in zip(pos, values):
                    ax.text(p, 0 if np.isnan(v) else v, "n/a" if np.isnan(v) else f"{v:.3f}", ha="center",
                            va="bottom", fontsize=7, rotation=90 if n > 3 else 0)
        finite = np.concatenate(values_all)
        finite = finite[np.isfinite(finite)]
        if metric == "auc" and finite.size and finite.min() >= 0.5:
            ax.set_ylim(0.5, min(1.0, finite.max() + 0.05) + 0.03)
        elif metric.startswith(("recall", "sampled_recall")):
            ax.set_ylim(0.0, 1.1)
        elif finite.size:
            ax.set_ylim(0.0, finite.max() * 1.2 + 1e-9)
        ax.set_xticks(x)
        ax.set_xticklabels(groups, rotation=30 if len(groups) > 6 else 0, ha="right" if len(groups) > 6 else "center")
        ax.set_ylabel(metric)
        ax.set_title(f"{title}: {metric} per domain")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a bar
    fig.tight_layout()
    return _save(fig, path)


def _colors(n):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def curve_metrics(runs: Sequence[ModelRun]) -> List[str]:
    """The base metric names of the runs' histories (loss, auc, ...; `val_x` is drawn with `x`)."""
    names = []
    for r in runs:
        for c in (r.history or {}):
            base = c[4:] if c.startswith("val_") else c
            if base not in ("epoch", "epoch_seconds", "lr", "learning_rate") and base not in names:
                names.append(base)
    return sorted(names, key=lambda m: (m != "loss", m))


def plot_training_curves(runs: Sequence[ModelRun], path: str, title: str) -> str:
    """One panel per metric: per model the training values (solid) and the validation values (dashed)
    per epoch."""
    metrics = curve_metrics(runs)
    cols = min(len(metrics), 2)
    rows = (len(metrics) + cols - 1) // cols
    fig = _figure(6.0 * cols, 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    colors = _colors(len(runs))
    for ax, metric in zip(axes, metrics):
        for color, run in zip(colors, runs):
            h = run.history or {}
            epochs = np.asarray(h.get("epoch", []), dtype=float) + 1
            for column, style, marker, suffix in ((metric, "-", "o", "train"), (f"val_{metric}", "--", "s", "val")):
                if column in h and len(h[column]) == len(epochs):
                    ax.plot(epochs, h[column], linestyle=style, marker=marker, color=color,
                            label=f"{run.label} ({suffix})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{title}: {metric}")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def plot_heatmaps(panels: Sequence[Tuple[str, List[str], np.ndarray]], domains: Sequence[str], path: str,
                  colorbar_label: str) -> str:
    """One heatmap per panel `(title, field names, [D, N] matrix)`: domains as rows, fields as columns,
    the values written in the cells when they fit; a domain without rows is blank."""
    width = max(6.0, 0.55 * max(len(p[1]) for p in panels) + 3.0)
    heights = [0.45 * len(domains) + 2.6 for _ in panels]
    fig = _figure(width, sum(heights))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (title, fields, matrix) in zip(axes, panels):
        matrix = np.asarray(matrix, dtype=float)
        masked = np.ma.masked_invalid(matrix)
        image = ax.imshow(masked, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xticks(np.arange(len(fields)))
        ax.set_xticklabels(fields, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(np.arange(len(domains)))
        ax.set_yticklabels(domains, fontsize=8)
        ax.set_ylabel("domain")
        ax.set_title(title, fontsize=10)
        if matrix.size <= 400 and np.isfinite(matrix).any():
            lo, hi = np.nanmin(matrix), np.nanmax(matrix)
            mid = (lo + hi) / 2
            digits = _digits(hi - lo)
            for (d, j), v in np.ndenumerate(matrix):
                if np.isfinite(v):
                    ax.text(j, d, f"{v:.{digits}f}", ha="center", va="center", fontsize=7 if digits < 4 else 6,
                            color="black" if v > mid else "white")
        fig.colorbar(image, ax=ax, label=colorbar_label, fraction=0.03, pad=0.02)
    fig.tight_layout()
    return _save(fig, path)


def _digits(spread: float) -> int:
    """Decimals that tell apart values spread over `spread` (2 to 4): attention of a barely trained model
    sits close to its starting point (0.5 for sigmoid scores, 1/N for DSFS)."""
    if not spread > 0:
        return 2
    return int(min(4, max(2, np.ceil(-np.log10(spread)) + 1)))


def scann_batch_sizes(bench: dict) -> List[str]:
    """The batch sizes a `scann_vs_exact.json` measured, as the keys of its `queries_per_second`."""
    return [str(b) for b in bench.get("batch_sizes", [])] or sorted(
        {b for r in bench.get("results", []) for b in r.get("queries_per_second", {})}, key=int)


def plot_scann_curve(bench: dict, path: str, title: str) -> str:
    """Recall@K (x) against queries/s (y, log scale) of every ScaNN configuration (a line per batch size,
    points labelled with the leaves searched) and of exact search."""
    fig = _figure(7.0, 4.5)
    ax = fig.subplots()
    rows = bench.get("results", [])
    batches = scann_batch_sizes(bench)
    colors = _colors(len(batches))
    for color, b in zip(colors, batches):
        scann = sorted((r for r in rows if r.get("index") == "scann" and b in r.get("queries_per_second", {})),
                       key=lambda r: r.get("leaves_to_search", 0))
        if scann:
            xs = [r["recall"] for r in scann]
            ys = [r["queries_per_second"][b] for r in scann]
            ax.plot(xs, ys, "-o", color=color, label=f"ScaNN, batch {b}")
            for r, xv, yv in zip(scann, xs, ys):
                ax.annotate(f"{r.get('leaves_to_search')}/{r.get('leaves')}", (xv, yv), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
        for r in rows:
            if r.get("index") == "exact" and b in r.get("queries_per_second", {}):
                ax.plot([r["recall"]], [r["queries_per_second"][b]], "*", markersize=12, color=color,
                        label=f"exact, batch {b}")
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{bench.get('k', 'K')} vs exact search")
    ax.set_ylabel("queries / s (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def plot_index_recall(report: dict, path: str, title: str) -> str:
    """Bars of the per-domain recall@k of an export's ScaNN index against exact search."""
    index = report.get("index", {})
    domains = list(index)
    values = [float(index[d].get("recall@k", float("nan"))) for d in domains]
    fig = _figure(max(5.0, 0.8 * len(domains) + 2.0), 3.4)
    ax = fig.subplots()
    bars = ax.bar(np.arange(len(domains)), np.nan_to_num(values), 0.6, color=_colors(1)[0])
    for rect, v, d in zip(bars, values, domains):
        note = " (exact)" if index[d].get("brute_force") else ""
        ax.text(rect.get_x() + rect.get_width() / 2, rect.get_height(), f"{v:.3f}{note}", ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(domains)))
    ax.set_xticklabels(domains)
    ks = sorted({index[d].get("k") for d in domains if index[d].get("k") is not None})
    ax.set_ylabel(f"recall@{ks[0] if len(ks) == 1 else 'k'}")
    ax.set_ylim(0.0, 1.1)
    ax.set_xlabel("domain")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- html
def _e(text) -> str:
    return html.escape(str(text))


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return _e(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if np.isnan(value):
            return "n/a"
        return f"{value:,.4f}" if abs(value) < 100 else f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return _e(value)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _missing(why: str, how: str = "") -> str:
    text = _e(why) + ("; " + _e(how) if how else "")
    return '<p class="na">not available: ' + re.sub(r"`([^`]+)`", r"<code>\1</code>", text) + "</p>"


def _img(path: str, out_dir: str, alt: str) -> str:
    return f'<p><img src="{_e(os.path.relpath(path, out_dir))}" alt="{_e(alt)}"></p>'


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", re.sub(r"\.json$", "", text)).strip("_") or "run"


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:80em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.na{color:#a33}.meta{color:#666;font-size:.9em}code{background:#f4f4f4;padding:0 .2em}"""


class _Page:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.parts: List[str] = []
        self.pngs: List[str] = []

    def add(self, text: str):
        self.parts.append(text)

    def image(self, path: str, alt: str):
        self.pngs.append(path)
        self.add(_img(path, self.out_dir, alt))

    def png(self, name: str) -> str:
        return os.path.join(self.out_dir, f"{_slug(name)}.png")

    def attempt(self, what: str, fn, *args):
        """Runs a part of the page; a failure becomes a 'not available' line, never a crash."""
        try:
            return fn(*args)
        except Exception as error:  # noqa: BLE001 - a broken part must not take the page down
            logger.warning("report: %s failed: %s", what, error, exc_info=logger.isEnabledFor(logging.DEBUG))
            self.add(_missing(f"{what} failed ({type(error).__name__}: {error})"))
            return None


def _metrics_section(page: _Page, task: str, runs: List[ModelRun]):
    evaluated = [r for r in runs if r.metrics is not None]
    for r in runs:
        if r.metrics is None:
            page.add(_missing(f"{r.label} has no metrics.json",
                              f"run `mdr evaluate --model-dir {r.path} --data DATA_DIR`"))
    if not evaluated:
        return
    metrics = metric_names(evaluated, task)
    if not metrics:
        page.add(_missing(f"the {task} metrics.json files hold no "
                          f"{'recall@K' if task == 'retrieval' else 'auc / logloss'}"))
    else:
        path = plot_metric_bars(evaluated, metrics, page.png(f"metrics_{task}"), f"{task} models")
        page.image(path, f"{task}: {', '.join(metrics)} per domain and model")
        groups = _groups(evaluated)
        for metric in metrics:
            page.add(f"<h3>{_e(metric)}</h3>")
            page.add(_table(["domain"] + [r.label for r in evaluated],
                            [[g] + [_value(r, g, metric) for r in evaluated] for g in groups]))
    page.add("<h3>all metrics</h3>")
    for r in evaluated:
        rows = dict(r.metrics["per_domain"])
        rows["overall"] = r.metrics["overall"]
        columns = []
        for v in rows.values():
            columns += [k for k in v if k not in columns]
        page.add(f"<p>{_e(r.label)} ({_e(r.model)}) on split {_e(r.metrics.get('split', '?'))}</p>")
        page.add(_table(["domain"] + columns, [[d] + [v.get(c, float('nan')) for c in columns]
                                               for d, v in rows.items()]))


def _curves_section(page: _Page, task: str, runs: List[ModelRun]):
    with_history = [r for r in runs if r.history and len(r.history.get("epoch", []))]
    for r in runs:
        if r not in with_history:
            page.add(_missing(f"{r.label} has no history.csv", "`mdr train` writes it while training"))
    if not with_history:
        return
    path = plot_training_curves(with_history, page.png(f"curves_{task}"), f"{task}")
    page.image(path, f"{task} training curves")
    rows = []
    columns = sorted({c for r in with_history for c in r.history if c != "epoch"},
                     key=lambda c: (c.startswith("val_"), c))
    for r in with_history:
        rows.append([r.label, len(r.history["epoch"])] + [r.history[c][-1] if c in r.history else float("nan")
                                                          for c in columns])
    page.add("<p>last epoch:</p>")
    page.add(_table(["model", "epochs"] + columns, rows))


def resolve_data_dir(run: ModelRun, run_dir: str, given: Optional[str]) -> Optional[str]:
    """The preprocessing output whose records feed the attention views: `given`, else the data folder of
    the model's metrics.json, else a `data/` folder next to the model folder or one of its parents up to
    the run folder (the layout of `mdr demo`), else the run folder itself; the first complete one."""
    candidates = [given] if given else []
    if run.metrics and run.metrics.get("data"):
        candidates.append(run.metrics["data"])
    folder, stop = os.path.abspath(run.path), os.path.abspath(run_dir)
    while True:
        candidates.append(os.path.join(folder, "data"))
        if folder == stop or os.path.dirname(folder) == folder:
            break
        folder = os.path.dirname(folder)
    candidates.append(run_dir)
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "_SUCCESS")):
            return c
    return None


def _load(run: ModelRun):
    from mdr_keras import training

    return training.load_model(run.path)


def _attention_section(page: _Page, runs: List[ModelRun], run_dir: str, data_dir: Optional[str],
                       max_examples: int, kind: str):
    """ADI (kind='adi', retrieval models) or D3 (kind='dsfs', ranking models) attention heatmaps."""
    task = "retrieval" if kind == "adi" else "ranking"
    candidates = [r for r in runs if r.task == task]
    if not candidates:
        page.add(_missing(f"no {task} model in the run folder",
                          f"train one with `mdr train --model {'adi' if kind == 'adi' else 'ranker'}`"))
        return
    for run in candidates:
        page.add(f"<h3>{_e(run.label)} ({_e(run.model)})</h3>")
        model_config = run.config.get("model_config") or {}
        if kind == "adi" and (run.model != "adi" or model_config.get("attention", "se") is None):
            page.add(_missing(f"{run.model} has no domain interest adaptation layer"
                              + (" (attention=None ablation)" if run.model == "adi" else ""),
                              "ADI models with `attention` set have one"))
            continue
        if kind == "dsfs" and not (run.model in D3_RANKERS
                                   or (not run.model.startswith("ranker") and model_config.get("d3_head"))):
            page.add(_missing(f"{run.model} has no DSFS feature selection", _NO_DSFS_HOW))
            continue
        folder = resolve_data_dir(run, run_dir, data_dir)
        if folder is None:
            page.add(_missing(f"no preprocessing output found for {run.label} (its metrics.json names none "
                              "that exists, no data/ folder beside it)",
                              f"pass `mdr report {run_dir} --data DATA_DIR`"))
            continue
        page.attempt(f"attention of {run.label}", _attention_of, page, run, folder, max_examples, kind)


def _attention_of(page: _Page, run: ModelRun, folder: str, max_examples: int, kind: str):
    model, spec, _ = _load(run)
    batches, split = eval_batches(folder, spec, max_examples)
    rows = sum(int(b["domain"].shape[0]) for b in batches)
    source = f"{rows:,} rows of {os.path.join(folder, split)}"
    domains = list(spec.domains)
    counts = per_domain_counts(batches, domains)
    if kind == "adi":
        found = adi_attention(model, batches)
        if not found:
            page.add(_missing(f"{run.label} has no domain interest adaptation layer"))
            return
        panels = [(f"{run.label}: {tower} tower, {key} (mean weight per field)", names, matrix)
                  for (tower, key), (names, matrix) in found.items()]
        path = plot_heatmaps(panels, domains, page.png(f"adi_attention_{run.label}"),
                             "mean adaptation weight")
        page.image(path, f"ADI domain attention of {run.label}")
        page.add(f'<p class="meta">ADI Fig. 5: the domain interest adaptation weight of each field, averaged over '
                 f'{_e(source)} per domain (rows per domain: {_e(_counts_text(domains, counts))}).</p>')
        for title, names, matrix in panels:
            page.add(f"<p>{_e(title)}</p>")
            page.add(_table(["domain"] + names, [[d] + list(row) for d, row in zip(domains, matrix)]))
    else:
        found = dsfs_attention(model, batches)
        if found is None:
            page.add(_missing(f"{run.label} ({run.model}) has no DSFS feature selection", _NO_DSFS_HOW))
            return
        names, matrix = found
        path = plot_heatmaps([(f"{run.label}: attention received per field (D3 DSFS)", names, matrix)], domains,
                             page.png(f"d3_attention_{run.label}"), "mean attention received")
        page.image(path, f"D3 feature-selection attention of {run.label}")
        page.add(f'<p class="meta">D3 Fig. 4: the DSFS self-attention each field receives (mean over the query '
                 f'fields; a row sums to 1, uniform = {1.0 / len(names):.3f}), averaged over {_e(source)} per '
                 f'domain (rows per domain: {_e(_counts_text(domains, counts))}).</p>')
        page.add(_table(["domain"] + names, [[d] + list(row) for d, row in zip(domains, matrix)]))


def per_domain_counts(batches, domains: Sequence[str]) -> List[int]:
    """Rows of each domain in the raw batches (their `domain` strings), in `domains` order."""
    names = np.concatenate([np.asarray(b["domain"]).reshape(-1) for b in batches])
    return [int((names == d.encode()).sum()) for d in domains]


def _counts_text(domains, counts):
    return ", ".join(f"{d} {c:,}" for d, c in zip(domains, counts))


def _scann_section(page: _Page, run_dir: str, out_dir: str):
    files = find_files(run_dir, SCANN_JSON, skip=[out_dir])
    if not files:
        page.add(_missing(f"no {SCANN_JSON} under {run_dir}",
                          "produce it with `" + _SCANN_COMMAND.format(run=run_dir) + "`"))
    for path in files:
        bench = _read_json(path)
        if not isinstance(bench, dict) or not bench.get("results"):
            page.add(_missing(f"{path} holds no results"))
            continue
        rel = os.path.relpath(path, run_dir)
        title = f"ScaNN vs exact ({rel})"
        if isinstance(bench.get("items"), int):
            title = (f"ScaNN vs exact: {bench['items']:,} x {bench.get('dim', '?')}, K={bench.get('k', '?')}, "
                     f"{bench.get('cores', '?')} cores")
        page.add(f"<h3>{_e(rel)}</h3>")
        page.image(plot_scann_curve(bench, page.png(f"scann_{rel}"), title), "ScaNN recall / throughput")
        batches = scann_batch_sizes(bench)
        page.add(_table(["index", "leaves", "leaves searched", f"recall@{bench.get('k', 'K')}", "build s"]
                        + [f"q/s batch {b}" for b in batches],
                        [[r.get("index"), r.get("leaves"), r.get("leaves_to_search"), r.get("recall"),
                          r.get("build_seconds")] + [r.get("queries_per_second", {}).get(b, float("nan"))
                                                     for b in batches] for r in bench["results"]]))


def latest_export_reports(run_dir: str, skip: Sequence[str] = ()) -> List[str]:
    """The `export_report_v<N>.json` of the highest N in each folder under `run_dir`."""
    latest = {}
    for path in find_files(run_dir, "export_report_v*.json", skip=skip):
        match = re.fullmatch(r"export_report_v(\d+)\.json", os.path.basename(path))
        if match:
            folder, version = os.path.dirname(path), int(match.group(1))
            if version >= latest.get(folder, (-1, ""))[0]:
                latest[folder] = (version, path)
    return [p for _, p in sorted(latest.values(), key=lambda vp: vp[1])]


def _export_section(page: _Page, run_dir: str, out_dir: str):
    files = latest_export_reports(run_dir, skip=[out_dir])
    if not files:
        page.add(_missing(f"no export_report_v<N>.json under {run_dir}",
                          "`mdr export ... --export-dir DIR` writes one"))
    for path in files:
        report = _read_json(path)
        rel = os.path.relpath(path, run_dir)
        page.add(f"<h3>{_e(rel)}</h3>")
        if not isinstance(report, dict) or not report.get("index"):
            page.add(_missing(f"{rel} has no ScaNN index (an export without a retrieval model)"))
            continue
        page.image(plot_index_recall(report, page.png(f"index_{rel}"),
                                     f"ScaNN index recall vs exact, export v{report.get('version', '?')}"),
                   "per-domain index recall")
        rows = [[d, r.get("items"), r.get("leaves"), r.get("leaves_to_search"), r.get("k"), r.get("recall@k"),
                 r.get("build_seconds"), "yes" if r.get("brute_force") else "no"] for d, r in report["index"].items()]
        page.add(_table(["domain", "items", "leaves", "leaves searched", "k", "recall@k", "build s", "brute force"],
                        rows))
        if report.get("low_recall"):
            page.add(f'<p class="na">low recall in domains {_e(", ".join(map(str, report["low_recall"])))}</p>')


def _models_table(runs: List[ModelRun]) -> str:
    rows = []
    for r in runs:
        s = r.summary or {}
        rows.append([r.label, r.model, r.task, s.get("parameters", ""), s.get("epochs_run", ""),
                     s.get("train_seconds", ""), (r.metrics or {}).get("split", "not evaluated")])
    return _table(["folder", "model", "task", "parameters", "epochs", "train s", "evaluated on"], rows)


def build_report(run_dir: str, output_dir: Optional[str] = None, data_dir: Optional[str] = None,
                 max_examples: int = 2048) -> str:
    """Writes the report page of `run_dir` (and its PNGs) and returns the page's path.

    Args:
        run_dir: a run folder: any folder holding model folders (`mdr train` outputs) anywhere below it,
            e.g. an `mdr demo` output or a `python -m benchmarks.models` output.
        output_dir: where the page and the PNGs go. Default `run_dir/report`.
        data_dir: the preprocessing output whose records feed the attention views. Default: the one each
            model's metrics.json names, or a `data/` folder of the run (see `resolve_data_dir`).
        max_examples: rows of the eval split run through each model for the attention views.

    Raises:
        ValueError: `run_dir` is not a folder, or holds no model folder; or `max_examples` < 1.
    """
    if not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir} is not a folder")
    if max_examples < 1:
        raise ValueError(f"`max_examples` must be >= 1. Received: max_examples={max_examples!r}")
    out_dir = output_dir or os.path.join(run_dir, REPORT_DIRNAME)
    runs = [r for r in (load_model_run(p, run_dir) for p in find_model_dirs(run_dir, skip=[out_dir])) if r]
    if not runs:
        raise ValueError(f"{run_dir} holds no model folder (a folder with a train_config.json, as `mdr train` "
                         "writes; `mdr evaluate` adds its metrics.json)")
    os.makedirs(out_dir, exist_ok=True)
    page = _Page(out_dir)
    tasks = [t for t in ("retrieval", "ranking") if any(r.task == t for r in runs)]
    by_task = {t: [r for r in runs if r.task == t] for t in tasks}
    name = os.path.basename(os.path.abspath(run_dir))

    page.add(f"<h1>mdr run report: {_e(name)}</h1>")
    page.add(f'<p class="meta">run folder {_e(os.path.abspath(run_dir))}; generated '
             f'{_e(datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))}; {len(runs)} model folder(s)</p>')
    page.add(_models_table(runs))
    page.add("<h2>1. Per-domain metrics</h2>")
    for t in tasks:
        page.add(f"<h3>{_e(t)}</h3>")
        page.attempt(f"{t} metrics", _metrics_section, page, t, by_task[t])
    page.add("<h2>2. Training curves</h2>")
    for t in tasks:
        page.add(f"<h3>{_e(t)}</h3>")
        page.attempt(f"{t} training curves", _curves_section, page, t, by_task[t])
    page.add("<h2>3. ADI domain attention per domain (ADI Fig. 5)</h2>")
    page.attempt("ADI attention", _attention_section, page, runs, run_dir, data_dir, max_examples, "adi")
    page.add("<h2>4. D3 feature-selection attention per domain (D3 Fig. 4)</h2>")
    page.attempt("D3 attention", _attention_section, page, runs, run_dir, data_dir, max_examples, "dsfs")
    page.add("<h2>5. Retrieval index: ScaNN recall / throughput</h2>")
    page.attempt("ScaNN benchmark", _scann_section, page, run_dir, out_dir)
    page.add("<h3>export: per-domain index recall</h3>")
    page.attempt("export reports", _export_section, page, run_dir, out_dir)

    text = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>mdr report: {_e(name)}</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(page.parts) + "\n</body></html>\n")
    path = os.path.join(out_dir, PAGE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
