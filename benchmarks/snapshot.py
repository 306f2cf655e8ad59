"""Benchmark the policy daemon's snapshot: memory per mailbox, refresh cost, and the latency a
refresh adds to answers, for large directories.

Run it by hand from the project root (it is not part of the test suite)::

    .venv/bin/python benchmarks/snapshot.py [--mailboxes 200000,1000000] [--changed 0.01]

For each size it builds (once, kept in ``/var/tmp/quotagate-bench-snapshot`` while its marker
matches) a SQLite store filled directly through the store's own API -- no spool, no scan: every
mailbox has a byte quota and a reading with two folders and an agreeing maildirsize, as a scan of
a Maildir++ spool leaves them. Each loader then runs in a process of its own, on a copy of that
store:

1. **Memory**: RSS after importing the daemon, and after the first load (``gc.freeze()``d, as the
   daemon does); the difference per mailbox.
2. **Refresh**: the store changes as a busy half minute changes it (``--changed`` of the readings
   measured again, a tenth of that in new limits, new mailboxes and readings dropped), then the
   loader refreshes in a worker thread, as ``quotagate serve`` does. Its CPU time (the thread's)
   and wall time are printed.
3. **Added latency**: all along, the event loop answers a recipient check every millisecond
   (``PolicyService.answer`` on the loader's snapshot; no maildirsize read). The latency of each
   answer counts from the moment it was due. The p99 and the worst answer during the refresh,
   less the p99 of the 2 seconds before it, are what a refresh adds.

Loaders: ``full`` is the daemon before issue 14 (``load_snapshot``: every mailbox and reading
as objects, reloaded in full); ``compact`` is today's (``SnapshotLoader``: compact columns, then
only what the store's change stamp says changed); ``folders`` is ``compact`` with every folder
of each mailbox, as the daemon kept them when ``[[folders]]`` rules set limits, and ``limited``
what it keeps now: only the folders a limit applies to (here one of two), as name and totals.
Ratios to ``full`` are printed. Each child runs with the daemon's switch interval (``SWITCH_INTERVAL``).

Targets (printed as met / NOT MET; the machine also runs the probe): at most 300 MB RSS at
1,000,000 mailboxes; at most 5 ms added p99 during a refresh.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from _harness import machine, percentile, verdict
from _spool import keep

from quotagate.config import Config, FolderRule, parse_config
from quotagate.model import FolderUsage, Format, Limits, Mailbox, MailboxUsage, MaildirsizeInfo, Reading, State
from quotagate.policy.codec import PolicyRequest
from quotagate.policy.daemon import SWITCH_INTERVAL
from quotagate.policy.live import Snapshot, SnapshotLoader, load_snapshot
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from quotagate.store import Store, open_store

GENERATOR_VERSION = 1
BASE = Path("/var/tmp/quotagate-bench-snapshot")
MARKER = ".quotagate-bench-snapshot.json"
DOMAINS = ("example.com", "example.net", "example.org", "mail.example.test")
QUOTA = 50 << 20
BATCH = 20_000
PROBE_EVERY = 0.001  # seconds between two checks the loop answers
IDLE_SECONDS = 2.0
LOADERS = ("full", "compact", "folders", "limited")
TARGET_MB = 300
TARGET_ADDED_MS = 5.0


def address(i: int) -> str:
    return f"user{i:07d}@{DOMAINS[i % len(DOMAINS)]}"


def reading(i: int, used: int, at: float) -> Reading:
    addr = address(i)
    local, _, domain = addr.partition("@")
    sent = used // 3
    folders = (FolderUsage("", used - sent, 7, (1_700_000_000 + i,)), FolderUsage(".Sent", sent, 3, (1_700_000_001,)))
    usage = MailboxUsage(Format.MAILDIR, folders, 1_700_000_000 + i, None, MaildirsizeInfo(used, 10, f"{QUOTA}S"))
    return Reading(addr, f"/var/vmail/{domain}/{local}/Maildir", usage, used, 10, State.OK, at)


def used_of(i: int) -> int:
    return (i * 7919) % QUOTA


def fill(staging: Path, count: int) -> None:
    """A store with ``count`` mailboxes and their readings, written through the store's API."""
    started = time.perf_counter()
    with open_store(f"sqlite:///{staging}/store.db", migrate=True) as store:
        now = time.time()
        for first in range(0, count, BATCH):
            ids = range(first, min(count, first + BATCH))
            store.upsert_mailboxes([Mailbox(address(i), Limits(QUOTA, 0)) for i in ids])
            store.save_readings([reading(i, used_of(i), now) for i in ids], ())
            print(f"  {ids[-1] + 1}/{count} mailboxes", end="\r", flush=True)
    print(f"  store filled in {time.perf_counter() - started:.0f} s" + " " * 20, flush=True)


