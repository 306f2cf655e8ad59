"""Benchmark live usage tracking: ``quotagate serve`` with ``[watch] enabled = true``.

Run it by hand from the project root (it is not part of the test suite)::

    .venv/bin/python benchmarks/watch.py [--mailboxes 10000] [--rate 1000] [--seconds 20] [--quick]
                                         [--idle 30] [--samples 100] [--probes 4] [--rescan-seconds S]

One process is measured: ``quotagate --config CFG serve`` with ``[watch] enabled = true``, which
answers policy requests and tracks usage from inotify events (``quotagate watch`` runs the same
tracker and publisher without the policy server). Everything listens on 127.0.0.1.

1. **Spool.** ``--mailboxes`` Maildir++ mailboxes under
   ``/var/tmp/quotagate-bench-watch/spool-<N>`` (``{domain}/{local}/Maildir``), generated once
   from a fixed seed and reused while its marker matches: INBOX plus a few of ``.Sent``,
   ``.Trash``, ``.Drafts``, ``.Archive``, 2-20 small messages each (sparse files whose names carry
   ``,S=<size>``), no ``maildirsize``, directory mtimes an hour old. Quotas: 5% of the mailboxes
   are over quota, 10% within 100 KB of it, and one in 100 is a *probe* mailbox whose quota is
   1000 bytes above its usage (never touched by the load). Files left by an interrupted run
   (``.benchload`` / ``.benchprobe`` in the name) are removed first, then the spool is counted
   independently (``scandir`` + ``lstat``) and checked against the generator's plan.
2. **quotagate.** A fresh run directory ``/var/tmp/quotagate-bench-watch/run`` (kept for
   inspection, replaced by the next run): a config with an SQLite store, ``[publish] file``,
   ``[policy] listen`` and ``metrics`` on free loopback ports, ``[watch] enabled = true`` and
   every other key at its default (``flush_seconds = 0.2``, ``mode = "auto"``,
   ``rescan_seconds = 3600``, ``refresh_seconds = 30``, ``reservation_seconds = 600``;
   ``--rescan-seconds`` sets ``[watch] rescan_seconds``, so that rescans run while the load
   does); ``quotagate mailbox import`` of a
   CSV, ``quotagate scan``, then ``quotagate serve``, waited for until it logs "watching" and
   listens.
3. **Resources.** CPU (``utime + stime``, reaped children's included, of the daemon and of
   its descendants, from ``/proc/PID/stat``) and RSS (``VmRSS`` summed over the same processes, sampled every 0.5 s)
   while idle (``--idle`` seconds, default 30: one ``refresh_seconds`` period), then under a load
   of ``--rate`` deliveries per second for ``--seconds``: a separate process writes each message
   into a random non-probe mailbox's ``tmp/`` (85% INBOX, else one of its folders; Pareto sizes,
   1.5 KB minimum) and renames it into ``new/`` with a ``,S=`` name, on a steady schedule. While
   it runs the store is read once a second (``SUM(messages)`` in ``quotagate_usage``) to see the
   backlog. When it stops, the store is read every 50 ms until every mailbox's bytes and messages
   equal the expected ones (the independent count plus what the generator delivered): the
   *catch-up* time, and how many were still wrong one second after the last delivery. Then the
   whole spool is counted again independently and compared with the store, mailbox by mailbox.
   The machine-wide CPU use (``/proc/stat``) is printed per phase, and what other processes used
   (a warning names the busiest when they used more than 20% of a core): the daemon shares the
   cores with the load generator, the probes and anything else running.
4. **Latency.** ``--samples`` probe cycles while idle and as many while the load runs again
   (the load continues until they are done), ``--probes`` (4) of them at a time, spaced by random
   gaps. A cycle renames a ``PROBE_SIZE`` message into a probe mailbox's ``new/`` (pushing it over
   quota) and times, from the rename, (a) the address appearing in the ``[publish] file``
   (``stat`` every 2 ms, read when it changed) and (b) the daemon's answer to a Postfix policy
   request (``request=smtpd_access_policy``, ``protocol_state=RCPT``, no size; sent every 2 ms
   on a persistent connection) turning from ``DUNNO`` to ``552 5.2.2 Mailbox is full``; then it
   deletes the message and times the address leaving the file and the answer turning back to
   ``DUNNO``. p50, p99 and max of each, and the round-trip time of the policy requests. The
   probes' polling costs the daemon CPU of its own: the resource row of that phase is labelled.
   The gaps span two flush periods, so that steps land at random phases of the flush cycle.

It prints the figures, the inotify watches the daemon logged and holds (from
``/proc/PID/fdinfo``), ``fs.inotify.max_user_watches``, the daemon's warnings and errors, and the
command line. Every process it starts (the daemon, the load generator) is stopped on exit, Ctrl-C
included, and the messages it added to the spool are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    HOST,
    Interrupted,
    Processes,
    free_port,
    machine,
    percentile,
    proc_stat,
    run,
    stop_on_sigterm,
    tail,
)
from _spool import keep, write_message

GENERATOR_VERSION = 1
SEED = 20240921
DEFAULT_DIR = Path("/var/tmp/quotagate-bench-watch")
MARKER = ".quotagate-bench-watch.json"
DOMAINS = ("example.com", "example.net", "example.org", "mail.example.test")
LAYOUT = "{domain}/{local}/Maildir"
QUOTAGATE = Path(sys.executable).parent / "quotagate"
REJECT_CODE = "552"
MAX_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")
HEADER = b"Return-Path: <sender@example.net>\nFrom: Sender <sender@example.net>\nSubject: watch benchmark\n\n"
OLD_MTIME_SECONDS = 3600

# The spool: folders besides INBOX (name, share of mailboxes having it), messages per mailbox.
EXTRA_FOLDERS = (("Sent", 0.6), ("Trash", 0.4), ("Drafts", 0.2), ("Archive", 0.25))
MESSAGES = (2, 20)
SIZE_MIN, SIZE_SHAPE, SIZE_CAP = 1_500, 1.5, 2 << 20
CLASSES = (("over", 0.05), ("near", 0.10), ("roomy", 0.85))
PROBE_EVERY = 100  # one mailbox in PROBE_EVERY is a probe mailbox
PROBE_HEADROOM = 1_000  # a probe mailbox's quota: its usage plus this
PROBE_SIZE = 4_000  # a probe message: pushes its mailbox over quota

# What the runs add to the spool carries one of these in its name, and is removed afterwards.
LOAD_TAG = ".benchload"
PROBE_TAG = ".benchprobe"
INBOX_SHARE = 0.85  # deliveries into INBOX; the rest into one of the mailbox's folders

POLL_SECONDS = 0.002
# Gaps between a probe's steps span two [watch] flush_seconds periods (0.2 s, the default), so
# that a step lands at a uniformly random phase of the tracker's flush cycle.
FLUSH_SECONDS = 0.2
GAP = (0.05, 0.05 + 2 * FLUSH_SECONDS)
TRANSITION_TIMEOUT = 10.0
SAMPLE_SECONDS = 0.5
CATCH_UP_TIMEOUT = 60.0
LOAD_WITH_PROBES_CAP = 300.0


# -- the spool ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """One mailbox as planned: the truth before any run adds to it."""

    address: str
    quota: int
    bytes: int
    messages: int
    kind: str  # over | near | roomy | probe
    folders: tuple[str, ...]  # "" for INBOX, ".Sent" ...
    files: tuple[tuple[str, str, int], ...]  # (folder/sub, file name, size)

    @property
    def local(self) -> str:
        return self.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass(frozen=True)
class Spool:
    root: Path
    boxes: list[Box]

    def maildir(self, box: Box) -> str:
        return os.path.join(self.root, LAYOUT.format(domain=box.domain, local=box.local, address=box.address))


def plan(count: int, seed: int = SEED) -> list[Box]:
    """Every mailbox, its folders, files and quota; the same for the same arguments (no I/O)."""
    rng = random.Random(seed)
    names = [name for name, _ in CLASSES]
    weights = [share for _, share in CLASSES]
    boxes = []
    seq = 0
    for i in range(count):
        address = f"user{i:05d}@{DOMAINS[i % len(DOMAINS)]}"
        folders = ("", *(f".{name}" for name, share in EXTRA_FOLDERS if rng.random() < share))
        files = []
        for _ in range(rng.randint(*MESSAGES)):
            size = min(SIZE_CAP, int(SIZE_MIN * rng.paretovariate(SIZE_SHAPE)))
            folder = "" if rng.random() < 0.6 else rng.choice(folders)
            sub = "new" if rng.random() < 0.15 else "cur"
            name = f"{1_700_000_000 + seq}.M{seq % 1_000_000}P4242Q{seq}.bench,S={size}"
            files.append((f"{folder}/{sub}" if folder else sub, name + (":2,S" if sub == "cur" else ""), size))
            seq += 1
        used = sum(f[2] for f in files)
        if i % PROBE_EVERY == PROBE_EVERY // 2:
            kind, quota = "probe", used + PROBE_HEADROOM
        else:
            kind = rng.choices(names, weights=weights)[0]
            if kind == "over":
                quota = max(1, used - rng.randint(1, max(1, used // 4)))
            elif kind == "near":
                quota = used + rng.randint(5_000, 100_000)
            else:
                quota = max(10 << 20, 5 * used)
        boxes.append(Box(address, quota, used, len(files), kind, folders, tuple(files)))
    return boxes


def _age(paths: Iterable[str]) -> None:
    """Set mtimes an hour back, so quotagate's racy-mtime guard does not force re-reads."""
    old = time.time() - OLD_MTIME_SECONDS
    for path in paths:
        os.utime(path, (old, old))


