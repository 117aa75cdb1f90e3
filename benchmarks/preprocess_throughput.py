"""Rows/s of the Beam preprocessing job on a real data set, with the local runner.

    python -m benchmarks.preprocess_throughput --source movielens-1m \\
        --input ../shared/datasets/movielens-1m --split random [--output /tmp/bench] [Beam flags]

Prints a table row: source, rows read, wall seconds, rows/s, and the runner arguments used; `--json PATH`
writes the job's figures, `--results NAME` the table as benchmarks/results/NAME.{json,md} (the docs' tables).
"""
import argparse
import json
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
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--results", help="also write benchmarks/results/NAME.json and NAME.md (the docs' tables)")
    args, beam_args = parser.parse_known_args(argv)
    if args.results:
        from benchmarks import results as results_files

        try:
            results_files.check_name(args.results)
        except ValueError as e:
            parser.error(str(e))
    if not os.path.exists(args.input):
        print(f"skipped: {args.input} is absent", file=sys.stderr)
        return 0
    out = args.output or tempfile.mkdtemp(prefix="mdr-bench-")
    config = preprocess.PreprocessConfig(source=args.source, input=args.input, output=out, split=args.split,
                                         overwrite=True)
    meta = preprocess.preprocess(config, beam_args)
    runner = " ".join(beam_args) or "default (DirectRunner, multi_processing)"
    text = "\n".join(["| source | rows read | wall s | rows/s | cores | runner args |", "|---|---|---|---|---|---|",
                      f"| {args.source} | {meta['rows_read']:,} | {meta['wall_seconds']} | "
                      f"{meta['rows_per_second']:,.0f} | {os.cpu_count()} | {runner} |"])
    print(text)
    figures = {"source": args.source, "input": args.input, "split": args.split, "cores": os.cpu_count(),
               "runner_args": beam_args, **{k: meta[k] for k in ("rows_read", "rows_written", "rows_rejected",
                                                                  "wall_seconds", "rows_per_second")}}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    if args.results:
        path = results_files.save(args.results, text, figures, "benchmarks.preprocess_throughput",
                                  sys.argv[1:] if argv is None else argv)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
