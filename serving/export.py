"""Export of trained models as SavedModels over raw features, in TF Serving's layout (`mdr export`).

`export_models` turns a retrieval model folder and a ranker model folder (`mdr train`'s output) into

    <export_dir>/
      models.config            ModelServerConfig, base paths relative to this folder (the embedded
                               `serving.server.ModelServer` resolves them against it)
      models.docker.config     the same with base paths /models/<name>: stock TF Serving in docker with
                               export_dir mounted at /models
      batching.config          BatchingParameters (`--batching_parameters_file`)
      export_report_v<N>.json  what export N wrote: models, signatures, corpus, index recall
      user_tower/<version>/    user features + domain + behaviour sequence -> {"embedding"}
      item_tower/<version>/    item features + domain + item domain statistics -> {"embedding"}
      ranker/<version>/        every feature the ranker reads -> {"probability"}
      retrieval/<version>/     user tower inputs -> {"item_ids", "scores"}: exact top-K of the row's
                               domain (stock ops: stock TF Serving loads it)
      retrieval_scann/<version>/  the same from the per-domain ScaNN index inside the graph (needs a
                               model server with the ScaNN ops, e.g. the embedded one)
      recommender/<version>/   retrieval inputs -> {"item_ids", "probabilities", "retrieval_scores"}:
                               exact top-K of the row's domain ranked by the ranker in one graph
                               (`serving.recommender`; stock ops); with both models only

Signatures. Every model has two, with named outputs:
- `serving_default`: one named input per feature the model reads (`model_inputs`), holding RAW
  values as the records do: string `[B]` for categorical features, string `[B, L]` for categorical
  lists, float32 `[B]` for numeric ones, int64 `[B]` for int ones, string `[B, T]` for behaviour
  sequences (T = `spec.sequence_length`, padded with ""). Vocabulary lookup, OOV handling and
  bucketization run inside the graph (the models' `FeatureEncoder`, built from the training spec),
  so clients cannot disagree with training on a mapping.
- `examples`: one input `examples`, string `[B]` serialized `tf.train.Example`s, parsed in the graph
  with the spec (`FeatureSpec.tf_parse_spec`, restricted to the model's inputs; absent features take
  the padding value).
Outputs: `embedding` float32 `[B, o]` (towers), `probability` float32 `[B]` (ranker), `item_ids`
string `[B, K]` and `scores` float32 `[B, K]` (retrieval: dot products of the user embedding with
the domain's item embeddings, best first; `""` / `-inf` pad a domain of fewer than K items).

Each version folder also holds `assets.extra/` (ignored by stock TF Serving):
`serving_checks.json` (the embedded server rejects an unknown domain in `domain` or in a
domain-valued sequence such as `hist_domain`, NaN or Inf in a float input, a sequence longer than T
and a batch over `max_batch_size` before the model runs; the graph itself fails an unknown domain
with INVALID_ARGUMENT), and `feature_spec.json` with its `vocab/` files, so a client can discover the
features from the export alone.

Item corpus and index. The item tower embeds every record of `data_dir`'s `items` split (one per
item and domain); each domain gets its own exact index and ScaNN index over its items' embeddings,
mapping to the raw `item_id` strings (`serving.index`). The ScaNN build measures recall@K against
exact search per domain on the user embeddings of `queries_split` rows of that domain (sampled
noisy corpus vectors where a domain has none) and the report carries it.

Versions. All models of one export get the same version number: by default one more than the largest
version present under any model of `export_dir` (1 for a new folder), so versions only increase and a
server with a `latest` policy picks the new export up. Each version is written to
`<model>/.tmp-<version>` (a name TF Serving and `ModelServer` ignore) and then renamed to
`<model>/<version>` with `os.rename`, atomic on one local filesystem: a polling server sees the whole
version or nothing. The config files are written after the versions, atomically too. `export_dir`
must be a local folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mdr_contract import artifacts
from mdr_contract import feature_spec as fs
from mdr_keras import data
from mdr_keras import training
from mdr_keras.models.retrieval import tower_features
from serving import config as cfg
from serving import index as ix
from serving import recommender as rec
from serving.feature_store import FeatureStore
from serving.signatures import input_specs, signatures

OUTPUTS = {artifacts.USER_TOWER: ("embedding",), artifacts.ITEM_TOWER: ("embedding",),
           artifacts.RANKER: ("probability",), artifacts.RETRIEVAL: ("item_ids", "scores"),
           artifacts.RETRIEVAL_SCANN: ("item_ids", "scores"), artifacts.RECOMMENDER: rec.OUTPUTS}
DOCKER_MODELS_ROOT = "/models"
MAX_BATCH_SIZE = 4096
_EMBED_BATCH = 4096  # item records per item-tower call while embedding the corpus
_MAX_QUERY_BATCHES = 64  # batches of `queries_split` read at most to collect recall queries


# ------------------------------------------------------------------ signatures
def model_inputs(spec: fs.FeatureSpec, model: str) -> List[str]:
    """The raw features the `serving_default` signature of exported `model` takes, in spec order.

    Exactly the features the Keras model reads: the user tower's (`tower_features`: user features,
    user domain statistics, the domain, the behaviour sequences) for `user_tower` and the retrieval
    models, the item tower's for `item_tower`, every `ranker_features` name for `ranker`, and for
    `recommender` the retrieval inputs with the ranker's user-side ones (`recommender_inputs`).
    """
    if model == artifacts.RECOMMENDER:
        return rec.recommender_inputs(spec, model_inputs(spec, artifacts.RETRIEVAL), model_inputs(spec, artifacts.RANKER))
    user, seq, item = tower_features(spec)
    if model in (artifacts.USER_TOWER, artifacts.RETRIEVAL, artifacts.RETRIEVAL_SCANN):
        names = set(user + seq)
    elif model == artifacts.ITEM_TOWER:
        names = set(item)
    elif model == artifacts.RANKER:
        from mdr_keras.models.ranker import ranker_features

        names = set(sum(ranker_features(spec).values(), []))
    else:
        raise ValueError(f"Unknown exported model. Received: model={model!r}; expected one of {artifacts.MODEL_NAMES}")
    return [f.name for f in spec.features if f.name in names]


class ServingModule(tf.Module):
    """One exported model: a Keras model (and, for retrieval, an index) behind the two signatures.

    The module tracks the Keras model (and index), so their variables and lookup tables are saved
    with it; the signatures are `tf.function`s with fixed input signatures calling `outputs`.

    Args:
        kind: one of `artifacts.MODEL_NAMES`.
        model: the Keras model (`RetrievalModel` for the towers and retrieval, `RankerModel`).
        spec: the feature spec the model was trained with.
        index: `serving.index.ExactDomainIndex` or `MultiDomainIndex`, for the retrieval kinds.
    """

    def __init__(self, kind: str, model, spec: fs.FeatureSpec, index=None):
        super().__init__(name=kind)
        if kind not in artifacts.MODEL_NAMES:
            raise ValueError(f"`kind` must be one of {artifacts.MODEL_NAMES}. Received: kind={kind!r}")
        if (index is None) == (kind in (artifacts.RETRIEVAL, artifacts.RETRIEVAL_SCANN)):
            raise ValueError(f"An index is needed by, and only by, {artifacts.RETRIEVAL} and "
                             f"{artifacts.RETRIEVAL_SCANN}. Received: kind={kind!r}, index={index!r}")
        self.kind = kind
        self.model = model
        if index is not None:
            self.index = index
        self.input_names = model_inputs(spec, kind)
        self._specs = input_specs(spec, self.input_names)
        self._parse_spec = spec.tf_parse_spec(self.input_names)

    def outputs(self, raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """The named outputs of raw feature tensors `raw` (inference mode)."""
        if self.kind == artifacts.USER_TOWER:
            return {"embedding": self.model.user_embedding(raw, training=False)}
        if self.kind == artifacts.ITEM_TOWER:
            return {"embedding": self.model.item_embedding(raw, training=False)}
        if self.kind == artifacts.RANKER:
            return {"probability": self.model(raw, training=False)["probability"]}
        user = self.model.user_embedding(raw, training=False)
        domain = self.model.encoder({fs.DOMAIN: raw[fs.DOMAIN]})[fs.DOMAIN]  # unknown domains fail here
        scores, ids = self.index(user, tf.reshape(domain, [-1]))
        return {"item_ids": ids, "scores": scores}

    def signatures(self) -> Dict[str, Callable]:
        """`{"serving_default": fn over the named raw inputs, "examples": fn over serialized Examples}`."""
        return signatures(self.outputs, self._specs, self._parse_spec)


def serving_checks(spec: fs.FeatureSpec, model: str, max_batch_size: int = MAX_BATCH_SIZE) -> cfg.ServingChecks:
    """The `serving_checks.json` of exported `model`: known domains (in `domain` and in every input whose
    vocabulary is the domain list, e.g. `hist_domain`, where "" pads), sequences of at most T, the
    batch, finite floats."""
    names = model_inputs(spec, model)
    domain_valued = [n for n in names if n == fs.DOMAIN or spec[n].vocab_from == fs.DOMAIN]
    return cfg.ServingChecks(
        allowed_values={n: list(spec.domains) + ([fs.PAD] if spec[n].is_list else []) for n in domain_valued},
        max_length={n: spec[n].length for n in names if spec[n].is_list},
        max_batch_size=max_batch_size)


# ------------------------------------------------------------------ item corpus and index
def item_corpus(model, spec: fs.FeatureSpec, data_dir: str, batch_size: int = _EMBED_BATCH
                ) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Per domain (spec order): the raw item ids `[n_d]` (bytes) and item-tower embeddings `[n_d, o]`.

    Every record of `data_dir`'s `items` split is embedded by the item tower in its own domain; an
    item listed twice in a domain keeps its first record.

    Raises:
        ValueError: when a domain of the spec has no item in the corpus (it could answer nothing).
    """
    embed = tf.function(lambda raw: model.item_embedding(raw, training=False), reduce_retracing=True)
    names = model_inputs(spec, artifacts.ITEM_TOWER)
    ids, domains, embeddings = [], [], []
    for batch in data.make_dataset(data_dir, artifacts.ITEMS, batch_size, spec=spec, names=names):
        ids.append(batch[fs.ITEM_ID].numpy())
        domains.append(batch[fs.DOMAIN].numpy())
        embeddings.append(embed(batch).numpy())
    ids, domains = np.concatenate(ids), np.concatenate(domains)
    embeddings = np.concatenate(embeddings).astype(np.float32)
    out_ids, out_emb = [], []
    for d in spec.domains:
        rows = np.flatnonzero(domains == d.encode())
        if rows.size == 0:
            raise ValueError(f"Domain {d!r} has no item in the `items` split of {data_dir}: its retrieval "
                             "index would be empty")
        _, first = np.unique(ids[rows], return_index=True)
        rows = rows[np.sort(first)]
        out_ids.append(ids[rows].astype(bytes))
        out_emb.append(embeddings[rows])
    return out_ids, out_emb


