"""Rows/s of the Beam preprocessing job on a real data set, with the local runner.

    python -m benchmarks.preprocess_throughput --source movielens-1m \\
        --input ../shared/datasets/movielens-1m --split random [--output /tmp/bench] [Beam flags]

Prints a table row: source, rows read, wall seconds, rows/s, and the runner arguments used.
"""
import argparse
import os
import sys
import tempfile


def main(argv=None):
    from pipeline import preprocess

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="movielens-1m")
    parser.add_argument("--input", default=os.path.join("..", "shared", "datasets", "movielens-1m"))
    parser.add_argument("--split", default="random")
    parser.add_argument("--output", default=None)
    args, beam_args = parser.parse_known_args(argv)
    if not os.path.exists(args.input):
        print(f"skipped: {args.input} is absent", file=sys.stderr)
        return 0
    out = args.output or tempfile.mkdtemp(prefix="mdr-bench-")
    config = preprocess.PreprocessConfig(source=args.source, input=args.input, output=out, split=args.split,
                                         overwrite=True)
    meta = preprocess.preprocess(config, beam_args)
    print("| source | rows read | wall s | rows/s | cores | runner args |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.source} | {meta['rows_read']:,} | {meta['wall_seconds']} | {meta['rows_per_second']:,.0f} "
          f"| {os.cpu_count()} | {' '.join(beam_args) or 'default (DirectRunner, multi_processing)'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
