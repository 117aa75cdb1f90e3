"""The `mdr` command: subcommands, exit codes and messages, the demo's first stage."""
import glob
import json
import os
import subprocess
import sys

import pytest

from mdr import cli
from tests import helpers


def test_generate_then_preprocess_in_process(tmp_path, capsys):
    raw, out = str(tmp_path / "raw"), str(tmp_path / "data")
    assert cli.main(["generate", "--output", raw, "--users", "50", "--items", "40", "--seed", "1"]) == 0
    assert "events per domain" in capsys.readouterr().out
    assert cli.main(["preprocess", "--source", "synthetic", "--input", raw, "--output", out,
                     "--sequence-length", "5"] + helpers.FAST_BEAM_ARGS) == 0
    printed = capsys.readouterr().out
    assert "rejected 0" in printed
    meta = json.load(open(os.path.join(out, "metadata.json")))
    held = meta["holdout"]
    assert (f"of train, held out for validation: {held['rows']:,} rows (1 in 20, the latest, from timestamp "
            f"{held['start']})") in printed
    assert meta["rows_read"] == meta["rows_written"] > 0
    # the live progress line, last printed with the job's own counts
    assert f"rows read {meta['rows_read']:,} · rows rejected 0 · records built {meta['rows_written']:,}" in printed


def test_demo_takes_a_csv_with_its_mapping(tmp_path, capsys):
    testdata = os.path.join(os.path.dirname(os.path.dirname(__file__)), "testdata")
    args = ["demo", "--source", "csv", "--input", os.path.join(testdata, "events.csv"), "--output", str(tmp_path),
            "--stop-after-preprocess"]
    assert cli.main(args) == 2  # the csv source needs its mapping: refused in one line, before any work
    assert "--mapping" in capsys.readouterr().err
    assert cli.main(args + ["--mapping", os.path.join(testdata, "mapping.json")] + helpers.FAST_BEAM_ARGS) == 0
    assert "sample train record:" in capsys.readouterr().out
    meta = json.load(open(os.path.join(tmp_path, "data", "metadata.json")))
    assert meta["rows_read"] == meta["rows_written"] + meta["rows_rejected"] > 0


@pytest.mark.parametrize("command", [["serve", "--model-config-file", "none/models.config"],
                                     ["demo", "--output", "unused"]])
def test_a_busy_port_is_refused_before_anything_loads(command, capsys):
    import socket
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        assert cli.main(command + ["--port", str(port)]) == 1
        assert time.monotonic() - start < 5  # not after loading models, or training them (the demo)
    err = capsys.readouterr().err
    assert err.startswith(f"mdr {command[0]}: error: --port {port}: cannot listen on 127.0.0.1:{port}"), err
    assert err.count("\n") == 1


def test_input_errors_exit_1_with_a_message(tmp_path, capsys):
    code = cli.main(["preprocess", "--source", "taobao", "--input", str(tmp_path / "missing.csv"),
                     "--output", str(tmp_path / "o")])
    assert code == 1
    assert "no input file matches" in capsys.readouterr().err


def test_misuse_exits_2_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["preprocess", "--source", "nope", "--input", "x", "--output", "y"])
    assert e.value.code == 2
    err = capsys.readouterr().err  # one line naming the flag, no usage block
    assert err.startswith("mdr preprocess: error: argument --source: invalid choice: 'nope'") and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--model-config-file", "x", "--port", "70000"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("mdr serve: error: argument --port: must be a port number in [0, 65535]. "
                                       "Received: '70000' (see mdr serve --help)\n")
    # Values argparse cannot judge alone: refused by the job's config, before any work, still exit 2.
    assert cli.main(["preprocess", "--source", "synthetic", "--input", "x", "--output", "y", "--split", "random",
                     "--ratios", "0.5,0.6"]) == 2
    assert capsys.readouterr().err == ("mdr preprocess: error: --ratios must sum to 1 (train,eval[,test]). "
                                       "Received: --ratios 0.5,0.6 (sum 1.1)\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--output", "x", "--bogus", "1"])
    assert e.value.code == 2
    capsys.readouterr()
    # Checked before anything loads (no server at port 1, no store at "nowhere": neither is reached).
    assert cli.main(["query", "scores", "--server", "127.0.0.1:1", "--store", "nowhere", "--domain", "d0",
                     "--user", "u1"]) == 2
    assert capsys.readouterr().err.strip() == "mdr query: error: scores needs --items ITEM [ITEM ...]"