def user_queries(model, spec: fs.FeatureSpec, data_dir: str, split: str, per_domain: int,
                 batch_size: int = 1024) -> List[Optional[np.ndarray]]:
    """Per domain: up to `per_domain` user embeddings of `split`'s rows of that domain (None if none)."""
    try:
        dataset = data.make_dataset(data_dir, split, batch_size, spec=spec,
                                    names=model_inputs(spec, artifacts.USER_TOWER))
    except FileNotFoundError:
        return [None] * spec.num_domains
    embed = tf.function(lambda raw: model.user_embedding(raw, training=False), reduce_retracing=True)
    found: Dict[str, List[np.ndarray]] = {d: [] for d in spec.domains}
    counts = dict.fromkeys(spec.domains, 0)
    for i, batch in enumerate(dataset):
        if i >= _MAX_QUERY_BATCHES or all(c >= per_domain for c in counts.values()):
            break
        emb = embed(batch).numpy()
        dom = batch[fs.DOMAIN].numpy()
        for d in spec.domains:
            rows = emb[dom == d.encode()][:per_domain - counts[d]]
            if len(rows):
                found[d].append(rows)
                counts[d] += len(rows)
    return [np.concatenate(found[d]) if found[d] else None for d in spec.domains]


# ------------------------------------------------------------------ layout
def next_version(export_dir: str, models: Sequence[str] = artifacts.MODEL_NAMES) -> int:
    """One more than the largest version under any of `models` in `export_dir` (1 when there is none)."""
    found = [v for m in models if os.path.isdir(os.path.join(export_dir, m))
             for v in cfg.list_versions(os.path.join(export_dir, m))]
    return max(found, default=0) + 1


