"""The report page: `build_report` writes one HTML page (and its PNGs) of a run folder.

The page (`RUN_DIR/report/index.html` by default, its PNGs beside it, referenced relatively; no
JavaScript, no external resources) has a section per view, each with a plot and the numbers:

  0. A summary: per task, the headline metric (Recall@50, AUC) per domain and overall of every model,
     and each model's overall difference from the task's baseline (`views.BASELINES`: the
     domain-blind / plain DNN when the run has one).
  1. Per-domain metrics of every model folder found under the run folder (any folder with a
     `train_config.json`, as `mdr train` writes), grouped by task: grouped bars (domains on x, one
     bar per model) of Recall@K for retrieval, AUC and logloss for ranking, and one table per metric
     with each model's difference from the baseline per domain.
  2. Training curves from each `history.csv` of 2 epochs or more (train solid, validation dashed),
     and the last epoch's values of every run.
  3. ADI's domain interest adaptation weights per domain (ADI Fig. 5): the eval records through
     each ADI model, the weights of every adaptation instance (per tower and placement) averaged
     per field and per domain; a heatmap domains x fields, coloured around the mean weight.
  4. D3's feature-selection attention per domain (D3 Fig. 4): the DSFS attention each field
     *receives* (the mean over the query fields of `A[:, i, j]`, so a row sums to 1), averaged
     per domain; a heatmap domains x fields, coloured around the uniform weight 1/N.
  5. The ScaNN recall / throughput curve from a `scann_vs_exact.json` under the run folder
     (`python -m benchmarks.scann_vs_exact --json ...`), and the per-domain recall of the ScaNN
     index of every export (`export_report_v<N>.json`).

A part that cannot be drawn (no metrics.json, no data, an ablation without attention, ...) says why
and how to produce it; only a run folder without any model folder is an error.
"""
from __future__ import annotations

import datetime
import html
import logging
import os
import re
from typing import List, Optional, Sequence

import numpy as np

from mdr.demo import DATA
from mdr.report import plots, views
from mdr.report.discovery import (SCANN_JSON, ModelRun, find_files, find_model_dirs,
                                  latest_export_reports, load_model_run, read_json, resolve_data_dir)
from mdr_contract import artifacts

REPORT_DIRNAME = "report"
PAGE = "index.html"
_SCANN_COMMAND = ("python -m benchmarks.scann_vs_exact --items 100000 --leaves-to-search 5,10,20,40 "
                  "--json {run}/bench/" + SCANN_JSON)
_EXPORT_REPORTS = artifacts.EXPORT_REPORT_GLOB.replace("*", "<N>")  # as the page names them: export_report_v<N>.json

# The ranking models with D3's head by name (`ranker.build_ranker_model`); the baselines have it with d3_head.
D3_RANKERS = ("ranker", "ranker-no-pcrg", "ranker-no-pcrg-psrg", "ranker-no-dbo")
_NO_DSFS_HOW = "the ranker and its ablations but ranker-no-dsfs have it, a baseline with `--set d3_head=true`"

logger = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------- sections
def _models_table(runs: List[ModelRun]) -> str:
    rows = []
    for r in runs:
        s = r.summary or {}
        rows.append([r.label, r.model, r.task, s.get("parameters", ""), s.get("epochs_run", ""),
                     s.get("train_seconds", ""), (r.metrics or {}).get("split", "not evaluated")])
    return _table(["folder", "model", "task", "parameters", "epochs", "train s", "evaluated on"], rows)


def _delta(value: float, base: float) -> str:
    if not (np.isfinite(value) and np.isfinite(base)):
        return "n/a"
    return f"{value - base:+.4f}"


