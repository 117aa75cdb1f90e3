"""Training and evaluation of every mdr model: `mdr train` and `mdr evaluate`.

A model folder (`--model-dir`) holds everything needed to rebuild, evaluate and export a model
without the data folder (the names are `mdr_contract.artifacts`'):

    train_config.json   the TrainConfig (model name, its model config, training knobs)
    feature_spec.json   the spec of the data it was trained on, with vocab/ (copied)
    weights/            the final weights (TF checkpoint; the best epoch when early stopping)
    backup/             BackupAndRestore state while training runs (removed when it ends)
    logs/               TensorBoard logs (train and validation)
    history.csv         per-epoch metrics
    metrics.json        written by `mdr evaluate`

Distribution. `make_strategy` returns `MultiWorkerMirroredStrategy` when `TF_CONFIG` names a
cluster, else `MirroredStrategy` over all visible GPUs, or over `cpu_replicas` logical CPU devices
(tests, and machines without GPUs), or the one CPU. `batch_size` is per replica: the global batch is
`batch_size * replicas`, so each replica sees the batch (and, for retrieval, the number of in-batch
negatives) of a single-device run and the learning rate needs no rescaling.

With several workers, every worker reads the whole input and keeps its part of each global batch
(tf.data's DATA sharding), so N workers take the very steps one process with N replicas would take,
and the chief alone writes the model folder: the others save into a temporary folder they delete.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mdr_contract import artifacts
from mdr_contract import feature_spec as fs
from mdr_keras import data, evaluation
from mdr_keras.layers.plumbing import check_real
from mdr_keras.models import retrieval

RANKER_TASK = "ranking"
RETRIEVAL_TASK = "retrieval"
RETRIEVAL_MONITOR_K = 50  # early stopping of retrieval watches the validation Recall@50
# `epochs` by default: the ranking models' cosine falls to 0 over 5 (their best epoch on MovieLens-1M is
# the 3rd); retrieval runs until early stopping ends it, 20 at most (see TrainConfig.epochs).
DEFAULT_EPOCHS = {RANKER_TASK: 5, RETRIEVAL_TASK: 20}
LR_SCHEDULES = ("auto", "constant", "cosine")


@dataclasses.dataclass
class TrainConfig:
    """What `mdr train` does. A JSON file of these keys (`--config`) or flags set it.

    Args:
        model: a retrieval model (`retrieval.RETRIEVAL_MODELS`) or a ranking model
            (`ranker.RANKER_MODELS`).
        epochs: maximum number of epochs. Default (None): 5 for ranking models, 20 for retrieval models
            (`DEFAULT_EPOCHS`), resolved by the task. Retrieval stops early when its validation recall
            stops rising, which on MovieLens-1M takes long: at a constant 1e-3 ADI's validation Recall@50
            was 0.3552 after 5 epochs (the cap before) and still rising after 20 (0.3947), its test
            Recall@50 / @100 0.4002 / 0.5521 after 20 epochs against 0.3553 / 0.5054 after 5 (seed 0;
            0.3567 / 0.5070 over 3 seeds); STAR and dnn-domain stopped after 15 and 14 (docs/results.md,
            "By `mdr train`'s own recipe"). Retrieval without early stopping (`patience=0`, or no
            validation split) runs all 20, and a cosine `lr_schedule` falls over all 20.
        batch_size: rows per replica per step.
        learning_rate: Adam learning rate (the start of the schedule).
        lr_schedule: `"constant"`, `"cosine"` (the learning rate falls along half a cosine from
            `learning_rate` to 0 over `epochs` epochs; Loshchilov & Hutter, SGDR, 2017) or `"auto"`
            (default): cosine for ranking models, constant for retrieval. Measured on MovieLens-1M
            (Scenario-Wise-Rec protocol, the ranker, 5 epochs, seed 0): test AUC 0.8148 with the cosine,
            0.8104 at a constant rate (best epoch 3 of 5 restored: the id embeddings overfit);
            docs/results.md. Retrieval stays constant: on the planted id-only world the cosine gave
            ADI 0.7219 +- 0.0088 Recall@50 against 0.7259 +- 0.0063 at a constant rate (3 seeds;
            benchmarks/results/planted-id-only-recipe.md).
        weight_decay: decoupled weight decay (AdamW, Loshchilov & Hutter 2019: every step each
            trainable variable shrinks by `learning_rate x weight_decay` of itself, outside Adam's
            normalisation; the optimizer D3 trains with); 0 (default) = Adam.
        seed: seed of weights, shuffling and sampling.
        patience: early stopping: epochs without improvement of the validation metric (the full-corpus
            `val_recall@50` for retrieval, `val_auc` for ranking) before stopping, restoring the best
            weights; 0 = off.
        steps_per_epoch: cap on steps per epoch (default: one pass over the training split).
        validation_split: what early stopping watches: `"auto"` (default: the eval split when the data
            has a test split to report on, else `"holdout"`), `"holdout"` (one train row in 20, left out
            of training: `data.HOLDOUT`; the latest by time when the data was split by time), a split name,
            or `""` (none). The split that is reported
            (`report_split`) is never the one watched under `"auto"`.
        model_config: fields of `RetrievalConfig` / `RankerConfig` to override.
        task: 'retrieval' or 'ranking'; needed only for the names both tasks have (dnn,
            shared-bottom, mmoe, ple, star), inferred otherwise.
        mixed_precision: compute in float16 with float32 variables (`mixed_float16`), for GPUs;
            the saved weights are float32 either way, so export and evaluation do not change.
    """

    model: str = "adi"
    epochs: Optional[int] = None
    batch_size: int = 512
    learning_rate: float = 1e-3
    lr_schedule: str = "auto"
    weight_decay: float = 0.0
    seed: int = 0
    patience: int = 2
    steps_per_epoch: Optional[int] = None
    validation_split: str = "auto"
    model_config: Dict[str, Any] = dataclasses.field(default_factory=dict)
    mixed_precision: bool = False
    task: str = ""

    def __post_init__(self):
        self.task = task_of(self.model, self.task)  # unknown or ambiguous names fail here, before any work
        if self.epochs is None:
            self.epochs = DEFAULT_EPOCHS[self.task]
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={getattr(self, name)!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0. Received: learning_rate={self.learning_rate!r}")
        check_real("weight_decay", self.weight_decay, 0, float("inf"), high_open=True)  # inf would make NaN weights
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"`lr_schedule` must be one of {LR_SCHEDULES}. Received: lr_schedule={self.lr_schedule!r}")
        if self.patience < 0:
            raise ValueError(f"`patience` must be >= 0. Received: patience={self.patience!r}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"`steps_per_epoch` must be >= 1. Received: steps_per_epoch={self.steps_per_epoch!r}")
        self.model_settings()  # unknown or bad model_config keys fail here, before any work too

    def schedule(self) -> str:
        """The learning-rate schedule this run uses: `lr_schedule`, with "auto" resolved by the task."""
        if self.lr_schedule != "auto":
            return self.lr_schedule
        return "cosine" if self.task == RANKER_TASK else "constant"

    def model_settings(self):
        """The `RetrievalConfig` / `RankerConfig` of this run."""
        cls = retrieval.RetrievalConfig if self.task == RETRIEVAL_TASK else _ranker().RankerConfig
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(self.model_config) - known)
        if unknown:
            raise ValueError(f"Unknown model_config keys for {self.model!r}: {unknown}. Known: {sorted(known)}")
        return cls(**self.model_config)

    @classmethod
    def from_file(cls, path: str, **overrides) -> "TrainConfig":
        with tf.io.gfile.GFile(path) as f:
            values = json.load(f)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown keys in {path}: {unknown}. Known: {sorted(known)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _ranker():
    from mdr_keras.models import ranker

    return ranker


def task_of(model: str, task: str = "") -> str:
    """'retrieval' or 'ranking' for a model name (and the task, where both tasks have the name).

    ValueError naming the choices for an unknown model, and for a name both tasks have without `task`.
    """
    tasks = [t for t, names in ((RETRIEVAL_TASK, retrieval.RETRIEVAL_MODELS), (RANKER_TASK, _ranker().RANKER_MODELS))
             if model in names]
    if task and task not in (RETRIEVAL_TASK, RANKER_TASK):
        raise ValueError(f"`task` must be {RETRIEVAL_TASK!r} or {RANKER_TASK!r}. Received: task={task!r}")
    if not tasks or (task and task not in tasks):
        raise ValueError(f"Unknown {task + ' ' if task else ''}model. Received: model={model!r}; expected a retrieval model "
                         f"{retrieval.RETRIEVAL_MODELS} or a ranking model {_ranker().RANKER_MODELS}")
    if len(tasks) > 1 and not task:
        raise ValueError(f"Model {model!r} exists for retrieval and for ranking: say which with "
                         f"task='retrieval' or task='ranking' (`mdr train --task`). Received: task={task!r}")
    return task or tasks[0]


def make_strategy(cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """The distribution strategy of this process (see the module docstring).

    Args:
        cpu_replicas: without GPUs, split the CPU into this many logical devices and mirror over
            them (must run before TensorFlow initialises its devices). 0 or 1: one CPU replica.
    """
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    if tf_config.get("cluster"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if not tf.config.list_physical_devices("GPU") and cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        if len(tf.config.get_logical_device_configuration(cpu) or []) != cpu_replicas:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)])
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    return tf.distribute.MirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the model folder: always, but in a cluster only the chief (or, in a
    cluster without one, worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return True
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def _shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    # DATA, not AUTO: AUTO shards by file, so each worker would read other rows than one process would at the
    # same step (and fail with fewer files than workers); DATA keeps every global batch as a single process
    # makes it, at the cost of each worker reading the whole input.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def build_model(spec: fs.FeatureSpec, config: TrainConfig) -> keras.Model:
    if config.task == RETRIEVAL_TASK:
        return retrieval.build_retrieval_model(spec, config.model, config.model_settings())
    return _ranker().build_ranker_model(spec, config.model, config.model_settings())


def _example_batch(spec: fs.FeatureSpec) -> Dict[str, tf.Tensor]:
    """A one-row batch of padding values of every feature: calling a model on it creates its weights."""
    out = {}
    for name, f in spec.tf_parse_spec().items():
        out[name] = tf.constant(np.reshape(np.asarray(f.default_value, dtype=f.dtype.as_numpy_dtype
                                                      if f.dtype != tf.string else object), [1] + f.shape))
    out[fs.DOMAIN] = tf.constant([spec.domains[0]])  # the one feature without a padding value
    return out


def validation_of(data_dir: str, validation_split: str) -> str:
    """The split that early stopping watches for `TrainConfig.validation_split` (see there)."""
    if validation_split != "auto":
        return validation_split
    return "eval" if split_rows(data_dir, "test") else data.HOLDOUT


def report_split(data_dir: str) -> str:
    """The split whose metrics are reported: test when the data has one, else eval (then training
    validates on a holdout of the train split under `validation_split="auto"`)."""
    return "test" if split_rows(data_dir, "test") else "eval"


def split_rows(data_dir: str, split: str) -> int:
    """Rows the preprocessing job wrote to `split` (from its `artifacts.METADATA`)."""
    with tf.io.gfile.GFile(os.path.join(data_dir, artifacts.METADATA)) as f:
        return int(json.load(f)["rows_written_per_split"].get(split, 0))


def _copy_spec(spec: fs.FeatureSpec, model_dir: str) -> None:
    spec.save(model_dir)
    for f in spec.features:
        if f.vocab_file:
            dest = os.path.join(model_dir, f.vocab_file)
            tf.io.gfile.makedirs(os.path.dirname(dest))
            tf.io.gfile.copy(os.path.join(spec.path or "", f.vocab_file), dest, overwrite=True)


class ValidationRecall(keras.callbacks.Callback):
    """Adds `val_recall@K` to the epoch's logs: the overall full-corpus Recall@K of the retrieval model on
    the validation rows (`evaluation.evaluate_recall`), what early stopping of retrieval watches: the
    sampled-softmax loss keeps falling on popular items after the recall of the rest has peaked.

    Args:
        data_dir: output folder of `mdr preprocess`.
        validation: a split name or `data.HOLDOUT`.
        k: the cut-off.
    """

    def __init__(self, data_dir: str, validation: str, k: int = 50):
        super().__init__()
        self.data_dir, self.validation, self.k = data_dir, validation, k

    def on_epoch_end(self, epoch, logs=None):
        split, holdout = data.validation_rows(self.validation)
        metrics = evaluation.evaluate_recall(self.model, self.data_dir, split, ks=(self.k,), sampled_negatives=1,
                                             holdout=holdout)
        if logs is not None:
            logs[f"val_recall@{self.k}"] = metrics["overall"][f"recall@{self.k}"]


class _EpochTimer(keras.callbacks.Callback):
    """Adds the epoch's wall time to the logs (history.csv, TensorBoard)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


