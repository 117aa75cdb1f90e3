"""Smoke tests of the performance benchmarks (benchmarks/input_pipeline.py, benchmarks/stage_memory.py,
benchmarks/serving_latency.py) on tiny inputs: they run, print the expected table rows with positive
numbers, and write their JSON.
The numbers themselves are measured by running the scripts, never asserted here."""
import json

import pytest

TINY_ADI = "adi:embedding_dim=8:tower_units=[16,8]:shared_units=[16]:specific_units=[16]"
TINY_RANKER = "ranker:embedding_dim=8:mlp_units=[16]"


def table_rows(text):
    """{first cell: [other cells]} of the markdown table rows in `text` (header and rule excluded)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def number(cell):
    return float(cell.rstrip("x").replace(",", ""))


@pytest.mark.parametrize("task,model,end_to_end", [("retrieval", TINY_ADI, True), ("ranking", TINY_RANKER, False)],
                         ids=["retrieval", "ranking"])
def test_input_pipeline_prints_rates_and_ratio(synthetic_data, tmp_path, capsys, task, model, end_to_end):
    from benchmarks import input_pipeline

    data_dir, _ = synthetic_data
    out = tmp_path / "input.json"
    argv = ["--data", data_dir, "--task", task, "--model", model, "--steps", "5", "--warmup", "2",
            "--batch-size", "32", "--cached-batches", "3", "--json", str(out)]
    assert input_pipeline.main(argv + ([] if end_to_end else ["--no-end-to-end"])) == 0

    rows = table_rows(capsys.readouterr().out)
    expected = ["input pipeline (make_dataset, shuffled)", "training step (cached input)",
                "ratio input / training step"] + (["end-to-end fit (real pipeline)"] if end_to_end else [])
    params = f"trainable parameters of {model}"
    assert sorted(r for r in rows if r != "measure") == sorted(expected + [params] + (
        ["ratio end-to-end / cached"] if end_to_end else []))
    assert number(rows[params][0]) == json.loads(out.read_text())["parameters"] > 0
    for label in expected:
        assert number(rows[label][0]) > 0, label
    results = json.loads(out.read_text())
    assert results["input"]["batches"] == 5 and results["train_cached"]["steps"] == 5
    assert results["ratio"] == pytest.approx(results["input"]["examples_per_second"]
                                             / results["train_cached"]["examples_per_second"])
    assert ("train_end_to_end" in results) == end_to_end


def test_input_pipeline_compares_several_models_against_the_first(synthetic_data, tmp_path, capsys):
    from benchmarks import input_pipeline

    data_dir, _ = synthetic_data
    out = tmp_path / "models.json"
    low_rank = TINY_RANKER + ":dsfs_weight_rank=1"
    assert input_pipeline.main(["--data", data_dir, "--task", "ranking", "--models", f"{TINY_RANKER},{low_rank}",
                                "--steps", "3", "--warmup", "1", "--batch-size", "32", "--cached-batches", "2",
                                "--no-end-to-end", "--json", str(out)]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows[TINY_RANKER][-1] == "1.00x" and number(rows[low_rank][-1]) > 0
    saved = json.loads(out.read_text())["models"]
    assert [r["model"] for r in saved] == [TINY_RANKER, low_rank]
    assert number(rows[low_rank][0]) == saved[1]["parameters"] < saved[0]["parameters"]


def test_input_pipeline_max_seconds_caps_the_timed_steps(synthetic_data, capsys):
    from benchmarks import input_pipeline

    data_dir, _ = synthetic_data
    assert input_pipeline.main(["--data", data_dir, "--model", TINY_ADI, "--steps", "1000", "--warmup", "1",
                                "--batch-size", "16", "--cached-batches", "2", "--max-seconds", "0",
                                "--no-end-to-end"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows["input pipeline (make_dataset, shuffled)"][1] == "1"  # stopped after the first timed batch
    assert rows["training step (cached input)"][1] == "1"


def test_stage_memory_names_the_failing_stage(tmp_path, capsys):
    from benchmarks import stage_memory

    missing = tmp_path / "no-such-folder"
    assert stage_memory.main(["--output", str(tmp_path / "work"), "--source", "movielens-1m",
                              "--input", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "stage 'preprocess' exited with status 1" in err
    assert "ratings.dat not found" in err  # the tail of the stage's stderr


@pytest.mark.slow
def test_stage_memory_runs_every_stage(tmp_path, capsys, monkeypatch):
    from benchmarks import results as results_files
    from benchmarks import stage_memory

    saved = results_files.save  # the committed table goes to tmp_path, not into the repository
    monkeypatch.setattr(results_files, "save", lambda *a, **k: saved(*a, **{**k, "results_dir": str(tmp_path)}))
    out = tmp_path / "rows.json"
    assert stage_memory.main(["--output", str(tmp_path / "work"), "--users", "100", "--items", "50",
                              "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "64",
                              "--json", str(out), "--results", "stages"]) == 0

    rows = table_rows(capsys.readouterr().out)
    stages = ["generate", "preprocess", "train adi", "train ranker", "evaluate adi", "evaluate ranker", "export",
              "serve (to ready; RSS over its life)", "recommend"]
    assert [r for r in rows if r != "stage"] == stages
    for name in stages:
        wall, rss, command = rows[name]
        assert number(wall) > 0 and number(rss) > 0, name
        assert command.startswith("`mdr "), name
    # The child's own peak, not the parent's carried over fork + exec (pytest's 2 GiB once read as generate's):
    # generate imports no TensorFlow and stays far below a TensorFlow stage.
    assert number(rows["generate"][1]) < 0.6 * number(rows["train adi"][1])
    assert [r["stage"] for r in json.loads(out.read_text())["stages"]] == stages
    committed = json.loads((tmp_path / "stages.json").read_text())  # --results: the same rows and the command
    assert committed["stages"] == json.loads(out.read_text())["stages"]
    assert committed["command"].startswith("python -m benchmarks.stage_memory --output ")
    assert "recommendations for user" in (tmp_path / "work" / "logs" / "recommend.out").read_text()


def test_scann_vs_exact_on_a_trained_models_vectors_with_a_tuned_index(tiny_models, tmp_path, capsys):
    from benchmarks import scann_vs_exact

    data_dir, retrieval_dir, _ = tiny_models
    out = tmp_path / "scann.json"
    assert scann_vs_exact.main(["--vectors", "model", "--model-dir", retrieval_dir, "--data", data_dir,
                                "--items", "25000", "--k", "10", "--queries", "100", "--batch-sizes", "8",
                                "--max-seconds", "1", "--target-recall", "0.9", "--json", str(out)]) == 0
    rows = table_rows(capsys.readouterr().out)
    tuned = [cells for name, cells in rows.items() if name.startswith("ScaNN (tuned for recall 0.9")]
    assert len(tuned) == 1 and number(tuned[0][4]) >= 0.9, rows  # recall@K of the tuned index
    assert int(tuned[0][1]) == 8 + 1  # the tiny model's embedding size (8, and the popularity prior's unit), not --dim
    saved = json.loads(out.read_text())
    assert saved["vectors"] == "model" and saved["target_recall"] == 0.9 and len(saved["results"]) == 3
    assert all(r["queries_per_second"]["8"] > 0 for r in saved["results"])


@pytest.fixture(scope="module")
def tiny_export(tiny_models, tmp_path_factory):
    """The session's tiny models exported (retrieval, ranker, recommender): (export dir, data dir)."""
    from serving import export as ex

    data_dir, retrieval_dir, ranker_dir = tiny_models
    export_dir = str(tmp_path_factory.mktemp("serving_bench") / "export")
    ex.export_models(retrieval_dir, ranker_dir, data_dir, export_dir, k=10)
    return export_dir, data_dir