def ensure_store(count: int) -> Path:
    root = BASE / f"store-{count}"
    params = {"mailboxes": count, "version": GENERATOR_VERSION}
    if keep(root, params, MARKER, lambda staging: fill(staging, count)):
        print(f"store: reusing {root}")
    return root / "store.db"


# -- one loader, in a process of its own ------------------------------------------------------


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def change(store: Store, count: int, share: float) -> dict[str, int]:
    """What a busy refresh interval brings: readings measured again, new limits, new mailboxes,
    readings dropped (a mailbox gone from the spool)."""
    n = max(1, int(count * share))
    few = max(1, n // 10)
    now = time.time()
    step = max(1, count // n)
    store.save_readings([reading(i, used_of(i) // 2, now) for i in range(0, count, step)][:n], ())
    store.upsert_mailboxes([Mailbox(address(i), Limits(QUOTA * 2, 0)) for i in range(1, count, step)][:few])
    new = range(count, count + few)
    store.upsert_mailboxes([Mailbox(address(i), Limits(QUOTA, 0)) for i in new])
    store.save_readings([reading(i, 1, now) for i in new], [address(i) for i in range(2, count, step)][:few])
    return {"readings": n, "limits": few, "new": few, "dropped": few}


class Loader:
    """One way of loading the snapshot: the first load, and a refresh after the store changed."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def load(self) -> Snapshot:
        raise NotImplementedError

    def refresh(self) -> Snapshot:
        raise NotImplementedError


class FullLoader(Loader):
    """Before issue 14: everything, every time."""

    def load(self) -> Snapshot:
        return load_snapshot(self.store, with_folders=False)

    def refresh(self) -> Snapshot:
        return self.load()


class CompactLoader(Loader):
    """Since issue 14: compact columns, then what changed."""

    with_folders = False
    folder_rules: tuple[FolderRule, ...] = ()

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.loader = SnapshotLoader()

    def load(self) -> Snapshot:
        return self.loader.load(self.store, with_folders=self.with_folders, folder_rules=self.folder_rules)

    def refresh(self) -> Snapshot:
        return self.load()


class FoldersLoader(CompactLoader):
    """Compact, with each mailbox's folders too, as the daemon loaded them when [[folders]] set limits."""

    with_folders = True


class LimitedLoader(FoldersLoader):
    """Compact, with the folders a [[folders]] limit applies to (one of each mailbox's two), as the
    daemon keeps them now: name and totals."""

    folder_rules = (parse_config({"folders": [{"match": ".Sent", "quota": "1G"}]}).folders[0],)


LOADER_CLASSES: dict[str, Callable[[Store], Loader]] = {
    "full": FullLoader,
    "compact": CompactLoader,
    "folders": FoldersLoader,
    "limited": LimitedLoader,
}


def probe_config(url: str) -> Config:
    return parse_config(
        {"store": {"url": url}, "policy": {"use_maildirsize": False, "reservation_seconds": 0, "metrics": ""}}
    )


@dataclass
class Probe:
    """Checks answered by the loop every :data:`PROBE_EVERY`: (when it was due, latency)."""

    service: PolicyService
    count: int
    samples: list[tuple[float, float]]
    stop: bool = False

    async def run(self) -> None:
        n = 0
        due = time.perf_counter()
        while not self.stop:
            due += PROBE_EVERY
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            request = PolicyRequest(
                {"request": "smtpd_access_policy", "protocol_state": "RCPT", "recipient": address(n * 7 % self.count)}
            )
            self.service.answer(request)
            now = time.perf_counter()
            self.samples.append((due, now - due))
            n += 1
            due = max(due, now - PROBE_EVERY)  # a stall is counted once, not as a burst of late checks


async def measure(loader: Loader, service: PolicyService, count: int, share: float) -> dict[str, float]:
    probe = Probe(service, count, [])
    task = asyncio.create_task(probe.run())
    await asyncio.sleep(IDLE_SECONDS)
    idle = [lat for _, lat in probe.samples]
    changes = await asyncio.to_thread(change, loader.store, count, share)
    await asyncio.sleep(0.2)
    cpu: list[float] = []

    def refresh() -> Snapshot:
        started = time.thread_time()
        snapshot = loader.refresh()
        cpu.append(time.thread_time() - started)
        return snapshot

    begun = time.perf_counter()
    service.snapshot = await asyncio.to_thread(refresh)
    gc.freeze()
    ended = time.perf_counter()
    await asyncio.sleep(0.05)
    during = [lat for due, lat in probe.samples if begun <= due <= ended]
    probe.stop = True
    await task
    check = service.snapshot.mailboxes.get(address(count))  # a new mailbox is there
    if check is None:
        raise RuntimeError("the refresh missed a new mailbox")
    base = percentile(idle, 0.99)
    return {
        "refresh_cpu": cpu[0],
        "refresh_wall": ended - begun,
        "idle_p99": base,
        "during_p99": percentile(during, 0.99),
        "during_max": max(during, default=float("nan")),
        "added_p99": percentile(during, 0.99) - base,
        "added_max": max(during, default=float("nan")) - base,
        "answered_during": len(during),
        **{f"changed_{k}": v for k, v in changes.items()},
    }


def child(kind: str, db: Path, count: int, share: float) -> dict[str, float]:
    url = f"sqlite:///{db}"
    sys.setswitchinterval(SWITCH_INTERVAL)  # as quotagate serve runs
    config = probe_config(url)
    service = PolicyService(config, Metrics())
    gc.collect()
    before = rss_bytes()
    with open_store(url, migrate=True) as store:  # a store kept from before the change stamp
        loader = LOADER_CLASSES[kind](store)
        started = time.perf_counter()
        service.snapshot = loader.load()
        loaded = time.perf_counter() - started
        gc.collect()
        gc.freeze()
        after = rss_bytes()
        result = asyncio.run(measure(loader, service, count, share))
    return {"rss_before": before, "rss_after": after, "load_seconds": loaded, **result}


# -- the run ------------------------------------------------------------------------------------


def run_child(kind: str, db: Path, count: int, share: float) -> dict[str, float]:
    work = BASE / "run"
    work.mkdir(parents=True, exist_ok=True)
    copy = work / "store.db"
    shutil.copyfile(db, copy)
    argv = [sys.executable, __file__, "--child", kind, "--db", str(copy), "--mailboxes", str(count)]
    argv += ["--changed", str(share)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"loader {kind} failed:\n{done.stdout}{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def show(count: int, results: dict[str, dict[str, float]]) -> None:
    print(f"\n{count:,} mailboxes")
    print(f"  {'loader':8} {'RSS MB':>8} {'B/mailbox':>10} {'load s':>7} {'refresh CPU s':>14} {'wall s':>7}", end="")
    print(f" {'idle p99 ms':>12} {'+p99 ms':>8} {'+worst ms':>10}")
    for kind, r in results.items():
        per = (r["rss_after"] - r["rss_before"]) / count
        print(
            f"  {kind:8} {r['rss_after'] / 2**20:8.0f} {per:10.0f} {r['load_seconds']:7.1f} {r['refresh_cpu']:14.3f}"
            f" {r['refresh_wall']:7.2f} {r['idle_p99'] * 1e3:12.2f} {r['added_p99'] * 1e3:8.2f}"
            f" {r['added_max'] * 1e3:10.2f}"
        )
    first = next(iter(results.values()))
    print(
        f"  changes before the refresh: {first['changed_readings']:.0f} readings, {first['changed_limits']:.0f}"
        f" limits, {first['changed_new']:.0f} new mailboxes, {first['changed_dropped']:.0f} readings dropped"
    )
    if "full" in results and len(results) > 1:
        base = results["full"]
        for kind, r in results.items():
            if kind == "full":
                continue
            growth = (r["rss_after"] - r["rss_before"]) / (base["rss_after"] - base["rss_before"])
            print(
                f"  {kind} / full: RSS growth x{growth:.2f}, refresh CPU x{r['refresh_cpu'] / base['refresh_cpu']:.3f},"
                f" worst added latency x{r['added_max'] / base['added_max']:.3f}"
            )
    if count >= 1_000_000:
        for kind, r in results.items():
            mb = r["rss_after"] / 2**20
            print(
                f"  {kind}: RSS {mb:.0f} MB at {count:,} mailboxes (target <= {TARGET_MB}): {verdict(mb <= TARGET_MB)}"
            )
    for kind, r in results.items():
        added = r["added_p99"] * 1e3
        print(
            f"  {kind}: added p99 {added:.2f} ms (target <= {TARGET_ADDED_MS:g}): {verdict(added <= TARGET_ADDED_MS)}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mailboxes", default="200000,1000000", help="comma-separated sizes")
    parser.add_argument("--changed", type=float, default=0.01, help="share of readings changed before a refresh")
    parser.add_argument("--loaders", default=",".join(LOADERS), help=f"which of {', '.join(LOADERS)}")
    parser.add_argument("--child", choices=LOADERS, help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.mailboxes.split(",")]
    if args.child:
        print(json.dumps(child(args.child, args.db, sizes[0], args.changed)))
        return 0
    print(" | ".join([*machine(), f"switch interval {SWITCH_INTERVAL * 1e3:g} ms (the daemon's)"]))
    for count in sizes:
        db = ensure_store(count)
        results = {kind: run_child(kind, db, count, args.changed) for kind in args.loaders.split(",")}
        show(count, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
