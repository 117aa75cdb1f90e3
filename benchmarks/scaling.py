"""How each stage's time and peak memory grow with the work: the cost of the system at scale.

    python -m benchmarks.scaling --work /tmp/scaling [--parts beam,train,index,server]
        [--beam-rows 1000000,3000000,10000000] [--train-replicas 1,2]
        [--index-items 100000,1000000,4000000] [--server-clients 1,4,16]
        [--plot docs/scaling.png] [--results scaling]

Every measurement is a child process (an `mdr` command or another benchmark script), timed from start
to exit; its peak memory is the largest sum of the resident sets of its process tree (the process
and every descendant, sampled from /proc every 0.2 s), so a multi-process Beam job's workers count
together. The parts:

- beam: `mdr generate` writes the smallest size's logs (30 events per user on average, an item per 100
  events); larger sizes copy them with renamed users (`u7` -> `u7~r2`), so the work grows and nothing
  else changes. Each size is then preprocessed by `mdr preprocess` with the local runner's defaults (as
  a user runs it): rows/s and peak memory. Generating is not timed.
- train: `benchmarks.input_pipeline` (the ranker's training step on cached batches of 512 per
  replica) on the smallest Beam output, at each `--train-replicas` count of CPU replicas: examples/s.
- index: `benchmarks.scann_vs_exact` on clustered vectors (64 dims): the ScaNN build (its default
  leaves) and queries at batch 64, ScaNN and exact, per corpus size.
- server: `benchmarks.serving_latency --mode load --batching off` on `--export-dir` (default the
  demo's), at each `--server-clients` count of concurrent clients (candidates K=100 and scores of
  100 items alternating): requests/s and p99.

Prints a table (each row's rate against the part's first row) and, with `--plot`, draws a log-log plot
of time and memory against the work and of throughput against the parallelism. `--results NAME` writes
`benchmarks/results/NAME.json` / `.md` (the docs' table). What a part needs but lacks fails it with
exit 1 naming the part.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from benchmarks.stage_memory import proc_status_kib

EVENTS_PER_USER = 30
EVENTS_PER_ITEM = 100
SAMPLE_SECONDS = 0.2


class PartError(RuntimeError):
    """A measurement whose child process failed (with its wall time and peak memory until then)."""

    def __init__(self, message: str, seconds: float = 0.0, peak_mib: float = 0.0):
        super().__init__(message)
        self.seconds, self.peak_mib = seconds, peak_mib


def _children() -> Dict[int, List[int]]:
    """Parent pid -> child pids, from /proc."""
    tree: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after the command name, which may hold spaces
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss_kib(pid: int) -> int:
    return proc_status_kib(pid, "VmRSS")


def tree_rss_kib(pid: int) -> int:
    """The summed resident set (KiB) of `pid` and all its descendants now."""
    return _own_and_tree_rss_kib(pid)[1]


def _own_and_tree_rss_kib(pid: int) -> Tuple[int, int]:
    """(resident KiB of `pid` alone, of `pid` and all its descendants), from one pass over /proc."""
    tree, own, total, todo = _children(), 0, 0, [pid]
    while todo:
        p = todo.pop()
        rss = _rss_kib(p)
        own = rss if p == pid else own
        total += rss
        todo += tree.get(p, [])
    return own, total


PROFILE_POINTS = 300  # samples kept of a memory profile (evenly spaced in time)


def measure(argv: List[str], log: str, timeout: float = 7200.0, profile: bool = False) -> dict:
    """Runs `argv` (stdout + stderr to `log`); {"seconds", "peak_mib"}; PartError unless it exits 0.

    With `profile`, also "profile": `[seconds, MiB of the process itself, MiB of its descendants]` samples
    (at most `PROFILE_POINTS`): for a Beam job on the local runner, the runner (the process, which holds the
    collections between stages) apart from its SDK workers."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    peak = 0
    samples = []
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        while process.poll() is None:
            own, tree = _own_and_tree_rss_kib(process.pid)
            peak = max(peak, tree)
            if profile:  # both from the same pass: the descendants are the difference
                samples.append([round(time.perf_counter() - start, 2), round(own / 1024, 1),
                                round((tree - own) / 1024, 1)])
            if time.perf_counter() - start > timeout:
                process.kill()
            time.sleep(SAMPLE_SECONDS)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        with open(log, errors="replace") as f:
            tail = "".join(f.readlines()[-15:])
        raise PartError(f"{' '.join(argv[:4])} ... exited with status {process.returncode} (log {log}):\n{tail}",
                        seconds, peak / 1024)
    result = {"seconds": seconds, "peak_mib": peak / 1024}
    if profile:
        step = max(1, -(-len(samples) // PROFILE_POINTS))
        # the largest sample of each window, so that a short peak stays in the profile
        result["profile"] = [max(samples[i:i + step], key=lambda s: s[1] + s[2]) for i in range(0, len(samples), step)]
    return result


def _mdr(*args) -> List[str]:
    return [sys.executable, "-m", "mdr.cli", *map(str, args)]


def _module(name, *args) -> List[str]:
    return [sys.executable, "-m", name, *map(str, args)]


def replicate_logs(source: str, target: str, copies: int) -> int:
    """`target/events.csv`: `copies` copies of `source`'s events, users renamed in each copy; the row count."""
    os.makedirs(target, exist_ok=True)
    shutil.copy(os.path.join(source, "generator.json"), target)
    rows = 0
    with open(os.path.join(source, "events.csv"), encoding="utf-8") as f:
        header = f.readline()
        body = f.readlines()
    with open(os.path.join(target, "events.csv"), "w", encoding="utf-8") as out:
        out.write(header)
        for copy in range(copies):
            suffix = f"~r{copy}" if copy else ""
            for line in body:
                user, rest = line.split(",", 1)
                out.write(f"{user}{suffix},{rest}")
            rows += len(body)
    return rows


def beam_part(args, logs) -> List[dict]:
    sizes = sorted(args.beam_rows)
    base = os.path.join(args.work, "beam", "raw-base")
    if not os.path.exists(os.path.join(base, "events.csv")):
        users = max(10, sizes[0] // EVENTS_PER_USER)
        measure(_mdr("generate", "--output", base, "--users", users, "--items", max(100, sizes[0] // EVENTS_PER_ITEM),
                     "--mean-events", EVENTS_PER_USER, "--seed", 0), os.path.join(logs, "generate.log"))
    with open(os.path.join(base, "events.csv"), encoding="utf-8") as f:
        base_rows = sum(1 for _ in f) - 1
    rows_out = []
    for size in sizes:
        copies = max(1, round(size / base_rows))
        raw = os.path.join(args.work, "beam", f"raw-x{copies}")
        if not os.path.exists(os.path.join(raw, "events.csv")):
            replicate_logs(base, raw, copies)
        out = os.path.join(args.work, "beam", f"data-x{copies}")
        print(f"beam: {copies * base_rows:,} rows ...", flush=True)
        try:
            m = measure(_mdr("preprocess", "--source", "synthetic", "--input", raw, "--output", out, "--overwrite"),
                        os.path.join(logs, f"preprocess-x{copies}.log"), profile=True)
        except PartError as e:  # a failed size is a row of the table (with the job's last line), not the end
            rows = copies * base_rows
            last = [line for line in str(e).splitlines() if line.strip()][-1].strip()
            rows_out.append({"part": "beam", "work": rows, "unit": "rows", "seconds": e.seconds, "rate": 0.0,
                             "rate_unit": "rows/s", "peak_mib": e.peak_mib, "error": last})
            print(f"  failed: {last}", flush=True)
            continue
        with open(os.path.join(out, "metadata.json"), encoding="utf-8") as f:
            meta = json.load(f)
        rows = meta["rows_read"]
        rows_out.append({"part": "beam", "work": rows, "unit": "rows", "seconds": m["seconds"],
                         "rate": rows / m["seconds"], "rate_unit": "rows/s", "peak_mib": m["peak_mib"],
                         "data": out, "memory_profile": m["profile"]})
        print(f"  {rows:,} rows in {m['seconds']:.1f} s ({rows / m['seconds']:,.0f} rows/s), "
              f"peak {m['peak_mib']:,.0f} MiB", flush=True)
    return rows_out


def train_part(args, logs, data_dir: Optional[str]) -> List[dict]:
    if not data_dir or not os.path.exists(os.path.join(data_dir, "_SUCCESS")):
        raise PartError(f"train: no preprocessed data ({data_dir}); run the beam part or pass --train-data")
    rows = []
    for replicas in args.train_replicas:
        path = os.path.join(args.work, f"train-r{replicas}.json")
        print(f"train: ranker on {replicas} CPU replica(s) ...", flush=True)
        m = measure(_module("benchmarks.input_pipeline", "--data", data_dir, "--task", "ranking", "--model", "ranker",
                            "--steps", args.train_steps, "--warmup", 5, "--cached-batches", 10, "--no-end-to-end",
                            "--cpu-replicas", replicas, "--json", path), os.path.join(logs, f"train-r{replicas}.log"))
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        rate = result["train_cached"]["examples_per_second"]
        rows.append({"part": "train", "work": replicas, "unit": "CPU replicas", "seconds": m["seconds"],
                     "rate": rate, "rate_unit": "examples/s", "peak_mib": m["peak_mib"]})
        print(f"  {rate:,.0f} examples/s", flush=True)
    return rows


def index_part(args, logs) -> List[dict]:
    rows = []
    for items in sorted(args.index_items):
        path = os.path.join(args.work, f"index-{items}.json")
        print(f"index: {items:,} items ...", flush=True)
        m = measure(_module("benchmarks.scann_vs_exact", "--items", items, "--dim", 64, "--batch-sizes", 64,
                            "--queries", 640, "--max-seconds", 20, "--json", path),
                    os.path.join(logs, f"index-{items}.log"))
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        scann = next(r for r in result["results"] if r["index"] == "scann")
        exact = next(r for r in result["results"] if r["index"] == "exact")
        rows.append({"part": "index", "work": items, "unit": "items", "seconds": m["seconds"],
                     "build_seconds": scann["build_seconds"], "recall": scann["recall"],
                     "rate": scann["queries_per_second"]["64"], "rate_unit": "ScaNN queries/s (batch 64)",
                     "exact_rate": exact["queries_per_second"]["64"], "peak_mib": m["peak_mib"]})
        print(f"  build {scann['build_seconds']:.1f} s, ScaNN {rows[-1]['rate']:,.0f} q/s, exact "
              f"{rows[-1]['exact_rate']:,.0f} q/s, recall {scann['recall']:.3f}", flush=True)
    return rows


def server_row(clients: int, figures: dict, measured: dict) -> dict:
    """The table's row of one client count: `figures` as `serving_latency.load_figures` gives them (the
    median requests/s of its rounds, p99 per kind), `measured` the child process's seconds and peak."""
    return {"part": "server", "work": clients, "unit": "clients", "seconds": measured["seconds"],
            "rate": figures["rate"], "rate_unit": "requests/s",
            "p99_ms": {k: figures[k][1] for k in ("candidates", "scores")}, "failed": figures["failed"],
            "peak_mib": measured["peak_mib"]}


def server_part(args, logs) -> List[dict]:
    if not os.path.exists(os.path.join(args.export_dir, "models.config")):
        raise PartError(f"server: no export at {args.export_dir}; run `mdr demo` or pass --export-dir")
    rows = []
    for clients in args.server_clients:
        path = os.path.join(args.work, f"server-{clients}.json")
        print(f"server: {clients} client(s) ...", flush=True)
        m = measure(_module("benchmarks.serving_latency", "--export-dir", args.export_dir, "--mode", "load",
                            "--batching", "off", "--threads", clients,
                            "--load-requests", max(10, args.server_requests // clients), "--json", path),
                    os.path.join(logs, f"server-{clients}.log"))
        with open(path, encoding="utf-8") as f:
            row = server_row(clients, json.load(f)["load"]["no batching"], m)
        rows.append(row)
        print(f"  {row['rate']:,.1f} requests/s, p99 candidates {row['p99_ms']['candidates']:.1f} ms / scores "
              f"{row['p99_ms']['scores']:.1f} ms", flush=True)
    return rows


def table(rows: List[dict]) -> str:
    """Markdown: one line per measurement, its rate against the part's first row (rows of one part together,
    smallest work first, whatever run each came from)."""
    rows = sorted(rows, key=lambda r: (PARTS.index(r["part"]), r["work"]))
    lines = ["| part | work | wall s | rate | vs first | peak memory MiB | notes |", "|---|---|---|---|---|---|---|"]
    first: Dict[str, dict] = {}
    for r in rows:
        base = first.setdefault(r["part"], r) if not r.get("error") else first.get(r["part"], r)
        notes = ""
        if r["part"] == "index":
            notes = (f"build {r['build_seconds']:.1f} s, recall@100 {r['recall']:.3f}, exact "
                     f"{r['exact_rate']:,.0f} q/s")
        elif r.get("error"):
            notes = f"failed: {r['error']}"
        elif r["part"] == "server":
            notes = (f"p99 candidates {r['p99_ms']['candidates']:.1f} ms, scores {r['p99_ms']['scores']:.1f} ms"
                     + (f", {r['failed']} failed" if r["failed"] else ""))
        lines.append(f"| {r['part']} | {r['work']:,} {r['unit']} | {r['seconds']:.1f} | {r['rate']:,.1f} "
                     f"{r['rate_unit']} | {r['rate'] / base['rate'] if base['rate'] else 0:.2f}x | {r['peak_mib']:,.0f} | {notes} |")
    return "\n".join(lines)


def plot(rows: List[dict], path: str) -> None:
    """Log-log: time and peak memory against the work (with the linear slope), throughput against parallelism."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    by_part: Dict[str, List[dict]] = {}
    for r in sorted(rows, key=lambda r: r["work"]):
        if not r.get("error"):  # a failed measurement has no time to plot
            by_part.setdefault(r["part"], []).append(r)
    series = []
    if "beam" in by_part:
        series.append(("Beam job (rows)", by_part["beam"], lambda r: r["seconds"]))
    if "index" in by_part:
        series.append(("ScaNN build (items)", by_part["index"], lambda r: r["build_seconds"]))
        series.append(("ScaNN query, batch 64 (items)", by_part["index"], lambda r: 64 / r["rate"]))
        series.append(("exact query, batch 64 (items)", by_part["index"], lambda r: 64 / r["exact_rate"]))
    for label, rs, y in series:
        x0 = rs[0]["work"]
        axes[0].plot([r["work"] / x0 for r in rs], [y(r) for r in rs], "o-", label=label)
    for part, label in (("beam", "Beam job (rows)"), ("index", "ScaNN build + queries (items)")):
        if part in by_part:  # one process per size: one memory line per part
            rs = by_part[part]
            axes[1].plot([r["work"] / rs[0]["work"] for r in rs], [r["peak_mib"] for r in rs], "o-", label=label)
    xs = sorted({r["work"] / rs[0]["work"] for _, rs, _ in series for r in rs}) or [1]
    for ax, title, ylabel in ((axes[0], "time against work", "seconds"),
                              (axes[1], "peak memory against work", "MiB (process tree)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("work, relative to the smallest size")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    if series:  # the slope a linear cost has, through the Beam job's (or the first series') first point
        label, rs, y = series[0]
        axes[0].plot(xs, [y(rs[0]) * x for x in xs], "k--", lw=0.8, label="linear (slope 1)")
    for part, label in (("train", "training, CPU replicas"), ("server", "server, concurrent clients")):
        if part in by_part:
            rs = by_part[part]
            axes[2].plot([r["work"] for r in rs], [r["rate"] / rs[0]["rate"] for r in rs], "o-", label=label)
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("parallelism")
    axes[2].set_ylabel("throughput, relative to the first")
    axes[2].set_title(f"throughput against parallelism ({os.cpu_count()} cores)")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for ax in axes:
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers (0.01, 3, 1000), not powers of ten
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def profile_plot(rows: List[dict], path: str) -> bool:
    """The Beam rows' memory over the job: the runner process and its SDK workers apart, one colour per size.
    False (nothing written) when no row has a profile."""
    beams = [r for r in rows if r["part"] == "beam" and r.get("memory_profile")]
    if not beams:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, r in enumerate(beams):
        t, own, workers = zip(*r["memory_profile"])
        colour = f"C{i}"
        ax.plot(t, own, "-", color=colour, label=f"{r['work']:,} rows: runner process")
        ax.plot(t, workers, "--", color=colour, label=f"{r['work']:,} rows: SDK worker processes")
    ax.set_xlabel("seconds since the job started")
    ax.set_ylabel("resident MiB")
    ax.set_title("Beam job on the local runner: memory over time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def included_rows(paths: List[str], parts: List[str]) -> List[dict]:
    """The rows of earlier runs' JSON files (`--include`), less those of the `parts` measured again."""
    rows: List[dict] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            rows += [r for r in json.load(f)["rows"] if r["part"] not in parts]
    return rows


def _ints(text: str) -> List[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"takes comma-separated integers >= 1. Received: {text!r}")
    return values


PARTS = ("beam", "train", "index", "server")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="work folder (logs, data, intermediate JSON)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--beam-rows", type=_ints, default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--train-replicas", type=_ints, default=[1, 2])
    parser.add_argument("--train-steps", type=int, default=30, help="timed training steps per replica count")
    parser.add_argument("--train-data", help="preprocessed data for the train part (default: the beam part's smallest)")
    parser.add_argument("--index-items", type=_ints, default=[100_000, 1_000_000, 4_000_000])
    parser.add_argument("--server-clients", type=_ints, default=[1, 4, 16])
    parser.add_argument("--server-requests", type=int, default=480, help="requests per client count, all clients")
    parser.add_argument("--export-dir", default=os.path.join("runs", "demo", "export"))
    parser.add_argument("--plot", help="write the log-log plot to this PNG")
    parser.add_argument("--profile-plot", help="write the Beam job's memory over time (runner and workers) to this PNG")
    parser.add_argument("--include", nargs="+", default=[], metavar="SCALING_JSON",
                        help="first, the rows of earlier runs (their WORK/scaling.json, or a committed "
                             "benchmarks/results/NAME.json), e.g. a part run apart; a part measured in this run "
                             "replaces their rows of that part")
    parser.add_argument("--results", help="also write benchmarks/results/NAME.json and NAME.md (the docs' table)")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; known: {', '.join(PARTS)}")
    logs = os.path.join(args.work, "logs")
    os.makedirs(logs, exist_ok=True)
    rows = included_rows(args.include, parts)
    try:
        if "beam" in parts:
            rows += beam_part(args, logs)
        if "train" in parts:
            data = args.train_data or next((r["data"] for r in rows if r["part"] == "beam" and "data" in r), None)
            rows += train_part(args, logs, data)
        if "index" in parts:
            rows += index_part(args, logs)
        if "server" in parts:
            rows += server_part(args, logs)
    except PartError as e:
        print(f"benchmarks.scaling: error: {e}", file=sys.stderr)
        return 1
    text = table(rows)
    caption = (f"\n\n{os.cpu_count()} cores, one measurement per row, each a child process; peak memory is "
               "the largest summed resident set of its process tree (sampled every 0.2 s).")
    print(text + caption)
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.profile_plot and profile_plot(rows, args.profile_plot):
        print(f"wrote {args.profile_plot}", file=sys.stderr)
    with open(os.path.join(args.work, "scaling.json"), "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "cores": os.cpu_count(), "rows": rows}, f, indent=2)
    if args.results:
        from benchmarks import results as results_files

        path = results_files.save(args.results, text + caption, {"args": vars(args), "cores": os.cpu_count(),
                                                                 "rows": rows},
                                  "benchmarks.scaling", sys.argv[1:] if argv is None else argv)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
