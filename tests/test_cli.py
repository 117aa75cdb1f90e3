"""The `mdr` command: subcommands, exit codes and messages, the demo's first stage."""
import json
import os
import subprocess
import sys

import pytest

from mdr_keras import cli
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
    assert meta["rows_read"] == meta["rows_written"] > 0


def test_input_errors_exit_1_with_a_message(tmp_path, capsys):
    code = cli.main(["preprocess", "--source", "taobao", "--input", str(tmp_path / "missing.csv"),
                     "--output", str(tmp_path / "o")])
    assert code == 1
    assert "no input file matches" in capsys.readouterr().err


def test_misuse_exits_2_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["preprocess", "--source", "nope", "--input", "x", "--output", "y"])
    assert e.value.code == 2
    assert "--source" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--output", "x", "--bogus", "1"])
    assert e.value.code == 2


def test_console_script_help():
    mdr = os.path.join(os.path.dirname(sys.executable), "mdr")
    out = subprocess.run([mdr, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("generate", "preprocess", "demo"):
        assert command in out.stdout


def test_demo_prints_counts_and_a_sample_record(tmp_path, capsys, synthetic_raw):
    assert cli.main(["demo", "--output", str(tmp_path / "run"), "--input", synthetic_raw]
                    + helpers.FAST_BEAM_ARGS) == 0
    printed = capsys.readouterr().out
    assert "sample train record:" in printed and "hist_item_id" in printed
    assert os.path.exists(tmp_path / "run" / "data" / "_SUCCESS")