def test_serving_load_sends_prebuilt_requests_from_client_processes(tiny_export, tmp_path, capsys):
    from benchmarks import serving_latency

    export_dir, data_dir = tiny_export
    out = tmp_path / "load.json"
    assert serving_latency.main(["--export-dir", export_dir, "--store", data_dir, "--mode", "load", "--threads", "2",
                                 "--load-requests", "3", "--rounds", "2", "--items", "5",
                                 "--json", str(out)]) == 0
    load = json.loads(out.read_text())["load"]
    assert set(load) == {"no batching", "batching"}
    for figures in load.values():
        # 2 clients x 3 timed calls x 2 rounds, every one answered OK by the server it was sent to.
        assert figures["requests"] == 12 and figures["failed"] == 0
        assert len(figures["rates"]) == 2 and all(r > 0 for r in figures["rates"])
        assert figures["candidates"][0] > 0 and figures["scores"][0] > 0
        # Each round runs the model once per request (4 warm-up + 6 timed) unless batching merged some.
        assert 0 < figures["model_runs"] <= 10
        assert figures["server_cpu_ms"] > 0  # the server process's CPU time per request it answered
    assert load["no batching"]["model_runs"] == 10
    rows = table_rows(capsys.readouterr().out)
    assert number(rows["no batching"][1]) == 1.0 and number(rows["no batching"][3]) == 1.0  # vs first


