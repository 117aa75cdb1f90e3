"""Wall time and peak memory of each stage of the system, each run as its own `mdr` process.

    python -m benchmarks.stage_memory --output /tmp/stages [--users 2000 --items 1000] [--epochs 1]
    python -m benchmarks.stage_memory --output /tmp/stages-ml1m --source movielens-1m \\
        --input ../shared/datasets/movielens-1m [--steps-per-epoch 100] [--json PATH]

Stages, one after the other, each a real command line (`python -m mdr.cli ...`) in a child
process of this one:

    generate         `mdr generate` (synthetic source only; sizes from --users / --items / --seed)
    preprocess       `mdr preprocess` (Beam). Default runner arguments: the DirectRunner in memory
                     with one worker, so the whole job is one process; `--beam-args` replaces them
    train adi        `mdr train --model adi` (retrieval), `--epochs`, no early stopping
    train ranker     `mdr train --model ranker` (ranking)
    evaluate adi     `mdr evaluate` on the eval split (Recall@K over each domain's corpus)
    evaluate ranker  `mdr evaluate` on the eval split (AUC, logloss)
    export           `mdr export` (SavedModels and the per-domain ScaNN index)
    serve            `mdr serve --port 0` in the background: wall time = start until it prints its
                     address; peak RSS = over its whole life, answering the query below included
    recommend        `mdr recommend` of one user (the first in the user vocabulary, in the first
                     domain) against that server, with the preprocessing output as feature store
                     (the store is built from the records in that process)

The peak RSS is `ru_maxrss` of the stage's process, from `os.wait4` on it (per process, unlike
`RUSAGE_CHILDREN`, which keeps the maximum over all children so far). It counts the largest single
process: with a multi-process Beam runner (`--beam-args "--direct_num_workers=4
--direct_running_mode=multi_processing"`) it is the largest worker or the launcher, not their sum.
Prints a markdown table (stage, wall s, peak RSS MiB, command line). A failing stage stops the
script with exit status 1, naming the stage, with the tail of its stderr; every stage's stdout and
stderr are kept under `OUTPUT/logs/`. The work folder (`--output`) holds raw/, data/, models/ and
export/; the model and export folders are replaced on each run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

DEFAULT_BEAM_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
READY = re.compile(r"^serving .* on (\S+) \(TF Serving gRPC API\)", re.MULTILINE)


class StageError(RuntimeError):
    """A stage that exited with an error, or did not finish in time."""


def _tail(path, lines=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


def proc_status_kib(pid, field):
    """A KiB field of /proc/<pid>/status (`VmHWM`, `VmRSS`, ...); 0 once the process has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _vm_hwm_kib(pid):
    """The process's peak resident set (VmHWM, KiB) from /proc; 0 once it has exited."""
    return proc_status_kib(pid, "VmHWM")