def _generate(root: Path, boxes: list[Box]) -> None:
    started = time.perf_counter()
    for n, box in enumerate(boxes, start=1):
        maildir = os.path.join(root, LAYOUT.format(domain=box.domain, local=box.local, address=box.address))
        dirs = []
        for folder in box.folders:
            base = os.path.join(maildir, folder) if folder else maildir
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(base, sub))
                dirs.append(os.path.join(base, sub))
            if folder:
                Path(base, "maildirfolder").touch()
                dirs.append(base)
        for where, name, size in box.files:
            write_message(os.path.join(maildir, where, name), size, HEADER)
        _age([*dirs, maildir])  # the root last: making the folders changed it
        if n % max(1, len(boxes) // 5) == 0:
            print(f"  generated {n}/{len(boxes)} mailboxes", flush=True)
    print(f"  generation took {time.perf_counter() - started:.1f} s", flush=True)


def ensure_spool(base: Path, count: int) -> Spool:
    """Reuse ``base/spool-<count>`` when it was made with these parameters, else generate it."""
    boxes = plan(count)
    root = base / f"spool-{count}"
    params = {"mailboxes": count, "seed": SEED, "version": GENERATOR_VERSION}
    files = sum(b.messages for b in boxes)

    def build(staging: Path) -> None:
        print(f"spool: generating {count} mailboxes, {files} messages in {root} (seed {SEED})", flush=True)
        _generate(staging, boxes)

    if keep(root, params, MARKER, build):
        print(f"spool: reusing {root}")
    return Spool(root, boxes)


def _folder_dirs(maildir: str) -> list[str]:
    """INBOX and every ``.Folder`` directory, as found on disk (symlinks not followed)."""
    found = [maildir]
    with contextlib.suppress(FileNotFoundError), os.scandir(maildir) as entries:
        found += [e.path for e in entries if e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
    return found


def sweep(spool: Spool) -> int:
    """Remove what earlier runs added (tagged names) and age the directories it touched."""
    removed = 0
    touched: list[str] = []
    for box in spool.boxes:
        for folder in _folder_dirs(spool.maildir(box)):
            for sub in ("tmp", "new", "cur"):
                path = os.path.join(folder, sub)
                with contextlib.suppress(FileNotFoundError), os.scandir(path) as entries:
                    ours = [e.path for e in entries if LOAD_TAG in e.name or PROBE_TAG in e.name]
                for victim in ours:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(victim)
                if ours:
                    removed += len(ours)
                    touched.append(path)
    _age(touched)
    return removed


Counts = dict[str, tuple[int, int]]


def count_spool(spool: Spool) -> Counts:
    """Bytes and messages per mailbox, counted without quotagate: every regular, non-dot file in
    cur/ and new/ of INBOX and each ``.Folder``, by ``lstat``."""
    out: Counts = {}
    for box in spool.boxes:
        total = messages = 0
        for folder in _folder_dirs(spool.maildir(box)):
            for sub in ("cur", "new"):
                with contextlib.suppress(FileNotFoundError), os.scandir(os.path.join(folder, sub)) as entries:
                    for e in entries:
                        if not e.name.startswith(".") and e.is_file(follow_symlinks=False):
                            total += e.stat(follow_symlinks=False).st_size
                            messages += 1
        out[box.address] = (total, messages)
    return out


def differences(a: Counts, b: Counts) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


# -- processes and /proc ------------------------------------------------------------------------


_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Sample:
    at: float
    cpu: float  # seconds: the process (reaped children included) and its live descendants
    rss: int  # KiB, summed over the same processes
    processes: int


def sample(pid: int, others: Sequence[int] = ()) -> Sample:
    """CPU and RSS of ``pid`` and of ``others`` (its live descendants, found by :func:`descendants`),
    each with the CPU of the children it reaped (a forkserver's scan workers, say)."""
    total = 0
    rss = 0
    for p in [pid, *others]:
        fields = proc_stat(p)
        if fields is None:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        rss += _status_kib(p, "VmRSS")
    return Sample(time.monotonic(), total / _CLOCK_TICK, rss, 1 + len(others))


def all_processes() -> dict[int, tuple[int, str]]:
    """CPU ticks (user + system) and name of every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{entry.name}/stat").read_text()
                fields = raw[raw.rfind(")") + 2 :].split()
                out[int(entry.name)] = (int(fields[11]) + int(fields[12]), raw[raw.find("(") + 1 : raw.rfind(")")])
    return out


def system_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])
    idle = values[3] + values[4]
    return total - idle, total


def inotify_watches(pid: int) -> int | None:
    """Watches held by the process, counted from ``/proc/PID/fdinfo`` (None when unreadable)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    count = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                count += sum(line.startswith("inotify wd:") for line in text.splitlines())
    return count


@dataclass(frozen=True)
class Window:
    """CPU and memory of the daemon over one phase."""

    label: str
    seconds: float
    cpu_percent: float
    rss_mean: float  # MiB
    rss_peak: float  # MiB
    machine_percent: float  # every process on the machine, in % of one core (100 x cores at most)
    others_percent: float  # the same less the daemon, this script and its load generator
    note: str = ""
    busiest: str = ""  # the other processes that used the most CPU


class Meter:
    """Samples of one process tree; its descendants are looked for every few samples (a walk of
    /proc costs milliseconds, and the daemon forks only for scans)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.others = descendants(pid)
        self.first = sample(pid, self.others)
        self.samples = [self.first]
        self.jiffies = system_jiffies()
        self.own = time.process_time()
        self.processes = all_processes()

    def tick(self) -> None:
        if len(self.samples) % 10 == 0:
            self.others = descendants(self.pid)
        self.samples.append(sample(self.pid, self.others))

    def close(self, label: str, note: str = "", generator_cpu: float = 0.0) -> Window:
        """The window so far; ``generator_cpu``: seconds the load generator (reaped already) used."""
        self.others = descendants(self.pid)
        self.tick()
        last = self.samples[-1]
        busy0, total0 = self.jiffies
        busy1, total1 = system_jiffies()
        seconds = last.at - self.first.at
        rss = [s.rss / 1024 for s in self.samples]
        daemon = 100 * (last.cpu - self.first.cpu) / seconds if seconds else 0.0
        machine = 100 * (os.cpu_count() or 1) * (busy1 - busy0) / max(1, total1 - total0)
        ours = 100 * (time.process_time() - self.own + generator_cpu) / seconds if seconds else 0.0
        mine = {self.pid, os.getpid(), *self.others}
        used = [
            (ticks - self.processes.get(pid, (0, ""))[0], f"{name}[{pid}]")
            for pid, (ticks, name) in all_processes().items()
            if pid not in mine
        ]
        top = [(ticks, who) for ticks, who in sorted(used, reverse=True)[:3] if ticks]
        busiest = ", ".join(f"{who} {100 * ticks / _CLOCK_TICK / seconds:.0f}%" for ticks, who in top)
        others = max(0.0, machine - daemon - ours)
        if 100 * sum(t for t, _ in top) / _CLOCK_TICK / seconds < others / 2:
            busiest = (f"{busiest}; " if busiest else "") + "the rest: processes that ended meanwhile, or kernel work"
        return Window(label, seconds, daemon, sum(rss) / len(rss), max(rss), machine, others, note, busiest)


def wait_until_ready(proc: subprocess.Popen[bytes], log: Path, port: int, seconds: float) -> tuple[str, float, float]:
    """The "watching" log line, seconds until it was logged, seconds until the port accepted."""
    started = time.monotonic()
    deadline = started + seconds
    line = ""
    watching_at = 0.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"quotagate serve exited with {proc.returncode}:\n{tail(log)}")
        if not line:
            found = re.search(r"^.*watching \d+ mailboxes.*$", log.read_text(errors="replace"), re.M)
            if found:
                line, watching_at = found.group(0), time.monotonic() - started
        if line:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                return line, watching_at, time.monotonic() - started
            except OSError:
                pass
        time.sleep(0.02)
    raise RuntimeError(f"quotagate serve not watching and listening after {seconds} s:\n{tail(log)}")


def settle(pid: int, seconds: float = 60.0) -> float:
    """Wait until the daemon uses under 5% of a CPU for two 0.5 s windows in a row (its first
    flush measures every mailbox again); the seconds waited."""
    started = time.monotonic()
    quiet = 0
    last = sample(pid, descendants(pid))
    while quiet < 2 and time.monotonic() - started < seconds:
        time.sleep(0.5)
        now = sample(pid, descendants(pid))
        quiet = quiet + 1 if (now.cpu - last.cpu) / (now.at - last.at) < 0.05 else 0
        last = now
    return time.monotonic() - started


# -- the store, read directly -------------------------------------------------------------------


class StoreView:
    """quotagate's SQLite store, read-only, one short read transaction per query."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10, isolation_level=None)

    def rows(self) -> Counts:
        return {a: (b, m) for a, b, m in self.conn.execute("SELECT address, bytes, messages FROM quotagate_usage")}

    def messages(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(SUM(messages), 0) FROM quotagate_usage").fetchone()[0])

    def close(self) -> None:
        self.conn.close()


def wait_consistent(store: StoreView, expected: Counts, since: float, timeout: float) -> tuple[float | None, int, int]:
    """Read the store every 50 ms until every mailbox holds the expected usage: (seconds from
    ``since`` until it did, or None; mailboxes differing one second after ``since``; mailboxes
    still differing at the end)."""
    after_1s = -1  # not known yet
    while True:
        bad = differences(store.rows(), expected)
        now = time.monotonic()
        if after_1s < 0 and (not bad or now - since >= 1.0):
            after_1s = len(bad)
        if not bad:
            return now - since, after_1s, 0
        if now - since > timeout:
            return None, after_1s, len(bad)
        time.sleep(0.05)


# -- the load generator -------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    delivered: int
    bytes: int
    started: float  # time.monotonic (system-wide on Linux)
    ended: float
    max_late: float  # seconds the schedule was behind at worst
    cpu: float
    per_box: dict[str, tuple[int, int]]

    @property
    def rate(self) -> float:
        return self.delivered / (self.ended - self.started) if self.ended > self.started else 0.0


def _generate_load(
    targets: list[tuple[str, tuple[str, ...]]],
    rate: float,
    seconds: float,
    seed: int,
    progress: Any,
    stop: Any,
    conn: multiprocessing.connection.Connection,
) -> None:
    """Deliver ``rate`` messages per second for ``seconds`` (or until ``stop``): each written in
    tmp/ and renamed into new/ of a random target folder, as an MDA does."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it
    rng = random.Random(seed)
    pid = os.getpid()
    per_box: dict[str, tuple[int, int]] = {}
    total = max(1, int(rate * seconds))
    n = size_sum = 0
    max_late = 0.0
    started = time.monotonic()
    while n < total and not stop.is_set():
        now = time.monotonic()
        max_late = max(max_late, now - started - n / rate)
        due = min(total, int((now - started) * rate) + 1)
        while n < due:
            address, folders = targets[rng.randrange(len(targets))]
            folder = folders[0] if len(folders) == 1 or rng.random() < INBOX_SHARE else rng.choice(folders[1:])
            size = min(SIZE_CAP, int(SIZE_MIN * rng.paretovariate(SIZE_SHAPE)))
            name = f"{int(time.time())}.M{n}P{pid}{LOAD_TAG},S={size}"
            tmp = f"{folder}/tmp/{name}"
            write_message(tmp, size, HEADER)
            os.rename(tmp, f"{folder}/new/{name}")
            b, m = per_box.get(address, (0, 0))
            per_box[address] = (b + size, m + 1)
            n += 1
            size_sum += size
            progress[0] = n
        pause = started + n / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    ended = time.monotonic()
    conn.send(LoadResult(n, size_sum, started, ended, max(0.0, max_late), time.process_time(), per_box))
    conn.close()


class Load:
    """The load generator as a child process."""

    def __init__(self, spool: Spool, procs: Processes, rate: float, seconds: float, seed: int) -> None:
        ctx = multiprocessing.get_context("fork")
        targets = [
            (b.address, tuple(os.path.join(spool.maildir(b), f) if f else spool.maildir(b) for f in b.folders))
            for b in spool.boxes
            if b.kind != "probe"
        ]
        self.progress = ctx.RawArray("q", 1)
        self.stop = ctx.Event()
        self.recv, send = ctx.Pipe(duplex=False)
        self.procs = procs
        self.process = ctx.Process(
            target=_generate_load,
            args=(targets, rate, seconds, seed, self.progress, self.stop, send),
            name="quotagate-bench-load",
            daemon=True,
        )
        self.process.start()
        procs.workers.append(self.process)
        send.close()

    @property
    def delivered(self) -> int:
        return int(self.progress[0])

    def done(self) -> bool:
        return self.recv.poll()

    def result(self, timeout: float = 30) -> LoadResult:
        if not self.recv.poll(timeout):
            raise RuntimeError("the load generator did not report")
        result: LoadResult = self.recv.recv()
        self.procs.stop_worker(self.process)
        return result


def add(counts: Counts, extra: dict[str, tuple[int, int]]) -> Counts:
    out = dict(counts)
    for address, (b, m) in extra.items():
        b0, m0 = out.get(address, (0, 0))
        out[address] = (b0 + b, m0 + m)
    return out


# -- latency probes -----------------------------------------------------------------------------


class Published:
    """The ``[publish] file``: stat'ed on every look, read again only when it changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.key: tuple[int, int, int] | None = None
        self.addresses: frozenset[str] = frozenset()

    def has(self, address: str) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self.key:
            with contextlib.suppress(FileNotFoundError):
                text = self.path.read_text()
                self.addresses = frozenset(
                    line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
                )
                self.key = key
        return address in self.addresses


class PolicyClient:
    """One persistent connection, one Postfix policy request at a time."""

    def __init__(self, port: int, rtts: list[float]) -> None:
        self.port = port
        self.rtts = rtts
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def ask(self, address: str) -> str:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        request = f"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient={address}\n\n".encode()
        started = time.perf_counter()
        self.writer.write(request)
        reply = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), 10)
        self.rtts.append(time.perf_counter() - started)
        return reply.decode().strip().removeprefix("action=")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


@dataclass
class Cycle:
    fill_file: float | None
    fill_answer: float | None
    drain_file: float | None
    drain_answer: float | None


@dataclass
class ProbeRun:
    cycles: list[Cycle] = field(default_factory=list)
    rtts: list[float] = field(default_factory=list)
    skipped: int = 0  # probe mailboxes not in the starting state (not over, answer DUNNO)
    seconds: float = 0.0
    cpu: float = 0.0  # this process: probes and sampling


async def _transition(
    address: str, over: bool, t0: float, client: PolicyClient, published: Published, timeout: float
) -> tuple[float | None, float | None]:
    """Seconds from ``t0`` until the file and the answer show ``over`` (None: not within timeout)."""
    file_at: float | None = None
    answer_at: float | None = None
    while True:
        if file_at is None and published.has(address) == over:
            file_at = time.perf_counter() - t0
        if answer_at is None and (await client.ask(address)).startswith(REJECT_CODE) == over:
            answer_at = time.perf_counter() - t0
        if file_at is not None and answer_at is not None:
            return file_at, answer_at
        if time.perf_counter() - t0 > timeout:
            return file_at, answer_at
        await asyncio.sleep(POLL_SECONDS)


async def _probe_worker(
    spool: Spool,
    pool: asyncio.Queue[Box],
    remaining: list[int],
    run_: ProbeRun,
    port: int,
    published: Published,
    rng: random.Random,
) -> None:
    client = PolicyClient(port, run_.rtts)
    try:
        await asyncio.sleep(rng.uniform(0, GAP[1]))
        while remaining[0] > 0:
            if pool.empty():
                return  # every probe mailbox is busy or was skipped
            remaining[0] -= 1
            box = pool.get_nowait()
            file_ok, answer_ok = await _transition(box.address, False, time.perf_counter(), client, published, 5.0)
            if file_ok is None or answer_ok is None:
                run_.skipped += 1  # left out of the pool: its state is not ours to know
                continue
            maildir = spool.maildir(box)
            name = f"{int(time.time())}.M{rng.randrange(10**9)}P{os.getpid()}{PROBE_TAG},S={PROBE_SIZE}"
            tmp, new = f"{maildir}/tmp/{name}", f"{maildir}/new/{name}"
            write_message(tmp, PROBE_SIZE, HEADER)
            try:
                t0 = time.perf_counter()
                os.rename(tmp, new)
                fill = await _transition(box.address, True, t0, client, published, TRANSITION_TIMEOUT)
                await asyncio.sleep(rng.uniform(*GAP))
                t0 = time.perf_counter()
                os.unlink(new)
            except BaseException:
                for path in (tmp, new):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                raise
            drain = await _transition(box.address, False, t0, client, published, TRANSITION_TIMEOUT)
            run_.cycles.append(Cycle(fill[0], fill[1], drain[0], drain[1]))
            pool.put_nowait(box)
            await asyncio.sleep(rng.uniform(*GAP))
    finally:
        await client.close()


async def probe(
    spool: Spool, port: int, published_file: Path, samples: int, concurrency: int, seed: int, meter: Meter
) -> ProbeRun:
    """``samples`` fill/drain cycles, ``concurrency`` at a time, on distinct probe mailboxes."""
    rng = random.Random(seed)
    boxes = [b for b in spool.boxes if b.kind == "probe"]
    rng.shuffle(boxes)
    pool: asyncio.Queue[Box] = asyncio.Queue()
    for box in boxes:
        pool.put_nowait(box)
    result = ProbeRun()
    remaining = [samples]
    published = Published(published_file)
    cpu0, started = time.process_time(), time.monotonic()

    async def sampler() -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            meter.tick()

    ticking = asyncio.create_task(sampler())
    workers = [
        asyncio.create_task(_probe_worker(spool, pool, remaining, result, port, published, random.Random(rng.random())))
        for _ in range(min(concurrency, len(boxes)))
    ]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in [*workers, ticking]:
            task.cancel()
        await asyncio.gather(*workers, ticking, return_exceptions=True)
    result.seconds = time.monotonic() - started
    result.cpu = time.process_time() - cpu0
    return result


# -- phases -------------------------------------------------------------------------------------


@dataclass
class LoadPhase:
    label: str
    load: LoadResult
    window: Window
    backlog_max: int | None  # messages delivered but not yet in the store, at worst (1 s samples)
    backlog_mean: float | None
    catch_up: float | None  # seconds from the last delivery until the store matched everywhere
    wrong_after_1s: int  # mailboxes whose stored usage was still wrong a second after the last delivery
    still_wrong: int
    recount_wrong: int  # mailboxes whose stored usage differs from an independent recount
    generator_wrong: int  # mailboxes whose recount differs from what the generator says it added
    probes: ProbeRun | None = None


def catch_up(
    label: str, spool: Spool, store: StoreView, expected: Counts, load: LoadResult, window: Window, **extra: Any
) -> LoadPhase:
    seconds, after_1s, wrong = wait_consistent(store, expected, load.ended, CATCH_UP_TIMEOUT)
    recount = count_spool(spool)
    stored = store.rows()
    return LoadPhase(
        label,
        load,
        window,
        catch_up=seconds,
        wrong_after_1s=after_1s,
        still_wrong=wrong,
        recount_wrong=len(differences(stored, recount)),
        generator_wrong=len(differences(recount, expected)),
        **extra,
    )


def steady_load(
    spool: Spool, procs: Processes, pid: int, store: StoreView, expected: Counts, rate: float, seconds: float
) -> tuple[LoadPhase, Counts]:
    """The load alone: CPU and RSS every 0.5 s, the store's backlog every second."""
    base = store.messages()
    meter = Meter(pid)
    load = Load(spool, procs, rate, seconds, SEED + 11)
    backlog: list[int] = []
    next_tick = time.monotonic()
    n = 0
    while not load.done():
        next_tick += SAMPLE_SECONDS
        time.sleep(max(0.0, next_tick - time.monotonic()))
        meter.tick()
        n += 1
        if n % 2 == 0 and not load.done():
            delivered = load.delivered
            backlog.append(delivered - (store.messages() - base))
        if time.monotonic() - meter.first.at > seconds + 60:
            raise RuntimeError("the load generator overran its time")
    result = load.result()
    window = meter.close(f"load {rate:g}/s", generator_cpu=result.cpu)
    expected = add(expected, result.per_box)
    phase = catch_up(
        window.label,
        spool,
        store,
        expected,
        result,
        window,
        backlog_max=max(backlog) if backlog else None,
        backlog_mean=sum(backlog) / len(backlog) if backlog else None,
    )
    return phase, expected


def load_with_probes(
    spool: Spool,
    procs: Processes,
    pid: int,
    store: StoreView,
    expected: Counts,
    rate: float,
    port: int,
    published: Path,
    samples: int,
    concurrency: int,
) -> tuple[LoadPhase, Counts]:
    meter = Meter(pid)
    load = Load(spool, procs, rate, LOAD_WITH_PROBES_CAP, SEED + 12)
    try:
        probes = asyncio.run(probe(spool, port, published, samples, concurrency, SEED + 13, meter))
    finally:
        load.stop.set()
    result = load.result()
    window = meter.close(
        f"load {rate:g}/s + probes", f"{len(probes.rtts) / probes.seconds:.0f} probe req/s", result.cpu
    )
    expected = add(expected, result.per_box)
    phase = catch_up(
        window.label, spool, store, expected, result, window, backlog_max=None, backlog_mean=None, probes=probes
    )
    return phase, expected


# -- report -------------------------------------------------------------------------------------


def ms(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 1000:.{digits}f}"


def latency_rows(label: str, run_: ProbeRun) -> list[str]:
    rows = []
    for what, pick in (
        ("fill  -> in file", lambda c: c.fill_file),
        ("fill  -> 552 answer", lambda c: c.fill_answer),
        ("drain -> out of file", lambda c: c.drain_file),
        ("drain -> DUNNO answer", lambda c: c.drain_answer),
    ):
        values = [v for v in map(pick, run_.cycles) if v is not None]
        lost = len(run_.cycles) - len(values)
        if values:
            rows.append(
                f"{label:<16} {what:<22} {len(values):>5} {ms(percentile(values, 0.5)):>8} "
                f"{ms(percentile(values, 0.99)):>8} {ms(max(values)):>8} {lost:>8}"
            )
        else:
            rows.append(f"{label:<16} {what:<22} {0:>5} {'-':>8} {'-':>8} {'-':>8} {lost:>8}")
    if run_.rtts:
        rows.append(
            f"{label:<16} {'policy request RTT':<22} {len(run_.rtts):>5} {ms(percentile(run_.rtts, 0.5), 2):>8} "
            f"{ms(percentile(run_.rtts, 0.99), 2):>8} {ms(max(run_.rtts), 2):>8} {'':>8}"
        )
    return rows


def scrape_metrics(port: int) -> dict[str, float]:
    wanted = ("quotagate_policy_requests_total", "quotagate_policy_errors_total")
    out: dict[str, float] = {}
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(wanted):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
    return out


def log_summary(log: Path) -> tuple[dict[str, int], list[str]]:
    counts = {"over quota now": 0, "refused": 0, "WARNING": 0, "ERROR": 0, "Traceback": 0, "overflow": 0}
    notable: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        for key in counts:
            if key in line:
                counts[key] += 1
        if ("WARNING" in line or "ERROR" in line or "Traceback" in line) and len(notable) < 8:
            notable.append(line[:200])
    return counts, notable


def versions() -> str:
    parts = machine()
    with contextlib.suppress(ImportError):
        import uvloop

        parts.append(f"uvloop {getattr(uvloop, '__version__', '?')} (the daemon uses it)")
    return ", ".join(parts)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- main ---------------------------------------------------------------------------------------


def write_config(work: Path, spool: Spool, port: int, metrics_port: int, rescan: float | None = None) -> Path:
    config = work / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{work}/quotagate.db"\n\n'
        f'[spool]\nroot = "{spool.root}"\nlayout = "{LAYOUT}"\n\n'
        f'[publish]\nfile = "{work}/overquota"\n\n'
        f'[policy]\nlisten = ["{HOST}:{port}"]\nmetrics = "{HOST}:{metrics_port}"\n\n'
        "[watch]\nenabled = true\n" + (f"rescan_seconds = {rescan:g}\n" if rescan else "")
    )
    return config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=10_000, help="mailboxes in the spool (default 10000)")
    parser.add_argument("--rate", type=float, default=1000.0, help="deliveries per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of steady load (default 20)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds measured while idle (default 30)")
    parser.add_argument("--samples", type=int, default=100, help="probe cycles idle and under load (default 100)")
    parser.add_argument("--probes", type=int, default=4, help="probe cycles at a time (default 4)")
    parser.add_argument(
        "--rescan-seconds",
        type=float,
        default=None,
        help="[watch] rescan_seconds (default: quotagate's, 3600): a smaller one makes rescans run under the load",
    )
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"spool cache and run files ({DEFAULT_DIR})")
    parser.add_argument("--quick", action="store_true", help="5 s idle, 5 s load, 20 samples each, same spool")
    args = parser.parse_args(argv)
    if args.quick:
        args.idle, args.seconds, args.samples = 5.0, 5.0, 20
    if args.mailboxes < PROBE_EVERY or args.rate <= 0 or args.seconds <= 0 or args.idle <= 0:
        parser.error(f"--mailboxes >= {PROBE_EVERY}, --rate, --seconds and --idle > 0")
    if args.samples < 1 or args.probes < 1:
        parser.error("--samples and --probes >= 1")
    return args


