"""Live row counts of a job on the local runner: the workers tally, the launching process watches.

Beam's counters reach the launcher of a local job only in its result, when the job is over. So, when
asked (`preprocess(..., progress_callback=...)` with the local runner), the job also passes its rows through
`TallyRows` steps: each worker process adds what it saw to one small JSON file of its own in a folder
of this machine (rewritten atomically every `FLUSH_SECONDS` and at each bundle's end), and a `Watcher`
thread in the launcher sums the files and hands the totals to a callback every few seconds. On other
runners the workers are elsewhere: no tally steps are added, and their own consoles show Beam's counters.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from typing import Callable, Dict, Optional

import apache_beam as beam

READ, REJECTED, RECORDS = "rows read", "rows rejected", "records built"
NAMES = (READ, REJECTED, RECORDS)
FLUSH_SECONDS = 1.0

# One file per worker process: its counts, a lock for the SDK harness's threads, the last write.
_lock = threading.Lock()
_counts: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
_flushed: Dict[str, float] = {}
_token = uuid.uuid4().hex


def _flush(folder: str, force: bool = False) -> None:
    now = time.monotonic()
    with _lock:
        if not force and now - _flushed.get(folder, 0.0) < FLUSH_SECONDS:
            return
        _flushed[folder] = now
        payload = json.dumps(dict(_counts[folder]))
        path = os.path.join(folder, f"{os.getpid()}-{_token}.json")
        tmp = path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(payload)
            os.replace(tmp, path)  # the watcher reads whole files only
        except OSError:  # the watcher is gone (its folder removed): progress is best effort
            pass


class _TallyFn(beam.DoFn):
    _EVERY = 1024  # elements between handing the count over: the lock and the clock stay off the hot path

    def __init__(self, folder: str, name: str, batched: bool):
        self._folder, self._name, self._batched = folder, name, batched
        self._pending = self._seen = 0

    def _hand_over(self, force: bool) -> None:
        with _lock:
            _counts[self._folder][self._name] += self._pending
        self._pending = 0
        _flush(self._folder, force=force)

    def process(self, element):
        self._pending += len(element) if self._batched else 1
        self._seen += 1
        if self._seen % self._EVERY == 0:
            self._hand_over(force=False)
        yield element

    def finish_bundle(self):
        self._hand_over(force=True)


class TallyRows(beam.PTransform):
    """The same elements, counted under `name` into `folder` (see the module docstring).

    Args:
        folder: a local folder the launching process watches.
        name: one of `NAMES`.
        batched: elements are lists: count their items.
    """

    def __init__(self, folder: str, name: str, batched: bool = False):
        super().__init__()
        if name not in NAMES:
            raise ValueError(f"`name` must be one of {NAMES}. Received: name={name!r}")
        self._folder, self._name, self._batched = folder, name, batched

    def expand(self, pcoll):
        return pcoll | "TallyForProgress" >> beam.ParDo(_TallyFn(self._folder, self._name, self._batched))


def totals(folder: str) -> Dict[str, int]:
    """The counts of every worker's file in `folder`, summed (0 for a name nobody counted yet)."""
    out = dict.fromkeys(NAMES, 0)
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                counts = json.load(f)
        except (OSError, ValueError):
            continue
        for key, value in counts.items():
            out[key] = out.get(key, 0) + int(value)
    return out


def format_counts(counts: Dict[str, int], seconds: float) -> str:
    """'rows read 412,331 · rows rejected 0 · records built 120,000 · 34 s'."""
    return " · ".join([f"{name} {counts.get(name, 0):,}" for name in NAMES] + [f"{seconds:.0f} s"])


Callback = Callable[[Dict[str, int], float, bool], None]


def printer(indent: str = "  ", stream=None) -> Callback:
    """A `Watcher` callback printing `format_counts` lines: rewritten in place on a terminal, else one line
    per call."""
    def show(counts: Dict[str, int], seconds: float, final: bool) -> None:
        out = stream or sys.stdout
        line = indent + format_counts(counts, seconds)
        if out.isatty():
            out.write("\r" + line + ("\n" if final else ""))
        else:
            out.write(line + "\n")
        out.flush()

    return show


class Watcher:
    """A folder for the workers' tallies and a thread calling `callback(totals, seconds, final)` every
    `every` seconds (`final` False), then once more with `final` True when the job is done.

    Use as a context manager: the folder is `watcher.folder`; on exit the thread stops, the last call
    is made (after a clean exit only) and the folder is removed.
    """

    def __init__(self, callback: Callback, every: float = 5.0):
        if every <= 0:
            raise ValueError(f"`every` must be > 0 seconds. Received: every={every!r}")
        self._callback, self._every = callback, every
        self.folder: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._start = 0.0

    def __enter__(self) -> "Watcher":
        self.folder = tempfile.mkdtemp(prefix="mdr-progress-")
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="mdr-progress", daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self._every):
            self._callback(totals(self.folder), time.monotonic() - self._start, False)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self._callback(totals(self.folder), time.monotonic() - self._start, True)
        shutil.rmtree(self.folder, ignore_errors=True)