def _copy_spec(spec: fs.FeatureSpec, folder: str) -> None:
    """`feature_spec.json` and the vocabulary files it names, into `folder`."""
    spec.save(folder)
    for f in spec.features:
        if f.vocab_file:
            dest = os.path.join(folder, f.vocab_file)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            tf.io.gfile.copy(os.path.join(spec.path or "", f.vocab_file), dest, overwrite=True)


def _without_keras_traces():
    """Keras' `save_traces=False` for the Keras objects inside a saved module.

    Saving traces every layer's `call` again for Keras' own reloading (`keras.models.load_model`),
    which an export never uses (servers call the signatures): skipping it halves the time of an
    export and its `saved_model.pb`. The signatures are traced and saved either way.
    """
    try:
        from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope
    except ImportError:  # a tf_keras without it: the traces are saved, only slower
        return contextlib.nullcontext()
    return keras_option_scope(save_traces=False)


def publish(module: ServingModule, spec: fs.FeatureSpec, export_dir: str, version: int,
            max_batch_size: int = MAX_BATCH_SIZE) -> str:
    """Writes `module` as `<export_dir>/<kind>/<version>/` atomically; returns the version folder.

    The SavedModel, `assets.extra/serving_checks.json` and the spec are written to
    `<kind>/.tmp-<version>` (left over from an interrupted export: replaced), which is then renamed.
    """
    base = os.path.join(export_dir, module.kind)
    final, tmp = os.path.join(base, str(version)), os.path.join(base, f"{artifacts.EXPORT_TMP_PREFIX}{version}")
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists: a published version is never overwritten; export a new version")
    os.makedirs(base, exist_ok=True)
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    with _without_keras_traces():
        tf.saved_model.save(module, tmp, signatures=module.signatures())
    cfg.write_serving_checks(tmp, serving_checks(spec, module.kind, max_batch_size))
    _copy_spec(spec, os.path.join(tmp, artifacts.ASSETS_EXTRA))
    os.rename(tmp, final)
    return final


