"""The `mdr` command: one entry point, one subcommand per stage.

    mdr generate   --output DIR [--seed N --users N --items N --domains N ...]
    mdr preprocess --source {synthetic,movielens-1m,taobao,csv} --input PATH --output DIR [Beam flags]
    mdr train      --data DIR --model-dir DIR [--model adi|ranker|... --config FILE --epochs N ...]
    mdr evaluate   --model-dir DIR --data DIR [--split eval --baseline OTHER_MODEL_DIR]
    mdr export     --retrieval-model-dir DIR --ranker-model-dir DIR --data DIR --export-dir DIR [-k 100]
    mdr serve      --model-config-file EXPORT_DIR/models.config [--port 8500 --host 127.0.0.1]
    mdr query      {candidates,scores} --server HOST:PORT --store DATA_DIR --domain D --user U [-k K | --items ...]
    mdr recommend  --server HOST:PORT --store DATA_DIR --domain D --user U [-n 10 -k 100]
    mdr demo       --output DIR [--source ... --input ...]
    mdr report     RUN_DIR [--output DIR --data DIR --max-examples N]

Misuse exits with status 2 and a message naming the flag; an unusable input exits with status 1
and says why, before any work starts. The demo's stages live in `mdr.demo`, the report in `mdr.report`.
"""
from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys
import warnings

# (Keras 2 was switched on by importing the `mdr` package: `mdr_contract`.)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # CUDA-probe chatter on CPU machines
# Beam's local workers are subprocesses: they inherit this, and stop warning about Python 3.11's EOL.
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")


def _generate(args) -> int:
    from pipeline import synthetic

    config = synthetic.SyntheticConfig(
        num_users=args.users, num_items=args.items, num_domains=args.domains,
        num_categories=args.categories, mean_events=args.mean_events, days=args.days,
        popularity_exposure=args.popularity_exposure, single_domain_users=args.single_domain_users, seed=args.seed)
    info = synthetic.generate(args.output, config)
    print(f"wrote {info['events']:,} events to {os.path.join(args.output, synthetic.EVENTS_FILENAME)}")
    print("  events per domain: " + "  ".join(f"{d}={n:,}" for d, n in info["events_per_domain"].items()))
    print(f"  users in 2+ domains: {info['users_in_2plus_domains']:.0%}, "
          f"items in 2+ domains: {info['items_in_2plus_domains']:.0%}")
    return 0


def _preprocess(args, beam_args) -> int:
    from mdr import quiet
    from pipeline import preprocess, progress
    from pipeline.sources import InputError

    config = preprocess.config_from_args(args)
    show = progress.printer()
    if args.debug:
        metadata = preprocess.preprocess(config, beam_args, progress_callback=show)
    else:
        # Beam's workers print each failure's traceback to stderr themselves: kept in a file, so an unusable
        # input reads as one line; anything else is replayed whole.
        log = None
        try:
            with quiet.stderr_to_file("mdr-preprocess-") as log:
                metadata = preprocess.preprocess(config, beam_args, progress_callback=show)
        except InputError as e:
            if os.path.getsize(log):
                raise InputError(f"{e} (the workers' log: {log})") from None
            os.remove(log)
            raise
        except BaseException:
            if log is not None:
                quiet.replay(log)
            raise
        quiet.replay(log)
    print(f"preprocessed {args.input} -> {args.output}")
    print(preprocess.summary(metadata))
    return 0


