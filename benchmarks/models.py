"""Per-domain quality and training speed of several models on one preprocessed data set.

    python -m benchmarks.models --data /tmp/ml1m --task ranking \\
        --models ranker,din,dnn,mha,shared-bottom,mmoe,ple,star,ranker-no-pcrg,ranker:chunk_size=1 \\
        --epochs 2 --seeds 0,1,2 --output runs/bench/ml1m-ranking

Each model is trained by `mdr_keras.training.train` (the code `mdr train` runs), one after the other,
then evaluated by `training.evaluate` on `--split`. A model is `name` or `name:key=value[:key=value]`
to override fields of its model config (ablations and variants, e.g. `adi:dsbn=false`,
`adi:fusion=sum`, `ranker:chunk_size=10`). Prints one table: a row per model, per-domain and overall
metrics (Recall@50/@100 for retrieval, AUC and logloss for ranking, with the ADS AUC Imp. against
`--baseline`), parameters, and training examples/s; writes `results.json` and the same table as
Markdown (`results.md`) beside the model folders. With several `--seeds` every model is trained once
per seed and a cell is the mean +- the sample standard deviation over the seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_model(text: str):
    """'adi:dsbn=false:fusion=sum' -> ('adi', {'dsbn': False, 'fusion': 'sum'})."""
    name, *pairs = text.split(":")
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"a model variant is name:key=value. Received: {text!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def parse_seeds(text: str):
    """'0,1,2' -> [0, 1, 2]."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds is a comma-separated list of distinct integers. Received: {text!r}")
    return seeds


def train_config(label, task, args, seed=0):
    from mdr_keras import training

    name, overrides = parse_model(label)
    return training.TrainConfig(model=name, task=task, epochs=args.epochs, batch_size=args.batch_size,
                                learning_rate=args.learning_rate, seed=seed, patience=args.patience,
                                validation_split=args.validation_split, mixed_precision=args.mixed_precision,
                                model_config=overrides)


def check_models(labels, task, data_dir, args):
    """Builds every variant once (no training), so a bad one stops the run before hours of work."""
    from mdr_keras import training
    from mdr_contract.feature_spec import FeatureSpec

    spec = FeatureSpec.load(data_dir)
    for label in labels:
        try:
            training.build_model(spec, train_config(label, task, args))
        except (ValueError, TypeError) as e:
            raise ValueError(f"model variant {label!r}: {e}") from None


def run_one(label, task, data_dir, out_dir, args, strategy, seed=0, seed_suffix=False):
    from mdr_keras import training

    config = train_config(label, task, args, seed)
    folder = label.replace(":", "__").replace("=", "-") + (f"_seed{seed}" if seed_suffix else "")
    model_dir = os.path.join(out_dir, folder)
    summary = training.train(data_dir, model_dir, config, strategy=strategy, verbose=0)
    metrics = training.evaluate(model_dir, data_dir, args.split, ks=(50, 100))
    rows = training.split_rows(data_dir, "train") * summary["epochs_run"]
    return {"model": label, "seed": seed, "parameters": summary["parameters"], "epochs": summary["epochs_run"],
            "train_seconds": summary["train_seconds"],
            "examples_per_second": rows / max(summary["train_seconds"], 1e-9), "metrics": metrics}


def _cell(values, fmt="{:.4f}"):
    """One table cell: the value, or mean +- sample sd over seeds."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def table(results, task, baseline=None, markdown=False) -> str:
    """The results as one aligned text table (or a Markdown table), a row per model; the runs of one
    model over several seeds share a row (mean +- sd)."""
    from mdr_keras.evaluation import auc_improvement

    by_model = {}
    for r in results:
        by_model.setdefault(r["model"], []).append(r)
    seeds = max(len(runs) for runs in by_model.values())
    domains = list(results[0]["metrics"]["per_domain"]) + ["overall"]
    cols = ["auc"] if task == "ranking" else ["recall@50", "recall@100"]
    header = ["model"] + [f"{d} {c}" for d in domains for c in cols]
    if task == "ranking":
        header += ["overall logloss"]
        if baseline:
            header += [f"AUC Imp. vs {baseline}"]
    header += ["params", "train ex/s"] + (["seeds"] if seeds > 1 else [])
    mean_auc = {m: statistics.mean(r["metrics"]["overall"]["auc"] for r in runs)
                for m, runs in by_model.items()} if task == "ranking" else {}
    lines = []
    for model, runs in by_model.items():
        per = [{**r["metrics"]["per_domain"], "overall": r["metrics"]["overall"]} for r in runs]
        line = [model] + [_cell([p[d][c] for p in per]) for d in domains for c in cols]
        if task == "ranking":
            line.append(_cell([p["overall"]["logloss"] for p in per]))
            if baseline:
                line.append(f"{auc_improvement(mean_auc[model], mean_auc[baseline]):+.2%}"
                            if baseline in mean_auc else "-")
        line += [f"{runs[0]['parameters']:,}", f"{statistics.mean(r['examples_per_second'] for r in runs):,.0f}"]
        if seeds > 1:
            line.append(",".join(str(r.get("seed", "")) for r in runs))
        lines.append(line)
    if markdown:
        rule = ["---"] + ["---:"] * (len(header) - 1)
        return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule] + lines)
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header)] + [fmt(line) for line in lines])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="output folder of `mdr preprocess`")
    parser.add_argument("--task", required=True, choices=("retrieval", "ranking"))
    parser.add_argument("--models", required=True, help="comma-separated models / variants")
    parser.add_argument("--output", default="runs/bench", help="folder for the model folders and results.json")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each model is trained once per seed")
    parser.add_argument("--patience", type=int, default=0)
    parser.add_argument("--validation-split", default="eval")
    parser.add_argument("--split", default="test", help="split the table reports")
    parser.add_argument("--baseline", help="model of the AUC Imp. column (ranking)")
    parser.add_argument("--cpu-replicas", type=int, default=0)
    parser.add_argument("--mixed-precision", action="store_true")
    args = parser.parse_args(argv)

    from mdr_keras import training

    labels = [m for m in args.models.split(",") if m]
    try:
        seeds = parse_seeds(args.seeds)
        check_models(labels, args.task, args.data, args)
    except ValueError as e:
        print(f"benchmarks.models: error: {e}", file=sys.stderr)
        return 2
    strategy = training.make_strategy(cpu_replicas=args.cpu_replicas)
    os.makedirs(args.output, exist_ok=True)
    results = []
    for seed in seeds:  # every model once per seed before the next seed: a cut run still compares all
        for label in labels:
            results.append(run_one(label, args.task, args.data, args.output, args, strategy, seed, len(seeds) > 1))
            print(f"done {label} seed {seed}: {results[-1]['train_seconds']:.0f} s", file=sys.stderr, flush=True)
            with open(os.path.join(args.output, "results.json"), "w") as f:
                json.dump({"args": vars(args), "results": results}, f, indent=2)
    title = (f"{args.task} on {args.data} ({args.split} split), {args.epochs} epoch(s), batch {args.batch_size} "
             f"x {strategy.num_replicas_in_sync} replica(s), seed(s) {args.seeds}")
    print(title)
    print(table(results, args.task, args.baseline))
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(f"{title}\n\n{table(results, args.task, args.baseline, markdown=True)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