@dataclass
class Site:
    """The run directory and the config the daemon runs with."""

    work: Path
    config: Path
    port: int
    metrics_port: int


@dataclass
class Measured:
    """What the measuring phases saw, for the report."""

    startup: Window
    idle: Window
    idle_probe_window: Window
    idle_probes: ProbeRun
    steady: LoadPhase
    probed: LoadPhase
    watching: str
    held: int | None
    held_end: int | None
    peak_kib: int
    metrics: dict[str, float]
    code: int | None
    stop_s: float
    counts: dict[str, int]
    notable: list[str]


def prepare_spool(base: Path, mailboxes: int) -> tuple[Spool, Counts]:
    """The cached spool, cleaned of an interrupted run's files and counted independently."""
    spool = ensure_spool(base, mailboxes)
    swept = sweep(spool)
    baseline = count_spool(spool)
    planned = {b.address: (b.bytes, b.messages) for b in spool.boxes}
    wrong = differences(baseline, planned)
    print(
        f"spool: {len(spool.boxes)} mailboxes, {sum(m for _, m in baseline.values())} messages, "
        f"{sum(b for b, _ in baseline.values()) / 2**20:.0f} MiB apparent; {swept} leftover file(s) removed; "
        f"independent count {'matches the plan' if not wrong else f'DIFFERS from the plan in {len(wrong)}'}"
    )
    if wrong:
        raise RuntimeError(f"the spool is not what the plan says, e.g. {wrong[:3]}: delete {spool.root}")
    return spool, baseline


