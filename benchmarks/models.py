"""Per-domain quality and training speed of several models on one preprocessed data set.

    python -m benchmarks.models --data /tmp/ml1m --task ranking \\
        --models ranker,din,dnn,mha,shared-bottom,mmoe,ple,star,ranker-no-pcrg,ranker:chunk_size=1 \\
        --epochs 2 --seeds 0,1,2 --output runs/bench/ml1m-ranking

Each model is trained by `mdr_keras.training.train` (the code `mdr train` runs), one after the other,
then evaluated by `training.evaluate` on `--split`. A model is `name` or `name:key=value[:key=value]`
to override fields of its model config (ablations and variants, e.g. `adi:dsbn=false`,
`adi:fusion=sum`, `ranker:chunk_size=10`). Prints one table: a row per model, per-domain and overall
metrics (Recall@K over each domain's full corpus at `--ks` for retrieval, or with `--sampled` the sampled
protocol's, the positive among `--sampled-negatives` drawn by `--sampling`; AUC and logloss for ranking, with
the ADS AUC Imp. against `--baseline`), parameters, and training examples/s; writes `results.json` and the same table as
Markdown (`results.md`) beside the model folders. With several `--seeds` every model is trained once
per seed and a cell is the mean +- the sample standard deviation over the seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import results as results_files  # noqa: E402
from mdr import cli  # noqa: E402  (the flag choices `mdr train` / `mdr evaluate` offer)


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


def parse_models(text: str):
    """'adi:forward_units=[64,32],star' -> ['adi:forward_units=[64,32]', 'star'] (commas inside [] stay)."""
    return [m for m in re.split(r",(?![^\[]*\])", text) if m]


def parse_ks(text: str):
    """`--ks`: positive cutoffs, e.g. "10,50"."""
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise ValueError(f"--ks: comma-separated positive integers. Received: {text!r}")
    return ks


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
                                learning_rate=args.learning_rate, lr_schedule=args.lr_schedule,
                                weight_decay=args.weight_decay, seed=seed, patience=args.patience,
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


def run_folder(label, seed=0, seed_suffix=False):
    """The model folder's name of a model variant (and seed)."""
    # Only plain characters: TensorFlow reads checkpoints by glob, where "[256]" is a pattern.
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label.replace(":", "__")) + (f"_seed{seed}" if seed_suffix else "")


def run_one(label, task, data_dir, out_dir, args, strategy, seed=0, seed_suffix=False):
    from mdr_keras import training

    config = train_config(label, task, args, seed)
    model_dir = os.path.join(out_dir, run_folder(label, seed, seed_suffix))
    summary = training.train(data_dir, model_dir, config, strategy=strategy, verbose=0)
    metrics = training.evaluate(model_dir, data_dir, args.split, ks=args.ks, **_protocol(args))
    rows = training.split_rows(data_dir, "train") * summary["epochs_run"]
    return {"model": label, "seed": seed, "parameters": summary["parameters"], "epochs": summary["epochs_run"],
            "train_seconds": summary["train_seconds"],
            "examples_per_second": rows / max(summary["train_seconds"], 1e-9), "metrics": metrics}


POPULARITY = "popularity (per domain)"


def _protocol(args):
    """The sampled protocol's settings of a run (files from before they were flags: 100 uniform)."""
    return {"sampled_negatives": getattr(args, "sampled_negatives", 100),
            "sampling": getattr(args, "sampling", "uniform")}


def table_title(every_args, sampled=False) -> str:
    """The line above a table: data set, split and each distinct training setting of the runs in it (the
    same words for one run and for a merge of many, so a table reads alike however it was made)."""
    def replicas(a):  # the strategy's count a run recorded (GPUs or CPU replicas); older files: --cpu-replicas
        return a.get("replicas") or a.get("cpu_replicas") or 1

    def setting(a):  # files from before the schedule or patience existed trained at a constant rate, without stopping
        return (f"{a['epochs']} epoch(s)" + (f" (patience {a['patience']})" if a.get("patience") else "")
                + f", batch {a['batch_size']}" + (f" x {replicas(a)} replica(s)" if replicas(a) > 1 else "")
                + f", lr {a['learning_rate']:g} ({a.get('lr_schedule') or 'constant'}), "
                + (f"weight decay {a['weight_decay']:g}, " if a.get("weight_decay") else "")
                + f"seed(s) {a['seeds']}")

    a = every_args[0]
    # in the order the runs were merged (sorted as text, "20 epoch(s)" came before "5 epoch(s)")
    settings = dict.fromkeys(setting(a) for a in every_args)
    title = f"{a['task']} on {a['data']} ({a['split']} split), {'; '.join(settings)}"
    if sampled:
        protocols = dict.fromkeys("{sampled_negatives} {sampling}".format(**_protocol(argparse.Namespace(**a)))
                                  for a in every_args)
        title += f"; sampled protocol, negatives per query: {', '.join(protocols)}"
    return title


