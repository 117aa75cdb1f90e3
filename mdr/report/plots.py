"""The report's PNGs, drawn with matplotlib's Agg backend: metric bars, training curves, attention heatmaps,
the ScaNN recall / throughput curve and the per-domain recall of an export's index."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from mdr.report.discovery import ModelRun
from mdr.report.views import curve_metrics, metric_groups, metric_value, scann_batch_sizes


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    return fig


def _save(fig, path: str) -> str:
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _colors(n):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _digits(spread: float) -> int:
    """Decimals that tell apart values spread over `spread` (2 to 4): attention of a barely trained model
    sits close to its starting point (0.5 for sigmoid scores, 1/N for DSFS)."""
    if not spread > 0:
        return 2
    return int(min(4, max(2, np.ceil(-np.log10(spread)) + 1)))


def plot_metric_bars(runs: Sequence[ModelRun], metrics: Sequence[str], path: str, title: str) -> str:
    """Grouped bars, one panel per metric: domains (and overall) on x, one bar per model."""
    groups = metric_groups(runs)
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
            values = np.array([metric_value(run, g, metric) for g in groups])
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


def anchored_limits(matrix, center: float, floor: float) -> Tuple[float, float]:
    """Colour limits `center -+ max(largest deviation, floor)`: a diverging scale anchored at `center`, on
    which deviations well under `floor` stay pale instead of spanning the whole scale."""
    deviation = np.nanmax(np.abs(np.asarray(matrix, dtype=float) - center)) if np.isfinite(matrix).any() else 0.0
    half = max(float(deviation), float(floor), 1e-12)
    return center - half, center + half


def plot_heatmaps(panels: Sequence[Tuple[str, List[str], np.ndarray]], domains: Sequence[str], path: str,
                  colorbar_label: str, centers: Sequence[float] = (), floor_fraction: float = 0.25) -> str:
    """One heatmap per panel `(title, field names, [D, N] matrix)`: domains as rows, fields as columns,
    the values written in the cells when they fit; a domain without rows is blank.

    With `centers` (one per panel: the weight of no preference, e.g. 1/N for a softmax over N fields),
    the colours are a diverging scale anchored there (`anchored_limits`, floor `floor_fraction` of the
    center): white is no preference, and noise around it stays pale."""
    width = max(6.0, 0.55 * max(len(p[1]) for p in panels) + 3.0)
    heights = [0.45 * len(domains) + 2.6 for _ in panels]
    fig = _figure(width, sum(heights))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for i, (ax, (title, fields, matrix)) in enumerate(zip(axes, panels)):
        matrix = np.asarray(matrix, dtype=float)
        masked = np.ma.masked_invalid(matrix)
        if i < len(centers):
            lo, hi = anchored_limits(matrix, centers[i], floor_fraction * abs(centers[i]))
            image = ax.imshow(masked, aspect="auto", cmap="RdBu_r", vmin=lo, vmax=hi, interpolation="nearest")
        else:
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
                    if i < len(centers):  # dark text on the pale middle of a diverging scale
                        vmin, vmax = image.get_clim()
                        dark = abs(v - centers[i]) < 0.6 * (vmax - vmin) / 2
                    else:
                        dark = v > mid
                    ax.text(j, d, f"{v:.{digits}f}", ha="center", va="center", fontsize=7 if digits < 4 else 6,
                            color="black" if dark else "white")
        fig.colorbar(image, ax=ax, label=colorbar_label, fraction=0.03, pad=0.02)
    fig.tight_layout()
    return _save(fig, path)


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
        if index[d].get("brute_force"):  # exact search: nothing to measure, not a ScaNN result
            rect.set_hatch("//")
            rect.set_alpha(0.4)
        label = "exact (brute force)" if index[d].get("brute_force") else f"{v:.3f}"
        ax.text(rect.get_x() + rect.get_width() / 2, rect.get_height(), label, ha="center", va="bottom", fontsize=7)
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
