"""ScaNN vs exact top-K on one synthetic domain: recall@K and queries/s.

    python -m benchmarks.scann_vs_exact [--items 1000000] [--dim 32] [--k 100] [--queries 1000]

The corpus is `--items` unit-norm embeddings around `--clusters` Gaussian centers (the retrieval
towers compare L2-normalized embeddings, so dot product is cosine). The ScaNN index is built with
`serving.index.build_domain_index` and the default `IndexConfig` (leaves ~ sqrt(n), 10% searched
or at least 50 K points, anisotropic hashing, reordering of 10 K candidates) unless overridden;
its recall@K is the one measured at build time against exact search on `--queries` noisy corpus
vectors (normalized). Both indexes are then timed through their routed modules (`MultiDomainIndex`,
`ExactDomainIndex`: what the exported retrieval model calls), over the same queries, at each
batch size of `--batch-sizes`, after one warm-up call (which builds the ScaNN searcher from its
state). Prints a markdown table and the ratios ScaNN / exact.

`--leaves-to-search 10,20,50` builds one ScaNN index per value (one table row each): the points of a
recall / throughput curve. `--target-recall 0.95` adds an index tuned at build time to the fewest
leaves searched (and candidates re-scored) reaching that recall on the queries
(`IndexConfig.target_recall`, what `mdr export` does).

`--vectors model --model-dir M --data D` replaces the clustered synthetic corpus with realistic
vectors: the item-tower embeddings of the trained retrieval model in `M` over the item corpus of `D`
(all domains), replicated to `--items` with Gaussian noise (`--noise` times the embeddings' per-dimension
standard deviation) and re-normalised like the tower's output, and the queries are the user-tower
embeddings of `D`'s eval rows. `--json PATH` also writes the numbers as JSON; `mdr report` plots the
curve from a `scann_vs_exact.json` anywhere under a run folder, e.g.

    python -m benchmarks.scann_vs_exact --items 100000 --leaves-to-search 5,10,20,40 \
        --json runs/demo/bench/scann_vs_exact.json
"""
import argparse
import json
import os
import sys
import time


