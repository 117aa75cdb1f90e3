"""pipeline/progress.py: the live counts of a local job, its workers' tallies against the job's own metadata."""
import io
import os
import tempfile

import pytest

from pipeline import preprocess, progress
from tests import helpers


def test_live_counts_end_at_the_jobs_own_counts_on_worker_processes(tmp_path, monkeypatch):
    # The CLI's set-up: worker processes (multi_processing) tallying into the watcher's folder.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the watcher makes its folder
    calls = []
    metadata = helpers.run_job(
        "csv", helpers.SAMPLE_CSV, str(tmp_path / "out"), mapping=helpers.SAMPLE_MAPPING, eval_start="1900",
        sequence_length=4, num_buckets=2, min_stat_events=1,
        beam_args=["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        progress_callback=lambda counts, seconds, final: calls.append((dict(counts), seconds, final)),
        progress_every=0.2)
    assert [final for _, _, final in calls].count(True) == 1 and calls[-1][2]
    counts = calls[-1][0]
    assert metadata["rows_rejected"] > 0  # the sample has bad rows: all three counts are exercised
    assert counts == {progress.READ: metadata["rows_read"], progress.REJECTED: metadata["rows_rejected"],
                      progress.RECORDS: metadata["rows_written"]}
    seconds = [s for _, s, _ in calls]
    assert seconds == sorted(seconds) and len(calls) >= 2
    for name in progress.NAMES:  # counts only grow
        seen = [c[name] for c, _, _ in calls]
        assert seen == sorted(seen), name
    assert not [p for p in os.listdir(str(tmp_path)) if p.startswith("mdr-progress-")]  # removed


def test_no_tallies_without_a_callback_or_off_the_local_runner(tmp_path):
    assert preprocess.is_local_runner(["--runner=DirectRunner"])
    assert preprocess.is_local_runner(["--runner=apache_beam.runners.direct.direct_runner.SwitchingDirectRunner"])
    assert not preprocess.is_local_runner(["--runner=DataflowRunner"])
    assert not preprocess.is_local_runner(["--runner=PortableRunner", "--job_endpoint=localhost:8099"])
    assert not preprocess.is_local_runner([])


def test_totals_sum_every_workers_file_and_skip_partial_ones(tmp_path):
    (tmp_path / "1-a.json").write_text('{"rows read": 5, "records built": 2}')
    (tmp_path / "2-b.json").write_text('{"rows read": 7, "rows rejected": 1}')
    (tmp_path / "3-c.json.tmp").write_text('{"rows read": 1000')  # being written: not a whole file yet
    assert progress.totals(str(tmp_path)) == {progress.READ: 12, progress.REJECTED: 1, progress.RECORDS: 2}
    assert progress.totals(str(tmp_path / "gone")) == dict.fromkeys(progress.NAMES, 0)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_printer_rewrites_one_line_on_a_terminal_and_prints_lines_elsewhere():
    counts = {progress.READ: 1234567, progress.REJECTED: 3, progress.RECORDS: 1000}
    assert progress.format_counts(counts, 12.4) == "rows read 1,234,567 · rows rejected 3 · records built 1,000 · 12 s"
    log, terminal = io.StringIO(), _Terminal()
    for final in (False, False, True):
        progress.printer(stream=log)(counts, 1.0, final)
        progress.printer(stream=terminal)(counts, 1.0, final)
    assert log.getvalue().count("\n") == 3 and "\r" not in log.getvalue()
    assert terminal.getvalue().count("\r") == 3 and terminal.getvalue().endswith("\n")
    assert terminal.getvalue().count("\n") == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: every=0"):
        progress.Watcher(lambda *a: None, every=0)
    with pytest.raises(ValueError, match="Received: name='rows'"):
        progress.TallyRows("/tmp", "rows")
