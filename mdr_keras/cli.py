"""The `mdr` command: one entry point, one subcommand per stage.

    mdr generate   --output DIR [--seed N --users N --items N --domains N ...]
    mdr preprocess --source {synthetic,movielens-1m,taobao,csv} --input PATH --output DIR [Beam flags]
    mdr demo       --output DIR [--source ... --input ...]

Misuse exits with status 2 and a message naming the flag; an unusable input exits with status 1
and says why, before any work starts.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # CUDA-probe chatter on CPU machines
# Beam's local workers are subprocesses: they inherit this, and stop warning about Python 3.11's EOL.
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")


def _generate(args) -> int:
    from pipeline import synthetic

    config = synthetic.SyntheticConfig(
        num_users=args.users, num_items=args.items, num_domains=args.domains,
        num_categories=args.categories, mean_events=args.mean_events, days=args.days, seed=args.seed)
    info = synthetic.generate(args.output, config)
    print(f"wrote {info['events']:,} events to {os.path.join(args.output, synthetic.EVENTS_FILENAME)}")
    print("  events per domain: " + "  ".join(f"{d}={n:,}" for d, n in info["events_per_domain"].items()))
    print(f"  users in 2+ domains: {info['users_in_2plus_domains']:.0%}, "
          f"items in 2+ domains: {info['items_in_2plus_domains']:.0%}")
    return 0


def _preprocess(args, beam_args) -> int:
    from pipeline import preprocess

    metadata = preprocess.preprocess(preprocess.config_from_args(args), beam_args)
    print(f"preprocessed {args.input} -> {args.output}")
    print(preprocess.summary(metadata))
    return 0


def sample_record(data_dir: str, split: str = "train", scan: int = 200) -> dict:
    """A record of a split with a behaviour sequence (among the first `scan`), read back with tf.data."""
    import tensorflow as tf

    from mdr_keras.feature_spec import FeatureSpec

    spec = FeatureSpec.load(data_dir)
    files = sorted(tf.io.gfile.glob(os.path.join(data_dir, split, "*.tfrecord.gz")))
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


def _demo(args, beam_args) -> int:
    from pipeline import preprocess, synthetic

    out = args.output
    data_dir = os.path.join(out, "data")
    if args.source == "synthetic":
        raw_dir = args.input or os.path.join(out, "raw")
        if not args.input:
            print(f"[1/2] generating synthetic logs (seed {args.seed}) -> {raw_dir}", flush=True)
            info = synthetic.generate(raw_dir, synthetic.SyntheticConfig(seed=args.seed))
            print(f"      {info['events']:,} events, domains {info['events_per_domain']}", flush=True)
    elif not args.input:
        raise SystemExit(f"mdr demo: --source {args.source} needs --input")
    else:
        raw_dir = args.input
    print(f"[2/2] Beam preprocessing ({args.source}) -> {data_dir}", flush=True)
    config = preprocess.PreprocessConfig(
        source=args.source, input=raw_dir, output=data_dir, overwrite=True,
        split="random" if args.source == "movielens-1m" else "time",
        max_domains=preprocess.TAOBAO_DEFAULT_DOMAINS if args.source == "taobao" else None)
    metadata = preprocess.preprocess(config, beam_args)
    print(preprocess.summary(metadata))
    record = sample_record(data_dir)
    print("sample train record:")
    for name, value in record.items():
        if isinstance(value, list) and len(value) > 8:
            value = value[:8] + [f"... {len(value)} values"]
        print(f"  {name:24s} {value}")
    print(f"artifacts under {out}/: raw/ (logs), data/ (TFRecords, vocab/, feature_spec.json, metadata.json)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipeline import preprocess, sources

    parser = argparse.ArgumentParser(prog="mdr", description="mdr: multi-domain recommendation, from raw logs "
                                     "to gRPC answers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="write synthetic multi-domain logs with a planted structure")
    g.add_argument("--output", required=True, help="output folder")
    g.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    g.add_argument("--users", type=int, default=2000, help="number of users")
    g.add_argument("--items", type=int, default=1000, help="number of items")
    g.add_argument("--domains", type=int, default=3, help="number of domains (>= 2)")
    g.add_argument("--categories", type=int, default=20, help="number of item categories")
    g.add_argument("--mean-events", type=float, default=30.0, help="mean events per user")
    g.add_argument("--days", type=int, default=14, help="days the log spans")

    p = sub.add_parser("preprocess", help="run the Beam job: raw logs -> TFRecords, vocabularies, feature spec",
                       description="Run the Beam preprocessing job. Flags not listed here are Beam "
                       "PipelineOptions (--runner, --project, --temp_location, --setup_file, ...).")
    preprocess.add_arguments(p)

    d = sub.add_parser("demo", help="run the whole system end to end (synthetic data by default)")
    d.add_argument("--output", default="runs/demo", help="folder for every artifact of the run")
    d.add_argument("--source", default="synthetic", choices=sources.SOURCES)
    d.add_argument("--input", help="input of a real-data source (or an existing synthetic folder)")
    d.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)  # local-runner worker chatter
    warnings.filterwarnings("ignore", category=FutureWarning, module="google")
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    if beam_args and args.command not in ("preprocess", "demo"):
        parser.error(f"unrecognized arguments: {' '.join(beam_args)}")
    from pipeline.sources import InputError

    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "preprocess":
            return _preprocess(args, beam_args)
        if args.command == "demo":
            return _demo(args, beam_args)
    except (InputError, ValueError, FileNotFoundError) as e:
        print(f"mdr {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