def write_configs(export_dir: str, batching: cfg.BatchingConfig) -> Dict[str, str]:
    """`models.config` (relative base paths), `models.docker.config` (/models/<name>) and
    `batching.config` for every model of `export_dir` with at least one version; returns their paths."""
    names = [m for m in artifacts.MODEL_NAMES
             if os.path.isdir(os.path.join(export_dir, m)) and cfg.list_versions(os.path.join(export_dir, m))]
    paths = {"models_config": os.path.join(export_dir, artifacts.MODELS_CONFIG),
             "models_docker_config": os.path.join(export_dir, artifacts.DOCKER_MODELS_CONFIG),
             "batching_config": os.path.join(export_dir, artifacts.BATCHING_CONFIG)}
    cfg.write_models_config(paths["models_config"], [cfg.ModelConfig(name=m, base_path=m) for m in names])
    # Stock TF Serving has no ScaNN ops and refuses to start when any configured model fails to
    # load: its config leaves retrieval_scann to the ScaNN-capable server (docker/README.md).
    cfg.write_models_config(paths["models_docker_config"],
                            [cfg.ModelConfig(name=m, base_path=f"{DOCKER_MODELS_ROOT}/{m}") for m in names
                             if m != artifacts.RETRIEVAL_SCANN])
    cfg.write_batching_config(paths["batching_config"], batching)
    return paths


def _signature_report(module: ServingModule) -> dict:
    outputs = list(OUTPUTS[module.kind])
    report = {artifacts.DEFAULT_SIGNATURE: {"inputs": list(module.input_names), "outputs": outputs},
              artifacts.EXAMPLES_SIGNATURE: {"inputs": [artifacts.EXAMPLES_INPUT], "outputs": list(outputs)}}
    if module.kind == artifacts.RECOMMENDER:
        report[artifacts.RANK_SIGNATURE] = {"inputs": list(module.user_inputs) + [artifacts.RANK_ITEMS_INPUT],
                                            "outputs": list(rec.RANK_OUTPUTS)}
    return report


def _load(model_dir: str, task: str):
    model, spec, config = training.load_model(model_dir)
    if config.task != task:
        raise ValueError(f"{model_dir} holds a {config.task} model ({config.model!r}); a {task} model is "
                         f"needed here")
    return model, spec


