"""Benchmark quotagate's scan against the ways a sysadmin measures a Maildir spool by hand.

Run it by hand from the project root (it is not part of the test suite)::

    .venv/bin/python benchmarks/scan.py [--mailboxes N] [--messages M] [--dir DIR] [--keep] [--quick]

Defaults: 2,000 mailboxes, 200,000 messages, spool in /var/tmp/quotagate-bench-spool; ``--quick``:
200 mailboxes, 20,000 messages, 2 runs each, spool in /var/tmp/quotagate-bench-spool-quick.

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
5. the incremental lower bounds: ``os.stat`` of every folder's cur/ and new/ by path (folder list
   known), and the same as quotagate must do it, following no symlink its users could make
   (``SAFE_BOUND``: each directory below the spool root opened ``O_PATH | O_NOFOLLOW``, the
   domains' once, then an ``fstatat`` of each folder's cur/ and new/);
6. the script quotagate is held against (``REFERENCE``): list each folder's cur/ and new/, take the
   size from ``,S=`` in the name, stat only the rest.

Then the same as cron runs them, whole processes from start to exit (``subprocess.run``), on a
store holding the mailboxes: ``quotagate --version``, ``quotagate scan`` of a one-mailbox spool (a
scan process's fixed cost: interpreter, imports, config, store, lock, publish) and how long that
process takes to its first mailbox (``FIRST_OPEN``), ``quotagate scan
--full``, ``quotagate scan`` with nothing changed, the reference script and the stat bound as
scripts of their own. quotagate's modules are compiled to bytecode first, as an install has them.

It prints the times, the ratios naive/full (target >= 4), du/full (target > 1),
incremental/safe bound (target <= 2), full/reference in-process (<= 1.2) and as processes
(<= 1.6), unchanged scan/safe bound as processes (<= 3), ``--version`` (<= 0.1 s) and the time
to the first mailbox (<= 0.25 s), whether each target is met, what each method found, and a loud
MISMATCH when any method's totals differ from what the generator wrote.

``--keep`` keeps the scratch directory holding the SQLite stores (the spool is always kept: it is
the cache). Use ``--repeat`` to change the number of repetitions.
"""

from __future__ import annotations

import argparse
import compileall
import functools
import json
import logging
import os
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

from _harness import machine, verdict
from _spool import keep, write_message

import quotagate
from quotagate.config import Config, parse_config
from quotagate.model import Limits, Mailbox
from quotagate.scan import ScanResult, run_scan
from quotagate.store import Store, open_store

T = TypeVar("T")
U = TypeVar("U")

GENERATOR_VERSION = 1
SEED = 20240601
DEFAULT_DIR = Path("/var/tmp/quotagate-bench-spool")
MARKER = ".quotagate-bench.json"
SUMMARY = ".quotagate-bench-summary.json"  # what the generator wrote: addresses, messages, bytes
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


def _generate(root: Path, params: Params) -> None:
    """Write the whole spool and its summary into ``root``, a folder that exists and is empty."""
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
                write_message(os.path.join(folder_dir, sub, name), size, HEADER)
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
    summary = {"addresses": addresses, "messages": messages, "bytes": total_bytes}
    (root / SUMMARY).write_text(json.dumps(summary))


def ensure_spool(root: Path, params: Params) -> Spool:
    """Reuse the spool at ``root`` when its marker matches ``params``, else (re)generate it."""

    def build(staging: Path) -> None:
        print(f"spool: generating {params.mailboxes} mailboxes / {params.messages} messages in {root}", flush=True)
        _generate(staging, params)

    if keep(root, asdict(params), MARKER, build):
        print(f"spool: reusing {root} (marker {MARKER} matches the parameters)")
    summary = json.loads((root / SUMMARY).read_text())
    return Spool(root, params, list(summary["addresses"]), int(summary["messages"]), int(summary["bytes"]))


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
    """The least an incremental scan must do, following any path: one stat of each folder's cur/ and new/."""
    for path in paths:
        os.stat(path)
    return len(paths)


