"""Latency of the served models over gRPC vs in-process, and throughput under concurrent clients.

    python -m benchmarks.serving_latency [--export-dir DIR --store FILE] [--k 100] [--items 100]
        [--requests 200] [--threads 8] [--load-requests 50] [--rounds 3] [--load-calls candidates,scores]
        [--mode both|latency|load|batch-cost|breakdown] [--batch-sizes 1,2,4,8]
        [--server-cpus 0 --client-cpus 1]

The export (`mdr export` / `mdr demo` output) is served by the embedded `serving.server.ModelServer`
in this process, on 127.0.0.1. Without `--export-dir`, `runs/demo/export` is used, after running
`mdr demo` into `runs/demo` when it has no export yet.

Latency mode: `--requests` queries, cycling over the domains and their users in the feature store,
each timed two ways with the same inputs:
- gRPC: `serving.client.Client.candidates(domain, user, k)` (retrieval models) and
  `Client.scores(domain, user, items, recommender_model=None)` (the ranker, `--items` items of the
  domain, the user's features on every row): the store lookup,
  request tensors, serialization, the RPC, the server's checks, the model and the decoding;
- in-process: the same store lookup and tensors, then the version's `serving_default` signature of
  the SavedModel (loaded here with `tf.saved_model.load`) called directly, outputs to numpy.
- scores through the `recommender`'s `rank` signature (what `Client.scores` calls when the export has
  it: the user's features sent once, the items' looked up in the graph; in-process: that signature);
- a recommendation (top 10 of K candidates), two ways: one call to the export's `recommender`
  (`Client.recommend`; in-process: its signature), and the two calls it replaces (`Client.recommend`
  with `recommender_model=None`; in-process: the `retrieval` signature, then the ranker's on the
  candidates' features).
The two paths take turns query by query, after `--warmup` untimed calls of each. Prints p50 / p99 per
call and the ratio gRPC / in-process: the cost of going through the server.

Load mode: `--threads` clients, each a process of its own (started once for every round) with one
channel per round, send `--load-requests` prebuilt requests each (what `Client.candidates` /
`Client.scores` send, serialized once beforehand, so the clients' Python neither shares the server's
interpreter nor costs much CPU), cycling through `--load-calls` (default: candidates and scores
alternating). A server without and one with batching (`--batching both`, the default: `enable_batching`
with the export's `batching.config`) are both up and take turns for `--rounds` rounds. Prints the median
throughput over rounds, the server process's CPU time per request (what bounds its throughput on
cores of its own; the clients share this machine's), p50 / p99 per kind, the failed requests and the
model runs per round, and the ratios to the first server. `--server-cpus 0 --client-cpus 1` pins the
servers (every thread of this process) and the client processes to separate cores, as clients on other
machines would leave the server its cores. `--json FILE` writes every figure.

Breakdown mode: one gRPC call of each kind (candidates; scores through the ranker; scores through
`rank`) cut into its pieces, each timed on its own over the same queries: the store lookup, the
request tensors, the request's bytes both ways, the server's checks and decoding, the model call from
decoded inputs, the response tensors and the client's decoding; beside them the whole call, the
in-process call, and an empty RPC (`GetModelStatus`): gRPC's own round trip on this machine, which
no change to our code can remove. What the pieces leave of the whole call is gRPC's threads and
transport.

Batch-cost mode: the retrieval signature and the scores' (`rank` of the recommender, else the ranker)
run in process on the merged inputs of 1, 2, 4, ... users (`--batch-sizes`): p50 per call and per
user, which is what merging requests can save.
"""
import argparse
import contextlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mdr_contract import artifacts  # noqa: E402  (plain Python: no TensorFlow yet)

DEMO_DIR = os.path.join("runs", "demo")
UNTIMED_CALLS = 2  # each load client's first calls, not timed (its channel connecting)