class Stage:
    """One `mdr` command in a child process; `wait` gives its wall time and peak RSS.

    Args:
        name: the stage's name (table rows, log files, error messages).
        args: the `mdr` arguments (after `mdr`).
        log_dir: folder for `<name>.out` and `<name>.err`.
    """

    def __init__(self, name, args, log_dir):
        self.name = name
        self.argv = [sys.executable, "-m", "mdr.cli"] + [str(a) for a in args]
        slug = re.sub(r"\W+", "_", name)
        self.out_path = os.path.join(log_dir, f"{slug}.out")
        self.err_path = os.path.join(log_dir, f"{slug}.err")
        self.start = time.perf_counter()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                   PYTHONUNBUFFERED="1")
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        self.exit_code = self.rusage = None
        self.hwm_kib = 0

    @property
    def command(self):
        return "mdr " + " ".join(shlex.quote(a) for a in self.argv[3:])

    def sample(self):
        """Reads the process's peak RSS so far (while it runs; a no-op once it has ended)."""
        if self.rusage is None:
            self.hwm_kib = max(self.hwm_kib, _vm_hwm_kib(self.process.pid))

    def poll(self):
        """True once the process has ended (and was reaped here, with its resource usage)."""
        if self.rusage is None:
            self.sample()
            pid, status, rusage = os.wait4(self.process.pid, os.WNOHANG)
            if pid == 0:
                return False
            self.exit_code, self.rusage = os.waitstatus_to_exitcode(status), rusage
            self.process.returncode = self.exit_code  # reaped here: Popen must not wait for it again
        return True

    def wait(self, timeout, watch=()):
        """Waits for the end (killing the process after `timeout` s); StageError unless it exited 0.
        `watch`: other running stages whose peak RSS is sampled meanwhile (the server during a query)."""
        deadline = time.monotonic() + timeout
        while not self.poll():
            for other in watch:
                other.sample()
            if time.monotonic() > deadline:
                self.process.kill()
                while not self.poll():
                    time.sleep(0.05)
                raise self.error(f"did not finish in {timeout:.0f} s (killed)")
            time.sleep(0.05)
        self.wall = time.perf_counter() - self.start
        if self.exit_code != 0:
            raise self.error(f"exited with status {self.exit_code}")
        return self

    def stop(self, timeout=30.0):
        """SIGTERM (a clean stop for `mdr serve`), SIGKILL after `timeout` s; waits for the end."""
        if not self.poll():
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while not self.poll():
                if time.monotonic() > deadline:
                    self.process.kill()
                    deadline = float("inf")
                time.sleep(0.05)
        return self

    @property
    def peak_mib(self):
        # Not rusage.ru_maxrss: Linux carries the parent's RSS over fork + exec into it, so a stage started
        # from a 2 GiB pytest process reported 2 GiB. VmHWM is the child's own high-water mark, sampled
        # every poll (50 ms), so growth in its last 50 ms can be missed.
        return self.hwm_kib / 1024

    def error(self, what):
        return StageError(f"stage '{self.name}' {what}: {self.command}\n--- last lines of its stderr "
                          f"({self.err_path}) ---\n{_tail(self.err_path) or '(empty)'}")


