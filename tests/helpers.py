"""Helpers shared by the tests: running the job, reading its TFRecords back, the tiny sample."""
import glob
import json
import os

from pipeline import synthetic

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
SAMPLE_CSV = os.path.join(TESTDATA, "events.csv")
SAMPLE_MAPPING = os.path.join(TESTDATA, "mapping.json")
SHARED_DATASETS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets"))
SMALL_SYNTHETIC = synthetic.SyntheticConfig(num_users=300, num_items=200, mean_events=20, seed=0)
# One in-process worker: a tiny job spends most of its time starting worker processes otherwise.
FAST_BEAM_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def run_job(source, input, output, beam_args=None, progress_callback=None, progress_every=5.0, **config):
    """Runs the preprocessing job with `config` overrides; returns its metadata."""
    from pipeline import preprocess

    cfg = preprocess.PreprocessConfig(source=source, input=input, output=output, overwrite=True, **config)
    return preprocess.preprocess(cfg, FAST_BEAM_ARGS if beam_args is None else beam_args,
                                 progress_callback=progress_callback, progress_every=progress_every)


def read_records(data_dir, split, prefix=""):
    """Every record of a split (with `prefix`, of its shards under it), read back with tf.data and parsed
    with the job's feature spec."""
    import tensorflow as tf

    from mdr_contract.feature_spec import FeatureSpec

    spec = FeatureSpec.load(data_dir)
    files = sorted(glob.glob(os.path.join(data_dir, split, prefix + "*.tfrecord.gz")))
    parse = spec.tf_parse_spec() if split != "items" else spec.tf_parse_spec(
        [f.name for f in spec.by_role("item", "domain", "item_domain_stat")])
    out = []
    for serialized in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        parsed = tf.io.parse_single_example(serialized, parse)
        out.append({k: _py(v.numpy()) for k, v in parsed.items()})
    return out


def _py(v):
    if getattr(v, "ndim", 0):
        return [_py(x) for x in v]
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if hasattr(v, "item") else v


def read_rejected(data_dir):
    out = []
    for path in sorted(glob.glob(os.path.join(data_dir, "rejected", "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out


def shared_dataset(name):
    """Path of a real data set in ../shared/datasets, or None when absent (a fresh clone)."""
    path = os.path.join(SHARED_DATASETS, name)
    return path if os.path.exists(path) else None


# A user's own logs with ids only, read through the generic CSV adapter.
ID_ONLY_MAPPING = json.dumps({"user": "user_id", "item": "item_id", "domain": "domain", "label": "label",
                              "timestamp": "timestamp"})


def planted_data(folder, sequence_length, id_only=False, **config):
    """A synthetic log with the planted structure `config` (`SyntheticConfig` fields) written to
    `folder/raw` and preprocessed into `folder/data`: (data_dir, metadata). With `id_only`, the job
    reads only the user, item, domain, label and timestamp columns (`ID_ONLY_MAPPING`)."""
    raw = os.path.join(folder, "raw")
    synthetic.generate(raw, synthetic.SyntheticConfig(**config))
    data_dir = os.path.join(folder, "data")
    if id_only:
        return data_dir, run_job("csv", os.path.join(raw, synthetic.EVENTS_FILENAME), data_dir,
                                 mapping=ID_ONLY_MAPPING, sequence_length=sequence_length)
    return data_dir, run_job("synthetic", raw, data_dir, sequence_length=sequence_length)


def train_and_score(data_dir, model_dir, domains, metric, task, model, seed, epochs, learning_rate, ks=(50,),
                    **model_config):
    """Trains `model` as `mdr train` does, evaluates it on the eval split; `metric` per domain, in `domains` order."""
    import numpy as np

    from mdr_keras import training

    config = training.TrainConfig(model=model, task=task, epochs=epochs, batch_size=256, learning_rate=learning_rate,
                                  seed=seed, patience=0, validation_split="", model_config=model_config)
    training.train(data_dir, model_dir, config, verbose=0)
    per_domain = training.evaluate(model_dir, data_dir, ks=ks, write=False)["per_domain"]
    return np.array([per_domain[d][metric] for d in domains])