def demo_outputs(demo_dir=DEMO_DIR):
    """(export dir, data dir with the feature store) of `mdr demo` in `demo_dir`, running `mdr demo`
    first if needed."""
    from mdr import demo

    export_dir, store = os.path.join(demo_dir, demo.EXPORT), os.path.join(demo_dir, demo.DATA)
    if not (os.path.exists(os.path.join(export_dir, artifacts.MODELS_CONFIG))
            and os.path.isdir(os.path.join(store, artifacts.STORE))):
        from mdr import cli

        print(f"no demo export under {demo_dir}: running `mdr demo --output {demo_dir}` first", flush=True)
        if cli.main(["demo", "--output", demo_dir, "--port", "0"]) != 0:
            raise SystemExit("mdr demo failed")
    return export_dir, store


def percentiles(seconds):
    import numpy as np

    seconds = np.asarray(seconds)
    return float(np.percentile(seconds, 50)) * 1e3, float(np.percentile(seconds, 99)) * 1e3


def queries(store, n, items):
    """`n` (domain, user, item ids) cycling over the domains, their users and items."""
    out = []
    for i in range(n):
        domain = store.domains[i % len(store.domains)]
        users, known = store.user_ids(domain), store.item_ids(domain)
        start = (7 * i) % max(1, len(known) - items)
        out.append((domain, users[(13 * i) % len(users)], known[start:start + items]))
    return out


def load_signature(export_dir, model, signature=artifacts.DEFAULT_SIGNATURE):
    """The latest version's `signature` of `model`, loaded in this process."""
    import tensorflow as tf

    from serving import config as cfg

    base = os.path.join(export_dir, model)
    version = cfg.list_versions(base)[-1]
    if model.endswith("scann"):
        import scann  # noqa: F401  registers the ScaNN ops of the graph
    return tf.saved_model.load(os.path.join(base, str(version))).signatures[signature], version


def in_process_call(signature, inputs_info, columns):
    """The signature called on `columns` conformed as the client conforms them; outputs as numpy."""
    import tensorflow as tf

    from serving.client import _conform

    tensors = {name: tf.constant(_conform(columns[name], dtype, shape)) for name, (dtype, shape) in inputs_info.items()}
    return {k: v.numpy() for k, v in signature(**tensors).items()}


def time_pairs(local_call, grpc_call, work, warmup):
    """Seconds of each call of the two paths on every query of `work`, the paths taking turns query by
    query (a drift of the machine's speed hits both alike), after `warmup` untimed queries of each."""
    for args in work[:warmup]:
        local_call(*args)
        grpc_call(*args)
    local, remote = [], []
    for args in work:
        for fn, out in ((local_call, local), (grpc_call, remote)):
            start = time.perf_counter()
            fn(*args)
            out.append(time.perf_counter() - start)
    return percentiles(local), percentiles(remote)


def latency(server, client, store, export_dir, args):
    """Rows of the latency table: (call, model, in-process p50/p99, gRPC p50/p99)."""
    work = queries(store, args.requests, args.items)
    rows = []
    calls = [("candidates", m) for m in args.retrieval_models] + [("scores", args.ranker_model)]
    for call, model in calls:
        if model not in server.model_names:
            print(f"  (skipping {model}: not in the export)")
            continue
        signature, version = load_signature(export_dir, model)
        info = client.signature_inputs(model)
        if call == "candidates":
            def grpc_call(domain, user, items, model=model):
                return client.candidates(domain, user, args.k, store, model=model)

            def local_call(domain, user, items, signature=signature, info=info):
                return in_process_call(signature, info, store.features(user, domain))
        else:
            def grpc_call(domain, user, items, model=model):
                return client.scores(domain, user, items, store, model=model, recommender_model=None)

            def local_call(domain, user, items, signature=signature, info=info):
                return in_process_call(signature, info, store.features(user, domain, items))

        local, remote = time_pairs(local_call, grpc_call, work, args.warmup)
        size = f"K={args.k}" if call == "candidates" else f"{args.items} items"
        rows.append((f"{call} ({size})", f"{model} v{version}", *local, *remote))
    rows += rank_rows(server, client, store, export_dir, args, work)
    rows += recommend_rows(server, client, store, export_dir, args, work)
    return rows


