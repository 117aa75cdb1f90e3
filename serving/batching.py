"""Server-side batching: concurrent requests to one signature merged into one model call.

What TF Serving's basic batching does with `--enable_batching` and its batching parameters file
(`serving.config.BatchingConfig`), for the embedded server:

- Requests to the same version and signature whose inputs agree in every dimension but the first (the
  batch) wait in one queue. A batch thread takes the queue's oldest requests, up to `max_batch_size` rows
  in all, as soon as they fill a batch or the oldest has waited `batch_timeout_micros` (0: whatever is
  queued when a thread is free, so an idle server adds no wait and a busy one batches by itself).
- The rows are concatenated, padded (repeating the last row) to the next of `allowed_batch_sizes` if given,
  run in one call, and each request gets its own rows of every output back.
- Each request keeps its own deadline: one that expires while queued gets DEADLINE_EXCEEDED and never
  runs. An error of the merged call goes to every request in it (their inputs were checked one by one
  before they were queued, so such errors are the model's own).
- A queue holding `max_enqueued_batches` batches' worth of rows refuses more with UNAVAILABLE, as TF
  Serving does, instead of letting latency grow without bound.

Only signatures whose every input and output has a leading batch dimension of any size are batched;
others run alone.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import threading
import time
from typing import Callable, Deque, Dict, Hashable, List, Optional, Sequence

import grpc
import numpy as np

from serving.request_checks import RequestError

Arrays = Dict[str, np.ndarray]
# The defaults for what a batching file leaves out: TF Serving's (session_bundle_config.proto), but
# the thread count.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10
# TF Serving's default is one thread per core, each running a batch on its own. Here every model call
# already spreads over the cores (TensorFlow's intra-op pool) and each batch thread's Python holds the
# GIL: one thread, taking whatever queued while the last batch ran, merges more and serves more. Demo
# export, 2 cores, 8 clients of candidates K=100: 819 requests/s with 1 thread, 591 with 2, 556 with 4
# (batch_timeout_micros 1000), 466 unbatched (docs/results.md, "Server-side batching").
DEFAULT_BATCH_THREADS = 1


@dataclasses.dataclass(eq=False)
class _Task:
    arrays: Arrays
    rows: int
    deadline: Optional[float]  # time.monotonic() by which it must have run, or None
    queued_at: float
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: Optional[Arrays] = None
    error: Optional[BaseException] = None


@dataclasses.dataclass(eq=False)
class _Queue:
    run: Callable[[Arrays], Arrays]
    tasks: Deque[_Task] = dataclasses.field(default_factory=collections.deque)
    rows: int = 0


def batchable(inputs, outputs) -> bool:
    """Whether a signature (name -> `TensorSignature` maps) has a batch dimension of any size first on
    every input and output."""
    return all(s.shape is not None and len(s.shape) >= 1 and s.shape[0] is None
               for s in list(inputs.values()) + list(outputs.values()))


class BatchScheduler:
    """Merges concurrent requests into batches (see the module docstring).

    Args:
        max_batch_size: rows of the largest merged batch.
        batch_timeout_micros: how long the oldest request of a partial batch may wait for more.
        max_enqueued_batches: a queue refuses requests beyond this many batches' worth of rows.
        num_batch_threads: threads running batches (each runs one model call at a time). Default 1
            (see `DEFAULT_BATCH_THREADS`; TF Serving's is one per core).
        allowed_batch_sizes: sizes batches are padded up to (increasing, the last = `max_batch_size`).
    """

    def __init__(self, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, batch_timeout_micros: int = 0,
                 max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES,
                 num_batch_threads: int = DEFAULT_BATCH_THREADS, allowed_batch_sizes: Sequence[int] = ()):
        for name, value in (("max_batch_size", max_batch_size), ("max_enqueued_batches", max_enqueued_batches),
                            ("num_batch_threads", num_batch_threads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")
        if not isinstance(batch_timeout_micros, int) or batch_timeout_micros < 0:
            raise ValueError(f"`batch_timeout_micros` must be an integer >= 0. "
                             f"Received: batch_timeout_micros={batch_timeout_micros!r}")
        sizes = list(allowed_batch_sizes)
        if sizes and (sizes != sorted(set(sizes)) or sizes[0] < 1 or sizes[-1] != max_batch_size):
            raise ValueError("`allowed_batch_sizes` must be increasing and end with `max_batch_size`. "
                             f"Received: allowed_batch_sizes={sizes}, max_batch_size={max_batch_size}")
        self.max_batch_size = max_batch_size
        self.timeout = batch_timeout_micros / 1e6
        self.max_queued_rows = max_enqueued_batches * max_batch_size
        self.num_batch_threads = num_batch_threads
        self.allowed_batch_sizes = tuple(sizes)
        self._queues: Dict[Hashable, _Queue] = {}
        self._cond = threading.Condition()
        self._threads: List[threading.Thread] = []
        self._stopping = False
        self.batches_run = 0  # merged calls made (tests and stats read it)

    @classmethod
    def from_config(cls, config) -> "BatchScheduler":
        """From a `serving.config.BatchingConfig`; where it says nothing, TF Serving's defaults but one
        batch thread (`DEFAULT_BATCH_THREADS`)."""
        kwargs = {name: getattr(config, name) for name in
                  ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
                  if getattr(config, name) is not None}
        return cls(allowed_batch_sizes=config.allowed_batch_sizes, **kwargs)

    # -- callers ------------------------------------------------------------------------------------

    def run(self, key: Hashable, run: Callable[[Arrays], Arrays], arrays: Arrays, deadline: Optional[float],
            where: str = "the model") -> Arrays:
        """`run(arrays)`'s outputs for this request, computed in a batch with others of the same `key`.

        `key` must name the version and signature; requests whose inputs differ beyond the first
        dimension are kept apart here. `deadline` is a `time.monotonic()` time or None. Raises the
        batch's error, or RequestError (DEADLINE_EXCEEDED, UNAVAILABLE when the queue is full).
        """
        rows = len(next(iter(arrays.values())))
        shapes = tuple(sorted((name, a.shape[1:], a.dtype.str) for name, a in arrays.items()))
        task = _Task(arrays, rows, deadline, time.monotonic())
        with self._cond:
            if self._stopping:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
            queue = self._queues.setdefault((key, shapes), _Queue(run))
            if queue.rows + rows > self.max_queued_rows:
                raise RequestError(grpc.StatusCode.UNAVAILABLE,
                                   f"the batching queue of {where} is full ({queue.rows} rows waiting, "
                                   f"max_enqueued_batches x max_batch_size = {self.max_queued_rows}); retry later")
            queue.tasks.append(task)
            queue.rows += rows
            self._start_threads()
            self._cond.notify()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not task.done.wait(remaining):
            with self._cond:
                if task in queue.tasks:  # still waiting: it never runs
                    queue.tasks.remove(task)
                    queue.rows -= task.rows
                    raise _expired(where)
            task.done.wait()  # running: a TensorFlow call cannot be interrupted
        if task.error is not None:
            raise task.error
        return task.outputs

    def stop(self) -> None:
        """Fails what is still queued (UNAVAILABLE) and ends the batch threads after their current batch."""
        with self._cond:
            self._stopping = True
            for queue in self._queues.values():
                while queue.tasks:
                    task = queue.tasks.popleft()
                    task.error = RequestError(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
                    task.done.set()
                queue.rows = 0
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        with self._cond:
            self._threads, self._stopping = [], False  # a restarted server batches again

    # -- batch threads ------------------------------------------------------------------------------

    def _start_threads(self) -> None:
        while len(self._threads) < self.num_batch_threads:
            thread = threading.Thread(target=self._loop, name=f"mdr-batching-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _next_batch(self):
        """(queue, tasks) of a batch ready to run, or (None, seconds to wait) (under the lock)."""
        now, wait = time.monotonic(), None
        for queue in self._queues.values():
            while queue.tasks and queue.tasks[0].deadline is not None and queue.tasks[0].deadline <= now:
                task = queue.tasks.popleft()  # expired while queued
                queue.rows -= task.rows
                task.error = _expired("the model")
                task.done.set()
            if not queue.tasks:
                continue
            ready_in = queue.tasks[0].queued_at + self.timeout - now
            if queue.rows >= self.max_batch_size or ready_in <= 0:
                tasks, rows = [], 0
                while queue.tasks and rows + queue.tasks[0].rows <= self.max_batch_size:
                    task = queue.tasks.popleft()
                    tasks.append(task)
                    rows += task.rows
                if not tasks:  # a single request larger than a batch (no max_batch_size check upstream)
                    tasks.append(queue.tasks.popleft())
                    rows = tasks[0].rows
                queue.rows -= rows
                return queue, tasks
            wait = ready_in if wait is None else min(wait, ready_in)
        return None, wait

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    queue, tasks = self._next_batch()
                    if queue is not None:
                        break
                    self._cond.wait(tasks)
            self._run_batch(queue, tasks)

    def _run_batch(self, queue: _Queue, tasks: List[_Task]) -> None:
        rows = sum(t.rows for t in tasks)
        size = rows
        if self.allowed_batch_sizes and rows <= self.allowed_batch_sizes[-1]:
            size = self.allowed_batch_sizes[bisect.bisect_left(self.allowed_batch_sizes, rows)]
        try:
            merged = {}
            for name in tasks[0].arrays:
                parts = [t.arrays[name] for t in tasks]
                if size > rows:
                    parts.append(np.repeat(parts[-1][-1:], size - rows, axis=0))
                merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
            outputs = queue.run(merged)
            for name, value in outputs.items():
                if value.ndim < 1 or value.shape[0] != size:
                    raise RequestError(grpc.StatusCode.INTERNAL,
                                       f"output {name!r} of shape {value.shape} has no batch of {size} rows to split")
            start = 0
            for task in tasks:
                task.outputs = {name: value[start:start + task.rows] for name, value in outputs.items()}
                start += task.rows
        except BaseException as e:  # noqa: BLE001 (every request of the batch gets the batch's error)
            for task in tasks:
                task.error = e
        finally:
            with self._cond:
                self.batches_run += 1
            for task in tasks:
                task.done.set()


def _expired(where: str) -> RequestError:
    return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded while queued for a batch of {where}")
