"""`mdr demo`: the whole system on one machine, in eight printed stages.

Logs (synthetic by default) -> the Beam job -> ADI retrieval and the ranker -> export with a
per-domain ScaNN index -> the report -> the embedded model server answering candidates and two-stage
recommendations over gRPC for a user of every domain. Every artifact lands under one run folder:

    OUTPUT/raw/      the synthetic logs (synthetic source only)
    OUTPUT/data/     the Beam job's output, its feature store included
    OUTPUT/models/   adi/ and ranker/ model folders, and their baselines dnn-retrieval/ and dnn-ranking/
    OUTPUT/export/   TF Serving's layout (SavedModels, models.config, batching.config)
    OUTPUT/report/   index.html and its PNGs
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import threading
from typing import List, Optional

from mdr_contract import artifacts

STAGES = 8
RAW, DATA, MODELS, EXPORT, REPORT = "raw", "data", "models", "export", "report"  # folders of a run


@dataclasses.dataclass
class DemoConfig:
    """What `mdr demo` runs (its flags).

    Args:
        output: the run folder.
        source: a `pipeline.sources.SOURCES` name.
        input: the input of a real-data source, or an existing synthetic folder (None: generate one).
        mapping: the csv source's column mapping (a JSON file or inline JSON; README "Your own logs").
        seed: seed of the synthetic data and of training.
        retrieval_epochs, ranker_epochs: epochs of ADI and of the ranker.
        host, port: where the model server binds (port 0: any free port).
        keep_serving: keep the server up after the sample answers, until Ctrl-C.
        stop_after_preprocess: only generate and preprocess.
    """

    output: str = os.path.join("runs", "demo")
    source: str = "synthetic"
    input: Optional[str] = None
    mapping: Optional[str] = None
    seed: int = 0
    retrieval_epochs: int = 3
    ranker_epochs: int = 1
    host: str = "127.0.0.1"
    port: int = 8500
    keep_serving: bool = False
    stop_after_preprocess: bool = False


def _stage(n, text):
    print(f"[{n}/{STAGES}] {text}", flush=True)


def sample_record(data_dir: str, split: str = "train", scan: int = 200) -> dict:
    """A record of a split with a behaviour sequence (among the first `scan`), read back with tf.data."""
    import tensorflow as tf

    from mdr_contract.feature_spec import FeatureSpec

    spec = FeatureSpec.load(data_dir)
    files = sorted(tf.io.gfile.glob(artifacts.record_pattern(data_dir, split)))
    for n, serialized in enumerate(tf.data.TFRecordDataset(files, compression_type="GZIP").take(scan)):
        parsed = tf.io.parse_single_example(serialized, spec.tf_parse_spec())
        if parsed["hist_len"] == 0 and n < scan - 1:
            continue
        out = {}
        for name, value in parsed.items():
            v = value.numpy()
            if getattr(v, "ndim", 0):
                v = [x.decode() if isinstance(x, bytes) else x.item() for x in v]
                if name.startswith("hist_") or spec[name].is_list:
                    v = [x for x in v if x != ""]
            elif isinstance(v, bytes):
                v = v.decode()
            else:
                v = v.item()
            out[name] = v
        return out
    raise ValueError(f"no {split} records in {data_dir}")


def run(config: DemoConfig, beam_args: Optional[List[str]] = None) -> int:
    """Runs the demo's stages; returns the exit status."""
    from pipeline import preprocess, progress, synthetic

    out = config.output
    data_dir = os.path.join(out, DATA)
    if config.source == "synthetic":
        raw_dir = config.input or os.path.join(out, RAW)
        if not config.input:
            _stage(1, f"generating synthetic logs (seed {config.seed}) -> {raw_dir}")
            info = synthetic.generate(raw_dir, synthetic.SyntheticConfig(seed=config.seed))
            print(f"      {info['events']:,} events, domains {info['events_per_domain']}", flush=True)
    elif not config.input:
        raise ValueError(f"--source {config.source} needs --input")
    else:
        raw_dir = config.input
    _stage(2, f"Beam preprocessing ({config.source}) -> {data_dir}")
    job = preprocess.PreprocessConfig(
        source=config.source, input=raw_dir, output=data_dir, overwrite=True, mapping=config.mapping,
        split="random" if config.source == "movielens-1m" else "time",
        max_domains=preprocess.TAOBAO_DEFAULT_DOMAINS if config.source == "taobao" else None)
    metadata = preprocess.preprocess(job, beam_args, progress_callback=progress.printer(indent="      "))
    print(preprocess.summary(metadata))
    record = sample_record(data_dir)
    print("sample train record:")
    for name, value in record.items():
        if isinstance(value, list) and len(value) > 8:
            value = value[:8] + [f"... {len(value)} values"]
        print(f"  {name:24s} {value}")
    if config.stop_after_preprocess:
        print(f"artifacts under {out}/: {RAW}/ (logs), {DATA}/ (TFRecords, feature store, vocab/, "
              f"{artifacts.FEATURE_SPEC}, {artifacts.METADATA})")
        return 0
    return _models_and_serving(config, data_dir)


