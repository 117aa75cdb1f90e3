"""Per-epoch Recall@50 of retrieval models on the rows early stopping watches and on the split reported.

    python -m benchmarks.curves --data /tmp/pw --models adi,dnn-domain --epochs 14 --seeds 0 \\
        --output runs/bench/pw-curves --results planted-id-only-curves

Early stopping keeps the epoch whose validation Recall@50 is best (`mdr_keras.training`); the table is
worth that choice only when the validation curve peaks where the reported one does. Each model is trained
by `training.train` with the recipe's settings and `--epochs` epochs without early stopping (every epoch
runs), and after each epoch the overall full-corpus Recall@50 is read on the validation rows (what early
stopping watches, `val_recall@50`: eval, or the train split's holdout when the data has no test split)
and on `--split` (overall and per domain). One row per model, seed and epoch; the last column marks the
epoch that early stopping with the recipe's patience would have restored and the best epoch on `--split`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import results as results_files  # noqa: E402
from benchmarks.models import check_models, parse_models, parse_seeds, run_folder, train_config  # noqa: E402


def _recall_callback(data_dir: str, split: str, k: int, rows: list):
    """A Keras callback appending, after every epoch, the epoch's `val_recall@k` (from the logs) and the
    Recall@k of `split` (overall and per domain) to `rows`."""
    import tf_keras as keras

    from mdr_keras import evaluation

    class _Curve(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            metrics = evaluation.evaluate_recall(self.model, data_dir, split, ks=(k,), sampled_negatives=1)
            rows.append({"epoch": epoch + 1, "validation": (logs or {}).get(f"val_recall@{k}"),
                         "overall": metrics["overall"][f"recall@{k}"],
                         "per_domain": {d: m[f"recall@{k}"] for d, m in metrics["per_domain"].items()}})

    return _Curve()


def stopped_at(validation, patience: int) -> int:
    """The epoch (from 1) early stopping with `patience` restores on the `validation` curve (from epoch
    1): the best so far when `patience` epochs in a row have not improved on it, else the best of them all,
    as `keras.callbacks.EarlyStopping(restore_best_weights=True)` does."""
    best, waited = 0, 0
    for i, v in enumerate(validation):
        if v > validation[best] or i == 0:
            best, waited = i, 0
        else:
            waited += 1
            if patience and waited >= patience:
                break
    return best + 1


def table(runs, split: str, k: int, markdown: bool = False) -> str:
    """A row per model, seed and epoch; `stopped` and `best` mark the epoch early stopping restores and the
    best epoch of `split`."""
    domains = list(runs[0]["curve"][0]["per_domain"])
    header = ["model", "seed", "epoch", f"validation recall@{k}", f"{split} overall recall@{k}"] + \
        [f"{split} {d} recall@{k}" for d in domains] + ["mark"]
    lines = []
    for run in runs:
        curve = run["curve"]
        best = max(curve, key=lambda row: row["overall"])["epoch"]
        for row in curve:
            mark = ", ".join(m for m, e in (("stopped", run["stopped_at"]), (f"best on {split}", best))
                             if e == row["epoch"])
            lines.append([run["model"], str(run["seed"]), str(row["epoch"]), f"{row['validation']:.4f}",
                          f"{row['overall']:.4f}"] + [f"{row['per_domain'][d]:.4f}" for d in domains] + [mark])
    if markdown:
        rule = ["---"] * 3 + ["---:"] * (len(header) - 4) + ["---"]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule] + lines)
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]
    return "\n".join("  ".join(c.rjust(w) if 2 < i < len(header) - 1 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(cells, widths))) for cells in [header] + lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="output folder of `mdr preprocess`")
    parser.add_argument("--models", required=True, help="comma-separated retrieval models / variants (as benchmarks.models)")
    parser.add_argument("--epochs", type=int, default=14, help="epochs, every one run (no early stopping)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--split", help="split whose curve is reported (default: test when the data has one, else eval)")
    parser.add_argument("--output", default="runs/bench/curves", help="folder for the model folders and curves.json")
    parser.add_argument("--results", help="also write benchmarks/results/NAME.json and NAME.md (the docs' tables)")
    args = parser.parse_args(argv)

    from mdr_keras import training

    recipe = training.TrainConfig()
    # The recipe's settings, but every epoch run: the curve past the epoch early stopping would end at.
    settings = argparse.Namespace(epochs=args.epochs, batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
                                  lr_schedule=recipe.lr_schedule, weight_decay=recipe.weight_decay, patience=0,
                                  validation_split=recipe.validation_split, mixed_precision=False)
    try:  # every check before the first model trains
        labels, seeds = parse_models(args.models), parse_seeds(args.seeds)
        if not labels:
            raise ValueError(f"--models names no model. Received: --models {args.models!r}")
        if args.results:
            results_files.check_name(args.results)
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1. Received: --epochs {args.epochs}")
        split = args.split or training.report_split(args.data)
        if not training.split_rows(args.data, split):
            raise ValueError(f"--split {split}: {args.data} has no rows there")
        check_models(labels, "retrieval", args.data, settings)
        for label in labels:
            for seed in seeds:
                folder = os.path.join(args.output, run_folder(label, seed, len(seeds) > 1))
                if os.path.exists(folder):  # training would resume there, and the curve miss its first epochs
                    raise ValueError(f"{folder} exists: remove it or give another --output")
    except (ValueError, FileNotFoundError) as e:
        print(f"benchmarks.curves: error: {e}", file=sys.stderr)
        return 2
    k = training.RETRIEVAL_MONITOR_K
    os.makedirs(args.output, exist_ok=True)
    runs = []
    for seed in seeds:
        for label in labels:
            curve = []
            model_dir = os.path.join(args.output, run_folder(label, seed, len(seeds) > 1))
            summary = training.train(args.data, model_dir, train_config(label, "retrieval", settings, seed),
                                     verbose=0, callbacks=[_recall_callback(args.data, split, k, curve)])
            runs.append({"model": label, "seed": seed, "validation_split": summary["validation"],
                         "holdout_start": summary.get("holdout_start"), "curve": curve,
                         "stopped_at": stopped_at([r["validation"] for r in curve], recipe.patience)})
            with open(os.path.join(args.output, "curves.json"), "w") as f:
                json.dump({"args": vars(args), "runs": runs}, f, indent=2)
    validation = ", ".join(sorted({r["validation_split"] for r in runs}))
    title = (f"retrieval on {args.data}, Recall@{k} after each of {args.epochs} epochs (batch {recipe.batch_size}, "
             f"lr {recipe.learning_rate:g}), validation rows: {validation}; reported split: {split}; "
             f"'stopped': the epoch early stopping with patience {recipe.patience} restores")
    print(title)
    print(table(runs, split, k))
    if args.results:
        path = results_files.save(args.results, f"{title}\n\n{table(runs, split, k, markdown=True)}",
                                  {"args": vars(args), "runs": runs}, "benchmarks.curves",
                                  sys.argv[1:] if argv is None else argv)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