def _train_config(args):
    """The TrainConfig of `mdr train`: the --config file (if any), then the flags on top of it."""
    import json

    from pipeline.preprocess import FlagError

    model_config = {}
    for item in args.set or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FlagError(f"--set takes KEY=VALUE (a model_config field). Received: --set {item}")
        try:
            model_config[key] = json.loads(value)
        except json.JSONDecodeError:
            model_config[key] = value  # a bare string, e.g. --set fusion=sum
    flags = {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
             "learning_rate": args.learning_rate, "lr_schedule": args.lr_schedule,
             "weight_decay": args.weight_decay, "seed": args.seed, "patience": args.patience,
             "steps_per_epoch": args.steps_per_epoch, "validation_split": args.validation_split,
             "mixed_precision": args.mixed_precision or None, "task": args.task}
    from mdr_keras import training

    if args.config:  # a bad value in the file: an unusable input (exit 1)
        config = training.TrainConfig.from_file(args.config, **flags)
    else:
        try:
            config = training.TrainConfig(**{k: v for k, v in flags.items() if v is not None})
        except ValueError as e:  # a flag's value (--model, --task): misuse
            raise FlagError(str(e)) from None
    if model_config:
        import dataclasses

        try:
            config = dataclasses.replace(config, model_config={**config.model_config, **model_config})
        except ValueError as e:  # an unknown or bad --set key
            raise FlagError(f"--set: {e}") from None
    return config


def _train(args) -> int:
    from mdr_keras import training

    config = _train_config(args)  # every config error surfaces before TensorFlow starts
    strategy = training.make_strategy(cpu_replicas=args.cpu_replicas)
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    summary = training.train(args.data, args.model_dir, config, strategy=strategy, verbose=verbose)
    history = summary["history"]
    last = {k: v[-1] for k, v in history.items() if v}
    written = args.model_dir if summary["wrote_model_dir"] else f"the chief writes {args.model_dir}"
    print(f"trained {summary['model']} ({summary['parameters']:,} parameters) for {summary['epochs_run']} "
          f"epoch(s) in {summary['train_seconds']:.1f} s on {summary['replicas']} replica(s) -> {written}")
    print("  last epoch: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(last.items())))
    if args.evaluate and summary["wrote_model_dir"]:
        return _evaluate_and_print(args.model_dir, args.data, training.report_split(args.data), None)
    return 0


def _evaluate_and_print(model_dir, data_dir, split, baseline_dir, ks=(10, 50), sampled_negatives=100,
                        sampling="uniform") -> int:
    import json

    from mdr_contract import artifacts
    from mdr_keras import training

    baseline = None
    if baseline_dir:
        path = os.path.join(baseline_dir, artifacts.METRICS)
        if not os.path.exists(path):
            raise FileNotFoundError(f"--baseline {baseline_dir} has no {artifacts.METRICS}; "
                                    "run `mdr evaluate` on it first")
        with open(path) as f:
            baseline = json.load(f)
    metrics = training.evaluate(model_dir, data_dir, split, ks=ks, sampled_negatives=sampled_negatives,
                                sampling=sampling)
    if baseline is not None and baseline.get("task") != metrics["task"]:
        raise ValueError(f"--baseline is a {baseline.get('task')} model, {model_dir} a {metrics['task']} model")
    print(training.format_metrics(metrics, baseline))
    print(f"wrote {os.path.join(model_dir, artifacts.METRICS)}")
    return 0


def _split_misuse(data_dir: str, split: str):
    """The one-line complaint when `split` of a finished data folder has no rows (None otherwise); reads
    only metadata.json, so it runs before any model loads."""
    import json

    from mdr_contract import artifacts, files

    path = os.path.join(data_dir, artifacts.METADATA)
    if not files.exists(path):
        return None  # not a finished data folder: the loaders say so
    rows = json.loads(files.read_text(path)).get("rows_written_per_split", {})
    if rows.get(split, 0):
        return None
    present = [s for s, n in rows.items() if n]
    return f"--split {split}: {data_dir} has no {split} rows (splits with rows: {', '.join(present) or 'none'})"


def _evaluate(args) -> int:
    return _evaluate_and_print(args.model_dir, args.data, args.split, args.baseline, ks=tuple(args.k),
                               sampled_negatives=args.sampled_negatives, sampling=args.sampling)


def _export(args) -> int:
    from serving import export, index

    config = index.IndexConfig(num_neighbors=args.k, min_recall=args.min_recall,
                               target_recall=args.target_recall or None)
    report = export.export_models(args.retrieval_model_dir, args.ranker_model_dir, args.data, args.export_dir,
                                  version=args.version, index_config=config, k=args.k,
                                  progress=lambda line: print(f"  {line}", flush=True))
    print(export.format_report(report, indexes=False))  # the progress lines showed them
    return 0


def _serve(args) -> int:
    from serving import server

    def ready(s):
        print(f"serving {', '.join(s.model_names)} on {s.address} (TF Serving gRPC API); Ctrl-C to stop",
              flush=True)

    from mdr_contract import artifacts

    parameters = args.batching_parameters_file
    beside = os.path.join(os.path.dirname(os.path.abspath(args.model_config_file)), artifacts.BATCHING_CONFIG)
    if args.enable_batching and parameters is None and os.path.exists(beside):
        parameters = beside
    server.serve(args.model_config_file, port=args.port, host=args.host, poll_interval=args.poll_seconds,
                 max_workers=args.max_workers, max_batch_size=args.max_batch_size, on_ready=ready,
                 batching_parameters_file=parameters if args.enable_batching else None,
                 enable_batching=args.enable_batching, intra_op_threads=args.tensorflow_intra_op_parallelism,
                 inter_op_threads=args.tensorflow_inter_op_parallelism)
    return 0


def _port_in_use(host: str, port: int):
    """The one-line complaint when `host:port` cannot be listened on (None when it can, or port is 0)."""
    import socket

    if not port:
        return None
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as e:
            return f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); pick another or --port 0"
    return None