def rank_rows(server, client, store, export_dir, args, work):
    """The latency row of scores through the recommender's `rank` signature (the user's features sent once,
    the items' looked up in the graph): what `Client.scores` calls when the export has it."""
    model = args.recommender_model
    if model not in server.model_names:
        return []
    signature, version = load_signature(export_dir, model, artifacts.RANK_SIGNATURE)
    info = client.signature_inputs(model, artifacts.RANK_SIGNATURE)

    def local_call(domain, user, items):
        return in_process_call(signature, info, call_columns(store, "scores", artifacts.RANK_SIGNATURE, domain, user,
                                                             items))

    def grpc_call(domain, user, items):
        return client.scores(domain, user, items, store, recommender_model=model)

    local, remote = time_pairs(local_call, grpc_call, work, args.warmup)
    return [(f"scores ({args.items} items), user sent once", f"{model} v{version} `rank`", *local, *remote)]


def recommend_rows(server, client, store, export_dir, args, work):
    """Latency rows of a recommendation (top 10 of K candidates): the one-call `recommender` and the
    two calls it replaces (exact retrieval, then the ranker on the candidates)."""
    retrieval, ranker = args.retrieval_models[0], args.ranker_model
    if args.recommender_model not in server.model_names or retrieval not in server.model_names:
        print(f"  (skipping recommend: {args.recommender_model} or {retrieval} not in the export)")
        return []
    one, version = load_signature(export_dir, args.recommender_model)
    one_info = client.signature_inputs(args.recommender_model)
    (first, first_version), first_info = load_signature(export_dir, retrieval), client.signature_inputs(retrieval)
    (second, second_version), second_info = load_signature(export_dir, ranker), client.signature_inputs(ranker)

    def one_local(domain, user, items):
        return in_process_call(one, one_info, store.features(user, domain))

    def one_grpc(domain, user, items):
        return client.recommend(domain, user, store, n=10, k=args.k, recommender_model=args.recommender_model)

    def two_local(domain, user, items):
        ids = in_process_call(first, first_info, store.features(user, domain))["item_ids"][0]
        found = [i.decode() for i in ids.tolist() if i]
        return in_process_call(second, second_info, store.features(user, domain, found))

    def two_grpc(domain, user, items):
        return client.recommend(domain, user, store, n=10, k=args.k, recommender_model=None)

    rows = []
    for name, model, local_call, grpc_call in (
            ("recommend, one call", f"{args.recommender_model} v{version}", one_local, one_grpc),
            ("recommend, two calls", f"{retrieval} v{first_version} + {ranker} v{second_version}", two_local,
             two_grpc)):
        local, remote = time_pairs(local_call, grpc_call, work, args.warmup)
        rows.append((f"{name} (K={args.k}, top 10)", model, *local, *remote))
    return rows


PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


def call_target(kind, args, export_dir):
    """(model, signature) a call of `kind` goes to: candidates to the first retrieval model; scores to the
    recommender's `rank` where the export has one (what `Client.scores` calls), else to the ranker."""
    if kind == "candidates":
        return args.retrieval_models[0], artifacts.DEFAULT_SIGNATURE
    if os.path.isdir(os.path.join(export_dir, args.recommender_model)):
        return args.recommender_model, artifacts.RANK_SIGNATURE
    return args.ranker_model, artifacts.DEFAULT_SIGNATURE


def call_columns(store, kind, signature, domain, user, items):
    """The feature columns of one query for a call of `kind` to `signature`: the user's features, plus the
    item ids (`rank`: the user once) or the items' features on the user's replicated rows (the ranker)."""
    import numpy as np

    if kind == "candidates":
        return store.features(user, domain)
    if signature == artifacts.RANK_SIGNATURE:
        return {**store.features(user, domain), artifacts.RANK_ITEMS_INPUT: np.array([items], dtype=object)}
    return store.features(user, domain, items)


def load_requests(client, store, export_dir, args, n=64):
    """`n` serialized `PredictRequest`s (kind, bytes), cycling through `args.load_calls`: what
    `Client.candidates` and `Client.scores` send for the queries of `queries`."""
    from serving.client import _conform

    out = []
    for i, (domain, user, items) in enumerate(queries(store, n, args.items)):
        kind = args.load_calls[i % len(args.load_calls)]
        model, signature = call_target(kind, args, export_dir)
        columns = call_columns(store, kind, signature, domain, user, items)
        info = client.signature_inputs(model, signature)
        inputs = {name: _conform(columns[name], dtype, shape) for name, (dtype, shape) in info.items()}
        out.append((kind, client.predict_request(model, inputs, signature=signature).SerializeToString()))
    return out