def test_evaluate_on_a_split_without_rows_is_refused_before_any_model_loads(synthetic_data, tmp_path, capsys):
    data_dir, meta = synthetic_data
    assert meta["rows_written_per_split"]["test"] == 0  # a time split without --test-start
    code = cli.main(["evaluate", "--model-dir", str(tmp_path / "no_model_here"), "--data", data_dir,
                     "--split", "test"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (f"mdr evaluate: error: --split test: {data_dir} has no test rows "
                                               "(splits with rows: train, eval)")


def test_console_script_help():
    mdr = os.path.join(os.path.dirname(sys.executable), "mdr")
    out = subprocess.run([mdr, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("generate", "preprocess", "demo"):
        assert command in out.stdout


def test_every_flag_has_help_and_shows_its_default(capsys):
    import dataclasses

    from mdr_keras import evaluation, training

    parser = cli.build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, (name, action.option_strings or action.dest)  # a line for every flag
    # `mdr train`'s help states TrainConfig's defaults (kept in cli.TRAIN_DEFAULTS, so --help needs no TensorFlow).
    defaults = {f.name: f.default for f in dataclasses.fields(training.TrainConfig)}
    assert cli.TRAIN_DEFAULTS == {k: defaults[k] for k in cli.TRAIN_DEFAULTS}
    assert cli.TRAIN_DEFAULT_EPOCHS == training.DEFAULT_EPOCHS  # what --epochs unset means, by task
    assert cli.LR_SCHEDULES == training.LR_SCHEDULES and cli.SAMPLINGS == evaluation.SAMPLINGS  # the choices offered
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "maximum epochs (default: 5 for ranking models, the cosine's length; 20 for retrieval" in text and "(default: 1 on a terminal, else 2)" in text
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    assert "(default: 8500)" in capsys.readouterr().out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, synthetic_raw):
    """`mdr demo` end to end on the small synthetic log, once: Beam, ADI, ranker, export, gRPC answers."""
    import contextlib
    import io

    out = str(tmp_path_factory.mktemp("demo") / "run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["demo", "--output", out, "--input", synthetic_raw, "--port", "0",
                         "--retrieval-epochs", "1", "--ranker-epochs", "1"] + helpers.FAST_BEAM_ARGS)
    return code, printed.getvalue(), out


def test_demo_runs_every_stage_and_answers_over_grpc(demo_run):
    code, printed, out = demo_run
    assert code == 0, printed[-3000:]
    assert "sample train record:" in printed and "hist_item_id" in printed
    for n in range(2, 9):  # stage 1 generates logs, skipped with --input
        assert f"[{n}/8]" in printed, n
    assert "adi on eval" in printed and "ranker on eval" in printed
    assert "model server up on 127.0.0.1:" in printed
    meta = json.load(open(os.path.join(out, "data", "metadata.json")))
    for domain in meta["domains"]:
        assert f"in domain '{domain}' (retrieval -> ranker)" in printed
    for name in ("user_tower", "item_tower", "ranker", "retrieval", "retrieval_scann"):
        assert os.path.isdir(os.path.join(out, "export", name, "1")), name
    assert "feature store for query time (written by the Beam job)" in printed
    assert glob.glob(os.path.join(out, "data", "store", "*.tfrecord.gz"))
    page = open(os.path.join(out, "report", "index.html"), encoding="utf-8").read()
    assert ".png" in page and 'id="summary"' in page
    for model, baseline in (("adi", "dnn-retrieval"), ("ranker", "dnn-ranking")):  # each beside its baseline
        assert f"<td>{baseline} (baseline)</td>" in page and f"{model} - {baseline}" in page
        assert "baseline dnn" in printed
    assert os.path.isdir(os.path.join(out, "export", "recommender", "1"))


def test_serve_then_query_and_recommend_from_other_processes(demo_run):
    """`mdr serve` on the demo's export; `mdr query` / `mdr recommend` are separate processes (gRPC only)."""
    code, _, out = demo_run
    assert code == 0
    server = subprocess.Popen([sys.executable, "-m", "mdr.cli", "serve", "--model-config-file",
                               os.path.join(out, "export", "models.config"), "--port", "0",
                               "--tensorflow-intra-op-parallelism", "1", "--tensorflow-inter-op-parallelism", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "serving" not in line:
            line = server.stdout.readline()
            assert line or server.poll() is None, server.stderr.read()[-3000:]
        address = line.split(" on ")[1].split(" ")[0]
        store = os.path.join(out, "data")
        base = [sys.executable, "-m", "mdr.cli"]
        common = ["--server", address, "--store", store, "--domain", "d0", "--user", "u0"]
        done = subprocess.run(base + ["recommend"] + common + ["-n", "3"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "recommendations for user 'u0' in domain 'd0'" in done.stdout
        ranked = [l.split()[1] for l in done.stdout.splitlines() if l.strip()[:1].isdigit()]
        assert len(ranked) == 3
        # the export's one-call recommender and the two calls it replaces recommend the same items
        done = subprocess.run(base + ["recommend", "--two-calls"] + common + ["-n", "3"], capture_output=True,
                              text=True, timeout=120)
        assert [l.split()[1] for l in done.stdout.splitlines() if l.strip()[:1].isdigit()] == ranked, done.stdout
        done = subprocess.run(base + ["query", "candidates", "-k", "4", "--model", "retrieval_scann"] + common,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert len([l for l in done.stdout.splitlines() if l.strip()[:1].isdigit()]) == 4
        done = subprocess.run(base + ["query", "scores", "--items", "no-such-item"] + common,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "no-such-item" in done.stderr, done.stderr[-2000:]
        done = subprocess.run(base + ["query", "candidates", "--model", "nope"] + common,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "NOT_FOUND" in done.stderr, done.stderr[-2000:]
        # An unknown user: refused with the flag that serves it, which then does.
        stranger = common[:-1] + ["not-a-user"]
        done = subprocess.run(base + ["recommend"] + stranger, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "--cold-start" in done.stderr, done.stderr[-2000:]
        done = subprocess.run(base + ["recommend", "--cold-start", "-n", "2"] + stranger,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert len([l for l in done.stdout.splitlines() if l.strip()[:1].isdigit()]) == 2
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0