def safe_entries(root: Path, maildirs: list[str]) -> list[tuple[str, list[str]]]:
    """Each Maildir below ``root`` with its folders ("" for INBOX): what ``SAFE_BOUND`` looks at."""
    entries = []
    for maildir in maildirs:
        with os.scandir(maildir) as listing:
            folders = sorted(e.name for e in listing if e.name.startswith(".") and e.is_dir(follow_symlinks=False))
        entries.append((os.path.relpath(maildir, root), ["", *folders]))
    return entries


def safe_bound(root: Path, entries: list[tuple[str, list[str]]]) -> int:
    namespace: dict[str, Any] = {"__name__": "safe_bound"}
    exec(SAFE_BOUND, namespace)
    return int(namespace["look"](str(root), entries))


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


def _totals_line(label: str, t: Totals, messages: bool = True) -> str:
    counted = f"{t.messages:>9} messages" if messages else f"{'-':>9} messages"
    return f"  {label:<34} {t.mailboxes:>6} mailboxes {counted} {t.bytes:>14} bytes"


# -- whole processes, as cron runs them ------------------------------------------------------------

# The script quotagate is measured against as cron runs it: list each folder's cur/ and new/, take
# the size from ",S=" in the name and stat only the rest. Run as a process of its own (argument:
# a file listing the Maildirs) and in-process (``measure``), the same code both ways.
REFERENCE = r"""
import os
import sys


def folders(maildir):
    yield maildir
    with os.scandir(maildir) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                yield entry.path


def size_of(directory, name):
    start = name.find(",S=")
    if start < 0:
        return os.stat(os.path.join(directory, name)).st_size
    start += 3
    end = start
    while end < len(name) and name[end].isdigit():
        end += 1
    return int(name[start:end])


def measure(maildirs):
    messages = size = 0
    for maildir in maildirs:
        for folder in folders(maildir):
            for sub in ("cur", "new"):
                directory = os.path.join(folder, sub)
                for name in os.listdir(directory):
                    size += size_of(directory, name)
                    messages += 1
    return messages, size


if __name__ == "__main__":
    with open(sys.argv[1]) as listing:
        print(*measure(line.rstrip("\n") for line in listing))
"""

# The incremental lower bound as a process: one stat of each folder's cur/ and new/ (listed).
STAT_BOUND = r"""
import os
import sys

with open(sys.argv[1]) as listing:
    for line in listing:
        os.stat(line.rstrip("\n"))
"""

# The incremental lower bound as quotagate's rules allow it: no path its users could redirect is
# followed, so each directory below the spool root is opened O_PATH | O_NOFOLLOW (the domains'
# once, each mailbox's own per mailbox) and each folder's cur/ and new/ stat'ed through its
# descriptor (arguments: the spool root, a file of lines "DOMAIN/LOCAL/Maildir<TAB>folders" with
# "" for INBOX, comma-separated). Run as a process and in-process (``look``), the same code.
SAFE_BOUND = r"""
import os
import sys

DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def look(root, entries):
    looked = 0
    top = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    domains = {}
    try:
        for relative, folders in entries:
            domain, *below = relative.split("/")
            if domain not in domains:
                domains[domain] = os.open(domain, DIR, dir_fd=top)
            opened = []
            fd = domains[domain]
            try:
                for part in below:
                    fd = os.open(part, DIR, dir_fd=fd)
                    opened.append(fd)
                for folder in folders:
                    here = os.open(folder, DIR, dir_fd=fd) if folder else fd
                    try:
                        os.stat("cur", dir_fd=here, follow_symlinks=False)
                        os.stat("new", dir_fd=here, follow_symlinks=False)
                        looked += 2
                    finally:
                        if folder:
                            os.close(here)
            finally:
                for fd in opened:
                    os.close(fd)
    finally:
        for fd in (*domains.values(), top):
            os.close(fd)
    return looked


if __name__ == "__main__":
    with open(sys.argv[2]) as listing:
        rows = [line.rstrip("\n").split("\t") for line in listing]
    look(sys.argv[1], [(relative, folders.split(",")) for relative, folders in rows])
"""

