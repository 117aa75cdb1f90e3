"""benchmarks.models: variants parse, and a bad one stops the run before any training."""
import os

import pytest

from benchmarks import models


def test_parse_model_reads_json_values():
    assert models.parse_model("adi:dsbn=false:fusion=sum:tower_units=[16,8]") == (
        "adi", {"dsbn": False, "fusion": "sum", "tower_units": [16, 8]})
    with pytest.raises(ValueError, match="name:key=value"):
        models.parse_model("adi:dsbn")


def test_a_bad_variant_stops_the_run_before_training(synthetic_data, tmp_path, capsys):
    data_dir, _ = synthetic_data
    out = str(tmp_path / "bench")
    code = models.main(["--data", data_dir, "--task", "retrieval", "--models", "dnn,adi:fusion=star",
                        "--output", out])
    assert code == 2
    err = capsys.readouterr().err
    assert "model variant 'adi:fusion=star'" in err and "num_shared" in err
    assert not os.path.exists(out)  # nothing trained, nothing written
