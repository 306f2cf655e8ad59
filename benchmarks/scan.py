"""Benchmark quotagate's scan against the ways a sysadmin measures a Maildir spool by hand.

Run it by hand from the project root (it is not part of the test suite)::

    .venv/bin/python benchmarks/scan.py [--mailboxes N] [--messages M] [--dir DIR] [--keep]

Defaults: 2,000 mailboxes, 200,000 messages, spool in /var/tmp/quotagate-bench-spool.

The first run generates a deterministic spool (fixed seed): ``{root}/{domain}/{local}/Maildir``,
Maildir++ folders (INBOX, ``.Sent``, ``.Trash``, ``.Archive.2024``, ``.Drafts``), messages in
``cur/`` (``:2,S`` info) and ``new/``, Pareto-distributed message counts per mailbox and message
sizes (mostly 1-20 KB, a few multi-megabyte ones). About 90% of the file names carry ``,S=<size>``;
the rest must be stat'ed. Message files hold a short header and are extended sparsely to their
size, so the apparent size (what every method here measures) is realistic while disk use stays
small (one block per file). All directory mtimes are set one hour back so that quotagate's racy
mtime guard does not force re-reads. A marker file holding the generation parameters lets later
runs reuse the spool; a spool made with other parameters is regenerated.

Then, with a warm page cache for every method (dropping caches is not possible here), it times
(wall clock, ``time.perf_counter``, each several times; ratios use the best time):

1. quotagate full scan: ``run_scan(config, store, full=True)`` on a fresh, empty SQLite store
   each repetition (the mailboxes already in it), default ``scan.workers`` (one per CPU);
2. quotagate incremental scan with nothing changed: ``run_scan(config, store)`` after a full scan;
3. a naive in-process Python script: ``os.walk`` each Maildir, ``os.stat`` every file in cur/ and new/;
4. ``du -sb <Maildir>`` run once per mailbox, sequentially, as the classic cron script does;
5. the incremental lower bound: ``os.stat`` of every folder's cur/ and new/ (folder list known).

It prints the times, the ratios naive/full (target >= 4), du/full (target > 1) and
incremental/stat-bound (target <= 2), whether each target is met, what each method found, and
a loud MISMATCH when quotagate's raw totals differ from the naive script's.

``--keep`` keeps the scratch directory holding the SQLite stores (the spool is always kept: it is
the cache). Use ``--repeat`` to change the number of repetitions.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from quotagate.config import Config, parse_config
from quotagate.model import Limits, Mailbox
from quotagate.scan import ScanResult, run_scan
from quotagate.store import Store, open_store

T = TypeVar("T")

GENERATOR_VERSION = 1
SEED = 20240601
DEFAULT_DIR = Path("/var/tmp/quotagate-bench-spool")
MARKER = ".quotagate-bench.json"
PARTIAL_MARKER = ".quotagate-bench-partial"
LAYOUT = "{domain}/{local}/Maildir"
DOMAINS = ("example.com", "example.net", "example.org", "mail.example.test")
# Maildir++ folders besides INBOX: (name, share of mailboxes having it, weight of messages in it).
EXTRA_FOLDERS = (("Sent", 0.6, 0.25), ("Trash", 0.45, 0.06), ("Archive.2024", 0.3, 0.5), ("Drafts", 0.15, 0.02))
INBOX_WEIGHT = 1.0
NEW_SHARE = {"INBOX": 0.12}  # share of a folder's messages still in new/; 0.01 elsewhere
SIZE_SCALE = 3_000  # Pareto minimum message size, bytes
SIZE_SHAPE = 1.5  # median ~4.8 KB, ~6% above 20 KB
SIZE_CAP = 30 << 20
COUNT_SHAPE = 1.1  # messages per mailbox: a few huge mailboxes, many small ones
NO_SIZE_SHARE = 0.10  # file names without ",S=": they cost a stat
FLAGS = ("S", "S", "S", "S", "S", "RS", "FS", "")
OLD_MTIME_SECONDS = 3600
HEADER = b"Return-Path: <sender@example.org>\nFrom: Sender <sender@example.org>\nSubject: quotagate benchmark\n\n"


@dataclass(frozen=True)
class Params:
    mailboxes: int
    messages: int
    seed: int = SEED
    version: int = GENERATOR_VERSION


@dataclass(frozen=True)
class Spool:
    """A generated spool: where it is, its mailboxes and what the generator put into it."""

    root: Path
    params: Params
    addresses: list[str]
    messages: int
    bytes: int

    def maildir(self, address: str) -> str:
        local, _, domain = address.rpartition("@")
        return os.path.join(self.root, LAYOUT.format(domain=domain, local=local, address=address))


@dataclass(frozen=True)
class Totals:
    mailboxes: int
    messages: int
    bytes: int


@dataclass(frozen=True)
class Timing:
    label: str
    runs: list[float]

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


# -- the spool ----------------------------------------------------------------------------------


def _addresses(count: int) -> list[str]:
    return [f"user{i:05d}@{DOMAINS[i % len(DOMAINS)]}" for i in range(count)]


def _message_name(rng: random.Random, seq: int, size: int, in_cur: bool) -> str:
    stamp = 1_700_000_000 + seq // 4
    unique = f"{stamp}.M{(seq * 7919) % 1_000_000}P{1000 + seq % 30_000}Q{seq}.mx{seq % 3 + 1}.example.net"
    if rng.random() >= NO_SIZE_SHARE:
        unique += f",S={size},W={size + size // 40}"
    return unique + (":2," + rng.choice(FLAGS) if in_cur else "")


def _plan(params: Params) -> Iterator[tuple[str, dict[str, list[tuple[str, str, int]]]]]:
    """Per mailbox (address, {folder: [(subdir, file name, size)]}), deterministic for ``params``."""
    rng = random.Random(params.seed)
    addresses = _addresses(params.mailboxes)
    weights = [rng.paretovariate(COUNT_SHAPE) for _ in addresses]
    counts = [0] * len(addresses)
    for i in rng.choices(range(len(addresses)), weights=weights, k=params.messages):
        counts[i] += 1
    seq = 0
    for address, count in zip(addresses, counts, strict=True):
        names = ["INBOX"] + [name for name, share, _ in EXTRA_FOLDERS if rng.random() < share]
        folder_weights = [INBOX_WEIGHT] + [w for name, _, w in EXTRA_FOLDERS if name in names]
        folders: dict[str, list[tuple[str, str, int]]] = {name: [] for name in names}
        for folder in rng.choices(names, weights=folder_weights, k=count):
            size = min(SIZE_CAP, int(SIZE_SCALE * rng.paretovariate(SIZE_SHAPE)))
            in_cur = rng.random() >= NEW_SHARE.get(folder, 0.01)
            folders[folder].append(("cur" if in_cur else "new", _message_name(rng, seq, size, in_cur), size))
            seq += 1
        yield address, folders


def _write_message(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, HEADER[:size])
        os.ftruncate(fd, size)  # the rest is a hole: the apparent size is right, the disk use small
    finally:
        os.close(fd)


def _generate(root: Path, params: Params) -> Spool:
    """Write the whole spool under ``root`` (which must not exist yet)."""
    root.mkdir(parents=True)
    (root / PARTIAL_MARKER).touch()
    old = time.time() - OLD_MTIME_SECONDS
    addresses: list[str] = []
    messages = total_bytes = 0
    started = time.perf_counter()
    for n, (address, folders) in enumerate(_plan(params), start=1):
        local, _, domain = address.rpartition("@")
        maildir = root / LAYOUT.format(domain=domain, local=local, address=address)
        dirs: list[Path] = []
        for folder, files in folders.items():
            folder_dir = maildir if folder == "INBOX" else maildir / f".{folder}"
            for sub in ("cur", "new", "tmp"):
                (folder_dir / sub).mkdir(parents=True)
                dirs.append(folder_dir / sub)
            for sub, name, size in files:
                _write_message(os.path.join(folder_dir, sub, name), size)
                messages += 1
                total_bytes += size
            if folder != "INBOX":
                dirs.append(folder_dir)
        dirs.append(maildir)  # last: creating the folders above changed its mtime
        for d in dirs:
            os.utime(d, (old, old))
        addresses.append(address)
        if n % max(1, params.mailboxes // 10) == 0:
            print(f"  generated {n}/{params.mailboxes} mailboxes, {messages} messages", flush=True)
    print(f"  generation took {time.perf_counter() - started:.1f} s", flush=True)
    spool = Spool(root, params, addresses, messages, total_bytes)
    marker = {"params": asdict(params), "addresses": addresses, "messages": messages, "bytes": total_bytes}
    (root / MARKER).write_text(json.dumps(marker))
    return spool


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data


def ensure_spool(root: Path, params: Params) -> Spool:
    """Reuse the spool at ``root`` when its marker matches ``params``, else (re)generate it.

    Only a directory this script made (it holds our marker) is ever deleted; the spool is built
    next to ``root`` and renamed into place once complete, so an interrupted run leaves no half
    spool that looks finished.
    """
    marker = _read_marker(root)
    if marker is not None and marker.get("params") == asdict(params):
        print(f"spool: reusing {root} (marker {MARKER} matches the parameters)")
        return Spool(root, params, list(marker["addresses"]), int(marker["messages"]), int(marker["bytes"]))
    if root.exists():
        if marker is None and any(root.iterdir()):
            sys.exit(f"{root} exists, is not empty and has no {MARKER}: refusing to touch it; pick another --dir")
        print(f"spool: {root} is empty or was made with other parameters; regenerating it")
        shutil.rmtree(root)
    staging = root.with_name(root.name + ".partial")
    if staging.exists():
        if not (staging / PARTIAL_MARKER).exists():
            sys.exit(f"{staging} exists and is not ours: refusing to touch it")
        shutil.rmtree(staging)
    print(f"spool: generating {params.mailboxes} mailboxes / {params.messages} messages in {root} (seed {params.seed})")
    spool = _generate(staging, params)
    (staging / PARTIAL_MARKER).unlink()
    staging.rename(root)
    return Spool(root, params, spool.addresses, spool.messages, spool.bytes)


# -- the methods --------------------------------------------------------------------------------


def naive_scan(maildirs: list[str]) -> Totals:
    """What a sysadmin would write: walk each Maildir, stat every file in cur/ and new/."""
    messages = total = 0
    for maildir in maildirs:
        for dirpath, _dirnames, filenames in os.walk(maildir):
            if os.path.basename(dirpath) not in ("cur", "new"):
                continue
            for name in filenames:
                total += os.stat(os.path.join(dirpath, name)).st_size
                messages += 1
    return Totals(len(maildirs), messages, total)


def du_scan(maildirs: list[str]) -> Totals:
    """``du -sb`` once per mailbox, sequentially (apparent sizes, directories and tmp/ included)."""
    total = 0
    for maildir in maildirs:
        out = subprocess.run(["du", "-sb", maildir], check=True, capture_output=True, text=True).stdout
        total += int(out.split()[0])
    return Totals(len(maildirs), 0, total)


def folder_dirs(maildirs: list[str]) -> list[str]:
    """The cur/ and new/ of every folder (INBOX and ``.Folder``): the incremental scan's stat targets."""
    paths = []
    for maildir in maildirs:
        folders = [maildir]
        with os.scandir(maildir) as entries:
            folders += [e.path for e in entries if e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
        for folder in folders:
            paths += [os.path.join(folder, "cur"), os.path.join(folder, "new")]
    return paths


def stat_bound(paths: list[str]) -> int:
    """The least an incremental scan must do: one stat of each folder's cur/ and new/."""
    for path in paths:
        os.stat(path)
    return len(paths)


def quotagate_totals(result: ScanResult) -> Totals:
    """Raw totals (all folders, no folder rules) over quotagate's readings."""
    readings = result.readings.values()
    return Totals(
        len(result.readings),
        sum(r.usage.all_messages for r in readings),
        sum(r.usage.all_bytes for r in readings),
    )


# -- the harness --------------------------------------------------------------------------------


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def repeat(label: str, fn: Callable[[], T], times: int) -> tuple[Timing, T]:
    runs: list[float] = []
    value: T | None = None
    for _ in range(times):
        seconds, value = timed(fn)
        runs.append(seconds)
    assert value is not None
    timing = Timing(label, runs)
    print(f"  {label}: best {timing.best:.3f} s, median {timing.median:.3f} s", flush=True)
    return timing, value


def make_config(spool: Spool, db: Path, workers: int = 0) -> Config:
    return parse_config(
        {
            "store": {"url": f"sqlite:///{db}"},
            "spool": {"root": str(spool.root), "layout": LAYOUT},
            "scan": {"workers": workers},
        }
    )


def fresh_store(config: Config, mailboxes: list[Mailbox]) -> Store:
    store = open_store(config.store.url)
    store.migrate()
    store.upsert_mailboxes(mailboxes)
    return store


def full_scans(
    label: str, spool: Spool, scratch: Path, mailboxes: list[Mailbox], times: int, workers: int = 0
) -> tuple[Timing, ScanResult, Store, Config]:
    """Full scans, each on a fresh store holding only the mailboxes; the last store stays open."""
    runs: list[float] = []
    result: ScanResult | None = None
    store: Store | None = None
    config: Config | None = None
    for i in range(times):
        if store is not None:
            store.close()
        config = make_config(spool, scratch / f"{label.split()[0]}-w{workers}-{i}.db", workers)
        store = fresh_store(config, mailboxes)
        seconds, result = timed(functools.partial(run_scan, config, store, full=True))
        runs.append(seconds)
    assert result is not None and store is not None and config is not None
    timing = Timing(label, runs)
    print(f"  {label}: best {timing.best:.3f} s, median {timing.median:.3f} s", flush=True)
    return timing, result, store, config


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def _totals_line(label: str, t: Totals, messages: bool = True) -> str:
    counted = f"{t.messages:>9} messages" if messages else f"{'-':>9} messages"
    return f"  {label:<34} {t.mailboxes:>6} mailboxes {counted} {t.bytes:>14} bytes"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mailboxes", type=int, default=2000, help="mailboxes in the spool (default 2000)")
    parser.add_argument("--messages", type=int, default=200_000, help="messages in the spool (default 200000)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"spool directory (default {DEFAULT_DIR})")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory with the SQLite stores")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each measurement (default 3)")
    args = parser.parse_args(argv)
    if args.mailboxes < 1 or args.messages < 0 or args.repeat < 1:
        parser.error("--mailboxes and --repeat must be >= 1, --messages >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    spool = ensure_spool(args.dir.resolve(), Params(args.mailboxes, args.messages))
    maildirs = [spool.maildir(a) for a in spool.addresses]
    mailboxes = [Mailbox(a, Limits(bytes=1 << 30)) for a in spool.addresses]
    stat_paths = folder_dirs(maildirs)
    scratch = Path(tempfile.mkdtemp(prefix="quotagate-bench-"))
    cpus = os.cpu_count() or 1
    print(
        f"machine: {cpus} CPUs, Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"scratch {scratch}"
    )
    print("page cache: WARM for every method (one untimed walk first; caches cannot be dropped here)")
    naive_scan(maildirs)  # warm the dentry/inode caches for everyone alike

    try:
        print(f"timing ({args.repeat} runs each, wall clock):")
        full, full_result, store, config = full_scans("quotagate full scan", spool, scratch, mailboxes, args.repeat)
        incremental, incr_result = repeat("quotagate incremental scan", lambda: run_scan(config, store), args.repeat)
        store.close()
        single, _, single_store, _ = full_scans(
            "quotagate full scan, 1 worker", spool, scratch, mailboxes, args.repeat, workers=1
        )
        single_store.close()
        naive, naive_totals = repeat("naive os.walk + os.stat", lambda: naive_scan(maildirs), args.repeat)
        du, du_totals = repeat("du -sb per mailbox", lambda: du_scan(maildirs), args.repeat)
        bound, stat_count = repeat("stat bound (cur/ + new/)", lambda: stat_bound(stat_paths), args.repeat)
    finally:
        if args.keep:
            print(f"kept scratch directory {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    q_totals = quotagate_totals(full_result)
    i_totals = quotagate_totals(incr_result)
    print()
    print(f"spool: {spool.root}, layout {LAYOUT}, seed {spool.params.seed}")
    print(f"  {len(stat_paths) // 2} folders, {len(stat_paths)} cur/+new/ directories")
    print("found:")
    print(_totals_line("generator (expected)", Totals(len(spool.addresses), spool.messages, spool.bytes)))
    print(_totals_line("quotagate full scan", q_totals))
    print(_totals_line("quotagate incremental scan", i_totals))
    print(_totals_line("naive os.walk + os.stat", naive_totals))
    print(_totals_line("du -sb (incl. dirs, tmp/)", du_totals, messages=False))
    print(f"  stat bound: {stat_count} directories stat'ed")
    measured = incr_result.summary.measured
    print(
        f"  incremental scan re-read {measured} of {incr_result.summary.mailboxes} mailboxes"
        + ("" if measured == 0 else "  <-- expected 0: mtimes too recent? (scan.racy_seconds)")
    )
    mismatch = False
    for label, found in (("full scan", q_totals), ("incremental scan", i_totals)):
        if found != naive_totals:
            mismatch = True
            print(f"!!! MISMATCH: quotagate {label} {found} != naive {naive_totals} !!!")
    if naive_totals != Totals(len(spool.addresses), spool.messages, spool.bytes):
        mismatch = True
        print(f"!!! MISMATCH: naive {naive_totals} != generator ({spool.messages} messages, {spool.bytes} bytes) !!!")
    if not mismatch:
        print("  totals: quotagate == naive == generator (messages and bytes)")

    print("times (best of runs, seconds; median in brackets):")
    for t in (full, single, incremental, naive, du, bound):
        print(f"  {t.label:<34} {t.best:8.3f}  [{t.median:8.3f}]  runs: " + ", ".join(f"{r:.3f}" for r in t.runs))
    naive_ratio = naive.best / full.best
    du_ratio = du.best / full.best
    incr_ratio = incremental.best / bound.best
    print("targets:")
    print(f"  naive / full         = {naive_ratio:7.2f}x  (target >= 4x)  {_verdict(naive_ratio >= 4)}")
    print(f"  du / full            = {du_ratio:7.2f}x  (target >  1x)  {_verdict(du_ratio > 1)}")
    print(f"  incremental / bound  = {incr_ratio:7.2f}x  (target <= 2x)  {_verdict(incr_ratio <= 2)}")
    print(f"  (info) full 1 worker / full {config.scan.workers or cpus} workers = {single.best / full.best:.2f}x")
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
