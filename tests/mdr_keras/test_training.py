"""mdr_keras.training: configs, `mdr train` / `mdr evaluate` over 2 mirrored replicas, resume, fresh-process reload."""
import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import pytest
import tf_keras as keras

from mdr_keras import data, training
from mdr_keras.models import retrieval
from mdr_contract import feature_spec as fs


def mdr(*args, timeout=600):
    """`mdr ARGS` in a fresh process (its own TensorFlow, so logical CPU devices can be configured)."""
    done = subprocess.run([sys.executable, "-m", "mdr.cli", *args], capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("kwargs, message", [
    ({"model": "nope"}, "Unknown model"),
    ({"model": "dnn"}, "exists for retrieval and for ranking"),
    ({"model": "din", "task": "retrieval"}, "Unknown retrieval model"),
    ({"model": "adi", "task": "rank"}, "`task` must be"),
    ({"epochs": 0}, "`epochs` must be an int >= 1"),
    ({"batch_size": 1.5}, "`batch_size` must be an int >= 1"),
    ({"learning_rate": 0}, "`learning_rate` must be > 0"),
    ({"patience": -1}, "`patience` must be >= 0"),
    ({"steps_per_epoch": 0}, "`steps_per_epoch` must be >= 1"),
    ({"lr_schedule": "linear"}, "`lr_schedule` must be one of"),
    ({"weight_decay": -0.1}, r"`weight_decay` must be in \[0, inf\)"),
    ({"weight_decay": "0.1"}, r"`weight_decay` must be in \[0, inf\)"),
    ({"weight_decay": float("inf")}, r"`weight_decay` must be in \[0, inf\)"),
    ({"model_config": {"no_such_knob": 1}}, "Unknown model_config keys"),
    ({"model_config": {"temperature": 0}}, "`temperature` must be > 0"),
])
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        training.TrainConfig(**kwargs)


def test_config_file_round_trip_and_unknown_keys(tmp_path):
    config = training.TrainConfig(model="dnn", task="retrieval", epochs=2, model_config={"tower_units": [32, 16]})
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config.to_json()))
    assert training.TrainConfig.from_file(str(path)) == config
    assert training.TrainConfig.from_file(str(path), epochs=7, seed=None).epochs == 7  # None = not given
    path.write_text(json.dumps({"model": "adi", "epochz": 2}))
    with pytest.raises(ValueError, match=r"Unknown keys .*\['epochz'\]"):
        training.TrainConfig.from_file(str(path))


def test_the_default_epochs_follow_the_task():
    # Ranking: the cosine's 5 epochs; retrieval: up to 20, early stopping ends it; a given number is kept.
    assert training.TrainConfig(model="ranker").epochs == 5
    assert training.TrainConfig(model="dnn", task="ranking").epochs == 5
    assert training.TrainConfig(model="adi").epochs == 20
    assert training.TrainConfig(model="dnn", task="retrieval").epochs == 20
    assert training.TrainConfig(model="adi", epochs=3).epochs == 3
    # a model folder records the number it ran with, so a later default cannot change what it says
    assert training.TrainConfig(**training.TrainConfig(model="adi").to_json()).epochs == 20


def test_the_learning_rate_schedule_by_task_and_its_course(synthetic_data):
    # "auto": cosine for ranking, constant for retrieval; the cosine reaches 0 at the last step.
    assert training.TrainConfig(model="ranker").schedule() == "cosine"
    assert training.TrainConfig(model="adi").schedule() == "constant"
    assert training.TrainConfig(model="adi", lr_schedule="cosine").schedule() == "cosine"
    data_dir, _ = synthetic_data
    spec = fs.FeatureSpec.load(data_dir)
    strategy = training.make_strategy()
    model = training.build_compiled_model(spec, training.TrainConfig(model="dnn", task="ranking", learning_rate=0.5),
                                          strategy, total_steps=100)
    rate = keras.optimizers.schedules.deserialize(model.optimizer.get_config()["learning_rate"])
    # 0.5 * (1 + cos(pi * t / 100)) / 2: 0.5 at t = 0, 0.25 at t = 50, 0 at t = 100
    assert [round(float(rate(t)), 6) for t in (0, 50, 100)] == [0.5, 0.25, 0.0]
    model = training.build_compiled_model(spec, training.TrainConfig(model="dnn", task="retrieval", learning_rate=0.5),
                                          strategy, total_steps=100)
    assert model.optimizer.get_config()["learning_rate"] == 0.5