QUOTAGATE = str(Path(sys.executable).parent / "quotagate")

# quotagate's command line as its console script runs it (arguments: the spool root, a file to
# write to, the command's own), with an audit hook that writes the time of the first open beneath
# the spool root: a scan process's time to its first mailbox is that time minus the spawn's.
FIRST_OPEN = r"""
import sys
import time

root, mark = sys.argv[1], sys.argv[2]
del sys.argv[1:3]
seen = False


def noted(event, args):
    global seen
    if seen or event != "open" or not isinstance(args[0], str):
        return
    if args[0] == root or args[0].startswith(root + "/"):
        seen = True
        with open(mark, "w") as out:
            out.write(repr(time.time()))


sys.addaudithook(noted)
from quotagate.cli import entry_point

entry_point()
"""


def reference_in_process(maildirs: list[str]) -> Totals:
    namespace: dict[str, Any] = {"__name__": "reference"}
    exec(REFERENCE, namespace)
    messages, size = namespace["measure"](maildirs)
    return Totals(len(maildirs), int(messages), int(size))


def alternately(
    first: tuple[str, Callable[[], T]], second: tuple[str, Callable[[], U]], times: int
) -> tuple[tuple[Timing, T], tuple[Timing, U]]:
    """Both, one run of each in turn: their ratio then holds whatever else the machine was doing
    (a shared machine can slow down by a third between two series run one after the other)."""
    runs: tuple[list[float], list[float]] = ([], [])
    values: tuple[list[T], list[U]] = ([], [])
    for _ in range(times):
        seconds, a = timed(first[1])
        runs[0].append(seconds)
        values[0].append(a)
        seconds, b = timed(second[1])
        runs[1].append(seconds)
        values[1].append(b)
    timings = Timing(first[0], runs[0]), Timing(second[0], runs[1])
    for timing in timings:
        print(f"  {timing.label}: best {timing.best:.3f} s, median {timing.median:.3f} s", flush=True)
    return (timings[0], values[0][-1]), (timings[1], values[1][-1])


def process(argv: list[str]) -> Callable[[], str]:
    """A run of ``argv`` as a whole process, start to exit, giving its output."""

    def once() -> str:
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout

    return once


def to_first_mailbox(label: str, root: Path, args: list[str], times: int) -> Timing:
    """Seconds from spawning quotagate with ``args`` to its first open beneath ``root``."""
    runs = []
    for _ in range(times):
        with tempfile.NamedTemporaryFile("r") as mark:
            started = time.time()
            subprocess.run([sys.executable, "-c", FIRST_OPEN, str(root), mark.name, *args], check=True)
            runs.append(float(mark.read()) - started)
    timing = Timing(label, runs)
    print(f"  {label}: best {timing.best:.3f} s, median {timing.median:.3f} s", flush=True)
    return timing


def write_config(work: Path, root: Path) -> Path:
    """A quotagate config as an admin's cron job would have it: SQLite store, published file."""
    config = work / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{work}/quotagate.db"\n'
        f'[spool]\nroot = "{root}"\nlayout = "{LAYOUT}"\n'
        f'[publish]\nfile = "{work}/overquota"\n'
    )
    return config


# -- the phases -----------------------------------------------------------------------------------


@dataclass
class Setup:
    spool: Spool
    maildirs: list[str]
    mailboxes: list[Mailbox]
    stat_paths: list[str]
    safe: list[tuple[str, list[str]]]  # each Maildir's folders, for SAFE_BOUND
    scratch: Path
    repeat: int


@dataclass
class InProcess:
    full: Timing
    single: Timing
    incremental: Timing
    naive: Timing
    reference: Timing
    du: Timing
    bound: Timing
    incremental_again: Timing  # timed in turn with safe
    safe: Timing
    workers: int
    full_totals: Totals
    incremental_totals: Totals
    naive_totals: Totals
    reference_totals: Totals
    du_totals: Totals
    stat_count: int
    remeasured: int
    mailboxes: int


