"""The names of every file and folder the stages hand each other, and the served signatures.

One module, imported by every stage, so a name is written once: the preprocessing output (written by
`pipeline/`, read by `mdr_keras/` and `serving/`), the model folder (written by `mdr_keras.training`,
read by `serving.export` and the report), and the export (written by `serving.export`, read by the
model server, the client and the report).

Preprocessing output (`mdr preprocess --output DIR`):

    DIR/train/ eval/ test/   part-*.tfrecord.gz   one tf.train.Example per interaction
    DIR/train/               holdout-*.tfrecord.gz  train records held out for validation (1 in 20)
    DIR/items/               part-*.tfrecord.gz   the item corpus: one record per (item, domain)
    DIR/store/               part-*.tfrecord.gz   the feature store: one record per (user, domain)
    DIR/rejected/            rejected-*.jsonl     rows that could not be used, with the reason
    DIR/vocab/<feature>.txt                       vocabularies
    DIR/feature_spec.json                         the concrete feature spec
    DIR/metadata.json                             counts, the job's options, the domain priors
    DIR/_SUCCESS                                  written last; readers refuse a folder without it

Model folder (`mdr train --model-dir DIR`): `train_config.json`, `feature_spec.json` with `vocab/`,
`weights/`, `backup/` (while training runs), `logs/`, `history.csv`, `train_summary.json`,
`metrics.json`.

Export (`mdr export --export-dir DIR`): `DIR/<model>/<version>/` SavedModels, `models.config`,
`models.docker.config`, `batching.config`, `export_report_v<version>.json`.
"""
from __future__ import annotations

import os
import re
from typing import Optional

# ------------------------------------------------------------------ preprocessing output
SUCCESS = "_SUCCESS"
METADATA = "metadata.json"
FEATURE_SPEC = "feature_spec.json"
VOCAB_DIR = "vocab"
SPLITS = ("train", "eval", "test")  # interaction splits, in the order the random split's ratios are given
ITEMS = "items"                      # the item corpus
STORE = "store"                      # the feature store: each user's latest features per domain
REJECTED = "rejected"
REJECTED_PREFIX = "rejected"
REJECTED_SUFFIX = ".jsonl"
RECORD_PREFIX = "part"
RECORD_SUFFIX = ".tfrecord.gz"
# One train record in HOLDOUT_BUCKETS is written under HOLDOUT_PREFIX beside the rest of train: the rows a
# trainer validates on when the data has no split left unseen for reporting (the latest by time when the
# data was split by time, else by hash; `metadata.json`'s "holdout"). Apart, so a trainer reads either part
# without scanning the other; every train shard matches `record_pattern(.., "train")`.
HOLDOUT_PREFIX = "holdout"
HOLDOUT_BUCKETS = 20


def vocab_file(feature: str) -> str:
    """A feature's vocabulary file, relative to the folder of its spec."""
    return f"{VOCAB_DIR}/{feature}.txt"


def record_pattern(data_dir: str, folder: str, prefix: str = "") -> str:
    """The glob of the TFRecord shards of `folder` (a split, `ITEMS` or `STORE`) of `data_dir`; with
    `prefix` (`RECORD_PREFIX` or `HOLDOUT_PREFIX`) only the shards written under it."""
    return os.path.join(data_dir, folder, prefix + "*" + RECORD_SUFFIX)


def record_prefix(data_dir: str, folder: str, prefix: str = RECORD_PREFIX) -> str:
    """The shard-name prefix the job writes `folder`'s TFRecords under."""
    return os.path.join(data_dir, folder, prefix)


# ------------------------------------------------------------------ model folder
TRAIN_CONFIG = "train_config.json"
METRICS = "metrics.json"
WEIGHTS_DIR = "weights"
WEIGHTS = os.path.join(WEIGHTS_DIR, "model")  # checkpoint prefix
BACKUP_DIR = "backup"
LOGS_DIR = "logs"
HISTORY = "history.csv"
TRAIN_SUMMARY = "train_summary.json"  # what `mdr train` measured: epochs, seconds, parameters, replicas
MODEL_INTERNALS = (WEIGHTS_DIR, LOGS_DIR, VOCAB_DIR, BACKUP_DIR)  # sub-folders of a model folder

# ------------------------------------------------------------------ export
USER_TOWER = "user_tower"
ITEM_TOWER = "item_tower"
RANKER = "ranker"
RETRIEVAL = "retrieval"
RETRIEVAL_SCANN = "retrieval_scann"
RECOMMENDER = "recommender"  # retrieval + ranking in one graph (serving.recommender)
MODEL_NAMES = (USER_TOWER, ITEM_TOWER, RANKER, RETRIEVAL, RETRIEVAL_SCANN, RECOMMENDER)
RETRIEVAL_MODEL_NAMES = (USER_TOWER, ITEM_TOWER, RETRIEVAL, RETRIEVAL_SCANN)

DEFAULT_SIGNATURE = "serving_default"
EXAMPLES_SIGNATURE = "examples"
EXAMPLES_INPUT = "examples"
# The recommender's second stage alone: the ranker's probabilities of given items for one user row
# (the user's features sent once, the items' features looked up in the graph).
RANK_SIGNATURE = "rank"
RANK_ITEMS_INPUT = "item_ids"

MODELS_CONFIG = "models.config"
DOCKER_MODELS_CONFIG = "models.docker.config"
BATCHING_CONFIG = "batching.config"
ASSETS_EXTRA = "assets.extra"
SERVING_CHECKS = os.path.join(ASSETS_EXTRA, "serving_checks.json")
SAVED_MODEL_PB = "saved_model.pb"        # TensorFlow's own names inside a version folder
SAVED_MODEL_PBTXT = "saved_model.pbtxt"
EXPORT_TMP_PREFIX = ".tmp-"              # a version being written; the server never loads it
_EXPORT_REPORT = re.compile(r"export_report_v(\d+)\.json")
EXPORT_REPORT_GLOB = "export_report_v*.json"


def export_report(version: int) -> str:
    """The file name of the report of export `version`."""
    return f"export_report_v{version}.json"


def export_report_version(filename: str) -> Optional[int]:
    """The version of an export report's file name, None for any other name."""
    match = _EXPORT_REPORT.fullmatch(os.path.basename(filename))
    return int(match.group(1)) if match else None