def client_process(address, payloads, count, offset):
    """One load client, in its own process (only gRPC imported): sends `count` of the prebuilt
    `payloads` after `UNTIMED_CALLS` untimed ones; returns (kind, start, end, error) per timed call."""
    import grpc

    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20),
                                                 ("grpc.max_receive_message_length", 64 << 20)]) as channel:
        predict = channel.unary_unary(PREDICT_METHOD)  # bytes in, bytes out
        out = []
        for n in range(-UNTIMED_CALLS, count):
            kind, payload = payloads[(offset + n) % len(payloads)]
            start, error = time.time(), None
            try:
                predict(payload, timeout=30.0)
            except grpc.RpcError as e:
                error = f"{e.code().name}: {e.details()}"
            if n >= 0:
                out.append((kind, start, time.time(), error))
        return out


def start_client(cpus=None):
    """A load client process's start: pinned to `cpus` (None: any), gRPC imported (not in the first round)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    import grpc  # noqa: F401


def pin_this_process(cpus):
    """Every thread of this process (gRPC's, TensorFlow's pools) on `cpus`; threads started later inherit it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            pass


def client_pool(args):
    """The load's client processes (spawned once: starting Python in each took more CPU than the calls)."""
    import multiprocessing

    return multiprocessing.get_context("spawn").Pool(args.threads, initializer=start_client,
                                                     initargs=(args.client_cpus,))


def load(server, payloads, args, pool):
    """One round of `args.threads` concurrent clients of `pool`, each in its own process sending
    prebuilt requests (the clients' Python does not share the server's interpreter): ((kind, start,
    end, error) per timed call, CPU seconds this process (the server) spent in the round)."""
    import resource

    def cpu():
        usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
        return usage.ru_utime + usage.ru_stime

    before = cpu()
    per_client = pool.starmap(client_process, [(server.address, payloads, args.load_requests, 5 * i)
                                               for i in range(args.threads)])
    return [r for rows in per_client for r in rows], cpu() - before


def load_figures(rounds, model_runs, sent_per_round):
    """Figures of a server's load rounds ((calls, server CPU seconds) each): requests/s per round and
    their median, the server's CPU milliseconds per request (`sent_per_round` requests a round, the
    clients' untimed first calls included), p50 / p99 per kind over every round's calls, failed calls,
    and model runs per round."""
    import numpy as np

    calls = [r for rows, _ in rounds for r in rows]
    rates = [len(rows) / (max(r[2] for r in rows) - min(r[1] for r in rows)) for rows, _ in rounds]
    figures = {"rates": rates, "rate": float(np.median(rates)), "requests": len(calls),
               "failed": sum(e is not None for *_, e in calls), "model_runs": model_runs / len(rounds),
               "server_cpu_ms": 1e3 * sum(cpu for _, cpu in rounds) / (sent_per_round * len(rounds))}
    for kind in ("candidates", "scores"):
        times = [end - start for k, start, end, e in calls if k == kind and e is None]
        figures[kind] = percentiles(times) if times else None
    return figures


def load_mix(args):
    """The load's calls in words, e.g. "candidates K=100 and scores of 100 items alternating"."""
    words = {"candidates": f"candidates K={args.k}", "scores": f"scores of {args.items} items"}
    calls = [words[c] for c in args.load_calls]
    return calls[0] + " only" if len(set(args.load_calls)) == 1 else " and ".join(calls) + " alternating"


