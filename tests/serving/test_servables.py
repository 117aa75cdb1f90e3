"""Tests of serving/servables.py: a version folder loaded with its signatures and serving checks, and a
model's versions brought in line with its base path (new versions loaded before old ones unload,
failed loads kept out and retried only once their folder changes, folders being written ignored)."""
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2

from mdr_contract import artifacts
from serving import config as cfg
from serving.servables import ServedModel, TensorSignature, load_servable, read_signature_defs
from tests.serving.saved_models import REC_CHECKS, write_affine, write_rec

State = get_model_status_pb2.ModelVersionStatus.State


def test_load_servable_reads_signatures_and_checks(tmp_path):
    write_affine(str(tmp_path / "affine"), a=2, b=1)
    write_rec(str(tmp_path / "rec"))
    affine = load_servable("affine", 3, str(tmp_path / "affine"))
    assert (affine.name, affine.version, affine.path) == ("affine", 3, str(tmp_path / "affine"))
    assert sorted(affine.signatures) == ["examples", "serving_default", "sqrt"]
    assert set(affine.signatures) <= set(affine.signature_defs)  # which also holds TF's __saved_model_init_op
    default = affine.signatures["serving_default"]
    assert default.inputs == {"x": TensorSignature(tf.float32, (None, 1))}
    assert default.inputs["x"].describe() == "float32 of shape [?, 1]"
    assert sorted(default.outputs) == ["x_squared", "y"] and default.unsupported is None
    assert affine.signature_defs["serving_default"].method_name == "tensorflow/serving/predict"
    assert affine.checks is None
    np.testing.assert_allclose(default.function(x=tf.constant([[1.5]]))["y"].numpy(), [[4.0]])  # 2 * 1.5 + 1

    rec = load_servable("rec", 1, str(tmp_path / "rec"))
    assert rec.checks == REC_CHECKS
    assert rec.signatures["serving_default"].inputs == {"domain": TensorSignature(tf.string, (None,)),
                                                        "hist_item_id": TensorSignature(tf.int64, (None, None))}


def test_read_signature_defs_reads_a_text_saved_model(tmp_path):
    write_affine(str(tmp_path / "binary"), a=2, b=1)
    proto = saved_model_pb2.SavedModel()
    with open(tmp_path / "binary" / artifacts.SAVED_MODEL_PB, "rb") as f:
        proto.ParseFromString(f.read())
    os.makedirs(tmp_path / "text")
    (tmp_path / "text" / artifacts.SAVED_MODEL_PBTXT).write_text(text_format.MessageToString(proto))
    assert read_signature_defs(str(tmp_path / "text")) == read_signature_defs(str(tmp_path / "binary"))


def test_malformed_checks_fail_the_load(tmp_path):
    write_affine(str(tmp_path / "m"), a=2, b=1)
    (tmp_path / "m" / artifacts.SERVING_CHECKS).parent.mkdir()
    (tmp_path / "m" / artifacts.SERVING_CHECKS).write_text('{"max_length": {"x": 0}}')
    with pytest.raises(ValueError, match="max_length"):
        load_servable("m", 1, str(tmp_path / "m"))


def _statuses(model):
    return {v: state for v, (state, _, _) in model.status.items()}


def test_sync_loads_new_versions_before_unloading_old_ones(tmp_path):
    base = tmp_path / "m"
    write_affine(str(base / "1"), a=2, b=1)
    model = ServedModel(cfg.ModelConfig("m", str(base)), str(base))
    assert model.sync() == [] and sorted(model.servables) == [1]
    assert _statuses(model) == {1: State.AVAILABLE}
    # A version still being written is ignored (its name is not a number).
    write_affine(str(base / f"{artifacts.EXPORT_TMP_PREFIX}2"), a=10, b=0)
    snapshot = model.servables
    assert model.sync() == [] and sorted(model.servables) == [1]
    os.rename(base / f"{artifacts.EXPORT_TMP_PREFIX}2", base / "2")
    assert model.sync() == [] and sorted(model.servables) == [2]
    assert _statuses(model) == {1: State.END, 2: State.AVAILABLE}
    assert sorted(snapshot) == [1]  # a request's snapshot is replaced, never changed under it
    # Every version gone: unloaded, as TF Serving does.
    shutil.rmtree(base / "2")
    shutil.rmtree(base / "1")
    assert model.sync() == [] and model.servables == {}
    assert _statuses(model) == {1: State.END, 2: State.END}


def test_sync_keeps_the_old_version_when_a_new_one_fails(tmp_path):
    base = tmp_path / "m"
    write_affine(str(base / "1"), a=2, b=1)
    model = ServedModel(cfg.ModelConfig("m", str(base)), str(base))
    model.sync()
    os.makedirs(base / "2")
    (base / "2" / artifacts.SAVED_MODEL_PB).write_bytes(b"not a SavedModel")
    errors = model.sync()
    assert len(errors) == 1 and "version 2" in errors[0] and "failed to load" in errors[0]
    assert sorted(model.servables) == [1]
    state, code, message = model.status[2]
    assert state == State.END and code != 0 and "failed to load" in message
    assert model.sync() == []  # unchanged folder: not retried on every poll
    os.utime(base / "2", (1, 1))  # the folder changed: retried
    assert len(model.sync()) == 1 and sorted(model.servables) == [1]


def test_sync_keeps_serving_when_the_base_path_cannot_be_listed(tmp_path):
    base = tmp_path / "m"
    write_affine(str(base / "1"), a=2, b=1)
    model = ServedModel(cfg.ModelConfig("m", str(base)), str(base))
    model.sync()
    os.rename(base, tmp_path / "elsewhere")
    assert model.sync() == [] and sorted(model.servables) == [1]
    assert "cannot list base path" in model.list_error
    os.rename(tmp_path / "elsewhere", base)
    assert model.sync() == [] and model.list_error is None


def test_sync_follows_the_version_policy(tmp_path):
    base = tmp_path / "m"
    for version in (1, 2, 3):
        write_affine(str(base / str(version)), a=version, b=0)
    every = ServedModel(cfg.ModelConfig("m", str(base), version_policy=cfg.VersionPolicy.all()), str(base))
    assert every.sync() == [] and sorted(every.servables) == [1, 2, 3]
    some = ServedModel(cfg.ModelConfig("m", str(base), version_policy=cfg.VersionPolicy.specific([1, 3, 7])),
                       str(base))
    assert some.sync() == [] and sorted(some.servables) == [1, 3]
