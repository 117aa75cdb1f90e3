"""mdr.report.discovery: model folders, data folders and export reports found under a run folder."""
import json
import os

from mdr.report import discovery
from mdr_contract import artifacts


def _touch(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _model(folder, config=None, metrics=None):
    _touch(os.path.join(folder, artifacts.TRAIN_CONFIG), json.dumps(config or {"model": "adi", "task": "retrieval"}))
    if metrics is not None:
        _touch(os.path.join(folder, artifacts.METRICS), json.dumps(metrics))


def _data(folder):
    _touch(os.path.join(folder, artifacts.SUCCESS))
    _touch(os.path.join(folder, artifacts.FEATURE_SPEC), "{}")


def test_history_keeps_the_last_row_of_a_resumed_epoch(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\n0,3.0,4.0\n1,2.0,3.5\n1,1.5,3.0\n")
    assert discovery.read_history(str(path)) == {"epoch": [0.0, 1.0], "loss": [3.0, 1.5], "val_loss": [4.0, 3.0]}


def test_model_folders_skip_model_internals_data_folders_and_skipped_folders(tmp_path):
    run = str(tmp_path)
    _model(os.path.join(run, "b"))
    _model(os.path.join(run, "a", "nested"))
    for internal in artifacts.MODEL_INTERNALS:  # a model's own sub-folders hold no model
        _model(os.path.join(run, "b", internal, "x"))
    _data(os.path.join(run, "data"))
    _model(os.path.join(run, "data", "train"))  # a preprocessing output is not descended into
    _model(os.path.join(run, "report", "copy"))
    found = discovery.find_model_dirs(run, skip=[os.path.join(run, "report")])
    assert found == [os.path.join(run, "a", "nested"), os.path.join(run, "b")]


def test_latest_export_report_per_folder_by_version_number(tmp_path):
    run = str(tmp_path)
    for name in ("export_report_v2.json", "export_report_v10.json", "export_report_vx.json"):
        _touch(os.path.join(run, "one", name), "{}")
    _touch(os.path.join(run, "two", artifacts.export_report(1)), "{}")
    _touch(os.path.join(run, "skipped", artifacts.export_report(3)), "{}")
    # v10 > v2 as numbers; a name that is not export_report_v<N>.json is not a report
    assert discovery.latest_export_reports(run, skip=[os.path.join(run, "skipped")]) == [
        os.path.join(run, "one", "export_report_v10.json"), os.path.join(run, "two", "export_report_v1.json")]


def test_load_model_run_reads_the_model_folder(tmp_path):
    run = str(tmp_path)
    folder = os.path.join(run, "models", "ranker")
    _model(folder, {"model": "ranker", "task": "ranking"}, {"per_domain": {"a": {"auc": 0.6}}, "overall": {}})
    _touch(os.path.join(folder, artifacts.HISTORY), "epoch,loss\n0,1.0\n")
    loaded = discovery.load_model_run(folder, run)
    assert (loaded.label, loaded.model, loaded.task) == (os.path.join("models", "ranker"), "ranker", "ranking")
    assert loaded.metrics["per_domain"] == {"a": {"auc": 0.6}} and loaded.history == {"epoch": [0.0], "loss": [1.0]}
    assert loaded.summary is None
    # the run folder itself is labelled by its name; a metrics.json without per_domain is no metrics
    _model(run, {"model": "adi", "task": "retrieval"}, {"overall": {}})
    alone = discovery.load_model_run(run, run)
    assert alone.label == os.path.basename(run) and alone.metrics is None and alone.history is None
    _touch(os.path.join(run, "broken", artifacts.TRAIN_CONFIG), "not json")
    assert discovery.load_model_run(os.path.join(run, "broken"), run) is None


def test_data_folder_is_the_first_complete_candidate(tmp_path):
    run = str(tmp_path)
    folder = os.path.join(run, "models", "adi")
    _model(folder)
    loaded = discovery.load_model_run(folder, run)
    assert discovery.resolve_data_dir(loaded, run, None) is None
    _data(run)
    assert discovery.resolve_data_dir(loaded, run, None) == run  # the run folder itself, last
    _data(os.path.join(run, "models", "data"))
    assert discovery.resolve_data_dir(loaded, run, None) == os.path.join(run, "models", "data")  # mdr demo's data/
    loaded.metrics = {"data": os.path.join(run, "elsewhere")}
    _data(loaded.metrics["data"])
    assert discovery.resolve_data_dir(loaded, run, None) == loaded.metrics["data"]
    given = os.path.join(run, "given")
    assert discovery.resolve_data_dir(loaded, run, given) == loaded.metrics["data"]  # given, but incomplete
    _data(given)
    assert discovery.resolve_data_dir(loaded, run, given) == given
