"""Test set-up: Keras 2 before TensorFlow, quiet logs, and the shared fixtures."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
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
    metadata = helpers.run_job("csv", helpers.SAMPLE_CSV, out, mapping=helpers.SAMPLE_MAPPING,
                               eval_start="1900", sequence_length=4, num_buckets=2)
    return out, metadata
