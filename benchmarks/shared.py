"""Benchmark the shared ledger: what a check costs with [shared] url against the in-process one,
and what 1,000 RCPT/s cost Redis.

Run it by hand from the project root, with a Redis you may write to (a private one: ``redis-server
--port 16379 --save ''``)::

    .venv/bin/python benchmarks/shared.py --url redis://127.0.0.1:16379/0 [--checks 5000] [--concurrency 50]

In one process, on a real SQLite store and spool in a temp dir: ``PolicyService.respond`` for a
mailbox with room is timed for ``--checks`` transactions (each held, then ended without data, as
a prober's), ``--concurrency`` at a time, first without [shared] (the baseline), then with it. It
prints the checks per second of each and their ratio, and from Redis's own ``INFO commandstats``
the commands and the Redis CPU time per check, scaled to 1,000 RCPT/s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from quotagate.config import parse_config
from quotagate.model import Limits, Mailbox
from quotagate.policy.codec import PolicyRequest
from quotagate.policy.live import load_snapshot
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService, Session
from quotagate.policy.shared import attach
from quotagate.scan import run_scan
from quotagate.store import open_store

ADDRESS = "room@example.org"


def prepare(base: Path) -> dict[str, Any]:
    """A scanned store with one empty mailbox with room for every check."""
    (base / "db").mkdir()
    for sub in ("cur", "new", "tmp"):
        (base / "mail" / "example.org" / "room" / "Maildir" / sub).mkdir(parents=True)
    url = f"sqlite:///{base}/db/q.db"
    data = {"store": {"url": url}, "spool": {"root": str(base / "mail")}, "policy": {"metrics": ""}}
    store = open_store(url)
    try:
        store.migrate()
        store.upsert_mailboxes([Mailbox(ADDRESS, Limits(10**15))])
        run_scan(parse_config(data), store)
    finally:
        store.close()
    return data


def request(n: int, end: bool = False) -> PolicyRequest:
    attributes = {
        "request": "quotagate_end" if end else "smtpd_access_policy",
        "protocol_state": "RCPT",
        "recipient": ADDRESS,
        "size": "1000",
        "client_address": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
        "instance": f"bench{n}",
    }
    return PolicyRequest(attributes)


async def measure(data: dict[str, Any], checks: int, concurrency: int) -> tuple[float, int]:
    config = parse_config(data)
    metrics = Metrics()
    service = PolicyService(config, metrics)
    store = open_store(config.store.url)
    try:
        service.snapshot = load_snapshot(store)
    finally:
        store.close()
    ledger = attach(service, metrics)
    if ledger is not None:
        await ledger.start()
    gate = asyncio.Semaphore(concurrency)
    accepted = 0

    async def one(n: int) -> None:
        nonlocal accepted
        async with gate:
            answer = service.respond(request(n), Session())
            text = answer if isinstance(answer, str) else await answer
            accepted += text == "DUNNO"
            ended = service.respond(request(n, end=True), Session())
            if not isinstance(ended, str):
                await ended

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(checks)))
    seconds = time.perf_counter() - started
    if ledger is not None:
        await ledger.close()
        errors = metrics.registry.get_sample_value("quotagate_shared_errors_total") or 0
        if errors:
            print(f"{errors:.0f} calls to Redis failed: those checks were decided alone")
    return checks / seconds, accepted


async def commandstats(url: str) -> dict[str, tuple[int, int]]:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        info = await client.info("commandstats")
    finally:
        await client.aclose()
    return {str(name): (int(v["calls"]), int(v["usec"])) for name, v in info.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="a Redis to write to (a private one)")
    parser.add_argument("--checks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(Path(tmp))
        alone, _ = asyncio.run(measure(data, args.checks, args.concurrency))
        before = asyncio.run(commandstats(args.url))
        # A generous timeout: this measures capacity; a daemon under less load keeps to 0.5 s.
        shared_data = data | {"shared": {"url": args.url, "prefix": f"bench{int(time.time())}", "timeout": 5}}
        shared, accepted = asyncio.run(measure(shared_data, args.checks, args.concurrency))
        after = asyncio.run(commandstats(args.url))
    calls = sum(after[k][0] - before.get(k, (0, 0))[0] for k in after if "info" not in k)
    usec = sum(after[k][1] - before.get(k, (0, 0))[1] for k in after if "info" not in k)
    per_check_calls, per_check_usec = calls / args.checks, usec / args.checks
    for name in sorted(after):
        n = after[name][0] - before.get(name, (0, 0))[0]
        if n and "info" not in name:
            print(f"  {name}: {n / args.checks:.2f} per check")
    print(f"in-process: {alone:,.0f} checks/s (with their ends)")
    print(f"shared:     {shared:,.0f} checks/s, ratio {shared / alone:.2f}; {accepted} of {args.checks} accepted")
    print(f"Redis: {per_check_calls:.1f} commands and {per_check_usec:.0f} us of its CPU per check (hold + end)")
    core = per_check_usec * 1000 / 1e6  # seconds of Redis CPU per second at 1,000 checks/s
    print(f"per 1,000 RCPT/s: {per_check_calls * 1000:,.0f} commands/s, {core:.0%} of one Redis core")


if __name__ == "__main__":
    main()