@dataclass
class AsProcesses:
    version: Timing
    startup: Timing
    first_mailbox: Timing
    full: Timing
    incremental: Timing
    reference: Timing
    bound: Timing
    incremental_again: Timing  # timed in turn with safe
    safe: Timing
    reference_totals: Totals


def prepare(args: argparse.Namespace) -> Setup:
    spool = ensure_spool(args.dir.resolve(), Params(args.mailboxes, args.messages))
    maildirs = [spool.maildir(a) for a in spool.addresses]
    scratch = Path(tempfile.mkdtemp(prefix="quotagate-bench-"))
    print(f"machine: {', '.join(machine())}; scratch {scratch}")
    print("page cache: WARM for every method (one untimed walk first; caches cannot be dropped here)")
    naive_scan(maildirs)  # warm the dentry/inode caches for everyone alike
    mailboxes = [Mailbox(a, Limits(bytes=1 << 30)) for a in spool.addresses]
    safe = safe_entries(spool.root, maildirs)
    return Setup(spool, maildirs, mailboxes, folder_dirs(maildirs), safe, scratch, args.repeat)


def time_in_process(setup: Setup) -> InProcess:
    """Every method inside this interpreter: what each costs with no start-up at all."""
    n, maildirs = setup.repeat, setup.maildirs
    print(f"in-process timing ({n} runs each, wall clock):")
    full, full_result, store, config = full_scans("quotagate full scan", setup.spool, setup.scratch, setup.mailboxes, n)
    (incremental, incr_result), (bound, stat_count) = alternately(
        ("quotagate incremental scan", lambda: run_scan(config, store)),
        ("stat bound (cur/ + new/)", lambda: stat_bound(setup.stat_paths)),
        n,
    )
    (incremental_again, _), (safe, safe_count) = alternately(
        ("quotagate incremental scan, again", lambda: run_scan(config, store)),
        ("safe stat bound (O_PATH walk)", lambda: safe_bound(setup.spool.root, setup.safe)),
        n,
    )
    assert safe_count == stat_count, (safe_count, stat_count)
    store.close()
    single, _, single_store, _ = full_scans(
        "quotagate full scan, 1 worker", setup.spool, setup.scratch, setup.mailboxes, n, workers=1
    )
    single_store.close()
    naive, naive_totals = repeat("naive os.walk + os.stat", lambda: naive_scan(maildirs), n)
    reference, reference_totals = repeat("listdir + S= script", lambda: reference_in_process(maildirs), n)
    du, du_totals = repeat("du -sb per mailbox", lambda: du_scan(maildirs), n)
    return InProcess(
        full,
        single,
        incremental,
        naive,
        reference,
        du,
        bound,
        incremental_again,
        safe,
        config.scan.workers or os.cpu_count() or 1,
        quotagate_totals(full_result),
        quotagate_totals(incr_result),
        naive_totals,
        reference_totals,
        du_totals,
        stat_count,
        incr_result.summary.measured,
        incr_result.summary.mailboxes,
    )


