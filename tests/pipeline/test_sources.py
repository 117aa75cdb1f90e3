"""Row parsing of each source: good rows become events, bad rows raise RowError with a reason."""
import json
import os

import pytest

from pipeline import sources
from pipeline.sources import InputError, RowError
from tests import helpers


def test_timestamps():
    assert sources.parse_timestamp("1511544070") == 1511544070
    assert sources.parse_timestamp("1511544070.9") == 1511544070
    assert sources.parse_timestamp("2026-01-01T00:00:00Z") == 1767225600
    assert sources.parse_timestamp("2026-01-01") == 1767225600
    with pytest.raises(RowError, match="milliseconds"):
        sources.parse_timestamp("1511544070000")
    with pytest.raises(RowError, match="out of range"):
        sources.parse_timestamp("-5")
    with pytest.raises(RowError, match="bad timestamp"):
        sources.parse_timestamp("yesterday")
    with pytest.raises(RowError, match="missing timestamp"):
        sources.parse_timestamp(" ")


def test_taobao_rows():
    src = sources.TaobaoSource("x")
    e = src.parse("1,2268318,2520377,cart,1511544070")
    assert (e["user_id"], e["item_id"], e["domain"], e["label"]) == ("1", "2268318", "2520377", 1)
    assert src.parse("1,2,3,pv,1511544070")["label"] == 0
    with pytest.raises(RowError, match="expected 5, got 4"):
        src.parse("100370,1968385,1875258,pv")


@pytest.mark.skipif(helpers.shared_dataset("movielens-1m") is None,
                    reason="../shared/datasets/movielens-1m is absent (fresh clone)")
def test_movielens_rows():
    src = sources.MovieLensSource(helpers.shared_dataset("movielens-1m"))
    src.check()
    src.setup()
    e = src.parse("1::1193::5::978300760")
    assert e["domain"] == "age_under25" and e["label"] == 1  # user 1 is aged "1"
    assert e["features"]["genres"] == ["Drama"] and e["features"]["year"] == 1975.0
    assert src.parse("1::1193::3::978300760")["label"] == 0  # rating 3 is not a click
    with pytest.raises(RowError, match="unknown movie id"):
        src.parse("1::999999::5::978300760")
    with pytest.raises(RowError, match="unknown user id"):
        src.parse("999999::1193::5::978300760")


def test_csv_and_jsonl_with_a_mapping(tmp_path):
    mapping = sources.ColumnMapping.load(helpers.SAMPLE_MAPPING)
    src = sources.CsvSource(helpers.SAMPLE_CSV, mapping)
    src.check()
    e = src.parse("u1,i1,d0,1,1000,a1,9.5,x|y,Xc")
    assert e["features"] == {"age": "a1", "price": 9.5, "genres": ["x", "y"], "cat": "Xc"}
    jm = sources.ColumnMapping(user="u", item="i", domain="d", label="clk", split="part", format="jsonl",
                               label_threshold=0.5)
    js = sources.CsvSource(str(tmp_path / "x.jsonl"), jm)
    e = js.parse(json.dumps({"u": 1, "i": "a", "d": "s", "clk": 0.7, "part": "validation"}))
    assert (e["user_id"], e["label"], e["split"], e["timestamp"]) == ("1", 1, "eval", -1)
    with pytest.raises(RowError, match="missing field clk"):
        js.parse(json.dumps({"u": 1, "i": "a", "d": "s"}))
    with pytest.raises(RowError, match="invalid JSON"):
        js.parse("{not json")
    with pytest.raises(RowError, match="unknown split"):
        js.parse(json.dumps({"u": 1, "i": "a", "d": "s", "clk": 1, "part": "later"}))


def test_mapping_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="unknown keys \\['colour'\\]"):
        sources.ColumnMapping.load('{"user": "u", "item": "i", "domain": "d", "label": "l", "colour": 1}')
    with pytest.raises(InputError, match="missing keys \\['label'\\]"):
        sources.ColumnMapping.load('{"user": "u", "item": "i", "domain": "d"}')
    with pytest.raises(InputError, match="category"):
        sources.ColumnMapping(user="u", item="i", domain="d", label="l", category="c")
    with pytest.raises(InputError, match="needs --mapping"):
        sources.make_source("csv", "x", None)
    with pytest.raises(InputError, match="no input file matches"):
        sources.TaobaoSource(str(tmp_path / "none.csv")).check()
    other = tmp_path / "two"
    other.mkdir()
    (other / "a.csv").write_text("user_id,item_id,domain,label,timestamp,age,price,genres,cat\n")
    (other / "b.csv").write_text("item_id,user_id,domain,label,timestamp,age,price,genres,cat\n")
    with pytest.raises(InputError, match="differs from the first file"):
        sources.CsvSource(str(other), sources.ColumnMapping.load(helpers.SAMPLE_MAPPING)).check()
    assert os.path.exists(helpers.SAMPLE_CSV)
