"""TF Serving's config files and version folders: round trips, TF Serving's own syntax and semantics."""
import json
import os

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import config as cfg


def test_models_config_round_trip_in_tf_serving_syntax(tmp_path):
    models = [cfg.ModelConfig("ranker", "/models/ranker", cfg.VersionPolicy.specific([3, 1]), {"stable": 1}),
              cfg.ModelConfig("user_tower", "user_tower", cfg.VersionPolicy.all()),
              cfg.ModelConfig("retrieval", "/models/retrieval", cfg.VersionPolicy.latest(2))]
    path = str(tmp_path / "models.config")
    cfg.write_models_config(path, models)
    assert cfg.read_models_config(path) == models
    assert os.listdir(tmp_path) == ["models.config"]  # the temporary file was renamed, not left over

    # What TF Serving itself parses from the file.
    proto = text_format.Parse(open(path).read(), model_server_config_pb2.ModelServerConfig())
    ranker, user, retrieval = proto.model_config_list.config
    assert (ranker.name, ranker.base_path, ranker.model_platform) == ("ranker", "/models/ranker", "tensorflow")
    assert list(ranker.model_version_policy.specific.versions) == [1, 3]
    assert dict(ranker.version_labels) == {"stable": 1}
    assert user.model_version_policy.WhichOneof("policy_choice") == "all"
    assert retrieval.model_version_policy.latest.num_versions == 2


def test_models_config_defaults_as_tf_serving():
    # No policy means latest 1; an unset num_versions means 1.
    text = """model_config_list {
      config { name: "a" base_path: "/a" }
      config { name: "b" base_path: "/b" model_version_policy { latest {} } }
    }"""
    a, b = cfg.parse_models_config(text)
    assert a.version_policy == b.version_policy == cfg.VersionPolicy.latest(1)
    assert a.model_platform == "tensorflow" and a.version_labels == {}


@pytest.mark.parametrize("text, match", [
    ("model_config_list { config { name: 'a' bse_path: '/a' } }", "Not a ModelServerConfig"),
    ("model_config_list { config { name: 'a' base_path: '/a' } config { name: 'a' base_path: '/b' } }", "unique"),
    ("model_config_list { config { name: '' base_path: '/a' } }", "`name`"),
    ("model_config_list { config { name: 'a' } }", "`base_path`"),
    ("custom_model_config { }", "custom_model_config"),
])
def test_models_config_errors(text, match):
    with pytest.raises(ValueError, match=match):
        cfg.parse_models_config(text)


@pytest.mark.parametrize("policy, available, expected", [
    (cfg.VersionPolicy.latest(1), [3, 1, 10], [10]),
    (cfg.VersionPolicy.latest(2), [3, 1, 10], [3, 10]),
    (cfg.VersionPolicy.latest(5), [3, 1], [1, 3]),
    (cfg.VersionPolicy.latest(1), [], []),
    (cfg.VersionPolicy.specific([1, 5]), [1, 3], [1]),  # 5 is served once it appears
    (cfg.VersionPolicy.all(), [3, 1, 10], [1, 3, 10]),
])
def test_version_policy_select(policy, available, expected):
    assert policy.select(available) == expected


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "newest"}, "`kind`"),
    ({"kind": "latest", "num_versions": 0}, "`num_versions`"),
    ({"kind": "specific", "versions": []}, "`versions`"),
    ({"kind": "specific", "versions": [-1]}, "`versions`"),
])
def test_version_policy_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cfg.VersionPolicy(**kwargs)


def test_version_folders(tmp_path):
    for name in ["1", "12", ".tmp-3", "abc", "4b", "_2"]:
        os.makedirs(tmp_path / name)
    (tmp_path / "7").write_text("a file, not a version folder")
    assert cfg.list_versions(str(tmp_path)) == [1, 12]
    assert cfg.version_dirs(str(tmp_path)) == {1: str(tmp_path / "1"), 12: str(tmp_path / "12")}
    with pytest.raises(OSError):
        cfg.list_versions(str(tmp_path / "missing"))