def time_processes(setup: Setup) -> AsProcesses:
    """Every method as cron runs it: a whole process, interpreter start-up and imports included."""
    n, work = setup.repeat, setup.scratch / "cron"
    work.mkdir()
    listing, folders = work / "maildirs.txt", work / "folders.txt"
    listing.write_text("".join(f"{m}\n" for m in setup.maildirs))
    folders.write_text("".join(f"{p}\n" for p in setup.stat_paths))
    reference_script, bound_script = work / "reference.py", work / "stat_bound.py"
    reference_script.write_text(REFERENCE)
    bound_script.write_text(STAT_BOUND)
    safe_script, safe_listing = work / "safe_bound.py", work / "safe.txt"
    safe_script.write_text(SAFE_BOUND)
    safe_listing.write_text("".join(f"{relative}\t{','.join(folders)}\n" for relative, folders in setup.safe))
    config = write_config(work, setup.spool.root)
    (work / "mailboxes.csv").write_text("address,quota\n" + "".join(f"{a},1G\n" for a in setup.spool.addresses))
    subprocess.run([QUOTAGATE, "-q", "-c", str(config), "mailbox", "import", str(work / "mailboxes.csv")], check=True)
    # The fixed cost of a scan process: the same command on a spool of one empty mailbox.
    (work / "tiny" / "example.org" / "one" / "Maildir").mkdir(parents=True)
    tiny = work / "tiny-config"
    tiny.mkdir()
    tiny_config = write_config(tiny, work / "tiny")
    subprocess.run([QUOTAGATE, "-q", "-c", str(tiny_config), "mailbox", "add", "one@example.org", "--quota", "1G"])
    # As pip and the .deb install it: quotagate's modules compiled to bytecode. An editable install
    # run under PYTHONDONTWRITEBYTECODE would otherwise compile them from source in every process.
    compileall.compile_dir(Path(quotagate.__file__).parent, quiet=1)
    print(f"whole-process timing ({n} runs each, wall clock, start to exit):")
    version, _ = repeat("quotagate --version", process([QUOTAGATE, "--version"]), max(n, 10))
    startup, _ = repeat(
        "quotagate scan, one mailbox", process([QUOTAGATE, "-q", "-c", str(tiny_config), "scan"]), max(n, 10)
    )
    first = to_first_mailbox(
        "scan, to its first mailbox", work / "tiny", ["-q", "-c", str(tiny_config), "scan"], max(n, 10)
    )
    python = [sys.executable, "-I"]
    (full, _), (reference, out) = alternately(
        ("quotagate scan --full", process([QUOTAGATE, "-q", "-c", str(config), "scan", "--full"])),
        ("listdir + S= script", process([*python, str(reference_script), str(listing)])),
        n,
    )
    (incremental, _), (bound, _) = alternately(
        ("quotagate scan (unchanged)", process([QUOTAGATE, "-q", "-c", str(config), "scan"])),
        ("stat bound script", process([*python, str(bound_script), str(folders)])),
        n,
    )
    (incremental_again, _), (safe, _) = alternately(
        ("quotagate scan (unchanged), again", process([QUOTAGATE, "-q", "-c", str(config), "scan"])),
        ("safe stat bound script", process([*python, str(safe_script), str(setup.spool.root), str(safe_listing)])),
        n,
    )
    messages, size = (int(v) for v in out.split())
    return AsProcesses(
        version,
        startup,
        first,
        full,
        incremental,
        reference,
        bound,
        incremental_again,
        safe,
        Totals(len(setup.maildirs), messages, size),
    )