def set_up(base: Path, spool: Spool, rescan_seconds: float | None) -> Site:
    """A fresh run directory, a config, the mailboxes imported and a first scan."""
    work = base / "run"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    port, metrics_port = free_port(), free_port()
    config = write_config(work, spool, port, metrics_port, rescan_seconds)
    changed = f"rescan_seconds = {rescan_seconds:g}" if rescan_seconds else "no other key"
    print(f"config: {config}: [watch] enabled = true, {changed} changed from quotagate's defaults")
    csv = work / "mailboxes.csv"
    csv.write_text("address,quota\n" + "".join(f"{b.address},{b.quota}\n" for b in spool.boxes))
    imported = run([str(QUOTAGATE), "--config", str(config), "mailbox", "import", str(csv)])
    scanned = run([str(QUOTAGATE), "--config", str(config), "scan"])
    print(
        f"setup: mailbox import {imported.seconds:.1f} s, scan {scanned.seconds:.1f} s: "
        f"{scanned.output.strip().splitlines()[-1]}"
    )
    return Site(work, config, port, metrics_port)


def measure(args: argparse.Namespace, spool: Spool, baseline: Counts, site: Site, procs: Processes) -> Measured:
    """Start the daemon, then idle, idle with probes, load, load with probes; stop it."""
    work, config, port, metrics_port = site.work, site.config, site.port, site.metrics_port
    log = work / "serve.log"
    daemon = procs.start([str(QUOTAGATE), "--config", str(config), "serve"], log)
    meter = Meter(daemon.pid)
    watching, watching_s, listening_s = wait_until_ready(daemon, log, port, 300)
    settled_s = settle(daemon.pid)
    startup = meter.close("startup", f'"watching" after {watching_s:.1f} s, settled after +{settled_s:.1f} s')
    held = inotify_watches(daemon.pid)
    print(f"daemon: pid {daemon.pid}, {watching.partition(': INFO: ')[2] or watching}")
    print(
        f"daemon: listening after {listening_s:.1f} s, quiet {settled_s:.1f} s later; "
        f"startup CPU {startup.cpu_percent * startup.seconds / 100:.1f} s"
    )

    store = StoreView(work / "quotagate.db")
    expected = baseline
    before, _, still = wait_consistent(store, expected, time.monotonic(), 30)
    print(f"store before the load: {'matches the spool' if before is not None else f'{still} mailboxes differ'}")

    print(f"idle: {args.idle:g} s", flush=True)
    meter = Meter(daemon.pid)
    end = time.monotonic() + args.idle
    while time.monotonic() < end:
        time.sleep(min(SAMPLE_SECONDS, max(0.0, end - time.monotonic())))
        meter.tick()
    idle = meter.close("idle", "includes one store refresh" if args.idle >= 30 else "")

    print(f"probes, idle: {args.samples} cycles, {args.probes} at a time", flush=True)
    meter = Meter(daemon.pid)
    idle_probes = asyncio.run(probe(spool, port, work / "overquota", args.samples, args.probes, SEED + 21, meter))
    idle_probe_window = meter.close("idle + probes", f"{len(idle_probes.rtts) / idle_probes.seconds:.0f} probe req/s")

    print(f"load: {args.rate:g} deliveries/s for {args.seconds:g} s", flush=True)
    steady, expected = steady_load(spool, procs, daemon.pid, store, expected, args.rate, args.seconds)
    print(f"load + probes: {args.rate:g} deliveries/s until {args.samples} probe cycles are done", flush=True)
    probed, expected = load_with_probes(
        spool,
        procs,
        daemon.pid,
        store,
        expected,
        args.rate,
        port,
        work / "overquota",
        args.samples,
        args.probes,
    )
    peak_kib = _status_kib(daemon.pid, "VmHWM")
    held_end = inotify_watches(daemon.pid)
    metrics = scrape_metrics(metrics_port)
    store.close()
    code, stop_s = procs.stop(daemon)
    counts, notable = log_summary(log)

    return Measured(
        startup,
        idle,
        idle_probe_window,
        idle_probes,
        steady,
        probed,
        watching,
        held,
        held_end,
        peak_kib,
        metrics,
        code,
        stop_s,
        counts,
        notable,
    )