def clustered_unit_vectors(items, dim, clusters, seed):
    """`items` unit vectors around `clusters` random centers (noise of a cluster's spread)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((items, dim), np.float32)
    for start in range(0, items, 1 << 18):  # in blocks: bounds the float64 temporaries
        n = min(1 << 18, items - start)
        block = centers[rng.integers(0, clusters, size=n)] + 0.5 * rng.normal(size=(n, dim))
        out[start:start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def queries_per_second(index, queries, batch, max_seconds):
    """Queries/s of `index(queries[i:i + batch], domain 0)` over the queries (or `max_seconds`)."""
    import numpy as np

    domain = np.zeros((batch,), np.int64)
    index(queries[:batch], domain)  # warm-up: traces, and builds the ScaNN searcher from its state
    done, start = 0, time.perf_counter()
    for i in range(0, len(queries) - batch + 1, batch):
        scores, ids = index(queries[i:i + batch], domain)
        ids.numpy()
        done += batch
        if time.perf_counter() - start > max_seconds:
            break
    return done / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--leaves", type=int, default=None, help="default: sqrt(items)")
    parser.add_argument("--leaves-to-search", default=None,
                        help="default: IndexConfig's rule; a comma list builds one index per value (a curve)")
    parser.add_argument("--reorder-multiplier", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time limit of one measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-recall", type=float, help="also build an index tuned for this recall@K")
    parser.add_argument("--vectors", default="clustered", choices=("clustered", "model"),
                        help="corpus: clustered synthetic unit vectors, or a trained model's item embeddings")
    parser.add_argument("--model-dir", help="--vectors model: a retrieval model folder (`mdr train`)")
    parser.add_argument("--data", help="--vectors model: its preprocessing output (items, eval users)")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="--vectors model: noise of the replicas, times the per-dimension sd")
    parser.add_argument("--json", help="also write the results to this JSON file (read by `mdr report`)")
    parser.add_argument("--results", help="also write benchmarks/results/NAME.json and NAME.md (the docs' tables)")
    args = parser.parse_args(argv)
    if args.vectors == "model" and not (args.model_dir and args.data):
        parser.error("--vectors model needs --model-dir and --data")
    try:
        searched = [None] if args.leaves_to_search is None else \
            [int(v) for v in str(args.leaves_to_search).split(",")]
    except ValueError:
        parser.error(f"--leaves-to-search takes ints separated by commas. Received: {args.leaves_to_search}")

    import numpy as np

    from serving import index as ix

    t0 = time.perf_counter()
    if args.vectors == "model":
        corpus, queries = model_vectors(args.model_dir, args.data, args.items, args.queries, args.noise, args.seed)
        args.dim = corpus.shape[1]
    else:
        corpus = clustered_unit_vectors(args.items, args.dim, args.clusters, args.seed)
        queries = ix.sample_queries(corpus, args.queries, seed=args.seed + 1)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.char.encode(np.char.add("item-", np.arange(args.items).astype(str)), "utf-8")
    print(f"corpus: {args.items:,} x {args.dim} ({args.vectors}) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)

    scanns = []  # (build report, routed index), one per --leaves-to-search value (and the tuned one)
    for value in searched + (["tuned"] if args.target_recall else []):
        config = ix.IndexConfig(num_neighbors=args.k, leaves=args.leaves,
                                leaves_to_search=None if value == "tuned" else value,
                                reorder_multiplier=args.reorder_multiplier, eval_queries=args.queries,
                                target_recall=args.target_recall if value == "tuned" else None)
        scann_domain = ix.build_domain_index(corpus, ids, config, queries=queries, name="synthetic")
        scanns.append((scann_domain.report, ix.MultiDomainIndex([scann_domain])))
    t0 = time.perf_counter()
    exact = ix.ExactDomainIndex([corpus], [ids], k=args.k)
    exact_build = time.perf_counter() - t0
    # The exact module is checked against numpy on a few queries: its recall is 1 by construction.
    _, want = ix.exact_top_k(corpus, queries[:50], args.k)
    got = exact(queries[:50], np.zeros(50, np.int64))[1].numpy()
    exact_recall = np.mean([len(set(g) & set(ids[w])) / args.k for g, w in zip(got, want)])

    batches = [int(b) for b in args.batch_sizes.split(",")]
    scann_qps = [[queries_per_second(index, queries, b, args.max_seconds) for b in batches] for _, index in scanns]
    exact_qps = [queries_per_second(exact, queries, b, args.max_seconds) for b in batches]

    head = " | ".join(f"q/s batch {b}" for b in batches)
    lines = [f"| index | items | dim | leaves | leaves searched | recall@{args.k} | build s | {head} |",
             "|---" * (7 + len(batches)) + "|"]
    for (report, _), qps in zip(scanns, scann_qps):
        reorder = report.get("reorder", args.k * args.reorder_multiplier)
        kind = f"tuned for recall {args.target_recall}, reorder {reorder}" if "tuning" in report \
            else f"tree-AH + reorder {reorder}"
        lines.append(f"| ScaNN ({kind}) | {args.items:,} | {args.dim} "
                     f"| {report['leaves']} | {report['leaves_to_search']} | {report['recall@k']:.4f} "
                     f"| {report['build_seconds']:.1f} | " + " | ".join(f"{q:,.0f}" for q in qps) + " |")
    lines.append(f"| exact (matmul + top_k) | {args.items:,} | {args.dim} | - | - | {exact_recall:.4f} "
                 f"| {exact_build:.1f} | " + " | ".join(f"{q:,.0f}" for q in exact_qps) + " |")
    for (report, _), qps in zip(scanns, scann_qps):
        label = "" if len(scanns) == 1 else f" ({report['leaves_to_search']} leaves searched)"
        lines.append(f"| ratio ScaNN / exact{label} | | | | | | | "
                     + " | ".join(f"{s / e:.1f}x" for s, e in zip(qps, exact_qps)) + " |")
    vectors = (f"{args.clusters} clusters" if args.vectors == "clustered" else
               f"item-tower embeddings of {args.model_dir} replicated with noise {args.noise} sd, eval users as queries")
    lines.append(f"\n{os.cpu_count()} cores; K={args.k}, {args.queries} queries, {vectors}, "
                 f"seed {args.seed}; ScaNN recall is measured at build time against numpy exact search.")
    table = "\n".join(lines)
    print(table)
    if args.json:
        rows = [{"index": "scann", "leaves": r["leaves"], "leaves_to_search": r["leaves_to_search"],
                 "recall": float(r["recall@k"]), "build_seconds": float(r["build_seconds"]),
                 "queries_per_second": {str(b): float(q) for b, q in zip(batches, qps)}}
                for (r, _), qps in zip(scanns, scann_qps)]
        rows.append({"index": "exact", "leaves": 0, "leaves_to_search": 0, "recall": float(exact_recall),
                     "build_seconds": float(exact_build),
                     "queries_per_second": {str(b): float(q) for b, q in zip(batches, exact_qps)}})
        out = {"benchmark": "scann_vs_exact", "vectors": args.vectors, "k": args.k, "items": args.items,
               "dim": args.dim, "target_recall": args.target_recall,
               "queries": args.queries, "clusters": args.clusters, "seed": args.seed, "cores": os.cpu_count(),
               "reorder_multiplier": args.reorder_multiplier, "batch_sizes": batches, "results": rows}
        if os.path.dirname(args.json):
            os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.results:
        from benchmarks import results as results_files

        rows = [{"leaves": r["leaves"], "leaves_to_search": r["leaves_to_search"], "recall": float(r["recall@k"]),
                 "tuning": r.get("tuning"), "queries_per_second": dict(zip(map(str, batches), map(float, q)))}
                for (r, _), q in zip(scanns, scann_qps)]
        path = results_files.save(args.results, table, {
            "args": vars(args), "cores": os.cpu_count(), "scann": rows,
            "exact": {"recall": float(exact_recall), "queries_per_second": dict(zip(map(str, batches),
                                                                                    map(float, exact_qps)))}},
            "benchmarks.scann_vs_exact", sys.argv[1:] if argv is None else argv)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def model_vectors(model_dir, data_dir, items, queries, noise, seed):
    """(corpus [items, d], queries [q, d]): a trained model's item embeddings replicated with noise, and
    its user embeddings of the eval rows (see the module docstring)."""
    import numpy as np

    from mdr_keras import training
    from serving import export

    model, spec, _ = training.load_model(model_dir)
    base = np.concatenate(export.item_corpus(model, spec, data_dir)[1])
    users = [q for q in export.user_queries(model, spec, data_dir, "eval", queries) if q is not None]
    rng = np.random.default_rng(seed)
    copies = rng.integers(0, len(base), size=max(0, items - len(base)))  # every real item once, then noisy copies
    noisy = base[copies] + noise * base.std(axis=0) * rng.normal(size=(len(copies), base.shape[1]))
    picked = np.concatenate([base[:items], noisy])
    norms = np.linalg.norm(base, axis=1)
    if np.allclose(norms, norms.mean(), rtol=1e-3):  # an L2-normalised tower: keep the replicas on its sphere
        picked *= norms.mean() / np.linalg.norm(picked, axis=1, keepdims=True)
    user = np.concatenate(users)[:queries].astype(np.float32)
    return picked.astype(np.float32), user


if __name__ == "__main__":
    sys.exit(main())