def report(setup: Setup, inp: InProcess, proc: AsProcesses) -> int:
    """The totals each method found, the times, the ratios against their targets; 1 on a mismatch."""
    spool = setup.spool
    generated = Totals(len(spool.addresses), spool.messages, spool.bytes)
    print()
    print(f"spool: {spool.root}, layout {LAYOUT}, seed {spool.params.seed}")
    print(f"  {len(setup.stat_paths) // 2} folders, {len(setup.stat_paths)} cur/+new/ directories")
    print("found:")
    print(_totals_line("generator (expected)", generated))
    print(_totals_line("quotagate full scan", inp.full_totals))
    print(_totals_line("quotagate incremental scan", inp.incremental_totals))
    print(_totals_line("naive os.walk + os.stat", inp.naive_totals))
    print(_totals_line("listdir + S= script", inp.reference_totals))
    print(_totals_line("listdir + S= script, as a process", proc.reference_totals))
    print(_totals_line("du -sb (incl. dirs, tmp/)", inp.du_totals, messages=False))
    print(f"  stat bound: {inp.stat_count} directories stat'ed")
    print(
        f"  incremental scan re-read {inp.remeasured} of {inp.mailboxes} mailboxes"
        + ("" if inp.remeasured == 0 else "  <-- expected 0: mtimes too recent? (scan.racy_seconds)")
    )
    found = {
        "quotagate full scan": inp.full_totals,
        "quotagate incremental scan": inp.incremental_totals,
        "naive": inp.naive_totals,
        "listdir + S= script": inp.reference_totals,
        "listdir + S= script as a process": proc.reference_totals,
    }
    mismatches = [f"{label} {t} != generator {generated}" for label, t in found.items() if t != generated]
    for line in mismatches:
        print(f"!!! MISMATCH: {line} !!!")
    if not mismatches:
        print("  totals: quotagate == naive == listdir + S= == generator (messages and bytes)")

    print("times (best of runs, seconds; median in brackets):")
    for t in (inp.full, inp.single, inp.incremental, inp.naive, inp.reference, inp.du, inp.bound, inp.safe):
        print(f"  {t.label:<34} {t.best:8.3f}  [{t.median:8.3f}]  runs: " + ", ".join(f"{r:.3f}" for r in t.runs))
    print("  as whole processes:")
    for t in (
        proc.version,
        proc.startup,
        proc.first_mailbox,
        proc.full,
        proc.incremental,
        proc.reference,
        proc.bound,
        proc.safe,
    ):
        print(f"  {t.label:<34} {t.best:8.3f}  [{t.median:8.3f}]")
    targets = [
        ("naive / full", inp.naive.best / inp.full.best, ">=", 4.0),
        ("du / full", inp.du.best / inp.full.best, ">", 1.0),
        ("incremental / safe bound", inp.incremental_again.best / inp.safe.best, "<=", 2.0),
        ("full / listdir+S=", inp.full.best / inp.reference.best, "<=", 1.2),
        ("process: full / listdir+S=", proc.full.best / proc.reference.best, "<=", 1.6),
        ("process: unchanged / safe", proc.incremental_again.best / proc.safe.best, "<=", 3.0),
    ]
    print("targets:")
    for label, value, op, target in targets:
        ok = {">=": value >= target, ">": value > target, "<=": value <= target}[op]
        print(f"  {label:<28} = {value:7.2f}x  (target {op} {target:g}x)  {verdict(ok)}")
    fast = proc.version.best <= 0.1
    print(f"  {'quotagate --version':<28} = {proc.version.best:7.3f} s  (target <= 0.1 s)  {verdict(fast)}")
    print(
        f"  {'scan process, first mailbox':<28} = {proc.first_mailbox.best:7.3f} s  (target <= 0.25 s)  "
        f"{verdict(proc.first_mailbox.best <= 0.25)}"
    )
    print(f"  (info) full 1 worker / full {inp.workers} workers = {inp.single.best / inp.full.best:.2f}x")
    # The stat by path follows symlinks any mail user can make: no bound quotagate may reach.
    print(f"  (info) incremental / stat by path = {inp.incremental.best / inp.bound.best:.2f}x")
    print(f"  (info) process: unchanged / stat by path = {proc.incremental.best / proc.bound.best:.2f}x")
    return 1 if mismatches else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mailboxes", type=int, default=2000, help="mailboxes in the spool (default 2000)")
    parser.add_argument("--messages", type=int, default=200_000, help="messages in the spool (default 200000)")
    parser.add_argument("--quick", action="store_true", help="200 mailboxes, 20000 messages, 2 runs each")
    parser.add_argument("--dir", type=Path, help=f"spool directory (default {DEFAULT_DIR}, -quick with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory with the SQLite stores")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each measurement (default 3)")
    args = parser.parse_args(argv)
    if args.quick:
        args.mailboxes, args.messages, args.repeat = 200, 20_000, 2
    if args.dir is None:  # the quick spool never replaces the full one
        args.dir = DEFAULT_DIR.with_name(DEFAULT_DIR.name + "-quick") if args.quick else DEFAULT_DIR
    if args.mailboxes < 1 or args.messages < 0 or args.repeat < 1:
        parser.error("--mailboxes and --repeat must be >= 1, --messages >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    setup = prepare(args)
    try:
        in_process = time_in_process(setup)
        processes = time_processes(setup)
    finally:
        if args.keep:
            print(f"kept scratch directory {setup.scratch}")
        else:
            shutil.rmtree(setup.scratch, ignore_errors=True)
    return report(setup, in_process, processes)


if __name__ == "__main__":
    sys.exit(main())