def test_weight_decay_trains_with_adamw(synthetic_data):
    import numpy as np
    import tensorflow as tf

    data_dir, _ = synthetic_data
    spec = fs.FeatureSpec.load(data_dir)
    strategy = training.make_strategy()
    config = training.TrainConfig(model="dnn", task="retrieval", learning_rate=0.5, weight_decay=0.1)
    model = training.build_compiled_model(spec, config, strategy, total_steps=100)
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    variable = model.trainable_variables[0]
    before = variable.numpy()
    strategy.run(lambda: model.optimizer.apply_gradients([(tf.zeros_like(variable), variable)]))
    # a zero gradient moves nothing through Adam; the decay alone: w - 0.5 * 0.1 * w = 0.95 w
    np.testing.assert_allclose(variable.numpy(), 0.95 * before, rtol=1e-6)
    plain = training.build_compiled_model(spec, training.TrainConfig(model="dnn", task="retrieval"), strategy, 100)
    assert type(plain.optimizer) is keras.optimizers.Adam


def test_a_config_saved_before_the_whole_model_config_takes_the_defaults_of_its_day():
    # train_config.json files written before 2026-12-04 name only the fields that were set; ADI had DSBN on.
    old = training.saved_config({"model": "adi", "task": "retrieval", "model_config": {"tower_units": [32, 16]}})
    assert old.model_settings().dsbn is True and list(old.model_settings().tower_units) == [32, 16]
    assert training.saved_config({"model": "adi", "model_config": {"dsbn": False}}).model_settings().dsbn is False
    ranker = training.saved_config({"model": "ranker", "task": "ranking", "model_config": {}})
    assert ranker.model_config == {}  # the ranker's defaults did not change
    assert training.TrainConfig(model="adi").model_settings().dsbn is False  # today's default
    # A field added since: absent from every older file, it takes its value from before it existed.
    whole = training.saved_config({"model": "adi", "task": "retrieval", "model_config": {"dsbn": False}})
    assert whole.model_settings().fused_dropout == 0.0
    assert training.TrainConfig(model="adi").model_settings().fused_dropout == 0.3


def test_load_model_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained model"):
        training.load_model(str(tmp_path))