def wait_until_serving(stage, timeout):
    """The address `mdr serve` prints once it serves; StageError if it ends or takes over `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        with open(stage.out_path, errors="replace") as f:
            found = READY.search(f.read())
        if found:
            return found.group(1)
        if stage.poll():
            raise stage.error(f"exited with status {stage.exit_code} before serving")
        if time.monotonic() > deadline:
            stage.stop(5.0)
            raise stage.error(f"was not serving after {timeout:.0f} s (stopped)")
        time.sleep(0.1)


def first_user_and_domain(data_dir):
    """(user id, domain) to query: the first user of the user vocabulary, the first domain of the spec."""
    from mdr_contract import feature_spec as fs  # plain Python: the parent still imports no TensorFlow

    spec = fs.FeatureSpec.load(data_dir)
    return spec.vocabulary(fs.USER_ID)[0], spec.domains[0]


def plan(args):
    """[(stage name, mdr arguments)] of the stages before serving."""
    out = args.output
    raw, data, models, export = (os.path.join(out, d) for d in ("raw", "data", "models", "export"))
    stages = []
    if args.source == "synthetic":
        stages.append(("generate", ["generate", "--output", raw, "--users", args.users, "--items", args.items,
                                    "--seed", args.seed]))
    split = ["--split", "random"] if args.source == "movielens-1m" else []
    beam = shlex.split(args.beam_args) if args.beam_args is not None else DEFAULT_BEAM_ARGS
    stages.append(("preprocess", ["preprocess", "--source", args.source, "--input", args.input or raw,
                                  "--output", data, "--overwrite"] + split + beam))
    common = ["--data", data, "--epochs", args.epochs, "--batch-size", args.batch_size, "--patience", 0,
              "--seed", args.seed, "--verbose", 0]
    if args.steps_per_epoch:
        common += ["--steps-per-epoch", args.steps_per_epoch]
    for model, task in (("adi", "retrieval"), ("ranker", "ranking")):
        stages.append((f"train {model}", ["train", "--model", model, "--task", task,
                                          "--model-dir", os.path.join(models, model)] + common))
    for model in ("adi", "ranker"):
        stages.append((f"evaluate {model}", ["evaluate", "--model-dir", os.path.join(models, model), "--data", data]))
    stages.append(("export", ["export", "--retrieval-model-dir", os.path.join(models, "adi"),
                              "--ranker-model-dir", os.path.join(models, "ranker"), "--data", data,
                              "--export-dir", export]))
    return stages


def run(args):
    """Runs every stage; returns the table rows (dicts). StageError at the first failing stage."""
    log_dir = os.path.join(args.output, "logs")
    os.makedirs(log_dir, exist_ok=True)
    for folder in ("models", "export"):  # a rerun must train and export anew, not resume
        shutil.rmtree(os.path.join(args.output, folder), ignore_errors=True)
    rows = []

    def record(stage, name=None):
        rows.append({"stage": name or stage.name, "wall_seconds": stage.wall, "peak_rss_mib": stage.peak_mib,
                     "command": stage.command})
        print(f"done {rows[-1]['stage']}: {stage.wall:.1f} s, {stage.peak_mib:,.0f} MiB", file=sys.stderr,
              flush=True)

    for name, mdr_args in plan(args):
        record(Stage(name, mdr_args, log_dir).wait(args.stage_timeout))

    data = os.path.join(args.output, "data")
    user, domain = (args.user, args.domain) if args.user and args.domain else first_user_and_domain(data)
    server = Stage("serve", ["serve", "--model-config-file", os.path.join(args.output, "export", "models.config"),
                             "--port", 0], log_dir)
    try:
        address = wait_until_serving(server, args.stage_timeout)
        server.wall = time.perf_counter() - server.start
        query = Stage("recommend", ["recommend", "--server", address, "--store", data, "--domain", domain,
                                    "--user", user, "-n", 10, "--timeout", 60], log_dir)
        query.wait(args.stage_timeout, watch=(server,))
    finally:
        server.stop()
    if server.exit_code not in (0, -signal.SIGTERM):
        raise server.error(f"exited with status {server.exit_code} when stopped")
    record(server, "serve (to ready; RSS over its life)")
    record(query)
    return rows


def table(rows) -> str:
    lines = ["| stage | wall s | peak RSS MiB | command |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['wall_seconds']:.1f} | {r['peak_rss_mib']:,.0f} | `{r['command']}` |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="work folder (raw/, data/, models/, export/, logs/)")
    parser.add_argument("--source", default="synthetic", choices=("synthetic", "movielens-1m", "taobao"))
    parser.add_argument("--input", help="input of a real-data source (default for synthetic: OUTPUT/raw, generated)")
    parser.add_argument("--users", type=int, default=2000, help="synthetic users")
    parser.add_argument("--items", type=int, default=1000, help="synthetic items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each model")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps-per-epoch", type=int, help="cap on training steps per epoch")
    parser.add_argument("--beam-args", help="Beam runner arguments of the preprocess stage, one string "
                        f"(default: {' '.join(DEFAULT_BEAM_ARGS)})")
    parser.add_argument("--user", help="user of the recommend query (with --domain; default: the first one)")
    parser.add_argument("--domain", help="domain of the recommend query")
    parser.add_argument("--stage-timeout", type=float, default=3600.0, help="seconds before a stage is killed")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--results", help="also write benchmarks/results/NAME.json and NAME.md (the docs' tables)")
    args = parser.parse_args(argv)
    if args.source != "synthetic" and not args.input:
        parser.error(f"--source {args.source} needs --input")
    if args.results:  # before the stages, not after them
        from benchmarks import results as results_files

        try:
            results_files.check_name(args.results)
        except ValueError as e:
            parser.error(str(e))

    try:
        rows = run(args)
    except StageError as e:
        print(f"stage_memory: {e}", file=sys.stderr)
        return 1
    source = f"synthetic ({args.users} users, {args.items} items)" if args.source == "synthetic" else \
        f"{args.source} ({args.input})"
    head = f"{source}, {args.epochs} epoch(s) of batch {args.batch_size}, {os.cpu_count()} CPU(s)"
    print(f"{head}; work folder {args.output}")
    print(table(rows))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "stages": rows}, f, indent=2)
    if args.results:
        path = results_files.save(args.results, head + "\n\n" + table(rows), {"args": vars(args), "stages": rows},
                                  "benchmarks.stage_memory", sys.argv[1:] if argv is None else argv)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
