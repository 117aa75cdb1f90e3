"""benchmarks.preprocess_throughput: the Beam job really runs, and its figures reach the JSON and the table."""
import json

from benchmarks import preprocess_throughput


def test_the_job_runs_and_its_figures_are_written(synthetic_raw, tmp_path, capsys):
    path = tmp_path / "figures.json"
    code = preprocess_throughput.main(["--source", "synthetic", "--input", synthetic_raw, "--split", "time",
                                       "--output", str(tmp_path / "out"), "--json", str(path)])
    assert code == 0
    figures = json.loads(path.read_text())
    assert figures["rows_read"] > 0 and figures["rows_read"] == figures["rows_written"] + figures["rows_rejected"]
    assert figures["rows_per_second"] > 0 and figures["cores"] >= 1
    row = capsys.readouterr().out.splitlines()[2]
    assert row.startswith(f"| synthetic | {figures['rows_read']:,} |")


def test_an_absent_input_is_skipped_with_its_reason(tmp_path, capsys):
    assert preprocess_throughput.main(["--input", str(tmp_path / "nowhere")]) == 0
    assert "is absent" in capsys.readouterr().err
