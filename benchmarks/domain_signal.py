"""How much the domains of a data set differ in what gets clicked: the ceiling of domain-awareness.

    python -m benchmarks.domain_signal --data /tmp/ml1m --split test -k 50 --user-feature gender

For every domain of a preprocessed data set (`mdr preprocess` output): the hit rate at K, on the
domain's clicks of `--split`, of the K most clicked training items overall, of the K most clicked in
that domain, and, with `--user-feature F`, of the K most clicked by users with the same value of F,
without and with the domain; plus the cosine between the domains' item click counts. A domain-aware
model can only gain what the domain adds to what the other inputs already say: compare "F" with
"F x domain". Needs no model: it reads the records only.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def clicks(data_dir: str, split: str, user_feature=None):
    """[(domain, item_id, user feature value or "")] of the clicked rows of `split`."""
    import tensorflow as tf

    from mdr_keras import data
    from mdr_contract import feature_spec as fs

    spec = fs.FeatureSpec.load(data_dir)
    names = [fs.ITEM_ID, fs.DOMAIN, fs.LABEL] + ([user_feature] if user_feature else [])
    if user_feature and (user_feature not in spec or spec[user_feature].kind != fs.KIND_CATEGORICAL):
        raise ValueError(f"--user-feature must name a categorical feature of the spec. Received: {user_feature!r}")
    parse = spec.tf_parse_spec(names)
    files = data.record_files(data_dir, split)
    ds = (tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
          .batch(8192).map(lambda x: tf.io.parse_example(x, parse), num_parallel_calls=tf.data.AUTOTUNE))
    out = []
    for batch in ds:
        keep = batch[fs.LABEL].numpy().reshape(-1) > 0
        domains = batch[fs.DOMAIN].numpy().reshape(-1)[keep]
        items = batch[fs.ITEM_ID].numpy().reshape(-1)[keep]
        values = (batch[user_feature].numpy().reshape(-1)[keep] if user_feature else [b""] * len(items))
        out.extend(zip((d.decode() for d in domains), (i.decode() for i in items), (v.decode() for v in values)))
    return out


def _top(counter, k):
    return {i for i, _ in counter.most_common(k)}


def measure(data_dir: str, split: str = "test", k: int = 50, user_feature=None) -> dict:
    if k < 1:
        raise ValueError(f"k must be >= 1. Received: k={k}")
    train, held = clicks(data_dir, "train", user_feature), clicks(data_dir, split, user_feature)
    counts = collections.defaultdict(collections.Counter)  # key -> item counts
    for d, i, v in train:
        for key in ("all", ("d", d), ("v", v), ("dv", d, v)):
            counts[key][i] += 1
    per_domain = {key[1]: c for key, c in counts.items() if key[0] == "d"}
    tops = {key: _top(c, k) for key, c in counts.items()}
    rows = {}
    for d in sorted(per_domain):
        targets = [(i, v) for dd, i, v in held if dd == d]
        n = max(len(targets), 1)
        hit = lambda key_of: sum(i in tops.get(key_of(v), ()) for i, v in targets) / n  # noqa: E731
        rows[d] = {"clicks": len(targets), "global": hit(lambda v: "all"), "own_domain": hit(lambda v: ("d", d))}
        if user_feature:
            rows[d]["feature"] = hit(lambda v: ("v", v))
            rows[d]["feature_x_domain"] = hit(lambda v: ("dv", d, v))
    cosines = {}
    names = sorted(per_domain)
    for a in names:
        for b in names:
            ca, cb = per_domain[a], per_domain[b]
            dot = sum(v * cb.get(i, 0) for i, v in ca.items())
            norm = (sum(v * v for v in ca.values()) * sum(v * v for v in cb.values())) ** 0.5
            cosines[(a, b)] = dot / norm if norm else 0.0
    return {"k": k, "split": split, "user_feature": user_feature, "domains": rows,
            "cosine": {f"{a}|{b}": c for (a, b), c in cosines.items()}}


def table(result: dict) -> str:
    k, names, f = result["k"], list(result["domains"]), result.get("user_feature")
    head = ["domain", f"{result['split']} clicks", "global", "domain"]
    head += [f, f"{f} x domain"] if f else []
    head += [f"cos vs {n}" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d, r in result["domains"].items():
        cells = [d, f"{r['clicks']:,}", f"{r['global']:.4f}", f"{r['own_domain']:.4f}"]
        cells += [f"{r['feature']:.4f}", f"{r['feature_x_domain']:.4f}"] if f else []
        cells += [f"{result['cosine'][f'{d}|{n}']:.3f}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="output folder of `mdr preprocess`")
    parser.add_argument("--split", default="test", help="split whose clicks are the targets")
    parser.add_argument("-k", type=int, default=50, help="top-K size")
    parser.add_argument("--user-feature", help="a categorical user feature to group users by (e.g. gender)")
    parser.add_argument("--results", help="also write benchmarks/results/NAME.json and NAME.md (the docs' tables)")
    args = parser.parse_args(argv)
    try:
        if args.results:  # before the work, not after it
            from benchmarks import results as results_files

            results_files.check_name(args.results)
        result = measure(args.data, args.split, args.k, args.user_feature)
    except (ValueError, FileNotFoundError) as e:
        print(f"benchmarks.domain_signal: error: {e}", file=sys.stderr)
        return 1
    head = (f"domain signal of {args.data}: hit rate of '{args.split}' clicks by the top-{args.k} training items "
            "of each group")
    print(head)
    print(table(result))
    if args.results:
        path = results_files.save(args.results, head + "\n\n" + table(result), {"args": vars(args), **result},
                                  "benchmarks.domain_signal", sys.argv[1:] if argv is None else argv)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