def recall_columns(results, sampled=False):
    """The retrieval table's metrics: every cutoff the first row has (`recall@K`, by K), or the sampled
    protocol's (`sampled_recall@K`)."""
    prefix = "sampled_recall@" if sampled else "recall@"
    keys = [k for k in results[0]["metrics"]["overall"] if k.startswith(prefix) and k[len(prefix):].isdigit()]
    # merged runs of other cutoffs: the cutoffs every row has
    keys = [k for k in keys if all(k in r["metrics"]["overall"] for r in results)]
    return sorted(keys, key=lambda k: int(k[len(prefix):]))


def popularity_row(args):
    """The row of the per-domain popularity ranking (`evaluation.evaluate_popularity`): the floor of a
    retrieval table."""
    from mdr_keras import evaluation

    metrics = evaluation.evaluate_popularity(args.data, args.split, ks=args.ks, **_protocol(args))
    return {"model": POPULARITY, "seed": 0, "parameters": 0, "epochs": 0, "train_seconds": 0.0,
            "examples_per_second": 0.0, "metrics": metrics}


def _cell(values, fmt="{:.4f}"):
    """One table cell: the value, or mean +- sample sd over seeds."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def table(results, task, baseline=None, markdown=False, sampled=False) -> str:
    """The results as one aligned text table (or a Markdown table), a row per model; the runs of one
    model over several seeds share a row (mean +- sd). Retrieval: `recall_columns`."""
    from mdr_keras.evaluation import auc_improvement

    by_model = {}
    for r in results:
        by_model.setdefault(r["model"], []).append(r)
    seeds = max(len(runs) for runs in by_model.values())
    domains = list(results[0]["metrics"]["per_domain"]) + ["overall"]
    cols = ["auc"] if task == "ranking" else recall_columns(results, sampled)
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
        if model == POPULARITY:  # nothing trained
            line += ["-", "-"]
        else:
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


def merge(args, argv) -> int:
    """`--merge`: the rows of several runs in one table (a first popularity row kept, later ones dropped)."""
    runs = []  # one per --merge file: {"args": [the arguments of each run it holds], "results": [...]}
    for path in args.merge:
        try:
            with open(path) as f:
                run = json.load(f)
            # a run's results.json has its "args"; a committed table (--results) the "merged" args of its runs,
            # so a table can grow by new runs after the run folders are gone
            if "merged" in run:
                every = run["merged"]
            else:  # a run cut short holds fewer seeds than it was asked for: the title names those it has
                done = dict.fromkeys(str(r["seed"]) for r in run["results"] if r["model"] != POPULARITY)
                every = [{**run["args"], "seeds": ",".join(done) or run["args"]["seeds"]}]
            runs.append({"args": every, "results": run["results"]})
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            print(f"benchmarks.models: error: --merge {path}: not a results.json of benchmarks.models ({e})",
                  file=sys.stderr)
            return 1
    every_args = [a for r in runs for a in r["args"]]
    keys = {(a["data"], a["task"], a["split"]) for a in every_args}
    if len(keys) != 1:
        print(f"benchmarks.models: error: --merge needs runs of one data set, task and split. Received: {sorted(keys)}",
              file=sys.stderr)
        return 2
    task = keys.pop()[1]
    def scoped(text):  # "N:NAME" -> (N, NAME), the N-th --merge file only; "NAME" -> (None, NAME), every file
        number, colon, name = text.partition(":")
        return (int(number), name) if colon and number.isdigit() else (None, text)

    renames = {}  # (file number or None for every file, old name) -> new name
    for item in args.rename:
        old, sep, new = item.partition("=>")
        if sep:
            renames[scoped(old)] = new
    drops = {scoped(item) for item in args.drop}  # rows left out (a run's other models, shown in another table)
    results, seen_popularity = [], False
    for number, run in enumerate(runs, 1):
        for r in run["results"]:
            if (number, r["model"]) in drops or (None, r["model"]) in drops:
                continue
            name = renames.get((number, r["model"]), renames.get((None, r["model"]), r["model"]))
            r = {**r, "model": name}
            if r["model"] == POPULARITY:
                if seen_popularity:
                    continue
                seen_popularity = True
            results.append(r)
    title = table_title(every_args, args.sampled)
    print(title)
    print(table(results, task, args.baseline, sampled=args.sampled))
    if args.results:
        path = results_files.save(args.results, f"{title}\n\n{table(results, task, args.baseline, markdown=True, sampled=args.sampled)}",
                                  {"merged": every_args, "results": results}, "benchmarks.models", argv)
        print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="output folder of `mdr preprocess` (required unless --merge)")
    parser.add_argument("--task", choices=("retrieval", "ranking"), help="required unless --merge")
    parser.add_argument("--models", help="comma-separated models / variants (required unless --merge)")
    parser.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                        help="train nothing: one table of the rows of these results.json files (of one data set, "
                             "split and task), each row's settings from its own file; a committed table "
                             "(benchmarks/results/NAME.json) counts as the runs it was merged from")
    parser.add_argument("--drop", action="append", default=[], metavar="NAME",
                        help="with --merge: leave out the rows of model NAME (as named in its file); N:NAME in the "
                             "N-th --merge file only; repeatable")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=>NEW",
                        help="with --merge: show the rows of model OLD as NEW (e.g. when a default changed since); "
                             "N:OLD=>NEW renames in the N-th --merge file only (from 1); repeatable")
    parser.add_argument("--output", default="runs/bench", help="folder for the model folders and results.json")
    # Training flags default to `mdr train`'s recipe (TrainConfig's defaults): the tables use what users get.
    parser.add_argument("--epochs", type=int, help="default: TrainConfig's for the task (training.DEFAULT_EPOCHS)")
    parser.add_argument("--batch-size", type=int, help="default: TrainConfig's (512)")
    parser.add_argument("--learning-rate", type=float, help="default: TrainConfig's (1e-3)")
    parser.add_argument("--lr-schedule", choices=cli.LR_SCHEDULES, help="default: TrainConfig's (auto)")
    parser.add_argument("--weight-decay", type=float, help="default: TrainConfig's (0: Adam)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each model is trained once per seed")
    parser.add_argument("--patience", type=int, help="default: TrainConfig's (2)")
    parser.add_argument("--validation-split", default="eval")
    parser.add_argument("--split", default="test", help="split the table reports")
    parser.add_argument("--baseline", help="model of the AUC Imp. column (ranking)")
    parser.add_argument("--ks", default="50,100", help="Recall@K cutoffs (retrieval), comma-separated")
    parser.add_argument("--sampled", action="store_true",
                        help="retrieval: tabulate the sampled protocol's recall (as `mdr evaluate` prints it)")
    parser.add_argument("--sampled-negatives", type=int, default=100, help="negatives per query of the sampled protocol")
    parser.add_argument("--sampling", choices=cli.SAMPLINGS, default="uniform",
                        help="how the sampled protocol draws its negatives (`mdr evaluate --sampling`)")
    parser.add_argument("--cpu-replicas", type=int, default=0)
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--results", help="also write benchmarks/results/NAME.json and NAME.md (the docs' tables)")
    args = parser.parse_args(argv)
    try:
        args.ks = parse_ks(args.ks)
    except ValueError as e:
        parser.error(str(e))
    if args.sampled and args.task == "ranking":
        parser.error("--sampled: the sampled protocol is retrieval's (ranking reports AUC)")
    if args.merge:
        return merge(args, sys.argv[1:] if argv is None else argv)
    missing = [f"--{n}" for n in ("data", "task", "models") if not getattr(args, n)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")

    from mdr_keras import training

    recipe = training.TrainConfig()
    for name in ("batch_size", "learning_rate", "lr_schedule", "weight_decay", "patience"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(recipe, name))
    if args.epochs is None:
        args.epochs = training.DEFAULT_EPOCHS[args.task]
    labels = parse_models(args.models)
    try:
        seeds = parse_seeds(args.seeds)
        from mdr_keras import evaluation

        evaluation.check_sampling(args.sampled_negatives, args.sampling)
        if args.results:
            results_files.check_name(args.results)
        check_models(labels, args.task, args.data, args)
    except ValueError as e:
        print(f"benchmarks.models: error: {e}", file=sys.stderr)
        return 2
    strategy = training.make_strategy(cpu_replicas=args.cpu_replicas)
    args.replicas = strategy.num_replicas_in_sync  # recorded with the results: the title names it
    os.makedirs(args.output, exist_ok=True)
    results = [popularity_row(args)] if args.task == "retrieval" else []
    for seed in seeds:  # every model once per seed before the next seed: a cut run still compares all
        for label in labels:
            results.append(run_one(label, args.task, args.data, args.output, args, strategy, seed, len(seeds) > 1))
            print(f"done {label} seed {seed}: {results[-1]['train_seconds']:.0f} s", file=sys.stderr, flush=True)
            with open(os.path.join(args.output, "results.json"), "w") as f:
                json.dump({"args": vars(args), "results": results}, f, indent=2)
    title = table_title([vars(args)], args.sampled)
    print(title)
    print(table(results, args.task, args.baseline, sampled=args.sampled))
    markdown = table(results, args.task, args.baseline, markdown=True, sampled=args.sampled)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(f"{title}\n\n{markdown}\n")
    if args.results:
        path = results_files.save(args.results, f"{title}\n\n{markdown}",
                                  {"args": vars(args), "results": results}, "benchmarks.models",
                                  sys.argv[1:] if argv is None else argv)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
