"""Test set-up: Keras 2 before TensorFlow, quiet logs, and the shared fixtures."""
import os

import mdr_contract  # noqa: F401  (Keras 2, set in the one place every entry point passes through)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from tests import helpers  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory):
    """A small synthetic log (seed 0), generated once per session."""
    from pipeline import synthetic

    folder = tmp_path_factory.mktemp("synthetic_raw")
    synthetic.generate(str(folder), helpers.SMALL_SYNTHETIC)
    return str(folder)


@pytest.fixture(scope="session")
def synthetic_data(synthetic_raw, tmp_path_factory):
    """The small synthetic log preprocessed once (time split), with its metadata."""
    out = str(tmp_path_factory.mktemp("synthetic_data"))
    metadata = helpers.run_job("synthetic", synthetic_raw, out, sequence_length=8)
    return out, metadata


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """The checked-in tiny sample with bad rows, preprocessed once (time split at 1900)."""
    out = str(tmp_path_factory.mktemp("sample_data"))
    # min_stat_events=1: every key of the tiny sample has its own statistics (checked by hand).
    metadata = helpers.run_job("csv", helpers.SAMPLE_CSV, out, mapping=helpers.SAMPLE_MAPPING,
                               eval_start="1900", sequence_length=4, num_buckets=2, min_stat_events=1)
    return out, metadata


@pytest.fixture(scope="session")
def tiny_models(synthetic_data, tmp_path_factory):
    """A tiny ADI retrieval model and a tiny ranker trained 3 steps each on `synthetic_data` (read-only:
    tests export and serve them, never retrain them): (data_dir, retrieval_dir, ranker_dir). The ADI has the
    popularity prior, so the exported towers, indexes and servers are tested with its extra unit (the
    default models are exported by the CLI's tests)."""
    from mdr_keras import training

    data_dir, _ = synthetic_data
    root = tmp_path_factory.mktemp("tiny_models")
    retrieval_dir, ranker_dir = str(root / "adi"), str(root / "ranker")
    common = dict(epochs=1, steps_per_epoch=3, batch_size=64, patience=0, validation_split="")
    training.train(data_dir, retrieval_dir, training.TrainConfig(
        model="adi", model_config={"embedding_dim": 8, "tower_units": [16, 8], "shared_units": [16],
                                   "specific_units": [16], "popularity_prior": 1.0}, **common), verbose=0)
    training.train(data_dir, ranker_dir, training.TrainConfig(
        model="ranker", model_config={"embedding_dim": 8, "mlp_units": [16]}, **common), verbose=0)
    return data_dir, retrieval_dir, ranker_dir