def report(args: argparse.Namespace, spool: Spool, m: Measured) -> None:
    """The tables: resources, keeping up with deliveries, latency, inotify and the daemon's log."""
    startup, idle, idle_probe_window, steady, probed = m.startup, m.idle, m.idle_probe_window, m.steady, m.probed
    idle_probes, watching, held, held_end = m.idle_probes, m.watching, m.held, m.held_end
    peak_kib, metrics, code, stop_s, counts, notable = m.peak_kib, m.metrics, m.code, m.stop_s, m.counts, m.notable
    print()
    print(f"quotagate serve with [watch] enabled = true (one process): {len(spool.boxes)} mailboxes")
    print()
    print("Resources of the daemon (CPU: % of one core; RSS summed over the daemon and its children)")
    head = (
        f"{'phase':<22} {'seconds':>8} {'CPU %':>7} {'RSS MiB':>8} {'peak':>7} {'machine %':>10} {'others %':>9}  note"
    )
    print(head)
    print("-" * len(head))
    windows = (startup, idle, idle_probe_window, steady.window, probed.window)
    for w in windows:
        print(
            f"{w.label:<22} {w.seconds:>8.1f} {w.cpu_percent:>7.1f} {w.rss_mean:>8.1f} {w.rss_peak:>7.1f} "
            f"{w.machine_percent:>10.1f} {w.others_percent:>9.1f}  {w.note}"
        )
    print(f"VmHWM (peak RSS of the daemon over the run): {peak_kib / 1024:.1f} MiB")
    print(
        f"machine %: every process, in % of one core ({os.cpu_count()} cores); others %: the same less the "
        "daemon, this script and its load generator"
    )
    busy = [w for w in windows if w.others_percent > 20]
    if busy:
        print(
            f"WARNING: other processes used more than 20% of a core during {', '.join(w.label for w in busy)}: "
            "those figures (CPU, latency, the generator's rate) are disturbed; run again on a quiet machine"
        )
        for w in busy:
            print(f"  {w.label}: {w.busiest}")
    print()
    print("Keeping up with deliveries (store = quotagate_usage rows in SQLite)")
    head = (
        f"{'phase':<22} {'delivered':>9} {'rate/s':>7} {'late ms':>8} {'gen CPU':>8} {'backlog max':>11} "
        f"{'mean':>6} {'wrong@+1s':>9} {'catch-up':>9} {'store≠spool':>11} {'gen≠spool':>9}"
    )
    print(head)
    print("-" * len(head))
    for p in (steady, probed):
        caught = f"{p.catch_up:.2f} s" if p.catch_up is not None else f"{p.still_wrong} LATE"
        print(
            f"{p.label:<22} {p.load.delivered:>9} {p.load.rate:>7.0f} {p.load.max_late * 1000:>8.1f} "
            f"{p.load.cpu:>7.1f}s {'-' if p.backlog_max is None else p.backlog_max:>11} "
            f"{'-' if p.backlog_mean is None else f'{p.backlog_mean:.0f}':>6} {p.wrong_after_1s:>9} {caught:>9} "
            f"{p.recount_wrong:>11} {p.generator_wrong:>9}"
        )
    print(
        "  late: how far the generator's schedule fell behind at worst; backlog: messages delivered but not yet\n"
        "  in the store, sampled each second; wrong@+1s: mailboxes whose stored usage was not yet right a second\n"
        "  after the last delivery; catch-up: from the last delivery until every mailbox was right (store read\n"
        "  every 50 ms); store≠spool: mailboxes whose stored usage differs from an independent recount made\n"
        "  afterwards; gen≠spool: the recount against what the generator says it delivered (a self-check)"
    )
    for p in (steady, probed):
        ok = p.catch_up is not None and p.catch_up < 1.0 and p.recount_wrong == 0 and p.generator_wrong == 0
        backlog = (
            f"backlog at most {p.backlog_max} messages ({p.backlog_max / args.rate:.2f} s of deliveries), "
            if p.backlog_max is not None
            else ""
        )
        caught = f"right {p.catch_up:.2f} s after the last delivery" if p.catch_up is not None else "NEVER right"
        print(
            f"  {p.label}: kept up: {'yes' if ok else 'NO'} ({backlog}{caught}, "
            f"{p.recount_wrong} mailboxes wrong against the recount)"
        )
    print()
    print("Latency from the rename (fill) or unlink (drain) in a probe mailbox's new/, ms")
    head = f"{'phase':<16} {'until':<22} {'n':>5} {'p50':>8} {'p99':>8} {'max':>8} {'timeouts':>8}"
    print(head)
    print("-" * len(head))
    for label, run_ in (("idle", idle_probes), (f"load {args.rate:g}/s", probed.probes)):
        assert run_ is not None
        for row in latency_rows(label, run_):
            print(row)
    for label, run_ in (("idle", idle_probes), ("load", probed.probes)):
        assert run_ is not None
        print(
            f"  {label}: {len(run_.cycles)} cycles in {run_.seconds:.1f} s, {run_.skipped} skipped, "
            f"prober CPU {run_.cpu:.1f} s"
        )
    print()
    limit = MAX_WATCHES.read_text().strip() if MAX_WATCHES.exists() else "?"
    print(f"inotify: the daemon logged: {watching.partition(': INFO: ')[2] or watching}")
    print(f"inotify: watches held (/proc/PID/fdinfo): {held} after start, {held_end} at the end")
    estimate = sum(1 + 3 * len(b.folders) for b in spool.boxes)  # as quotagate.watch.runner estimates
    print(
        f"inotify: fs.inotify.max_user_watches = {limit}; quotagate's estimate before watching was {estimate} "
        f"(mode auto uses inotify up to 90% of the limit: about "
        f"{int(int(limit) * 0.9 / (estimate / len(spool.boxes))) if limit.isdigit() else '?'} mailboxes like these)"
    )
    print(f"metrics: {', '.join(f'{k} {v:g}' for k, v in sorted(metrics.items())) or 'not scraped'}")
    print(f"daemon log: {', '.join(f'{k}: {v}' for k, v in counts.items())}")
    for line in notable:
        print(f"  {line}")
    print(f"daemon stopped by SIGTERM in {stop_s:.1f} s, exit status {code}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    stop_on_sigterm()
    procs = Processes()
    base = args.dir.resolve()
    started = time.monotonic()
    spool: Spool | None = None
    try:
        print(f"command: {command}")
        print(f"machine: {versions()}; load average {loadavg()}")
        spool, baseline = prepare_spool(base, args.mailboxes)
        site = set_up(base, spool, args.rescan_seconds)
        report(args, spool, measure(args, spool, baseline, site, procs))
        print(
            f"run files: {site.work}; load average at the end {loadavg()}; "
            f"total time {time.monotonic() - started:.0f} s"
        )
        print(f"command: {command}")
        return 0
    except (KeyboardInterrupt, Interrupted):
        print("interrupted: stopping everything started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if spool is not None:
            removed = sweep(spool)
            if removed:
                print(f"spool: removed the {removed} message(s) this run added")


if __name__ == "__main__":
    sys.exit(main())