class _EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' early stopping, saying once in one line (not a TensorFlow warning per epoch) when the
    validation split gave no metric: a holdout of a tiny train split can hold no row."""

    def __init__(self, validation: str, **kwargs):
        super().__init__(**kwargs)
        self.validation, self._said = validation, False

    def get_monitor_value(self, logs):
        value = (logs or {}).get(self.monitor)
        if value is None and not self._said:
            self._said = True
            print(f"early stopping off: the validation split ({self.validation}) gave no {self.monitor} "
                  "(no rows, or one class only); every epoch runs", flush=True)
        return value


class _StepsProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, with the epoch's steps known in the first epoch too.

    A TFRecord dataset has no known length, so Keras shows `1/Unknown` until the first epoch ends.
    The steps come from the row counts of `metadata.json` instead: exact, but an estimate with the holdout
    of a folder written before the job wrote it apart (1 in `HOLDOUT_BUCKETS` rows). Past an estimate that fell short the
    bar counts on without a target; at each epoch's end the target becomes the steps really run.
    """

    def __init__(self, steps: int):
        super().__init__(count_mode="steps")
        self.known_steps = steps

    def set_params(self, params):
        super().set_params(params)
        if self.target is None:
            self.target = self.known_steps

    def on_epoch_begin(self, epoch, logs=None):
        self.target = self.known_steps
        super().on_epoch_begin(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if self.target is not None and batch + 1 > self.target:
            self.target = self.progbar.target = None
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.seen:
            self.known_steps = self.target = self.progbar.target = self.seen
        super().on_epoch_end(epoch, logs)


def train(data_dir: str, model_dir: str, config: TrainConfig, strategy: Optional[tf.distribute.Strategy] = None,
          verbose: int = 2, callbacks: Sequence[keras.callbacks.Callback] = ()) -> Dict[str, Any]:
    """Trains `config.model` on `data_dir`'s train split; writes the model folder; returns a summary.

    Restartable: killed and rerun with the same arguments, it resumes from the last completed epoch
    (BackupAndRestore under `model_dir/backup`) instead of starting over.

    Args:
        data_dir: output folder of `mdr preprocess`.
        model_dir: the model folder (see the module docstring).
        config: what to train.
        strategy: default `make_strategy()`.
        verbose: Keras fit verbosity.
        callbacks: more Keras callbacks, after the built-in ones.
    """
    spec = fs.FeatureSpec.load(data_dir)
    strategy = strategy or make_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    keras.utils.set_random_seed(config.seed)
    chief = is_chief(strategy)
    if chief:
        tf.io.gfile.makedirs(model_dir)
        _copy_spec(spec, model_dir)
        with tf.io.gfile.GFile(os.path.join(model_dir, artifacts.TRAIN_CONFIG), "w") as f:
            # Every field of the model config, set or default: a later change of a default must not
            # rebuild this model otherwise when it is loaded.
            saved = {**config.to_json(), "model_config": dataclasses.asdict(config.model_settings())}
            f.write(json.dumps(saved, indent=2) + "\n")

    validation = validation_of(data_dir, config.validation_split)
    holdout = validation == data.HOLDOUT
    holdout_start = data.holdout_start(data_dir) if holdout else None  # the latest train rows (time split) or None
    train_ds = data.make_dataset(data_dir, "train", global_batch, spec=spec, shuffle=True, seed=config.seed,
                                 drop_remainder=replicas > 1, holdout="exclude" if holdout else None)
    eval_ds = None
    if validation:
        split, rows = data.validation_rows(validation)
        eval_ds = data.make_dataset(data_dir, split, global_batch, spec=spec, holdout=rows)
    if verbose and validation:
        which = "the latest" if holdout_start is not None else "by hash"
        print(f"validation: {validation}" + (f" (1 in {data.HOLDOUT_BUCKETS} train rows, {which}, left out of "
                                             "training: the data has no test split, so eval stays unseen)"
                                             if holdout else ""), flush=True)
    steps = config.steps_per_epoch
    if steps is None:
        rows = split_rows(data_dir, "train")
        if holdout:  # the job's count of the rows it wrote apart; an estimate for a folder from before
            written = data.holdout_of(data_dir)
            rows = rows - written["rows"] if written else rows * (data.HOLDOUT_BUCKETS - 1) / data.HOLDOUT_BUCKETS
        total_steps = max(1, int(rows) // global_batch) * config.epochs
        if verbose == 1:  # the progress bar's steps: a last partial batch is a step unless dropped
            batches = int(rows) // global_batch if replicas > 1 else -(-int(rows) // global_batch)
            callbacks = [_StepsProgbar(max(1, batches))] + list(callbacks)
    else:
        train_ds = train_ds.repeat()
        total_steps = steps * config.epochs
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        train_ds = _shard_by_data(train_ds)
        eval_ds = _shard_by_data(eval_ds) if eval_ds is not None else None

    policy = keras.mixed_precision.global_policy()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _fit(model_dir, spec, config, strategy, train_ds, eval_ds, steps, total_steps, verbose, callbacks,
                    validation, data_dir, holdout_start)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def build_compiled_model(spec: fs.FeatureSpec, config: TrainConfig, strategy, total_steps: int) -> keras.Model:
    """The model of `config` under `strategy`, its weights made and compiled, as `train` runs it.

    `total_steps` is the length of training, which schedules inside `train_step` read (D3's DBO start).
    """
    with strategy.scope():
        model = build_model(spec, config)
        model(_example_batch(spec))  # create the weights now, so the parameter count is known
        if hasattr(model, "total_steps"):
            model.total_steps.assign(total_steps)
        learning_rate = config.learning_rate
        if config.schedule() == "cosine":
            learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total_steps)
        if config.weight_decay:
            optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay)
        else:
            optimizer = keras.optimizers.Adam(learning_rate)
        if config.mixed_precision:
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer)
    return model