def _epoch_lines(epochs: int):
    """A Keras callback printing one indented line per finished epoch (the demo's trainings are otherwise silent)."""
    import tf_keras as keras

    def line(epoch, logs):
        logs = logs or {}
        shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k in ("loss", "auc", "val_auc")
                          or k.startswith("val_recall"))
        print(f"      epoch {epoch + 1}/{epochs}  {shown}  {logs.get('epoch_seconds', 0):.0f} s", flush=True)

    return keras.callbacks.LambdaCallback(on_epoch_end=line)


def _models_and_serving(config: DemoConfig, data_dir: str) -> int:
    from mdr_keras import training

    out = config.output
    models = os.path.join(out, MODELS)
    # Each model beside a baseline trained the same way (the domain-blind DNN; a plain DNN ranker), so its
    # numbers can be judged: the report puts them side by side per domain.
    runs = [(3, "adi", "retrieval", config.retrieval_epochs), (4, "ranker", "ranking", config.ranker_epochs)]
    for n, model, task, epochs in runs:
        _stage(n, f"training {model} ({task}, {epochs} epoch(s)) and its baseline dnn -> {models}")
        metrics = {}
        for name, folder in (("dnn", f"dnn-{task}"), (model, model)):
            model_dir = os.path.join(models, folder)
            if os.path.isdir(model_dir):
                shutil.rmtree(model_dir)  # a demo run starts fresh, never resumes an older one
            train_config = training.TrainConfig(model=name, task=task, epochs=epochs, batch_size=512, patience=0,
                                                learning_rate=2e-3, seed=config.seed)
            print(f"      {folder}:", flush=True)
            summary = training.train(data_dir, model_dir, train_config, verbose=0, callbacks=[_epoch_lines(epochs)])
            print(f"      {summary['parameters']:,} parameters, {summary['train_seconds']:.0f} s", flush=True)
            metrics[name] = training.evaluate(model_dir, data_dir, "eval", ks=(10, 50))
        print(training.format_metrics(metrics[model], baseline=metrics["dnn"]))
        key = "recall@50" if task == "retrieval" else "auc"
        ours, base = metrics[model]["overall"][key], metrics["dnn"]["overall"][key]
        print(f"      overall {key}: {model} {ours:.4f}, baseline dnn {base:.4f} ({ours - base:+.4f})", flush=True)

    from serving import client as serving_client
    from serving import export, index, server
    from serving.feature_store import FeatureStore

    export_dir = os.path.join(out, EXPORT)
    _stage(5, f"exporting SavedModels + per-domain ScaNN index -> {export_dir}")
    report = export.export_models(os.path.join(models, "adi"), os.path.join(models, "ranker"), data_dir, export_dir,
                                  index_config=index.IndexConfig(target_recall=0.95),  # as `mdr export`
                                  progress=lambda line: print(f"      {line}", flush=True))
    print(export.format_report(report, indexes=False))  # the progress lines showed them

    _stage(6, f"feature store for query time (written by the Beam job) <- {os.path.join(data_dir, artifacts.STORE)}")
    store = FeatureStore.load(data_dir)
    print(f"      {store}", flush=True)

    from mdr import report as run_report

    _stage(7, f"report: metrics, training curves, domain attention -> {os.path.join(out, REPORT)}")
    page = run_report.build_report(out, data_dir=data_dir)
    print(f"      open {page}", flush=True)

    config_file = os.path.join(export_dir, artifacts.MODELS_CONFIG)
    model_server = server.ModelServer(config_file, host=config.host, port=config.port)
    model_server.start()
    try:
        _stage(8, f"model server up on {model_server.address} (TF Serving gRPC API): "
                  f"{', '.join(model_server.model_names)}")
        with serving_client.Client(model_server.address, timeout=10.0) as c:
            for domain in store.domains:
                users = store.user_ids(domain)
                if not users:
                    continue
                user = users[0]
                candidates = c.candidates(domain, user, 5, store)
                print(serving_client.format_candidates(domain, user, candidates))
                print(serving_client.format_recommendations(domain, user, c.recommend(domain, user, store, n=5)))
        print("query it yourself, e.g.:")
        user = store.user_ids(store.domains[0])[0]
        print(f"  {sys.argv[0] if sys.argv[0].endswith('mdr') else 'mdr'} recommend --server {model_server.address} "
              f"--store {data_dir} --domain {store.domains[0]} --user {user}")
        if not config.keep_serving:
            print("stopping the model server (`mdr demo --keep-serving` leaves it up; "
                  f"`mdr serve --model-config-file {config_file}` serves the export again)")
            return 0
        print("serving until Ctrl-C", flush=True)
        stop = threading.Event()
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        model_server.stop(2.0)