def test_batching_config_round_trip_in_tf_serving_syntax(tmp_path):
    batching = cfg.BatchingConfig(max_batch_size=128, batch_timeout_micros=1000, max_enqueued_batches=100,
                                  num_batch_threads=4, thread_pool_name="batch", allowed_batch_sizes=[32, 128],
                                  pad_variable_length_inputs=True)
    path = str(tmp_path / "batching.config")
    cfg.write_batching_config(path, batching)
    assert cfg.read_batching_config(path) == batching
    text = open(path).read()
    assert "max_batch_size {\n  value: 128\n}" in text and "allowed_batch_sizes: 32" in text
    # The syntax of TF Serving's documentation, unset fields left to its defaults.
    parsed = cfg.parse_batching_config("max_batch_size { value: 64 } batch_timeout_micros { value: 0 } "
                                       "num_batch_threads { value: 8 }")
    assert parsed == cfg.BatchingConfig(max_batch_size=64, batch_timeout_micros=0, num_batch_threads=8)
    assert "max_enqueued_batches" not in cfg.batching_config_to_text(parsed)


@pytest.mark.parametrize("make, match", [
    (lambda: cfg.BatchingConfig(max_batch_size=0), "`max_batch_size`"),
    (lambda: cfg.BatchingConfig(max_batch_size=64, allowed_batch_sizes=[64, 32]), "`allowed_batch_sizes`"),
    (lambda: cfg.BatchingConfig(max_batch_size=64, allowed_batch_sizes=[16, 32]), "`allowed_batch_sizes`"),
    (lambda: cfg.parse_batching_config("max_batch_sise { value: 1 }"), "Not a BatchingParameters"),
])
def test_batching_config_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_serving_checks_round_trip(tmp_path):
    version_dir = str(tmp_path / "1")
    assert cfg.read_serving_checks(version_dir) is None
    checks = cfg.ServingChecks(allowed_values={"domain": ["d0", "d1"], "slot": [0, 1]},
                               max_length={"hist_item_id": 50}, max_batch_size=256)
    cfg.write_serving_checks(version_dir, checks)
    path = os.path.join(version_dir, "assets.extra", "serving_checks.json")
    assert json.load(open(path)) == {"allowed_values": {"domain": ["d0", "d1"], "slot": [0, 1]},
                                     "max_length": {"hist_item_id": 50}, "max_batch_size": 256,
                                     "reject_non_finite": True}
    assert cfg.read_serving_checks(version_dir) == checks
    off = cfg.ServingChecks(reject_non_finite=False)
    cfg.write_serving_checks(version_dir, off)
    assert cfg.read_serving_checks(version_dir) == off


def test_serving_checks_written_before_reject_non_finite_still_refuse_non_finite(tmp_path):
    # An older export's file, without the key: non-finite floats are refused there too.
    os.makedirs(tmp_path / "assets.extra")
    (tmp_path / "assets.extra" / "serving_checks.json").write_text(
        '{"allowed_values": {"domain": ["d0"]}, "max_length": {}, "max_batch_size": 8}')
    assert cfg.read_serving_checks(str(tmp_path)).reject_non_finite is True


@pytest.mark.parametrize("content, match", [
    ("{not json", "serving_checks.json"),
    ('{"allowed": {}}', "Unknown serving check keys"),
    ('{"allowed_values": {"domain": []}}', "`allowed_values`"),
    ('{"max_length": {"hist": 0}}', "`max_length`"),
    ('{"max_batch_size": -1}', "`max_batch_size`"),
    ('{"reject_non_finite": "yes"}', "`reject_non_finite`"),
])
def test_serving_checks_errors(tmp_path, content, match):
    os.makedirs(tmp_path / "assets.extra")
    (tmp_path / "assets.extra" / "serving_checks.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        cfg.read_serving_checks(str(tmp_path))