def _client_and_store(args):
    from serving import client
    from serving.feature_store import FeatureStore

    store = FeatureStore.load(args.store)
    return client.Client(args.server, timeout=args.timeout, use_examples=args.examples), store


def _query(args) -> int:
    from serving import client

    c, store = _client_and_store(args)  # (--items is checked in main, before the store loads)
    with c:
        if args.what == "candidates":
            print(client.format_candidates(args.domain, args.user, c.candidates(args.domain, args.user, args.k, store,
                                                                                model=args.model or "retrieval",
                                                                                cold_start=args.cold_start)))
        else:
            scores = c.scores(args.domain, args.user, args.items, store, model=args.model or "ranker",
                              cold_start=args.cold_start)
            print(client.format_scores(args.domain, args.user, args.items, scores))
    return 0


def _recommend(args) -> int:
    from mdr_contract import artifacts
    from serving import client

    c, store = _client_and_store(args)
    with c:
        print(client.format_recommendations(args.domain, args.user,
                                            c.recommend(args.domain, args.user, store, n=args.n, k=args.k,
                                                        cold_start=args.cold_start,
                                                        recommender_model=None if args.two_calls else
                                                        artifacts.RECOMMENDER)))
    return 0


def _demo(args, beam_args) -> int:
    from mdr import demo

    return demo.run(demo.DemoConfig(
        output=args.output, source=args.source, input=args.input, mapping=args.mapping, seed=args.seed,
        retrieval_epochs=args.retrieval_epochs, ranker_epochs=args.ranker_epochs, host=args.host, port=args.port,
        keep_serving=args.keep_serving, stop_after_preprocess=args.stop_after_preprocess), beam_args)


def _report(args) -> int:
    from mdr import report

    path = report.build_report(args.run_dir, output_dir=args.output, data_dir=args.data,
                               max_examples=args.max_examples)
    print(f"wrote {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but misuse is one line naming the flag (no usage block; `--help` has it)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _at_least(minimum: int):
    """argparse type: an integer >= `minimum`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}. Received: {text!r}")
        return value
    return parse


def _number(ok, what: str):
    """argparse type: a float for which `ok(value)` holds (`what` says which, in the error)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")  # fails every `ok`
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}. Received: {text!r}")
        return value
    return parse


_positive = _number(lambda v: v > 0, "a number > 0")
_fraction = _number(lambda v: 0 <= v <= 1, "a number in [0, 1]")
_at_least_zero = _number(lambda v: 0 <= v < float("inf"), "a number >= 0")


