"""tf.data input rate vs training step rate: is the input pipeline what limits training?

    python -m benchmarks.input_pipeline --data /tmp/ml1m --task retrieval --model adi \\
        [--batch-size 1024] [--steps 200] [--warmup 10] [--max-seconds 300] [--json PATH]
    python -m benchmarks.input_pipeline --data /tmp/ml1m --task ranking --models din,ranker \\
        --no-end-to-end --results NAME    # several models: their training-step rates side by side

Three measurements on the `train` split of a preprocessed data folder (`mdr preprocess` output),
with the batches `mdr train` reads: `mdr_keras.data.make_dataset(data, "train", batch, shuffle=True,
seed=...)`, repeated (so small data sets give `--steps` batches too) and with full batches only.

1. Input pipeline alone: `--warmup` batches untimed (they fill the shuffle buffer and start the
   parallel readers), then `--steps` batches pulled as fast as the pipeline gives them.
2. Training step on cached input: `--cached-batches` batches of the same pipeline are kept in memory
   (`Dataset.cache`, filled before timing) and cycled; the model, built and compiled as
   `mdr_keras.training.train` does (same strategy, optimizer and callbacks that matter for the
   step), runs one `model.fit` of `--warmup` untimed steps (tracing) then `--steps` timed ones.
   Nothing is read from disk then: this is the rate training would reach with a free input pipeline.
3. End to end: the same model `fit` on a fresh pipeline (what `mdr train` does, validation off):
   `--warmup` untimed steps (the pipeline starts), then `--steps` timed ones.

Prints a table: examples/s of each, and the ratio input / training step: above 1 the input is not
the bottleneck (with the margin that ratio says); below 1 training waits on the input. The cached
batches are cycled rather than all `--steps` of them kept, to bound memory (string features take
~4 KB a row); the step time does not depend on which batches are cycled. `--max-seconds` caps each
timed phase (fewer steps are then counted; the table says how many). A model is `name` or
`name:key=value[:key=value]` (model config overrides, as in `benchmarks.models`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def time_input(dataset, warmup, steps, max_seconds):
    """(batches, seconds) of pulling `steps` batches of `dataset` after `warmup` untimed ones."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    done, start = 0, time.perf_counter()
    for _ in range(steps):
        next(iterator)
        done += 1
        if time.perf_counter() - start > max_seconds:
            break
    return done, time.perf_counter() - start


def _stopwatch(warmup, max_seconds):
    """A Keras callback timing the steps of a fit after its first `warmup`, stopping it after `max_seconds`."""
    import tf_keras as keras

    class Stopwatch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.steps, self.start, self.end = 0, time.perf_counter(), None

        def on_train_batch_end(self, batch, logs=None):
            # Keras converts the logs to numbers before calling a callback like this one, so the step
            # has finished when this runs (also on GPUs).
            now = time.perf_counter()
            if batch < warmup:
                self.start = now
                return
            self.steps, self.end = self.steps + 1, now
            if now - self.start > max_seconds:
                self.model.stop_training = True

    return Stopwatch()


def time_fit(model, dataset, warmup, steps, max_seconds, callbacks=()):
    """(steps, seconds) of the last `steps` steps of `model.fit(dataset)` over `warmup + steps` steps.

    One epoch, no validation; the `warmup` steps first are untimed (tracing, pipeline start-up).
    """
    watch = _stopwatch(warmup, max_seconds)
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=list(callbacks) + [watch], verbose=0)
    return watch.steps, watch.end - watch.start


def run(args):
    """The measurements as a dict (see the module docstring)."""
    import tensorflow as tf
    import tf_keras as keras

    from benchmarks.models import parse_model
    from mdr_keras import data, training
    from mdr_contract import feature_spec as fs
    from mdr_keras.models import retrieval

    name, overrides = parse_model(args.model)
    strategy = training.make_strategy(cpu_replicas=args.cpu_replicas)
    replicas = strategy.num_replicas_in_sync
    global_batch = args.batch_size * replicas
    cached_batches = max(1, min(args.cached_batches or args.steps, args.steps))
    config = training.TrainConfig(model=name, task=args.task, epochs=1, batch_size=args.batch_size,
                                  learning_rate=args.learning_rate, seed=args.seed, patience=0,
                                  steps_per_epoch=args.steps, validation_split="", model_config=overrides,
                                  mixed_precision=args.mixed_precision)
    spec = fs.FeatureSpec.load(args.data)
    keras.utils.set_random_seed(args.seed)

    def pipeline():
        return data.make_dataset(args.data, "train", global_batch, spec=spec, shuffle=True, repeat=True,
                                 seed=args.seed, drop_remainder=True)

    results = {"data": args.data, "task": config.task, "model": args.model, "batch_size": args.batch_size,
               "replicas": replicas, "global_batch": global_batch,
               "train_rows": training.split_rows(args.data, "train"), "cached_batches": cached_batches,
               "cpus": os.cpu_count(),
               "gpus": len(tf.config.list_physical_devices("GPU"))}

    batches, seconds = time_input(pipeline(), args.warmup, args.steps, args.max_seconds)
    results["input"] = {"batches": batches, "seconds": seconds, "examples_per_second": batches * global_batch / seconds}

    cached = pipeline().take(cached_batches).cache()
    for _ in cached:  # one full pass fills the in-memory cache, so no timed step reads the disk
        pass
    cached = cached.repeat().prefetch(tf.data.AUTOTUNE)

    policy = keras.mixed_precision.global_policy()
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = training.build_compiled_model(spec, config, strategy, total_steps=config.steps_per_epoch)
        results["parameters"] = training.trainable_parameters(model)
        callbacks = [retrieval.SelfTrainingSchedule()] if config.task == training.RETRIEVAL_TASK else []
        steps, seconds = time_fit(model, cached, args.warmup, args.steps, args.max_seconds, callbacks)
        results["train_cached"] = {"steps": steps, "seconds": seconds,
                                   "examples_per_second": steps * global_batch / seconds}
        if args.end_to_end:
            steps, seconds = time_fit(model, pipeline(), args.warmup, args.steps, args.max_seconds, callbacks)
            results["train_end_to_end"] = {"steps": steps, "seconds": seconds,
                                           "examples_per_second": steps * global_batch / seconds}
    finally:
        keras.mixed_precision.set_global_policy(policy)
    results["ratio"] = results["input"]["examples_per_second"] / results["train_cached"]["examples_per_second"]
    return results


