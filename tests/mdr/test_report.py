"""mdr.report (`mdr report`): the page and its PNGs on a real tiny run, the missing parts, the errors.

The numbers behind the page are tested in tests/mdr/report/ (discovery, views, plots)."""
import json
import os
import re
import shutil

import pytest

from mdr import cli, report
from mdr_contract.feature_spec import FeatureSpec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(task, domains, data_dir, scale=1.0):
    """A metrics.json of the shape `mdr evaluate` writes (numbers made up: only the report reads them)."""
    if task == "retrieval":
        row = lambda r: {"queries": 10, "corpus": 20, "recall@10": r, "recall@50": min(1.0, 2 * r)}  # noqa: E731
    else:
        row = lambda r: {"auc": 0.5 + r / 2, "logloss": 0.7 - r / 4, "rows": 30, "ctr": 0.3}  # noqa: E731
    per_domain = {d: row(scale * 0.1 * (i + 1)) for i, d in enumerate(domains)}
    return {"model": "adi" if task == "retrieval" else "ranker", "task": task, "split": "eval", "data": data_dir,
            "per_domain": per_domain, "overall": row(scale * 0.2)}


def _second_epoch(model_dir):
    """history.csv with its one epoch written twice (epochs 0 and 1): a curve needs two points."""
    path = os.path.join(model_dir, "history.csv")
    lines = open(path).read().splitlines()
    with open(path, "a") as f:
        f.write("1" + lines[1][lines[1].index(","):] + "\n")


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    """A run folder: copies of the tiny models (with a metrics.json), a ScaNN benchmark JSON and an export
    report; and its report, built once: (run_dir, data_dir, html path)."""
    data_dir, retrieval_dir, ranker_dir = tiny_models
    domains = FeatureSpec.load(data_dir).domains
    root = str(tmp_path_factory.mktemp("run"))
    for src, name, task in ((retrieval_dir, "adi", "retrieval"), (ranker_dir, "ranker", "ranking")):
        dest = os.path.join(root, "models", name)
        shutil.copytree(src, dest)
        with open(os.path.join(dest, "metrics.json"), "w") as f:
            json.dump(_metrics(task, domains, data_dir), f)
        _second_epoch(dest)
        # its baseline, as `mdr demo` trains one: a plain dnn (its numbers: half the model's gain over 0)
        base = os.path.join(root, "models", f"dnn-{task}")
        shutil.copytree(src, base)
        config = json.load(open(os.path.join(base, "train_config.json")))
        with open(os.path.join(base, "train_config.json"), "w") as f:
            json.dump({**config, "model": "dnn", "model_config": {}}, f)
        with open(os.path.join(base, "metrics.json"), "w") as f:
            json.dump({**_metrics(task, domains, data_dir, scale=0.5), "model": "dnn"}, f)
    os.makedirs(os.path.join(root, "bench"))
    with open(os.path.join(root, "bench", report.SCANN_JSON), "w") as f:
        json.dump({"k": 100, "items": 5000, "dim": 32, "cores": 2, "batch_sizes": [1, 64], "results": [
            {"index": "scann", "leaves": 70, "leaves_to_search": 5, "recall": 0.9, "build_seconds": 0.1,
             "queries_per_second": {"1": 900.0, "64": 9000.0}},
            {"index": "scann", "leaves": 70, "leaves_to_search": 20, "recall": 0.99, "build_seconds": 0.1,
             "queries_per_second": {"1": 700.0, "64": 6000.0}},
            {"index": "exact", "leaves": 0, "leaves_to_search": 0, "recall": 1.0, "build_seconds": 0.0,
             "queries_per_second": {"1": 300.0, "64": 2000.0}}]}, f)
    os.makedirs(os.path.join(root, "export"))
    for version, recall in ((1, 0.5), (2, 0.95)):  # only the latest version is shown
        with open(os.path.join(root, "export", f"export_report_v{version}.json"), "w") as f:
            json.dump({"version": version, "index": {d: {"items": 50, "leaves": 7, "leaves_to_search": 2, "k": 10,
                                                         "recall@k": recall, "build_seconds": 0.01,
                                                         "brute_force": False} for d in domains},
                       "low_recall": []}, f)
    page = report.build_report(root, max_examples=256)
    return root, data_dir, page