def _summary_section(page: _Page, by_task) -> None:
    """One table per task: the headline metric per domain and overall, each model against the baseline."""
    for task, runs in by_task.items():
        evaluated = [r for r in runs if r.metrics is not None]
        metric = views.headline_metric(evaluated, task)
        if not evaluated or metric is None:
            page.add(_missing(f"no evaluated {task} model", "run `mdr evaluate --model-dir MODEL --data DATA_DIR`"))
            continue
        base = views.baseline_of(evaluated, task)
        groups = views.metric_groups(evaluated)
        header = ["model"] + [f"{g} {metric}" for g in groups]
        if base is not None:
            header += [f"overall vs {base.label}"]
        rows = []
        for r in sorted(evaluated, key=lambda r: r is base):  # the baseline last, the row the others beat
            row = [r.label + (" (baseline)" if r is base else "")] + [views.metric_value(r, g, metric) for g in groups]
            if base is not None:
                row.append("" if r is base else _delta(views.metric_value(r, "overall", metric),
                                                       views.metric_value(base, "overall", metric)))
            rows.append(row)
        page.add(f"<h3>{_e(task)}: {_e(metric)}</h3>")
        page.add(_table(header, rows))
        if base is None:
            page.add(_missing(f"no baseline among the {task} models ({', '.join(views.BASELINES[task])})",
                              f"train one beside them, e.g. `mdr train --model {views.BASELINES[task][0]} "
                              f"--task {task}`, and evaluate it"))


def _metrics_section(page: _Page, task: str, runs: List[ModelRun]):
    evaluated = [r for r in runs if r.metrics is not None]
    for r in runs:
        if r.metrics is None:
            page.add(_missing(f"{r.label} has no {artifacts.METRICS}",
                              f"run `mdr evaluate --model-dir {r.path} --data DATA_DIR`"))
    if not evaluated:
        return
    metrics = views.metric_names(evaluated, task)
    if not metrics:
        page.add(_missing(f"the {task} {artifacts.METRICS} files hold no "
                          f"{'recall@K' if task == 'retrieval' else 'auc / logloss'}"))
        return
    base = views.baseline_of(evaluated, task)
    others = [r for r in evaluated if r is not base]
    path = plots.plot_metric_bars(others + ([base] if base else []), metrics, page.png(f"metrics_{task}"),
                                  f"{task} models")  # the baseline's bar last, as in the tables
    page.image(path, f"{task}: {', '.join(metrics)} per domain and model")
    groups = views.metric_groups(evaluated)
    splits = sorted({str(r.metrics.get("split", "?")) for r in evaluated})
    page.add(f'<p class="meta">on split {_e(", ".join(splits))}'
             + (f"; differences are each model minus the baseline {_e(base.label)} ({_e(base.model)})"
                if base is not None else "") + "</p>")
    for metric in metrics:
        header = ["domain"] + [r.label for r in others] + ([base.label + " (baseline)"] if base else [])
        if base is not None:
            header += [f"{r.label} - {base.label}" for r in others]
        rows = []
        for g in groups:
            row = [g] + [views.metric_value(r, g, metric) for r in others]
            if base is not None:
                b = views.metric_value(base, g, metric)
                row += [b] + [_delta(views.metric_value(r, g, metric), b) for r in others]
            rows.append(row)
        page.add(f"<h4>{_e(metric)}</h4>")
        page.add(_table(header, rows))


def _curves_section(page: _Page, task: str, runs: List[ModelRun]):
    with_history = [r for r in runs if r.history and len(r.history.get("epoch", []))]
    for r in runs:
        if r not in with_history:
            page.add(_missing(f"{r.label} has no {artifacts.HISTORY}", "`mdr train` writes it while training"))
    if not with_history:
        return
    curves = [r for r in with_history if len(r.history["epoch"]) >= 2]  # one epoch is a point, not a curve
    if curves:
        path = plots.plot_training_curves(curves, page.png(f"curves_{task}"), f"{task}")
        page.image(path, f"{task} training curves")
    short = [r.label for r in with_history if r not in curves]
    if short:
        page.add(f'<p class="meta">{_e(", ".join(short))}: one epoch, no curve (its values are in the table)</p>')
    rows = []
    columns = sorted({c for r in with_history for c in r.history if c != "epoch"},
                     key=lambda c: (c.startswith("val_"), c))
    for r in with_history:
        rows.append([r.label, len(r.history["epoch"])] + [r.history[c][-1] if c in r.history else float("nan")
                                                          for c in columns])
    page.add("<p>last epoch:</p>")
    page.add(_table(["model", "epochs"] + columns, rows))


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
    # Models of other families (the baselines) have no such layer by design: named once, not "not available".
    others = [r for r in candidates if (r.model != "adi" if kind == "adi" else not (
        r.model in D3_RANKERS or r.model.startswith("ranker")
        or (r.config.get("model_config") or {}).get("d3_head")))]
    if others:
        page.add(f'<p class="meta">without {"a domain interest adaptation layer" if kind == "adi" else "DSFS"} '
                 f'by design: {_e(", ".join(f"{r.label} ({r.model})" for r in others))}</p>')
    for run in [r for r in candidates if r not in others]:
        page.add(f"<h3>{_e(run.label)} ({_e(run.model)})</h3>")
        model_config = run.config.get("model_config") or {}
        if kind == "adi" and model_config.get("attention", "se") is None:  # other models are named above
            page.add(_missing(f"{run.model} has no domain interest adaptation layer (attention=None ablation)",
                              "ADI models with `attention` set have one"))
            continue
        if kind == "dsfs" and not (run.model in D3_RANKERS
                                   or (not run.model.startswith("ranker") and model_config.get("d3_head"))):
            page.add(_missing(f"{run.model} has no DSFS feature selection", _NO_DSFS_HOW))
            continue
        folder = resolve_data_dir(run, run_dir, data_dir)
        if folder is None:
            page.add(_missing(f"no preprocessing output found for {run.label} (its {artifacts.METRICS} names none "
                              f"that exists, no {DATA}/ folder beside it)",
                              f"pass `mdr report {run_dir} --data DATA_DIR`"))
            continue
        page.attempt(f"attention of {run.label}", _attention_of, page, run, folder, max_examples, kind)