def test_serving_load_pins_server_and_clients_and_restores_the_process(tiny_export, tmp_path, capsys):
    import os

    from benchmarks import serving_latency

    export_dir, data_dir = tiny_export
    before = os.sched_getaffinity(0)
    cpu = min(before)
    out = tmp_path / "load.json"
    assert serving_latency.main(["--export-dir", export_dir, "--store", data_dir, "--mode", "load", "--threads", "1",
                                 "--load-requests", "2", "--rounds", "1", "--batching", "off", "--items", "5",
                                 "--server-cpus", str(cpu), "--client-cpus", str(cpu), "--json", str(out)]) == 0
    assert os.sched_getaffinity(0) == before  # this process is free again
    figures = json.loads(out.read_text())
    assert figures["load"]["no batching"]["failed"] == 0
    assert figures["args"]["server_cpus"] == [cpu] and figures["args"]["client_cpus"] == [cpu]
    with pytest.raises(SystemExit):
        serving_latency.main(["--export-dir", export_dir, "--mode", "load", "--server-cpus", "9999"])
    assert "--server-cpus" in capsys.readouterr().err


def test_serving_load_of_candidates_only_and_a_bad_call_name(tiny_export, tmp_path, capsys):
    from benchmarks import serving_latency

    export_dir, data_dir = tiny_export
    out = tmp_path / "load.json"
    assert serving_latency.main(["--export-dir", export_dir, "--store", data_dir, "--mode", "load", "--threads", "1",
                                 "--load-requests", "2", "--rounds", "1", "--batching", "off",
                                 "--load-calls", "candidates", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["load"]["no batching"]
    assert figures["requests"] == 2 and figures["scores"] is None
    assert "candidates K=100 only" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        serving_latency.main(["--export-dir", export_dir, "--mode", "load", "--load-calls", "candidates,ranks"])
    assert "--load-calls takes candidates and/or scores" in capsys.readouterr().err


def test_serving_batch_cost_times_merged_calls(tiny_export, tmp_path, capsys):
    from benchmarks import serving_latency

    export_dir, data_dir = tiny_export
    out = tmp_path / "cost.json"
    assert serving_latency.main(["--export-dir", export_dir, "--store", data_dir, "--mode", "batch-cost",
                                 "--batch-sizes", "1,3", "--requests", "3", "--warmup", "1", "--items", "5",
                                 "--json", str(out)]) == 0
    cost = json.loads(out.read_text())["batch_cost"]
    assert [(r["users"], r["scored"]) for r in cost] == [(1, 1), (3, 3), (1, 5), (3, 15)]
    assert cost[0]["signature"].startswith("retrieval v1 `serving_default`")
    assert cost[2]["signature"].startswith("recommender v1 `rank`")
    assert all(r["p50_ms"] > 0 and abs(r["p50_ms_per_user"] * r["users"] - r["p50_ms"]) < 1e-9 for r in cost)


def test_serving_breakdown_cuts_each_call_into_pieces_that_it_contains(tiny_export, tmp_path, capsys):
    from benchmarks import serving_latency

    export_dir, data_dir = tiny_export
    out = tmp_path / "breakdown.json"
    assert serving_latency.main(["--export-dir", export_dir, "--store", data_dir, "--mode", "breakdown",
                                 "--requests", "8", "--warmup", "2", "--items", "5", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["breakdown"]
    calls = sorted({r["call"] for r in rows})
    assert [c.split(" (")[0] for c in calls] == ["candidates", "scores", "scores, user sent once"]
    for call in calls:
        figures = {r["piece"]: r["p50_ms"] for r in rows if r["call"] == call}
        assert list(figures)[:len(serving_latency.PIECES)] == list(serving_latency.PIECES)
        assert all(v > 0 for v in figures.values())
        # Every piece is part of the whole call (each timed on its own, so the sum is not exact).
        assert max(figures[p] for p in serving_latency.PIECES) < figures["whole gRPC call"]
    table = table_rows(capsys.readouterr().out)
    assert table  # printed as a markdown table