def test_page_references_valid_pngs_of_every_section(run):
    root, _, page = run
    assert page == os.path.join(root, "report", "index.html")
    text = open(page, encoding="utf-8").read()
    sources = re.findall(r'<img src="([^"]+)"', text)
    for src in sources:
        path = os.path.join(os.path.dirname(page), src)
        assert not os.path.isabs(src) and os.path.isfile(path), src
        with open(path, "rb") as f:
            head = f.read(8)
        assert head == PNG_MAGIC and os.path.getsize(path) > 1000, src
    names = " ".join(sources)
    for expected in ("metrics_retrieval", "metrics_ranking", "curves_retrieval", "curves_ranking",
                     "adi_attention_adi", "d3_attention_ranker", "scann_bench_scann_vs_exact",
                     "index_export_export_report_v2"):
        assert expected in names, (expected, sources)
    assert "index_export_export_report_v1" not in names
    assert "<script" not in text and "http" not in text  # self-contained: no JavaScript, no external resources
    assert "not available" not in text, re.findall(r'class="na">([^<]*)', text)
    assert f"mdr run report: {os.path.basename(root)}" in text
    assert "<td>0.9500</td>" in text  # the v2 export's index recall, in a table


def _cells(table_html):
    return [re.findall(r"<t[dh]>([^<]*)</t[dh]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table_html, re.S)]


def test_summary_first_then_every_model_beside_its_baseline_per_domain(run):
    root, data_dir, page = run
    text = open(page, encoding="utf-8").read()
    domains = FeatureSpec.load(data_dir).domains
    assert text.index('id="summary"') < text.index("1. Per-domain metrics")
    summary = text[text.index('id="summary"'):text.index('id="models"')]
    tables = re.findall(r"<table>.*?</table>", summary, re.S)
    assert len(tables) == 2  # retrieval, ranking
    for table, (model, metric, overall, base_overall) in zip(tables, (("adi", "recall@50", 0.4, 0.2),
                                                                      ("ranker", "auc", 0.6, 0.55))):
        header, *rows = _cells(table)
        assert header == ["model"] + [f"{g} {metric}" for g in domains + ["overall"]] + [
            f"overall vs dnn-{'retrieval' if model == 'adi' else 'ranking'}"]
        by_name = {r[0]: r for r in rows}
        baseline = by_name[f"dnn-{'retrieval' if model == 'adi' else 'ranking'} (baseline)"]
        assert rows[-1] is baseline or rows[-1] == baseline  # the baseline last
        assert float(by_name[model][-1]) == pytest.approx(overall - base_overall)  # the difference, signed
        assert by_name[model][-1].startswith("+")
    # the per-domain tables: each metric once, with a difference column per model
    retrieval = text[text.index("1. Per-domain metrics"):text.index("2. Training curves")]
    assert retrieval.count("<h4>recall@50</h4>") == 1 and "adi - dnn-retrieval" in retrieval
    assert "ranker - dnn-ranking" in retrieval and "all metrics" not in retrieval
    assert "models/adi" not in text  # short labels


def test_a_folder_without_models_is_an_error_naming_it(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        report.build_report(str(tmp_path))
    assert cli.main(["report", str(tmp_path)]) == 1  # an unusable input, like the other commands' (status 1)
    assert f"mdr report: error: {tmp_path} holds no model folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not a folder"):
        report.build_report(str(tmp_path / "missing"))


def test_cli_writes_the_page_and_missing_parts_say_how(run, tmp_path, capsys):
    """`mdr report` on a run with a ranker never evaluated and an ADI ablation without attention."""
    root = tmp_path / "run"
    shutil.copytree(os.path.join(run[0], "models", "ranker"), root / "ranker",
                    ignore=shutil.ignore_patterns("metrics.json"))
    (root / "adi-no-attention").mkdir()
    (root / "adi-no-attention" / "train_config.json").write_text(json.dumps(
        {"model": "adi", "task": "retrieval", "model_config": {"attention": None}}))
    out = tmp_path / "out"
    assert cli.main(["report", str(root), "--output", str(out), "--data", run[1], "--max-examples", "64"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'index.html'}"
    text = (out / "index.html").read_text(encoding="utf-8")
    for message in ("ranker has no metrics.json", "attention=None ablation", "adi-no-attention has no history.csv",
                    "no scann_vs_exact.json under", "--json", "no export_report_v&lt;N&gt;.json"):
        assert message in text, message
    assert "failed" not in text
    assert (out / "d3_attention_ranker.png").read_bytes()[:8] == PNG_MAGIC
    assert not (root / "report").exists()  # --output is where everything goes