# ------------------------------------------------------------------ export
def export_models(retrieval_dir: Optional[str], ranker_dir: Optional[str], data_dir: str, export_dir: str,
                  version: Optional[int] = None, index_config: ix.IndexConfig = ix.IndexConfig(), k: int = 100,
                  max_batch_size: int = MAX_BATCH_SIZE, batching: Optional[cfg.BatchingConfig] = None,
                  queries_split: Optional[str] = "eval", progress: Optional[Callable[[str], None]] = None) -> dict:
    """Exports trained models to `export_dir` in TF Serving's layout (see the module docstring).

    Args:
        retrieval_dir: a retrieval model folder (`mdr train`), or None to skip `user_tower`,
            `item_tower`, `retrieval` and `retrieval_scann`.
        ranker_dir: a ranking model folder, or None to skip `ranker`.
        data_dir: the preprocessing output whose `items` split is the item corpus (and whose
            `queries_split` gives the recall queries); its domains must be the model's.
        export_dir: a local folder (created if needed); models already there are kept.
        version: the version number of this export (an int >= 1 not yet used by any exported
            model); None: `next_version(export_dir)`.
        index_config: the ScaNN index parameters (`num_neighbors` is set to `k`).
        k: K, the items `retrieval` and `retrieval_scann` return per row.
        max_batch_size: the largest request batch (`batching.config`, `serving_checks.json`).
        batching: the batching parameters; None: `max_batch_size`, no batch timeout (a batch takes
            what queued while the last one ran), 100 queued batches, each server's thread count.
        queries_split: split whose user embeddings measure the ScaNN recall per domain (None, or a
            domain without rows: sampled corpus vectors).
        progress: called with a line of text as each step finishes (the item corpus embedded, each
            domain's index built, each model written); `mdr export` prints them.

    Returns:
        {"export_dir", "version", "models": {name: {"path", "signatures": {signature: {"inputs",
        "outputs"}}, "seconds"}}, "corpus": {domain: items}, "index": {domain: ScaNN build report
        (`serving.index.BuildReport.as_dict`)}, "low_recall": [domains under
        `index_config.min_recall`], "configs": {"models_config", "models_docker_config",
        "batching_config"}}; "corpus", "index" and "low_recall" only with `retrieval_dir`. The same
        report is written beside the models as `export_report_v<version>.json` (`mdr report` reads it).
    """
    if retrieval_dir is None and ranker_dir is None:
        raise ValueError("Nothing to export: give `retrieval_dir`, `ranker_dir` or both. "
                         "Received: retrieval_dir=None, ranker_dir=None")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be an integer >= 1. Received: k={k!r}")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f"`max_batch_size` must be an integer >= 1. Received: max_batch_size={max_batch_size!r}")
    if "://" in export_dir:
        raise ValueError(f"`export_dir` must be a local folder (versions are published by os.rename). "
                         f"Received: export_dir={export_dir!r}")
    export_dir = os.path.abspath(export_dir)
    os.makedirs(export_dir, exist_ok=True)
    if version is None:
        version = next_version(export_dir)
    elif isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be an integer >= 1. Received: version={version!r}")
    names = (artifacts.RETRIEVAL_MODEL_NAMES if retrieval_dir else ()) + ((artifacts.RANKER,) if ranker_dir else ()) \
        + ((artifacts.RECOMMENDER,) if retrieval_dir and ranker_dir else ())
    taken = [m for m in names if os.path.exists(os.path.join(export_dir, m, str(version)))]
    if taken:
        raise FileExistsError(f"Version {version} already exists for {taken} in {export_dir}")
    index_config = dataclasses.replace(index_config, num_neighbors=k)
    # No timeout, as TF Serving's batching guide starts CPU serving: a batch takes what queued while the
    # last one ran (a 1 ms wait cut the demo's throughput under load and doubled its p99). The thread count
    # is left to each server's default (TF Serving: one per core; the embedded server: one).
    batching = batching or cfg.BatchingConfig(max_batch_size=max_batch_size, batch_timeout_micros=0,
                                              max_enqueued_batches=100)
    report: dict = {"export_dir": export_dir, "version": version, "models": {}}
    say = progress or (lambda line: None)

    def write(module, spec):
        start = time.perf_counter()
        path = publish(module, spec, export_dir, version, max_batch_size)
        report["models"][module.kind] = {"path": path, "signatures": _signature_report(module),
                                         "seconds": round(time.perf_counter() - start, 2)}
        say(f"wrote {module.kind} ({report['models'][module.kind]['seconds']:.1f} s)")

    if retrieval_dir:
        model, spec = _load(retrieval_dir, training.RETRIEVAL_TASK)
        if model.popularity_prior and index_config.distance != "dot_product":
            # The prior's unit makes item norms differ: only the dot product keeps the trained ranking.
            raise ValueError(f"The model in {retrieval_dir} has a popularity prior, which needs the dot product. "
                             f"Received: distance={index_config.distance!r}")
        data_domains = fs.FeatureSpec.load(data_dir).domains
        if list(data_domains) != list(spec.domains):
            raise ValueError(f"{data_dir} has domains {data_domains} but the model in {retrieval_dir} was trained "
                             f"on {spec.domains}")
        ids, embeddings = item_corpus(model, spec, data_dir)
        report["corpus"] = {d: int(len(i)) for d, i in zip(spec.domains, ids)}
        say(f"embedded the item corpus: {sum(report['corpus'].values()):,} items in {len(ids)} domain(s)")
        queries = (user_queries(model, spec, data_dir, queries_split, index_config.eval_queries)
                   if queries_split else None)
        built = []

        def domain_built(name, build_report):
            built.append(name)
            say(f"[{len(built)}/{len(ids)}] {index_line(name, build_report)} "
                f"(built in {build_report['build_seconds']:.1f} s)")

        scann, index_report = ix.build_multi_domain_index(embeddings, ids, index_config, queries=queries,
                                                          domain_names=spec.domains, on_domain_built=domain_built)
        report["index"] = index_report
        report["low_recall"] = [d for d, r in index_report.items() if r["recall@k"] < index_config.min_recall]
        exact = ix.ExactDomainIndex(embeddings, ids, k=k, distance=index_config.distance, name="exact_index")
        write(ServingModule(artifacts.USER_TOWER, model, spec), spec)
        write(ServingModule(artifacts.ITEM_TOWER, model, spec), spec)
        write(ServingModule(artifacts.RETRIEVAL, model, spec, index=exact), spec)
        write(ServingModule(artifacts.RETRIEVAL_SCANN, model, spec, index=scann), spec)
    if ranker_dir:
        ranker, ranker_spec = _load(ranker_dir, training.RANKER_TASK)
        write(ServingModule(artifacts.RANKER, ranker, ranker_spec), ranker_spec)
        if retrieval_dir:
            reason = _recommender_blocker(spec, ranker_spec, data_dir)
            if reason:
                report["recommender_skipped"] = reason
            else:
                write(rec.RecommenderModule(model, ranker, spec, exact, FeatureStore.load(data_dir),
                                            model_inputs(spec, artifacts.RECOMMENDER),
                                            model_inputs(spec, artifacts.RANKER)), spec)
    report["configs"] = write_configs(export_dir, batching)
    write_report(report, os.path.join(export_dir, artifacts.export_report(version)))
    return report