def _attention_of(page: _Page, run: ModelRun, folder: str, max_examples: int, kind: str):
    model, spec, _ = _load(run)
    batches, split = views.eval_batches(folder, spec, max_examples)
    rows = sum(int(b["domain"].shape[0]) for b in batches)
    source = f"{rows:,} rows of {os.path.join(folder, split)}"
    domains = list(spec.domains)
    counts = views.per_domain_counts(batches, domains)
    if kind == "adi":
        found = views.adi_attention(model, batches)
        if not found:
            page.add(_missing(f"{run.label} has no domain interest adaptation layer"))
            return
        panels = [(f"{run.label}: {tower} tower, {key} (mean weight per field)", names, matrix)
                  for (tower, key), (names, matrix) in found.items()]
        # No uniform weight for sigmoid gates: the scale is anchored at the panel's mean weight.
        centers = [float(np.nanmean(matrix)) for _, _, matrix in panels]
        path = plots.plot_heatmaps(panels, domains, page.png(f"adi_attention_{run.label}"),
                                   "mean adaptation weight", centers=centers)
        page.image(path, f"ADI domain attention of {run.label}")
        page.add(f'<p class="meta">ADI Fig. 5: the domain interest adaptation weight of each field, averaged over '
                 f'{_e(source)} per domain (rows per domain: {_e(_counts_text(domains, counts))}). Colours: '
                 f'above (red) or below (blue) the panel\'s mean weight; the scale spans at least a quarter of '
                 f'that mean each way, so a map that stays pale has no field preference.</p>')
        for title, names, matrix in panels:
            page.add(f"<p>{_e(title)}</p>")
            page.add(_table(["domain"] + names, [[d] + list(row) for d, row in zip(domains, matrix)]))
    else:
        found = views.dsfs_attention(model, batches)
        if found is None:
            page.add(_missing(f"{run.label} ({run.model}) has no DSFS feature selection", _NO_DSFS_HOW))
            return
        names, matrix = found
        uniform = 1.0 / len(names)
        path = plots.plot_heatmaps([(f"{run.label}: attention received per field (D3 DSFS)", names, matrix)],
                                   domains, page.png(f"d3_attention_{run.label}"), "mean attention received",
                                   centers=[uniform])
        page.image(path, f"D3 feature-selection attention of {run.label}")
        page.add(f'<p class="meta">D3 Fig. 4: the DSFS self-attention each field receives (mean over the query '
                 f'fields; a row sums to 1, uniform = {uniform:.3f}), averaged over {_e(source)} per '
                 f'domain (rows per domain: {_e(_counts_text(domains, counts))}). Colours: above (red) or below '
                 f'(blue) the uniform weight, the scale spanning at least a quarter of it each way: a pale map '
                 f'is a near-uniform attention.</p>')
        page.add(_table(["domain"] + names, [[d] + list(row) for d, row in zip(domains, matrix)]))


