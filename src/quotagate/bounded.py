"""File-system work that can hang, run under a per-job timeout.

A dead NFS mount blocks even ``stat``; a FIFO blocks an ``open``. A scan must finish anyway (and
release its lock), so every job that touches the spool runs where the caller can stop waiting
for it: in a daemon thread, which never keeps the process alive, or in worker processes, which
are killed when one of their jobs hangs (the jobs they had not finished run again in new ones).
A thread cannot be killed: long reads call :func:`check_deadline` between chunks, so a job given
up on stops by itself instead of reading on in the thread it was left in.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, Never, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Future
    from multiprocessing.context import BaseContext

T = TypeVar("T")
R = TypeVar("R")

# Jobs sent to a worker process at once: each chunk is a future, a pickled message each way and
# the executor's bookkeeping (for 2,000 mailboxes ~0.07 s of the parent's CPU in chunks of 8,
# ~0.03 s in chunks of 32). A scan has at least 32 chunks per worker, which keeps them evenly busy.
_CHUNK_MAX = 32


_deadline = threading.local()  # .at: when the job running in this thread is given up on


class GivenUp(TimeoutError):
    """The job ran past its timeout: its caller counts it as timed out."""


def check_deadline() -> None:
    """:class:`GivenUp` when the job this thread runs for :func:`in_thread` has run past its
    timeout; nothing in any other thread."""
    at = getattr(_deadline, "at", None)
    if at is not None and time.monotonic() > at:
        raise GivenUp("ran past its timeout")


def call(fn: Callable[[], R], timeout: float) -> R:
    """``fn()``, or TimeoutError after ``timeout`` seconds (``fn`` goes on in a daemon thread)."""
    return next(in_thread(lambda _: fn(), [None], timeout, _raise_timeout))


def _raise_timeout(_: object) -> Never:
    raise TimeoutError


def in_thread(fn: Callable[[T], R], jobs: Sequence[T], timeout: float, timed_out: Callable[[T], R]) -> Iterator[R]:
    """``fn`` of each job, in order, in a daemon thread; a job that takes longer than ``timeout``
    gives ``timed_out(job)`` and is left behind with its thread; a new thread takes the rest."""
    first = 0
    while first < len(jobs):
        results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        abandoned = threading.Event()
        worker = threading.Thread(
            target=_work, args=(fn, jobs, first, timeout, results, abandoned), name="quotagate-bounded", daemon=True
        )
        worker.start()
        try:
            for index in range(first, len(jobs)):
                try:
                    ok, value = results.get(timeout=timeout)
                except queue.Empty:
                    ok, value = False, GivenUp()
                if not ok and isinstance(value, GivenUp):  # past its timeout (it may notice first)
                    first = index + 1
                    yield timed_out(jobs[index])
                    break
                if not ok:
                    raise value
                yield value
            else:
                return
        finally:
            abandoned.set()


def _work(
    fn: Callable[[T], R],
    jobs: Sequence[T],
    first: int,
    timeout: float,
    results: queue.SimpleQueue[Any],
    abandoned: threading.Event,
) -> None:
    for job in islice(jobs, first, None):
        if abandoned.is_set():
            return
        _deadline.at = time.monotonic() + timeout
        try:
            results.put((True, fn(job)))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller, which raises it
            results.put((False, exc))
            return


_PENDING: Any = object()
_started: Any = None  # in a worker process: when each job started (time.monotonic), 0.0 = not yet


def _share(started: Any) -> None:
    global _started
    _started = started


def _run_chunk(fn: Callable[[T], R], chunk: list[tuple[int, T]]) -> list[R]:
    out = []
    for index, job in chunk:
        _started[index] = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
        out.append(fn(job))
    return out


def in_processes(
    fn: Callable[[T], R],
    jobs: Sequence[T],
    timeout: float,
    timed_out: Callable[[T], R],
    workers: int,
    context: BaseContext,
) -> Iterator[R]:
    """``fn`` of each job, in order, in ``workers`` processes; a job that runs longer than ``timeout``
    gives ``timed_out(job)``: every worker is killed (which one holds it is unknown) and the jobs
    not finished yet run again in fresh workers. ``fn`` must be picklable by reference."""
    # here, not at the top: a scan with few mailboxes to read (an unchanged one) never needs it
    from concurrent.futures import ProcessPoolExecutor

    n = len(jobs)
    results: list[Any] = [_PENDING] * n
    started = context.RawArray("d", n)
    chunk = max(1, min(_CHUNK_MAX, n // (workers * 32)))
    todo = list(range(n))
    emitted = 0
    while todo:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_share, initargs=(started,))
        chunks = [todo[k : k + chunk] for k in range(0, len(todo), chunk)]
        futures = [(c, pool.submit(_run_chunk, fn, [(i, jobs[i]) for i in c])) for c in chunks]
        todo = []
        hung = None
        finished = False
        try:
            for indexes, future in futures:
                hung = _wait(indexes, future, started, timeout)
                if hung is not None:
                    break
                for i, value in zip(indexes, future.result(), strict=True):
                    results[i] = value
                while emitted < n and results[emitted] is not _PENDING:
                    yield results[emitted]
                    emitted += 1
            finished = hung is None
        finally:
            if not finished:
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.kill()
            pool.shutdown(wait=finished, cancel_futures=True)
        if hung is None:
            break
        results[hung] = timed_out(jobs[hung])
        for indexes, future in futures:
            if future.done() and not future.cancelled() and future.exception() is None:
                for i, value in zip(indexes, future.result(), strict=True):
                    results[i] = value
            else:
                todo.extend(i for i in indexes if results[i] is _PENDING)
        for i in todo:
            started[i] = 0.0
    yield from results[emitted:]


def _wait(indexes: list[int], future: Future[Any], started: Any, timeout: float) -> int | None:
    """Wait for a chunk; the index of its job that has run past ``timeout``, or None when done."""
    poll = min(1.0, timeout / 4)
    while True:
        try:
            future.result(timeout=poll)
            return None
        except TimeoutError:
            running = [i for i in indexes if started[i] > 0.0]
            if running and time.monotonic() - started[running[-1]] > timeout:
                return running[-1]  # a chunk runs in order: its last started job is the one running