def _port(text):
    value = _at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in [0, 65535]. Received: {text!r}")
    return value


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each flag's default, except where there is none to show (None, False) or the help
    text already says it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# `mdr train`'s flags default to the --config file's value, else to TrainConfig's (mdr_keras.training, which
# imports TensorFlow: not loaded for --help; tests/mdr/test_cli.py checks these equal TrainConfig's).
TRAIN_DEFAULTS = {"model": "adi", "epochs": None, "batch_size": 512, "learning_rate": 1e-3, "lr_schedule": "auto",
                  "weight_decay": 0.0, "seed": 0, "patience": 2,
                  "validation_split": "auto"}
TRAIN_DEFAULT_EPOCHS = {"ranking": 5, "retrieval": 20}  # training.DEFAULT_EPOCHS, by task (--epochs unset)
LR_SCHEDULES = ("auto", "constant", "cosine")  # training.LR_SCHEDULES
SAMPLINGS = ("uniform", "unseen", "popularity")  # evaluation.SAMPLINGS: how sampled negatives are drawn


def _add_client_arguments(p):
    p.add_argument("--server", default="127.0.0.1:8500", help="host:port of TF Serving or `mdr serve`")
    p.add_argument("--store", required=True, metavar="DATA_DIR",
                   help="output folder of `mdr preprocess`: its feature store (store/, items/) gives the features")
    p.add_argument("--domain", required=True, help="the domain to recommend in (one of the data's domains)")
    p.add_argument("--user", required=True, help="user id, as in the logs")
    p.add_argument("--timeout", type=_positive, default=5.0, help="deadline of each RPC in seconds")
    p.add_argument("--examples", action="store_true", help="call the `examples` signatures (tf.Example)")
    p.add_argument("--cold-start", action="store_true",
                   help="a user the feature store does not know gets default features instead of an error")