def trainable_parameters(model: keras.Model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def _fit(model_dir, spec, config, strategy, train_ds, eval_ds, steps, total_steps, verbose, extra_callbacks,
         validation="", data_dir="", holdout_start=None):
    replicas = strategy.num_replicas_in_sync
    global_batch = config.batch_size * replicas
    model = build_compiled_model(spec, config, strategy, total_steps)

    monitor = f"val_recall@{RETRIEVAL_MONITOR_K}" if config.task == RETRIEVAL_TASK else "val_auc"
    chief = is_chief(strategy)
    # BackupAndRestore and TensorBoard give other workers temporary folders themselves; CSVLogger would not.
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(model_dir, artifacts.BACKUP_DIR)),
        keras.callbacks.TensorBoard(os.path.join(model_dir, artifacts.LOGS_DIR), update_freq="epoch"),
        _EpochTimer(),
    ]
    if chief:
        callbacks.append(keras.callbacks.CSVLogger(os.path.join(model_dir, artifacts.HISTORY), append=True))
    if config.task == RETRIEVAL_TASK:
        callbacks.insert(0, retrieval.SelfTrainingSchedule())
        if eval_ds is not None:  # before the logger and early stopping, which read what it adds
            callbacks.insert(1, ValidationRecall(data_dir, validation, RETRIEVAL_MONITOR_K))
    if config.patience and eval_ds is not None:
        callbacks.append(_EarlyStopping(validation, monitor=monitor, mode="max", patience=config.patience,
                                        restore_best_weights=True))
    callbacks += list(extra_callbacks)
    params = trainable_parameters(model)
    if verbose:
        print(f"training {config.model} ({params:,} trainable parameters) on {replicas} replica(s) of "
              f"{strategy.__class__.__name__}, global batch {global_batch}, up to {config.epochs} epochs, "
              f"learning rate {config.learning_rate:g} ({config.schedule()})",
              flush=True)
    start = time.perf_counter()
    history = model.fit(train_ds, validation_data=eval_ds, epochs=config.epochs, steps_per_epoch=steps,
                        callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - start
    # Finished: a rerun must train anew, not resume (BackupAndRestore leaves the folder behind on
    # multi-replica strategies).
    summary = {"model": config.model, "task": config.task, "parameters": params, "replicas": replicas,
               "global_batch": global_batch, "lr_schedule": config.schedule(), "validation": validation,
               # the holdout's first timestamp when it is the latest train rows (a time split), else None
               "holdout_start": holdout_start,
               "epochs_run": len(history.epoch),
               "train_seconds": round(seconds, 2), "wrote_model_dir": chief,
               "history": {k: [float(x) for x in v] for k, v in history.history.items()}}
    if not chief:
        # Every worker saves (a save may need collective ops), the others into a folder they then delete.
        scratch = tempfile.mkdtemp(prefix="mdr-worker-")
        try:
            model.save_weights(os.path.join(scratch, artifacts.WEIGHTS))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return summary
    backup = os.path.join(model_dir, artifacts.BACKUP_DIR)
    if tf.io.gfile.exists(backup):
        tf.io.gfile.rmtree(backup)
    model.save_weights(os.path.join(model_dir, artifacts.WEIGHTS))
    with tf.io.gfile.GFile(os.path.join(model_dir, artifacts.TRAIN_SUMMARY), "w") as f:
        f.write(json.dumps(summary, indent=2) + "\n")
    return summary


# Model-config defaults that changed, with the value they had before. A train_config.json written before
# the model config was saved whole (2026-12-04) names only the fields that were set, and one written before a
# field existed lacks it; those take the value of the day it was written, or the model would be rebuilt
# otherwise than it was trained (and `expect_partial` would drop the weights that no longer fit, without a
# word). `fused_dropout` (2026-12-04 night) holds no weights: filled in so that the config read back says
# what the model was trained with.
FORMER_DEFAULTS = {RETRIEVAL_TASK: {"dsbn": True, "fused_dropout": 0.0}}


def saved_config(values: Dict[str, Any]) -> "TrainConfig":
    """The `TrainConfig` of a model folder's train_config.json `values`, former defaults filled in."""
    config = TrainConfig(**values)
    former = {k: v for k, v in FORMER_DEFAULTS.get(config.task, {}).items() if k not in config.model_config}
    return dataclasses.replace(config, model_config={**former, **config.model_config}) if former else config


def load_model(model_dir: str):
    """(model, spec, config) of a trained model folder, with its final weights, in a fresh process."""
    path = os.path.join(model_dir, artifacts.TRAIN_CONFIG)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{model_dir} holds no trained model (no {artifacts.TRAIN_CONFIG}); "
                                "run `mdr train` first")
    with tf.io.gfile.GFile(path) as f:
        config = saved_config(json.load(f))
    if not tf.io.gfile.exists(os.path.join(model_dir, artifacts.WEIGHTS + ".index")):
        raise FileNotFoundError(f"{model_dir} holds no final weights; its training did not finish")
    spec = fs.FeatureSpec.load(model_dir)
    model = build_model(spec, config)
    model(_example_batch(spec))
    model.load_weights(os.path.join(model_dir, artifacts.WEIGHTS)).expect_partial()
    return model, spec, config