def test_train_on_two_mirrored_replicas_then_evaluate_in_a_fresh_process(synthetic_data, tmp_path):
    data_dir, meta = synthetic_data
    model_dir = str(tmp_path / "adi")
    code, out, err = mdr("train", "--data", data_dir, "--model-dir", model_dir, "--model", "adi",
                         "--epochs", "2", "--batch-size", "128", "--cpu-replicas", "2", "--verbose", "0",
                         "--set", "tower_units=[32,16]")
    assert code == 0, err[-3000:]
    assert "for 2 epoch(s)" in out and "on 2 replica(s)" in out
    summary = json.load(open(os.path.join(model_dir, "train_summary.json")))
    assert (summary["replicas"], summary["global_batch"], summary["epochs_run"]) == (2, 256, 2)
    # The data has no test split, so eval is what gets reported: early stopping watches a holdout instead.
    assert summary["validation"] == "holdout" and "val_loss" in summary["history"]
    assert summary["holdout_start"] == data.holdout_start(data_dir) is not None  # a time split: its latest rows
    # Early stopping of retrieval watches the full-corpus recall of the validation rows.
    recall = summary["history"]["val_recall@50"]
    assert len(recall) == 2 and all(0 < r <= 1 for r in recall), recall
    assert training.report_split(data_dir) == "eval"
    loss = summary["history"]["loss"]
    assert loss[1] < loss[0], loss
    for name in ("train_config.json", "feature_spec.json", "vocab/item_id.txt", "weights/model.index",
                 "history.csv"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    assert not os.path.exists(os.path.join(model_dir, "backup"))  # removed once training ends
    # The whole model config is saved, defaults included: a default changed later rebuilds it as trained.
    whole = json.loads(json.dumps(dataclasses.asdict(retrieval.RetrievalConfig(tower_units=[32, 16]))))
    assert json.load(open(os.path.join(model_dir, "train_config.json")))["model_config"] == whole

    # A fresh process rebuilds the model from the folder alone and evaluates it.
    code, out, err = mdr("evaluate", "--model-dir", model_dir, "--data", data_dir, "-k", "10")
    assert code == 0, err[-3000:]
    metrics = json.load(open(os.path.join(model_dir, "metrics.json")))
    assert set(metrics["per_domain"]) == set(meta["domains"])
    assert "recall@10" in out and "overall" in out
    # ... and gets what this process gets from the same folder: the weights are the trained ones.
    again = training.evaluate(model_dir, data_dir, ks=(10,), write=False)
    assert again["overall"] == pytest.approx(metrics["overall"])
    chance = 10 / min(meta["items_per_domain"].values())
    assert metrics["overall"]["recall@10"] > chance


class _Interrupt(keras.callbacks.Callback):
    """Stops the process' training in the middle of the second epoch, as a preempted worker would be."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 2:
            raise KeyboardInterrupt("preempted")


def test_an_interrupted_training_resumes_from_its_last_epoch(synthetic_data, tmp_path):
    data_dir, _ = synthetic_data
    model_dir = str(tmp_path / "dnn")
    config = training.TrainConfig(model="dnn", task="retrieval", epochs=3, batch_size=256, patience=0, validation_split="",
                                  model_config={"dnn_units": [32, 16]})
    with pytest.raises(KeyboardInterrupt):
        training.train(data_dir, model_dir, config, verbose=0, callbacks=[_Interrupt()])
    assert os.path.isdir(os.path.join(model_dir, "backup"))
    summary = training.train(data_dir, model_dir, config, verbose=0)
    # Epoch 0 finished before the interruption, so the rerun trains epochs 1 and 2 only.
    assert summary["epochs_run"] == 2
    epochs = [line.split(",")[0] for line in open(os.path.join(model_dir, "history.csv")).read().split("\n")[1:]
              if line and not line.startswith("epoch")]
    assert epochs == ["0", "1", "2"], epochs


def test_cli_misuse_exits_with_a_message(synthetic_data, tmp_path):
    data_dir, _ = synthetic_data
    code, _, err = mdr("train", "--data", data_dir, "--model-dir", str(tmp_path / "m"), "--model", "nope")
    assert code == 2 and "Unknown model" in err  # misuse of a flag: 2
    code, _, err = mdr("train", "--data", data_dir, "--model-dir", str(tmp_path / "m"), "--set", "dsbn")
    assert code == 2 and "--set takes KEY=VALUE" in err
    code, _, err = mdr("train", "--data", data_dir, "--model-dir", str(tmp_path / "m"), "--set", "nope=1")
    assert code == 2 and err.startswith("mdr train: error: --set: Unknown model_config keys") and "['nope']" in err
    code, _, err = mdr("train", "--data", data_dir, "--model-dir", str(tmp_path / "m"), "--epochs", "0")
    assert code == 2 and err.strip() == ("mdr train: error: argument --epochs: must be an integer >= 1. Received: "
                                         "'0' (see mdr train --help)")
    code, _, err = mdr("evaluate", "--model-dir", str(tmp_path / "none"), "--data", data_dir)
    assert code == 1 and "no trained model" in err


_SAME_LOSS = r"""
import json, os, sys
import mdr_contract  # Keras 2 before TensorFlow
import numpy as np
import tensorflow as tf
import tf_keras as keras
from mdr_contract import feature_spec as fs
from mdr_keras import data, training
from mdr_keras.models.retrieval import RetrievalConfig, build_retrieval_model

data_dir, per_replica = sys.argv[1], 64
strategy = training.make_strategy(cpu_replicas=2)
spec = fs.FeatureSpec.load(data_dir)
config = RetrievalConfig(dnn_units=(32, 16), tower_units=(16,))
keras.utils.set_random_seed(0)
with strategy.scope():
    mirrored = build_retrieval_model(spec, "dnn", config)
    mirrored(training._example_batch(spec))
    mirrored.compile(optimizer=keras.optimizers.SGD(0.5))
single = build_retrieval_model(spec, "dnn", config)
single(training._example_batch(spec))
single.set_weights(mirrored.get_weights())
ds = data.make_dataset(data_dir, "train", 2 * per_replica, spec=spec, drop_remainder=True).take(1)
batch = next(iter(ds))
halves = [{k: v[:per_replica] for k, v in batch.items()}, {k: v[per_replica:] for k, v in batch.items()}]

# The loss: each replica's in-batch softmax over its own slice, averaged over replicas.
per_replica_loss = strategy.run(lambda b: mirrored.compute_task_loss(b, training=False),
                                args=(next(iter(strategy.experimental_distribute_dataset(ds))),))
distributed = float(strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica_loss, axis=None))
expected = float(np.mean([single.compute_task_loss(h, training=False) for h in halves]))

