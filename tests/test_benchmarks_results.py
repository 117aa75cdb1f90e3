"""benchmarks.results: result files written by the scripts, spliced into docs/results.md, checked for drift."""
import json
import os

import pytest

from benchmarks import results


def test_save_then_splice_puts_the_file_between_the_markers(tmp_path):
    md = results.save("ml1m-x", "| model | r |\n|---|---:|\n| adi | 0.3 |", {"rows": [1]}, "benchmarks.models",
                      ["--data", "/tmp/d x", "--seeds", "0,1"], results_dir=str(tmp_path))
    assert json.load(open(tmp_path / "ml1m-x.json")) == {
        "command": "python -m benchmarks.models --data '/tmp/d x' --seeds 0,1", "rows": [1]}
    body = open(md).read()
    assert body == ("| model | r |\n|---|---:|\n| adi | 0.3 |\n\n```bash\n"
                    "python -m benchmarks.models --data '/tmp/d x' --seeds 0,1\n```\n")
    doc = "intro\n<!-- result: ml1m-x -->\nstale table\n<!-- /result -->\nprose after\n"
    spliced = results.splice(doc, str(tmp_path))
    assert spliced == f"intro\n<!-- result: ml1m-x -->\n{body}<!-- /result -->\nprose after\n"
    assert results.splice(spliced, str(tmp_path)) == spliced  # idempotent
    with pytest.raises(FileNotFoundError, match="'nope'"):
        results.splice("<!-- result: nope -->\n<!-- /result -->", str(tmp_path))
    with pytest.raises(ValueError, match="--results takes a plain file name"):
        results.check_name("../escape")


def test_docs_tables_are_the_committed_result_files():
    # Every marked table in docs/results.md equals its file in benchmarks/results/ (nothing typed by hand).
    text = open(results.DOC).read()
    assert results.BLOCK.search(text), "docs/results.md has no result markers"
    for match in results.BLOCK.finditer(text):
        assert os.path.exists(os.path.join(results.RESULTS_DIR, match.group("name") + ".md")), match.group("name")
    assert results.main(["--check"]) == 0


def test_a_table_outside_the_markers_fails_the_check(tmp_path, capsys):
    (tmp_path / "ml1m-x.md").write_text("| model | r |\n|---|---:|\n| adi | 0.3 |\n")
    marked = "intro\n<!-- result: ml1m-x -->\n| model | r |\n|---|---:|\n| adi | 0.3 |\n<!-- /result -->\n"
    typed = marked + "\nby hand:\n\n| model | r |\n| --- | ---: |\n| dnn | 0.2 |\n"
    assert results.tables_outside_markers(marked) == []
    assert results.tables_outside_markers(typed) == [11]  # the second table's |---| line
    doc = tmp_path / "results.md"
    doc.write_text(typed)
    assert results.main(["--check", "--doc", str(doc)]) == 1
    assert f"{doc}:11: a table outside <!-- result: NAME --> markers" in capsys.readouterr().err