def evaluate(model_dir: str, data_dir: str, split: str = "eval", ks=(10, 50), sampled_negatives: int = 100,
             sampling: str = "uniform", write: bool = True) -> Dict[str, Any]:
    """Per-domain and overall metrics of a trained model on `split`; writes `model_dir/metrics.json`.

    Retrieval: Recall@K over each domain's full corpus and over sampled candidates
    (`evaluation.evaluate_recall`). Ranking: AUC and logloss (`evaluation.evaluate_ranker`).
    """
    evaluation.check_sampling(sampled_negatives, sampling)  # before any model loads
    model, spec, config = load_model(model_dir)
    if config.task == RETRIEVAL_TASK:
        metrics = evaluation.evaluate_recall(model, data_dir, split, ks=ks, sampled_negatives=sampled_negatives,
                                             sampling=sampling, seed=config.seed)
    else:
        metrics = evaluation.evaluate_ranker(model, data_dir, split)
    metrics = {"model": config.model, "task": config.task, "split": split, "data": data_dir, **metrics}
    if write:
        with tf.io.gfile.GFile(os.path.join(model_dir, artifacts.METRICS), "w") as f:
            f.write(json.dumps(metrics, indent=2) + "\n")
    return metrics


def format_metrics(metrics: Dict[str, Any], baseline: Optional[Dict[str, Any]] = None) -> str:
    """A text table: one row per domain and one overall, one column per metric.

    With `baseline` (another model's metrics.json of the same task), ranking tables add the ADS
    "AUC Imp." column (ADS eq. 14) against it.
    """
    rows = dict(metrics["per_domain"])
    rows["overall"] = metrics["overall"]
    columns = [k for k in next(iter(rows.values())) if k not in ("queries", "rows", "corpus")]
    count = "queries" if metrics["task"] == RETRIEVAL_TASK else "rows"
    header = ["domain", count] + columns
    lines = []
    for name, r in rows.items():
        line = [name, f"{r.get(count, 0):,}"] + [f"{r[c]:.4f}" for c in columns]
        if baseline is not None and "auc" in r and name in ({**baseline["per_domain"], "overall": 0}):
            base = baseline["overall"] if name == "overall" else baseline["per_domain"][name]
            line.append(f"{evaluation.auc_improvement(r['auc'], base['auc']):+.2%}")
        lines.append(line)
    if baseline is not None and metrics["task"] == RANKER_TASK:
        header.append(f"AUC Imp. vs {baseline['model']}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    title = f"{metrics['model']} on {metrics['split']}"
    return "\n".join([title, fmt(header)] + [fmt(line) for line in lines])