# One SGD step on 2 replicas = one step on one device of the mean of the two slices' losses.
mirrored.fit(ds, epochs=1, verbose=0)
with tf.GradientTape() as tape:
    loss = tf.add_n([single.compute_task_loss(h, training=True) for h in halves]) / 2
grads = tape.gradient(loss, single.trainable_variables)
keras.optimizers.SGD(0.5).apply_gradients(zip(grads, single.trainable_variables))
gap = max(float(np.max(np.abs(a.numpy() - b.numpy())))
          for a, b in zip(mirrored.trainable_variables, single.trainable_variables))
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "distributed": distributed, "expected": expected,
                  "weight_gap": gap}))
"""


def test_two_replicas_match_one_device_on_the_same_global_batch(synthetic_data):
    """Under MirroredStrategy each replica's negatives are its own slice; the loss and the step equal a
    single device's mean over the slices (see mdr_keras/models/retrieval.py)."""
    data_dir, _ = synthetic_data
    done = subprocess.run([sys.executable, "-c", _SAME_LOSS, data_dir], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["distributed"] == pytest.approx(result["expected"], rel=1e-5)
    assert result["weight_gap"] < 1e-5


_ONE_ROW_LAST_BATCH = r"""
import json, math, sys
import mdr_contract  # Keras 2 before TensorFlow
from mdr_contract import feature_spec as fs
from mdr_keras import data, training

data_dir = sys.argv[1]
strategy = training.make_strategy(cpu_replicas=2)
spec = fs.FeatureSpec.load(data_dir)
out = {}
for model, task in (("adi", "retrieval"), ("ranker", "ranking")):
    config = training.TrainConfig(model=model, task=task, batch_size=8)
    compiled = training.build_compiled_model(spec, config, strategy, 10)
    # 17 positive rows in global batches of 16: the last batch has one row, so one replica gets none.
    rows = data.make_dataset(data_dir, "train", 1, spec=spec).filter(lambda b: b[fs.LABEL][0] == 1).take(17)
    result = compiled.evaluate(rows.unbatch().batch(16), verbose=0, return_dict=True)
    out[model] = result["loss"]
print(json.dumps(out))
"""


def test_a_replica_without_rows_neither_crashes_nor_makes_the_loss_nan(synthetic_data):
    # The last partial batch of a validation split is cut per replica: with one row left, the other replica
    # gets none (the retrieval task used to kill the process with SIGSEGV there, the ranker's loss was NaN).
    data_dir, _ = synthetic_data
    done = subprocess.run([sys.executable, "-c", _ONE_ROW_LAST_BATCH, data_dir], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(losses) == {"adi", "ranker"}
    assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses


def test_the_first_epochs_progress_bar_knows_its_steps(synthetic_data, tmp_path, capsys):
    # Keras alone shows "1/Unknown" through the first epoch of a TFRecord dataset; the steps come from metadata.json
    data_dir, _ = synthetic_data
    config = training.TrainConfig(model="dnn", task="ranking", epochs=1, batch_size=512, patience=0,
                                  model_config={"mlp_units": [8]})
    training.train(data_dir, str(tmp_path / "dnn"), config, verbose=1)
    out = capsys.readouterr().out
    assert "Unknown" not in out
    bars = re.findall(r"(\d+)/(\d+) \[", out)
    assert len(bars) >= 2 and len({total for _, total in bars}) == 1, bars  # one target from the first step on
    assert bars[-1][0] == bars[-1][1]  # and it is the number of steps run