def build_parser() -> argparse.ArgumentParser:
    from pipeline import preprocess, sources

    parser = _Parser(prog="mdr", description="mdr: multi-domain recommendation, from raw logs "
                                     "to gRPC answers.")
    parser.add_argument("--debug", action="store_true",
                        help="tracebacks with errors, and TensorFlow's start-up lines (mdr --debug COMMAND ...)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", formatter_class=_Help, help="write synthetic multi-domain logs with a planted structure")
    g.add_argument("--output", required=True, help="output folder")
    g.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    g.add_argument("--users", type=_at_least(1), default=2000, help="number of users")
    g.add_argument("--items", type=_at_least(1), default=1000, help="number of items")
    g.add_argument("--domains", type=_at_least(2), default=3, help="number of domains (>= 2)")
    g.add_argument("--categories", type=_at_least(1), default=20, help="number of item categories")
    g.add_argument("--mean-events", type=_positive, default=30.0, help="mean events per user")
    g.add_argument("--days", type=_at_least(1), default=14, help="days the log spans")
    g.add_argument("--popularity-exposure", type=_fraction, default=0.5,
                   help="share of exposures drawn by popularity (the rest by relevance to the user)")
    g.add_argument("--single-domain-users", action="store_true",
                   help="every user in one domain only (items still shared), as when the domain is a user attribute")

    p = sub.add_parser("preprocess", formatter_class=_Help, help="run the Beam job: raw logs -> TFRecords, vocabularies, feature spec",
                       description="Run the Beam preprocessing job. Flags not listed here are Beam "
                       "PipelineOptions (--runner, --project, --temp_location, --setup_file, ...).")
    preprocess.add_arguments(p)

    t = sub.add_parser("train", formatter_class=_Help, help="train a retrieval or ranking model on the job's TFRecords",
                       description="Train a model; `--model` picks it: retrieval (adi, dnn, dnn-single, "
                       "dnn-domain, shared-bottom, cross-stitch, mmoe, ple, star) or ranking (ranker, its ablations "
                       "ranker-no-*, and the baselines dnn, din, mha, shared-bottom, mmoe, ple, star). Killed and rerun, it resumes from the last epoch.")
    t.add_argument("--data", required=True, help="output folder of `mdr preprocess`")
    t.add_argument("--model-dir", required=True, help="folder for the weights, logs and configs")
    t.add_argument("--model", help=f"model name (default {TRAIN_DEFAULTS['model']}, or the --config file's)")
    t.add_argument("--task", choices=("retrieval", "ranking"),
                   help="needed only for names both tasks have (dnn, shared-bottom, mmoe, ple, star)")
    t.add_argument("--config", help="JSON file of TrainConfig fields (flags override it)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one model_config field (JSON value), e.g. --set dsbn=false; repeatable")
    t.add_argument("--epochs", type=_at_least(1),
                   help=f"maximum epochs (default: {TRAIN_DEFAULT_EPOCHS['ranking']} for ranking models, the cosine's "
                        f"length; {TRAIN_DEFAULT_EPOCHS['retrieval']} for retrieval, where early stopping ends training "
                        "sooner once validation recall stops rising)")
    t.add_argument("--batch-size", type=_at_least(1),
                   help=f"rows per replica per step (default {TRAIN_DEFAULTS['batch_size']})")
    t.add_argument("--learning-rate", type=_positive, help=f"Adam learning rate (default {TRAIN_DEFAULTS['learning_rate']})")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="the learning rate's course: constant, or a half cosine to 0 over --epochs; auto = cosine "
                        f"for ranking models, constant for retrieval (default {TRAIN_DEFAULTS['lr_schedule']})")
    t.add_argument("--weight-decay", type=_at_least_zero,
                   help="decoupled weight decay (AdamW) of every weight, per unit of learning rate; 0 = Adam "
                        f"(default {TRAIN_DEFAULTS['weight_decay']})")
    t.add_argument("--seed", type=int, help=f"seed of weights, shuffling and sampling (default {TRAIN_DEFAULTS['seed']})")
    t.add_argument("--patience", type=_at_least(0),
                   help=f"early-stopping patience in epochs, 0 = off (default {TRAIN_DEFAULTS['patience']})")
    t.add_argument("--steps-per-epoch", type=_at_least(1), help="cap on steps per epoch (default: one pass over train)")
    t.add_argument("--validation-split",
                   help=f"what early stopping watches (default {TRAIN_DEFAULTS['validation_split']}): auto = eval when "
                        "the data has a test split, else holdout (1 in 20 train rows left out: the latest, when split "
                        "by time); a split name; "
                        "or '' (none)")
    t.add_argument("--mixed-precision", action="store_true", help="mixed_float16 compute (GPUs)")
    t.add_argument("--cpu-replicas", type=_at_least(0), default=0,
                   help="without GPUs, mirror over this many logical CPU devices (tests the multi-replica path)")
    t.add_argument("--evaluate", action="store_true", help="evaluate afterwards on the reported split (test when the data has one, else eval)")
    t.add_argument("--verbose", type=int, choices=(0, 1, 2),
                   help="0 silent, 1 a progress bar per epoch, 2 a line per epoch (default: 1 on a terminal, else 2)")

    e = sub.add_parser("evaluate", formatter_class=_Help, help="per-domain metrics of a trained model -> metrics.json")
    e.add_argument("--model-dir", required=True, help="folder written by `mdr train`")
    e.add_argument("--data", required=True, help="output folder of `mdr preprocess`")
    e.add_argument("--split", default="eval", help="split to evaluate (eval, test, train)")
    e.add_argument("-k", type=_at_least(1), action="append", default=None, help="Recall@K cut-offs (retrieval)")
    e.add_argument("--baseline", help="another model folder (already evaluated): adds the ADS AUC Imp. column")
    e.add_argument("--sampled-negatives", type=_at_least(1), default=100,
                   help="negatives per query of the sampled protocol (retrieval's sampled_recall@K)")
    e.add_argument("--sampling", default="uniform", choices=SAMPLINGS,
                   help="how the sampled protocol draws negatives: uniformly over the domain's items, uniformly "
                        "over the items the user did not click in training, or by the domain's training clicks")

    x = sub.add_parser("export", formatter_class=_Help, help="SavedModels in TF Serving's layout + per-domain ScaNN index + configs")
    x.add_argument("--retrieval-model-dir", help="a trained retrieval model (user/item towers, retrieval)")
    x.add_argument("--ranker-model-dir", help="a trained ranking model (ranker)")
    x.add_argument("--data", required=True, help="preprocessing output: its items split is the corpus")
    x.add_argument("--export-dir", required=True, help="TF Serving model base folder")
    x.add_argument("--version", type=_at_least(1), help="version number (default: the next free one)")
    x.add_argument("-k", type=_at_least(1), default=100, help="candidates per retrieval request")
    x.add_argument("--min-recall", type=_fraction, default=0.9,
                   help="ScaNN recall@K vs exact below which the export warns loudly")
    x.add_argument("--target-recall", type=_fraction, default=0.95,
                   help="tune each domain's ScaNN tree to the fewest leaves searched (and candidates re-scored) "
                        "reaching this recall@K vs exact on the eval users; 0: the fixed defaults")

    v = sub.add_parser("serve", formatter_class=_Help, help="the embedded model server (TF Serving's gRPC API) over an export")
    v.add_argument("--model-config-file", required=True, help="models.config written by `mdr export`")
    v.add_argument("--port", type=_port, default=8500, help="gRPC port (0: any free port)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    v.add_argument("--poll-seconds", type=_positive, default=2.0, help="seconds between polls for new versions")
    v.add_argument("--max-workers", type=_at_least(1), default=8, help="RPC worker threads")
    v.add_argument("--max-batch-size", type=_at_least(1), default=4096,
                   help="largest batch a request may carry (bounded by default: a request's declared size is "
                   "refused before it is decoded)")
    v.add_argument("--enable-batching", action="store_true",
                   help="merge concurrent requests into one model call (TF Serving's --enable_batching)")
    v.add_argument("--batching-parameters-file",
                   help="with --enable-batching: TF Serving batching parameters (default: the export's batching.config)")
    v.add_argument("--tensorflow-intra-op-parallelism", type=_at_least(0), default=0,
                   help="threads that split one TensorFlow op (TF Serving's flag of that name; 0: one per core)")
    v.add_argument("--tensorflow-inter-op-parallelism", type=_at_least(0), default=0,
                   help="threads running independent TensorFlow ops (TF Serving's flag of that name; 0: one per core)")

    q = sub.add_parser("query", formatter_class=_Help, help="ask a model server for candidates (retrieval) or scores (ranker)")
    q.add_argument("what", choices=("candidates", "scores"),
                   help="candidates: top K items of the retrieval model; scores: the ranker's for --items")
    _add_client_arguments(q)
    q.add_argument("-k", type=_at_least(1), default=10, help="candidates to return")
    q.add_argument("--items", nargs="+", help="item ids to score")
    q.add_argument("--model", help="served model name (default retrieval / ranker; e.g. retrieval_scann)")

    r = sub.add_parser("recommend", formatter_class=_Help,
                       help="two-stage recommendation over gRPC: retrieval in a domain, then the ranker (one call "
                            "to the export's `recommender` when -k is at least its K)")
    _add_client_arguments(r)
    r.add_argument("-n", type=_at_least(1), default=10, help="recommendations to return")
    r.add_argument("-k", type=_at_least(1), default=100, help="candidates retrieved for the ranker")
    r.add_argument("--two-calls", action="store_true",
                   help="call retrieval, then the ranker, even where the export has the one-call recommender")

    d = sub.add_parser("demo", formatter_class=_Help, help="run the whole system end to end (synthetic data by default)")
    d.add_argument("--output", default="runs/demo", help="folder for every artifact of the run")
    d.add_argument("--source", default="synthetic", choices=sources.SOURCES, help="input format of --input")
    d.add_argument("--input", help="input of a real-data source (or an existing synthetic folder)")
    d.add_argument("--mapping", help="--source csv: the column mapping, a JSON file or inline JSON")
    d.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of training")
    d.add_argument("--retrieval-epochs", type=_at_least(1), default=3, help="epochs of ADI")
    d.add_argument("--ranker-epochs", type=_at_least(1), default=1, help="epochs of the ranker")
    d.add_argument("--port", type=_port, default=8500, help="gRPC port of the model server (0: any free port)")
    d.add_argument("--host", default="127.0.0.1", help="address the model server binds")
    d.add_argument("--keep-serving", action="store_true",
                   help="keep the model server up after the sample answers, until Ctrl-C")
    d.add_argument("--stop-after-preprocess", action="store_true", help="only generate and preprocess")

    rp = sub.add_parser("report", formatter_class=_Help, help="one HTML page (and PNGs) of a run folder: metrics, curves, attention, ScaNN")
    rp.add_argument("run_dir", help="a run folder (e.g. `mdr demo`'s output): every model folder below it is shown")
    rp.add_argument("--output", help="folder for the page and its PNGs (default RUN_DIR/report)")
    rp.add_argument("--data", help="preprocessing output for the attention views (default: the models' own)")
    rp.add_argument("--max-examples", type=_at_least(1), default=2048,
                    help="eval rows run through each model for the attention views")
    return parser


# The commands that load TensorFlow (the others: generate, preprocess, report without models, never do).
_TENSORFLOW_COMMANDS = ("train", "evaluate", "export", "serve", "query", "recommend", "demo")


def main(argv=None) -> int:
    # A crash inside TensorFlow's native code (SIGSEGV, SIGABRT) then leaves the Python stack of every thread
    # on stderr, instead of a bare exit status -11.
    if not faulthandler.is_enabled():
        faulthandler.enable()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module="google")
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    # Local-runner worker chatter, and a failed job's worker tracebacks relayed at ERROR: the job's error says
    # it in one line (mdr --debug shows Beam's errors).
    logging.getLogger("apache_beam").setLevel(logging.ERROR if args.debug else logging.CRITICAL)
    if beam_args and args.command not in ("preprocess", "demo"):
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    if args.command == "query" and args.what == "scores" and not args.items:  # before TensorFlow loads
        print("mdr query: error: scores needs --items ITEM [ITEM ...]", file=sys.stderr)
        return 2
    if args.command in ("preprocess", "demo") and args.source == "csv" and not args.mapping:  # before any work
        print(f"mdr {args.command}: error: --source csv needs --mapping (a JSON file or inline JSON column mapping)",
              file=sys.stderr)
        return 2
    if args.command == "evaluate":
        misuse = _split_misuse(args.data, args.split)
        if misuse:
            print(f"mdr evaluate: error: {misuse}", file=sys.stderr)
            return 2
    if args.command in ("serve", "demo"):  # minutes of loading or training must not end at a busy port
        busy = _port_in_use(args.host, args.port)
        if busy:
            print(f"mdr {args.command}: error: {busy}", file=sys.stderr)
            return 1
    if args.command in _TENSORFLOW_COMMANDS and not args.debug:
        from mdr import quiet

        quiet.import_tensorflow()
    from pipeline.preprocess import FlagError
    from pipeline.sources import InputError

    user_errors = (InputError, ValueError, FileNotFoundError)  # an unusable input: exit 1 with its message
    if args.command in ("query", "recommend"):
        from serving.client import ServingError  # a failed RPC (imported only here: it needs TensorFlow)

        user_errors += (ServingError,)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "preprocess":
            return _preprocess(args, beam_args)
        if args.command == "demo":
            return _demo(args, beam_args)
        if args.command == "export":
            return _export(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "query":
            return _query(args)
        if args.command == "recommend":
            return _recommend(args)
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            args.k = args.k or [10, 50]
            return _evaluate(args)
        if args.command == "report":
            return _report(args)
    except user_errors as e:
        if args.debug:
            raise
        print(f"mdr {args.command}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, FlagError) else 1  # a flag's value refused: misuse
    return 2


if __name__ == "__main__":
    sys.exit(main())