def _counts_text(domains, counts):
    return ", ".join(f"{d} {c:,}" for d, c in zip(domains, counts))


def _scann_section(page: _Page, run_dir: str, out_dir: str):
    files = find_files(run_dir, SCANN_JSON, skip=[out_dir])
    if not files:
        page.add(_missing(f"no {SCANN_JSON} under {run_dir}",
                          "produce it with `" + _SCANN_COMMAND.format(run=run_dir) + "`"))
    for path in files:
        bench = read_json(path)
        if not isinstance(bench, dict) or not bench.get("results"):
            page.add(_missing(f"{path} holds no results"))
            continue
        rel = os.path.relpath(path, run_dir)
        title = f"ScaNN vs exact ({rel})"
        if isinstance(bench.get("items"), int):
            title = (f"ScaNN vs exact: {bench['items']:,} x {bench.get('dim', '?')}, K={bench.get('k', '?')}, "
                     f"{bench.get('cores', '?')} cores")
        page.add(f"<h3>{_e(rel)}</h3>")
        page.image(plots.plot_scann_curve(bench, page.png(f"scann_{rel}"), title), "ScaNN recall / throughput")
        batches = views.scann_batch_sizes(bench)
        page.add(_table(["index", "leaves", "leaves searched", f"recall@{bench.get('k', 'K')}", "build s"]
                        + [f"q/s batch {b}" for b in batches],
                        [[r.get("index"), r.get("leaves"), r.get("leaves_to_search"), r.get("recall"),
                          r.get("build_seconds")] + [r.get("queries_per_second", {}).get(b, float("nan"))
                                                     for b in batches] for r in bench["results"]]))


def _export_section(page: _Page, run_dir: str, out_dir: str):
    files = latest_export_reports(run_dir, skip=[out_dir])
    if not files:
        page.add(_missing(f"no {_EXPORT_REPORTS} under {run_dir}",
                          "`mdr export ... --export-dir DIR` writes one"))
    for path in files:
        report = read_json(path)
        rel = os.path.relpath(path, run_dir)
        page.add(f"<h3>{_e(rel)}</h3>")
        if not isinstance(report, dict) or not report.get("index"):
            page.add(_missing(f"{rel} has no ScaNN index (an export without a retrieval model)"))
            continue
        page.image(plots.plot_index_recall(report, page.png(f"index_{rel}"),
                                           f"ScaNN index recall vs exact, export v{report.get('version', '?')}"),
                   "per-domain index recall")
        rows = [[d, r.get("items"), r.get("leaves"), r.get("leaves_to_search"), r.get("k"),
                 "exact (brute force)" if r.get("brute_force") else r.get("recall@k"), r.get("build_seconds")]
                for d, r in report["index"].items()]
        page.add(_table(["domain", "items", "leaves", "leaves searched", "k", "recall@k vs exact", "build s"], rows))
        if report.get("low_recall"):
            page.add(f'<p class="na">low recall in domains {_e(", ".join(map(str, report["low_recall"])))}</p>')


# ---------------------------------------------------------------------------------------------- the page
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
    for r, label in zip(runs, views.short_labels([r.label for r in runs])):
        r.label = label  # 'adi', not 'models/adi', in legends and tables
    if not runs:
        raise ValueError(f"{run_dir} holds no model folder (a folder with a {artifacts.TRAIN_CONFIG}, as `mdr train` "
                         f"writes; `mdr evaluate` adds its {artifacts.METRICS})")
    os.makedirs(out_dir, exist_ok=True)
    page = _Page(out_dir)
    tasks = [t for t in ("retrieval", "ranking") if any(r.task == t for r in runs)]
    by_task = {t: [r for r in runs if r.task == t] for t in tasks}
    name = os.path.basename(os.path.abspath(run_dir))

    page.add(f"<h1>mdr run report: {_e(name)}</h1>")
    page.add(f'<p class="meta">run folder {_e(os.path.abspath(run_dir))}; generated '
             f'{_e(datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))}; {len(runs)} model folder(s)</p>')
    page.add('<h2 id="summary">Summary</h2>')
    page.attempt("summary", _summary_section, page, by_task)
    page.add('<h3 id="models">model folders</h3>')
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
