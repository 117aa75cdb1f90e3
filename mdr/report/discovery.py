"""What a run folder holds: its model folders, the preprocessing output they read, the benchmark and export
reports, found by the names of `mdr_contract.artifacts` and read without TensorFlow."""
from __future__ import annotations

import csv
import dataclasses
import fnmatch
import json
import os
from typing import Dict, List, Optional, Sequence

from mdr.demo import DATA
from mdr_contract import artifacts

SCANN_JSON = "scann_vs_exact.json"  # written by `python -m benchmarks.scann_vs_exact --json`, anywhere in a run


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


def read_json(path: str) -> Optional[dict]:
    """The JSON file at `path`, or None when it is missing or not JSON."""
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
        if artifacts.SUCCESS in files and artifacts.FEATURE_SPEC in files:
            dirs[:] = []
        else:
            internal = artifacts.MODEL_INTERNALS if artifacts.TRAIN_CONFIG in files else ()
            dirs[:] = sorted(d for d in dirs
                             if d not in internal and os.path.abspath(os.path.join(root, d)) not in skip)
        yield root, files


def find_model_dirs(run_dir: str, skip: Sequence[str] = ()) -> List[str]:
    """Every folder under `run_dir` (itself included) holding a `train_config.json`, sorted."""
    return sorted(root for root, files in _walk(run_dir, skip) if artifacts.TRAIN_CONFIG in files)


def find_files(run_dir: str, pattern: str, skip: Sequence[str] = ()) -> List[str]:
    """Files under `run_dir` whose name matches the glob `pattern`, sorted (model internals skipped)."""
    return sorted(os.path.join(root, f) for root, files in _walk(run_dir, skip) for f in files
                  if fnmatch.fnmatch(f, pattern))


def latest_export_reports(run_dir: str, skip: Sequence[str] = ()) -> List[str]:
    """The `export_report_v<N>.json` of the highest N in each folder under `run_dir`."""
    latest = {}
    for path in find_files(run_dir, artifacts.EXPORT_REPORT_GLOB, skip=skip):
        version = artifacts.export_report_version(path)
        if version is not None:
            folder = os.path.dirname(path)
            if version >= latest.get(folder, (-1, ""))[0]:
                latest[folder] = (version, path)
    return [p for _, p in sorted(latest.values(), key=lambda vp: vp[1])]


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
    config = read_json(os.path.join(path, artifacts.TRAIN_CONFIG))
    if not isinstance(config, dict) or "model" not in config:
        return None
    task = config.get("task") or ""
    if task not in ("retrieval", "ranking"):
        try:
            from mdr_keras import training  # only for a config without its task: training imports TensorFlow

            task = training.task_of(config["model"], task)
        except ValueError:
            return None
    label = os.path.relpath(path, run_dir)
    if label == ".":
        label = os.path.basename(os.path.abspath(path))
    history = None
    if os.path.exists(os.path.join(path, artifacts.HISTORY)):
        try:
            history = read_history(os.path.join(path, artifacts.HISTORY))
        except (OSError, csv.Error):
            history = None
    metrics = read_json(os.path.join(path, artifacts.METRICS))
    if not (isinstance(metrics, dict) and isinstance(metrics.get("per_domain"), dict)):
        metrics = None
    return ModelRun(path=path, label=label, model=config["model"], task=task, config=config, metrics=metrics,
                    history=history, summary=read_json(os.path.join(path, artifacts.TRAIN_SUMMARY)))


def resolve_data_dir(run: ModelRun, run_dir: str, given: Optional[str]) -> Optional[str]:
    """The preprocessing output whose records feed the attention views: `given`, else the data folder of
    the model's metrics.json, else a `data/` folder next to the model folder or one of its parents up to
    the run folder (the layout of `mdr demo`), else the run folder itself; the first complete one."""
    candidates = [given] if given else []
    if run.metrics and run.metrics.get("data"):
        candidates.append(run.metrics["data"])
    folder, stop = os.path.abspath(run.path), os.path.abspath(run_dir)
    while True:
        candidates.append(os.path.join(folder, DATA))
        if folder == stop or os.path.dirname(folder) == folder:
            break
        folder = os.path.dirname(folder)
    candidates.append(run_dir)
    for c in candidates:
        if c and os.path.exists(os.path.join(c, artifacts.SUCCESS)):
            return c
    return None
