"""benchmarks.scaling: the replicated logs, the process-tree memory, the table (no measurement here)."""
import os
import subprocess
import sys

from benchmarks import scaling


def test_replicated_logs_rename_the_users_of_each_copy(tmp_path):
    source = tmp_path / "raw"
    source.mkdir()
    (source / "generator.json").write_text('{"domains": ["d0"]}')
    (source / "events.csv").write_text("user_id,item_id,domain\nu1,i1,d0\nu2,i1,d0\n")
    assert scaling.replicate_logs(str(source), str(tmp_path / "x3"), 3) == 6
    lines = (tmp_path / "x3" / "events.csv").read_text().splitlines()
    assert lines == ["user_id,item_id,domain", "u1,i1,d0", "u2,i1,d0", "u1~r1,i1,d0", "u2~r1,i1,d0",
                     "u1~r2,i1,d0", "u2~r2,i1,d0"]


def test_tree_memory_counts_the_children():
    # A child holding 200 MiB: the tree's resident set grows by about that much over this process's own.
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; b = bytearray(200 << 20); b[::4096] = "
                              "b'x' * len(b[::4096]); print('ready', flush=True); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        alone = scaling._rss_kib(os.getpid())
        assert scaling.tree_rss_kib(os.getpid()) - alone > 190 * 1024
    finally:
        child.kill()
        child.wait()


def test_a_profile_keeps_the_process_and_its_children_apart(tmp_path):
    # A parent holding ~150 MiB whose child holds ~250 MiB: the profile shows each on its own side.
    code = ("import subprocess, sys, time; b = bytearray(150 << 20); b[::4096] = b'x' * len(b[::4096]); "
            "c = subprocess.Popen([sys.executable, '-c', \"b = bytearray(250 << 20); b[::4096] = b'x' * len(b[::4096]); "
            "import time; time.sleep(1.5)\"]); time.sleep(1.5); c.wait()")
    m = scaling.measure([sys.executable, "-c", code], str(tmp_path / "log"), profile=True)
    own = max(s[1] for s in m["profile"])
    children = max(s[2] for s in m["profile"])
    assert 140 < own < 260 and 240 < children < 330, (own, children)
    assert m["peak_mib"] >= 380 and len(m["profile"]) <= scaling.PROFILE_POINTS
    times = [s[0] for s in m["profile"]]
    assert times == sorted(times) and times[-1] > 1.0
    assert "profile" not in scaling.measure([sys.executable, "-c", "pass"], str(tmp_path / "log2"))
    rows = [{"part": "beam", "work": 1000, "memory_profile": m["profile"]}]
    assert scaling.profile_plot(rows, str(tmp_path / "p.png")) and (tmp_path / "p.png").stat().st_size > 0
    assert not scaling.profile_plot([{"part": "index", "work": 1}], str(tmp_path / "q.png"))


def test_table_compares_each_part_with_its_first_row_and_shows_failures():
    rows = [{"part": "beam", "work": 1000, "unit": "rows", "seconds": 10.0, "rate": 100.0, "rate_unit": "rows/s",
             "peak_mib": 512.0},
            {"part": "beam", "work": 3000, "unit": "rows", "seconds": 40.0, "rate": 75.0, "rate_unit": "rows/s",
             "peak_mib": 600.0},
            {"part": "beam", "work": 9000, "unit": "rows", "seconds": 5.0, "rate": 0.0, "rate_unit": "rows/s",
             "peak_mib": 90.0, "error": "RuntimeError: reconciliation failed"}]
    lines = scaling.table(rows).splitlines()
    assert lines[3] == "| beam | 3,000 rows | 40.0 | 75.0 rows/s | 0.75x | 600 |  |"  # 75 / 100
    assert lines[4].endswith("| failed: RuntimeError: reconciliation failed |")


def test_table_groups_rows_of_merged_runs_by_part_and_work():
    # An index row measured apart and merged after the server rows: it joins its part, after the smaller size.
    def row(part, work, rate):
        return {"part": part, "work": work, "unit": "u", "seconds": 1.0, "rate": rate, "rate_unit": "x/s",
                "peak_mib": 1.0, "build_seconds": 1.0, "recall": 1.0, "exact_rate": 1.0,
                "p99_ms": {"candidates": 1.0, "scores": 1.0}, "failed": 0}

    lines = scaling.table([row("index", 100, 8.0), row("server", 1, 3.0), row("index", 400, 2.0),
                           row("index", 200, 4.0)]).splitlines()[2:]
    assert [line.split(" | ")[:2] for line in lines] == [["| index", "100 u"], ["| index", "200 u"],
                                                         ["| index", "400 u"], ["| server", "1 u"]]
    assert "| 0.25x |" in lines[2]  # 2 / 8: still against the part's smallest


def test_server_row_reads_the_serving_benchmarks_figures():
    # Two rounds of the serving benchmark's own figures: 4 calls in 2 s (2/s), 3 calls in 1 s (3/s).
    from benchmarks import serving_latency

    rounds = [([("candidates", 0.0, 0.01, None), ("scores", 0.5, 0.52, None), ("candidates", 1.0, 1.01, None),
                ("scores", 1.98, 2.0, None)], 0.1),
              ([("candidates", 0.0, 0.02, None), ("scores", 0.5, 0.53, "DEADLINE_EXCEEDED"),
                ("scores", 0.9, 1.0, None)], 0.1)]
    figures = serving_latency.load_figures(rounds, model_runs=6, sent_per_round=4)
    row = scaling.server_row(8, figures, {"seconds": 12.5, "peak_mib": 900.0})
    assert row["rate"] == 2.5  # the median of 2/s and 3/s
    assert row["failed"] == 1 and row["seconds"] == 12.5 and row["peak_mib"] == 900.0
    assert row["p99_ms"]["candidates"] > 0 and row["p99_ms"]["scores"] > 0
    assert "8 clients" in scaling.table([row])


def test_an_included_part_measured_again_is_replaced(tmp_path):
    import json

    first = tmp_path / "a.json"
    first.write_text(json.dumps({"rows": [{"part": "beam", "work": 1}, {"part": "index", "work": 2}]}))
    second = tmp_path / "b.json"
    second.write_text(json.dumps({"command": "...", "rows": [{"part": "server", "work": 3}, {"part": "beam", "work": 4}]}))
    paths = [str(first), str(second)]
    assert [r["work"] for r in scaling.included_rows(paths, [])] == [1, 2, 3, 4]
    assert [r["work"] for r in scaling.included_rows(paths, ["beam"])] == [2, 3]  # the beam rows measured anew