def batch_cost(store, export_dir, args):
    """Rows (signature, users per call, users or items scored per call, p50 ms, p50 ms per user) of each
    batchable call run in process on the merged inputs of 1, 2, 4, ... users: what merging requests can save."""
    import numpy as np
    import tensorflow as tf

    from serving.client import _conform

    work = queries(store, max(args.batch_sizes), args.items)
    rows = []
    for kind in ("candidates", "scores"):
        model, name = call_target(kind, args, export_dir)
        signature, version = load_signature(export_dir, model, name)
        specs = signature.structured_input_signature[1]
        for users in args.batch_sizes:
            columns = [call_columns(store, kind, name, domain, user, items) for domain, user, items in work[:users]]
            tensors = {k: tf.constant(np.concatenate([_conform(c[k], spec.dtype, tuple(spec.shape)) for c in columns]))
                       for k, spec in specs.items()}
            scored = users * args.items if kind == "scores" else users
            seconds = []
            for n in range(args.warmup + args.requests):
                start = time.perf_counter()
                {k: v.numpy() for k, v in signature(**tensors).items()}
                if n >= args.warmup:
                    seconds.append(time.perf_counter() - start)
            p50 = percentiles(seconds)[0]
            rows.append((f"{model} v{version} `{name}`", users, scored, p50, p50 / users))
    return rows


PIECES = ("feature store lookup (client)", "request tensors (client)", "request bytes, written and read",
          "checks and decoding (server)", "model, tensors in, numpy out (server)", "response tensors (server)",
          "response bytes, written, read and decoded (client)")


def breakdown(server, client, store, export_dir, args):
    """Rows (call, piece, p50 ms, p99 ms) of one gRPC call of each kind cut into `PIECES`, each timed on
    its own over the same queries, then the sum of the pieces, the whole call, the in-process call and
    an empty RPC."""
    import numpy as np

    from serving import config as cfg
    from serving.client import _conform
    from serving.request_checks import check_inputs
    from serving.server import call_signature, predict_response
    from serving.servables import load_servable
    from serving.tensors import to_ndarray
    from tensorflow_serving.apis import predict_pb2

    work = queries(store, args.requests, args.items)
    calls = [("candidates", args.retrieval_models[0], artifacts.DEFAULT_SIGNATURE,
              lambda d, u, i: client.candidates(d, u, args.k, store, model=args.retrieval_models[0])),
             ("scores", args.ranker_model, artifacts.DEFAULT_SIGNATURE,
              lambda d, u, i: client.scores(d, u, i, store, model=args.ranker_model, recommender_model=None)),
             ("scores, user sent once", args.recommender_model, artifacts.RANK_SIGNATURE,
              lambda d, u, i: client.scores(d, u, i, store, recommender_model=args.recommender_model))]
    rows = []
    for call, model, key, grpc_call in calls:
        if model not in server.model_names:
            print(f"  (skipping {call}: {model} not in the export)")
            continue
        base = os.path.join(export_dir, model)
        version = cfg.list_versions(base)[-1]
        servable = load_servable(model, version, os.path.join(base, str(version)))
        signature = servable.signatures[key]
        info = client.signature_inputs(model, key)
        kind = "candidates" if call == "candidates" else "scores"
        seconds = {name: [] for name in PIECES + ("whole gRPC call", "in-process call", "empty RPC (GetModelStatus)")}

        def timed(name, fn, *fn_args):
            start = time.perf_counter()
            out = fn(*fn_args)
            seconds[name].append(time.perf_counter() - start)
            return out

        def request_tensors(columns):
            return client.predict_request(model, {n: _conform(columns[n], dtype, shape)
                                                  for n, (dtype, shape) in info.items()}, signature=key)

        def response_bytes(response):
            parsed = predict_pb2.PredictResponse.FromString(response.SerializeToString())
            return {k: to_ndarray(v) for k, v in parsed.outputs.items()}

        warm = work[:args.warmup]
        for n, (domain, user, items) in enumerate(warm + work):
            columns = timed(PIECES[0], call_columns, store, kind, key, domain, user, items)
            request = timed(PIECES[1], request_tensors, columns)
            parsed = timed(PIECES[2], lambda r: predict_pb2.PredictRequest.FromString(r.SerializeToString()), request)
            arrays = timed(PIECES[3], check_inputs, servable, signature, parsed.inputs)
            outputs = timed(PIECES[4], call_signature, signature, arrays)  # the server's own pieces
            response = timed(PIECES[5], predict_response, servable, key, outputs, sorted(outputs))
            timed(PIECES[6], response_bytes, response)
            timed("whole gRPC call", grpc_call, domain, user, items)
            timed("in-process call", lambda: in_process_call(  # the lookup included, as in the whole call
                signature.function, info, call_columns(store, kind, key, domain, user, items)))
            timed("empty RPC (GetModelStatus)", client.model_status, model)
            if n < len(warm):
                for values in seconds.values():
                    values.pop()
        total = np.sum([seconds[name] for name in PIECES], axis=0)
        label = f"{call} ({model} v{version} `{key}`)"
        rows += [(label, name, *percentiles(seconds[name])) for name in PIECES]
        rows.append((label, "sum of the pieces", *percentiles(total)))
        rows += [(label, name, *percentiles(seconds[name]))
                 for name in ("whole gRPC call", "in-process call", "empty RPC (GetModelStatus)")]
    return rows