def table(results) -> str:
    """A markdown table of `run`'s results."""
    rows = [("input pipeline (make_dataset, shuffled)", results["input"], "batches")]
    rows.append(("training step (cached input)", results["train_cached"], "steps"))
    if "train_end_to_end" in results:
        rows.append(("end-to-end fit (real pipeline)", results["train_end_to_end"], "steps"))
    lines = ["| measure | examples/s | batches | seconds |", "|---|---|---|---|"]
    for label, r, key in rows:
        lines.append(f"| {label} | {r['examples_per_second']:,.0f} | {r[key]} | {r['seconds']:.3f} |")
    verdict = "input is not the bottleneck" if results["ratio"] > 1 else "training waits on the input"
    lines.append(f"| ratio input / training step | {results['ratio']:.2f}x | | {verdict} |")
    if "train_end_to_end" in results:
        e2e = results["train_end_to_end"]["examples_per_second"] / results["train_cached"]["examples_per_second"]
        lines.append(f"| ratio end-to-end / cached | {e2e:.2f}x | | |")
    lines.append(f"| trainable parameters of {results['model']} | {results['parameters']:,} | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="output folder of `mdr preprocess`")
    parser.add_argument("--task", default="", choices=("", "retrieval", "ranking"),
                        help="needed only for model names both tasks have")
    parser.add_argument("--model", default="adi", help="model name, or name:key=value[:key=value]")
    parser.add_argument("--models", help="several models, comma-separated, measured one after the other: "
                                         "a table of their training-step rates against the first's")
    parser.add_argument("--batch-size", type=int, default=1024, help="rows per replica per step")
    parser.add_argument("--steps", type=int, default=200, help="timed batches / steps of each measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches / steps before each")
    parser.add_argument("--cached-batches", type=int, default=50,
                        help="distinct batches kept in memory for the cached run (0: --steps)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="cap on each timed phase")
    parser.add_argument("--no-end-to-end", dest="end_to_end", action="store_false",
                        help="skip the fit on the real pipeline")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-replicas", type=int, default=0)
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--results", help="also write benchmarks/results/NAME.json and NAME.md (the docs' tables)")
    args = parser.parse_args(argv)
    for flag in ("batch_size", "steps", "warmup"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")

    from benchmarks.models import parse_models

    every = []
    for model in (parse_models(args.models) if args.models else [args.model]):
        results = run(argparse.Namespace(**{**vars(args), "model": model}))
        print(f"{results['model']} ({results['task']}, {results.get('parameters', 0):,} parameters) on {args.data}: "
              f"{results['train_rows']:,} train rows, batch {args.batch_size} x {results['replicas']} replica(s), "
              f"{results['cpus']} CPU(s), {results['gpus']} GPU(s); {results['cached_batches']} cached batches")
        print(table(results), flush=True)
        every.append(results)
    out = every[0] if len(every) == 1 else {"models": every}
    summary = table(every[0]) if len(every) == 1 else comparison(every)
    if len(every) > 1:
        print(summary)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **out}, f, indent=2)
    if args.results:
        from benchmarks import results as results_files

        head = (f"training steps on {args.data}, {every[0]['cached_batches']} cached batches of {args.batch_size} "
                f"x {every[0]['replicas']} replica(s), {args.steps} timed steps after {args.warmup}, "
                f"{every[0]['cpus']} CPU(s), {every[0]['gpus']} GPU(s), one process, one model at a time")
        path = results_files.save(args.results, head + "\n\n" + summary, {"args": vars(args), **out},
                                  "benchmarks.input_pipeline", sys.argv[1:] if argv is None else argv)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def comparison(every) -> str:
    """A markdown table: each model's training-step rate on cached input, and its ratio to the first model's."""
    first = every[0]["train_cached"]["examples_per_second"]
    lines = [f"| model | trainable params | training step ex/s | vs {every[0]['model']} |", "|---|---:|---:|---:|"]
    for r in every:
        rate = r["train_cached"]["examples_per_second"]
        lines.append(f"| {r['model']} | {r['parameters']:,} | {rate:,.0f} | {rate / first:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
