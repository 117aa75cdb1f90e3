"""The README's code blocks, run or checked as written.

- The own-logs recipe (the bash block with `mdr serve`) runs end to end on the checked-in sample CSV, each
  command a process of its own, `mdr serve ... &` in the background; then the Python client block runs
  against that server and store. Only the output folder (`runs/mine` -> a temporary one) and the port
  (8500 -> a free one) are changed.
- Every other `mdr ...` / `python -m pipeline.preprocess ...` line parses with the real parsers (its flags
  exist; Beam flags are left to Beam) and names a runner Beam can make; inputs of ../shared/datasets are
  there or the block is for real data; `make` targets exist; JSON blocks load as a column mapping.
- Every block is one of those kinds: a new block without a test fails here.
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PORT = "8500"
NOT_CODE = ("text", "mermaid", "")  # synopses, diagrams, listings of files or output


def blocks():
    """[(language, text)] of the README's fenced blocks."""
    text = open(README, encoding="utf-8").read()
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def commands(block):
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("   #")[0].strip() if "   #" in line else line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def recipe_block():
    found = [b for lang, b in blocks() if lang == "bash" and "mdr serve" in b]
    assert len(found) == 1, "the README has one own-logs recipe with `mdr serve`"
    return found[0]


def test_every_block_is_run_or_checked_here():
    kinds = {"bash", "python", "json"} | set(NOT_CODE)
    for lang, block in blocks():
        assert lang in kinds, f"a README block in {lang!r}, which no test runs:\n{block[:300]}"
    assert [lang for lang, _ in blocks()].count("python") == 1  # the client block, run with the recipe


def _mdr(argv):
    return [sys.executable, "-m", "mdr.cli"] + argv


def test_own_logs_recipe_and_the_client_block_run_as_written(tmp_path):
    mine = str(tmp_path / "mine")
    address, server = None, None
    try:
        for command in commands(recipe_block()):
            command = command.replace("runs/mine", mine)
            if address:
                command = command.replace(f"127.0.0.1:{PORT}", address)
            background = command.endswith("&")
            argv = shlex.split(command.rstrip("&").replace(f"--port {PORT}", "--port 0"))
            assert argv[0] == "mdr", command
            if background:
                server = subprocess.Popen(_mdr(argv[1:]), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True)
                line = ""
                while "serving" not in line:
                    line = server.stdout.readline()
                    assert line or server.poll() is None, server.stderr.read()[-3000:]
                address = line.split(" on ")[1].split(" ")[0]
                continue
            done = subprocess.run(_mdr(argv[1:]), cwd=ROOT, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, (command, done.stderr[-3000:])
        assert "recommendations for user 'u1' in domain 'd0'" in done.stdout
        assert [l for l in done.stdout.splitlines() if l.strip()[:1].isdigit()], done.stdout

        (code,) = [b for lang, b in blocks() if lang == "python"]
        code = code.replace("runs/mine", mine).replace(f"127.0.0.1:{PORT}", address)
        ran = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr[-3000:]
        printed = ran.stdout.splitlines()
        assert len(printed) == 3 and all(p.startswith("[") for p in printed), ran.stdout
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def test_every_other_command_parses_with_the_real_parsers():
    from apache_beam.options.pipeline_options import PipelineOptions

    from mdr import cli
    from pipeline import preprocess

    parser = cli.build_parser()
    job = argparse.ArgumentParser()
    preprocess.add_arguments(job)
    checked = 0
    for lang, block in blocks():
        if lang != "bash" or block == recipe_block():
            continue
        for command in commands(block):
            argv = shlex.split(command)
            if argv[0] == "make":
                makefile = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
                assert re.search(rf"^{argv[1]}:", makefile, re.M), command
            elif argv[0] == "mdr":
                known, beam = parser.parse_known_args(argv[1:])  # exits (status 2) on a wrong flag
                assert known.command and (not beam or known.command in ("preprocess", "demo")), command
                for path in (getattr(known, "input", None),):
                    if path and path.startswith("../shared/"):
                        assert os.path.exists(os.path.join(ROOT, path)) or not os.path.isdir(
                            os.path.join(ROOT, "..", "shared", "datasets")), command
            else:
                assert argv[:3] == ["python", "-m", "pipeline.preprocess"], command
                known, beam = job.parse_known_args(argv[3:])
                assert all(a.startswith("--") or not a.startswith("-") for a in beam), command
                preprocess.runner_args(beam)  # the runner resolves (ValueError naming --runner otherwise)
                PipelineOptions(beam)
            checked += 1
    assert checked >= 6


def test_the_mapping_example_is_a_valid_mapping(tmp_path):
    from pipeline import sources

    (block,) = [b for lang, b in blocks() if lang == "json"]
    mapping = json.loads(block)
    path = tmp_path / "map.json"
    path.write_text(json.dumps(mapping))
    (tmp_path / "logs.csv").write_text("uid,iid,scene,clk,ts,age,income,cat,tags,price\n")
    source = sources.make_source("csv", str(tmp_path / "logs.csv"), str(path), None)
    assert source.domains == ["home", "search", "video"]