def format_breakdown(rows):
    """A markdown table of `breakdown` rows, each piece's p50 as a share of its call's whole gRPC p50."""
    whole = {call: p50 for call, piece, p50, _ in rows if piece == "whole gRPC call"}
    lines = ["| call | piece | p50 ms | p99 ms | share of the gRPC call's p50 |", "|---|---|---:|---:|---:|"]
    lines += [f"| {call} | {piece} | {p50:.3f} | {p99:.3f} | {p50 / whole[call]:.0%} |" for call, piece, p50, p99 in rows]
    return "\n".join(lines)


def format_batch_cost(rows):
    lines = ["| signature | users per call | users or items scored | p50 ms | p50 ms per user |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {users} | {scored} | {p50:.2f} | {per:.2f} |" for name, users, scored, p50, per in rows]
    return "\n".join(lines)


def format_latency(rows):
    """A markdown table of `latency` rows with the gRPC / in-process ratios."""
    header = ["call", "model", "in-process p50 ms", "p99 ms", "gRPC p50 ms", "p99 ms", "ratio p50", "ratio p99"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for call, model, lp50, lp99, gp50, gp99 in rows:
        cells = [call, model, f"{lp50:.2f}", f"{lp99:.2f}", f"{gp50:.2f}", f"{gp99:.2f}", f"{gp50 / lp50:.2f}x",
                 f"{gp99 / lp99:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_load(by_mode):
    """A markdown table of `load` figures per server mode, with throughput relative to the first mode."""
    lines = ["| server | requests/s (median of rounds) | vs first | server CPU ms per request | vs first | "
             "model runs per round | candidates p50 / p99 ms | scores p50 / p99 ms | failed |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = base_cpu = None
    for mode, f in by_mode.items():
        rate, cpu = f["rate"], f["server_cpu_ms"]
        base, base_cpu = base or rate, base_cpu or cpu
        cells = ["-" if f[kind] is None else f"{f[kind][0]:.2f} / {f[kind][1]:.2f}" for kind in ("candidates", "scores")]
        # CPU per request, inverted: how many more requests the same cores serve
        lines.append(f"| {mode} | {rate:.1f} | {rate / base:.2f}x | {cpu:.2f} | {base_cpu / cpu:.2f}x | "
                     f"{f['model_runs']:.0f} | {cells[0]} | {cells[1]} | {f['failed']} |")
    return "\n".join(lines)


def cpu_list(text):
    """'1,0' -> [0, 1]: CPUs this machine has."""
    try:
        cpus = {int(c) for c in text.split(",") if c.strip()}
    except ValueError:
        cpus = set()
    if not cpus or not cpus <= os.sched_getaffinity(0):
        raise argparse.ArgumentTypeError(f"a comma-separated list of CPUs of this machine "
                                         f"({sorted(os.sched_getaffinity(0))}). Received: {text!r}")
    return sorted(cpus)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-dir", help="an `mdr export` folder (default: runs/demo/export)")
    parser.add_argument("--store", help="preprocessing output folder with the feature store; default: the one "
                        "next to the export (<export-dir>/../data)")
    parser.add_argument("--mode", default="both", choices=("both", "latency", "load", "batch-cost", "breakdown"),
                        help="both = latency and load; batch-cost: each batchable call in process on the merged "
                        "inputs of --batch-sizes users; breakdown: one gRPC call of each kind cut into its pieces")
    parser.add_argument("--batch-sizes", default="1,2,4,8", type=lambda s: [int(v) for v in s.split(",")],
                        help="batch-cost mode: users per call")
    parser.add_argument("--k", type=int, default=100, help="candidates per retrieval request")
    parser.add_argument("--items", type=int, default=100, help="items per ranker request")
    parser.add_argument("--requests", type=int, default=200, help="timed calls per path (latency mode)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per path first")
    parser.add_argument("--threads", type=int, default=8, help="concurrent clients (load mode)")
    parser.add_argument("--load-requests", type=int, default=50, help="requests per client (load mode)")
    parser.add_argument("--rounds", type=int, default=3, help="load mode: rounds per server, the servers taking turns")
    parser.add_argument("--load-calls", default="candidates,scores", type=lambda s: s.split(","),
                        help="load mode: the calls each client cycles through (candidates, scores)")
    parser.add_argument("--retrieval-models", default="retrieval,retrieval_scann",
                        help="comma-separated retrieval models to time (the first one is used in load mode)")
    parser.add_argument("--ranker-model", default="ranker")
    parser.add_argument("--recommender-model", default="recommender",
                        help="the one-call recommender (latency mode; skipped when the export has none)")
    parser.add_argument("--server-cpus", type=cpu_list, default=None,
                        help="load mode: pin the servers (this process, every thread) to these CPUs, e.g. 0")
    parser.add_argument("--client-cpus", type=cpu_list, default=None,
                        help="load mode: pin the client processes to these CPUs, e.g. 1 (clients off the "
                        "server's cores, as from another machine)")
    parser.add_argument("--batching", default="both", choices=("off", "on", "both"),
                        help="load mode: the server without, with, or without and then with batching")
    parser.add_argument("--batching-parameters-file", help="batching parameters (default: the export's batching.config)")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="TensorFlow's intra-op pool of this process (servers and in-process calls); 0: TF's choice")
    parser.add_argument("--inter-op-threads", type=int, default=0,
                        help="TensorFlow's inter-op pool of this process; 0: TF's choice")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--results", help="also write benchmarks/results/NAME.json and NAME.md (the docs' tables)")
    args = parser.parse_args(argv)
    args.retrieval_models = [m for m in args.retrieval_models.split(",") if m]
    if not args.load_calls or set(args.load_calls) - {"candidates", "scores"}:
        parser.error(f"--load-calls takes candidates and/or scores, comma-separated. Received: {','.join(args.load_calls)}")

    if args.export_dir:
        export_dir = args.export_dir
        store_path = args.store or os.path.join(os.path.dirname(os.path.abspath(export_dir)), "data")
    else:
        export_dir, store_path = demo_outputs()
        store_path = args.store or store_path

    from serving import client as sc
    from serving.feature_store import FeatureStore
    from serving.server import ModelServer, set_tensorflow_threads

    try:
        set_tensorflow_threads(args.intra_op_threads, args.inter_op_threads)  # before the store or a model runs an op
    except ValueError as error:
        parser.error(f"--intra-op-threads / --inter-op-threads: {error}")

    store = FeatureStore.load(store_path)
    config = os.path.join(export_dir, artifacts.MODELS_CONFIG)
    batching_file = args.batching_parameters_file or os.path.join(export_dir, artifacts.BATCHING_CONFIG)

    def server_for(enable):
        return ModelServer(config, port=0, max_workers=max(8, args.threads), poll_interval=0, enable_batching=enable,
                           batching_parameters_file=batching_file if enable and os.path.exists(batching_file) else None)

    results = {"export_dir": export_dir, "cpus": os.cpu_count(), "args": vars(args)}
    if args.mode == "batch-cost":
        cost = batch_cost(store, export_dir, args)
        print(format_batch_cost(cost))
        results["batch_cost"] = [dict(zip(("signature", "users", "scored", "p50_ms", "p50_ms_per_user"), r)) for r in cost]
    if args.mode == "breakdown":
        with server_for(False) as server, sc.Client(server.address, timeout=30.0) as client:
            parts = breakdown(server, client, store, export_dir, args)
        print(f"\none call cut into its pieces, {args.requests} queries (after {args.warmup})")
        print(format_breakdown(parts))
        results["breakdown"] = [dict(zip(("call", "piece", "p50_ms", "p99_ms"), r)) for r in parts]
    if args.mode in ("both", "latency"):
        with server_for(args.batching == "on") as server, sc.Client(server.address, timeout=30.0) as client:
            print(f"serving {', '.join(server.model_names)} of {export_dir} on {server.address}; "
                  f"store {store_path}; {os.cpu_count()} CPU(s)", flush=True)
            rows = latency(server, client, store, export_dir, args)
        print(f"\nlatency over {args.requests} sequential calls each (after {args.warmup} warm-up calls); "
              "ratio = gRPC / in-process")
        print(format_latency(rows))
        results["latency"] = [dict(zip(("call", "model", "local_p50_ms", "local_p99_ms", "grpc_p50_ms",
                                        "grpc_p99_ms"), row)) for row in rows]
    if args.mode in ("both", "load"):
        modes = {"batching" if enable else "no batching": enable
                 for enable in {"off": [False], "on": [True], "both": [False, True]}[args.batching]}
        with contextlib.ExitStack() as stack:
            servers = {mode: stack.enter_context(server_for(enable)) for mode, enable in modes.items()}
            with sc.Client(next(iter(servers.values())).address, timeout=30.0) as client:
                payloads = load_requests(client, store, export_dir, args)  # the same requests for every server
            pool = stack.enter_context(client_pool(args))  # started first: they must not inherit the server's CPUs
            if args.server_cpus:
                stack.callback(pin_this_process, sorted(os.sched_getaffinity(0)))  # as before, once done
                pin_this_process(args.server_cpus)
            pool.starmap(time.sleep, [(0.5,)] * args.threads)  # every client process started before a round
            rounds = {mode: [] for mode in servers}
            for _ in range(args.rounds):  # the servers take turns, so a drift of the machine's speed hits both
                for mode, server in servers.items():
                    rounds[mode].append(load(server, payloads, args, pool))
            sent = args.threads * (args.load_requests + UNTIMED_CALLS)  # the untimed calls ran on the server too
            results["load"] = {mode: load_figures(rounds[mode], server.stats().get("model_runs", 0), sent)
                               for mode, server in servers.items()}
        print(f"\nload: {args.threads} clients x {args.load_requests} requests ({load_mix(args)}), "
              f"{args.rounds} round(s) per server")
        print(format_load(results["load"]))
    if args.results:
        from benchmarks import results as saved

        threads = (f", TensorFlow thread pools intra-op {args.intra_op_threads} / inter-op {args.inter_op_threads}"
                   if args.intra_op_threads or args.inter_op_threads else "")

        tables = []
        if "breakdown" in results:
            tables.append(f"One gRPC call of each kind cut into its pieces, each timed on its own, {args.requests} queries "
                          f"after {args.warmup}, {os.cpu_count()} CPU(s){threads}, client in the server's process.\n\n"
                          + format_breakdown(parts))
        if "batch_cost" in results:
            tables.append(f"Model calls in process on the merged inputs of several users ({args.items} items per user "
                          f"for scores), {args.requests} calls per row after {args.warmup}, {os.cpu_count()} CPU(s){threads}.\n\n"
                          + format_batch_cost(cost))
        if "load" in results:
            pinned = "".join(f", {who} on CPU(s) {','.join(map(str, cpus))}" for who, cpus in
                             (("the server", args.server_cpus), ("the clients", args.client_cpus)) if cpus)
            tables.append(f"Load: {args.threads} clients x {args.load_requests} requests, {load_mix(args)}, "
                          f"{args.rounds} round(s) per server taking turns, {os.cpu_count()} CPU(s){threads}{pinned}, "
                          "each client a process sending prebuilt requests.\n\n" + format_load(results["load"]))
        if "latency" in results:
            tables.append(f"Latency: {args.requests} sequential calls per row and path after {args.warmup} warm-up "
                          f"calls, the paths taking turns, {os.cpu_count()} CPU(s){threads}, client in the server's process; "
                          "ratio = gRPC / in-process.\n\n"
                          + format_latency(rows))
        print(f"wrote {saved.save(args.results, (chr(10) * 2).join(tables), results, 'benchmarks.serving_latency', argv if argv is not None else sys.argv[1:])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