def _recommender_blocker(retrieval_spec: fs.FeatureSpec, ranker_spec: fs.FeatureSpec, data_dir: str) -> str:
    """Why no `recommender` can be exported from these two models and data ("" when it can)."""
    try:
        rec.check_same_features(retrieval_spec, ranker_spec, model_inputs(retrieval_spec, artifacts.RECOMMENDER)
                                + [n for n in model_inputs(ranker_spec, artifacts.RANKER)
                                   if n in rec.item_side(ranker_spec)])
    except ValueError as error:
        return f"the two models were trained on other features: {error}"
    if not tf.io.gfile.glob(artifacts.record_pattern(data_dir, artifacts.STORE)):
        return f"{data_dir} has no feature store ({artifacts.STORE}/): rerun `mdr preprocess`"
    return ""


def format_report(report: dict, indexes: bool = True) -> str:
    """A short text summary of an `export_models` report (what `mdr export` prints); `indexes=False` leaves
    out the per-domain index lines (already printed by `export_models(progress=)`)."""
    lines = [f"exported version {report['version']} to {report['export_dir']}"]
    for name, m in report["models"].items():
        inputs = ", ".join(m["signatures"][artifacts.DEFAULT_SIGNATURE]["inputs"])
        lines.append(f"  {name:<16} {m['seconds']:>7.2f}s  inputs: {inputs}")
    for d, r in (report.get("index", {}) if indexes else {}).items():
        lines.append(f"  {index_line(d, r)}")
    if report.get("low_recall"):
        lines.append(f"  LOW RECALL in domains {report['low_recall']}")
    if report.get("recommender_skipped"):
        lines.append(f"  no {artifacts.RECOMMENDER}: {report['recommender_skipped']}")
    return "\n".join(lines)


def index_line(domain: str, r: dict) -> str:
    """One domain's ScaNN build report (`BuildReport.as_dict`) as a line of text."""
    if r["brute_force"]:  # exact search: no recall to measure
        return f"index {domain}: {r['items']} items, exact (brute force)"
    how = f"{r['leaves_to_search']}/{r['leaves']} leaves searched" + (
        f", tuned, {r['reorder']} re-scored" if "tuning" in r else "")
    return f"index {domain}: {r['items']} items, recall@{r['k']} = {r['recall@k']:.3f} ({how})"


def write_report(report: dict, path: str) -> None:
    """Writes `report` as JSON."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(report, indent=2) + "\n")
