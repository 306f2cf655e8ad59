"""Benchmark the cost of reservations per check: 50,000 held in one mailbox against none.

Run it by hand from the project root (it is not part of the test suite)::

    .venv/bin/python benchmarks/reservations.py [--held 50000] [--checks 20000]

In one process, on a real SQLite store and spool in a temp dir: ``PolicyService.check`` (what the
daemon runs for every RCPT, minus the socket) is timed, each call on its own, for a mailbox with
room, first with nothing held anywhere (the baseline), then with ``--held`` reservations from
distinct transactions and clients held in another mailbox (a flood of size=1 checks), and for the
flooded mailbox itself. It prints p50/p99 of each and the ratios to the baseline (the issue's
target: other recipients' p99 within 2x the idle p99), the time to restore that many
reservations from their state file, as a daemon does at start, what matching a delivery costs
once they are all in flight (of unknown size against a known one), and how long the event loop waits
while they are saved (a thread ticking every 0.5 ms beside ``state.dumps``, which the daemon runs
in a thread; an encoder holds the GIL for a whole call) against ``json.dumps`` of the same rows
in one call, as the daemon saved them before.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from quotagate.config import parse_config
from quotagate.model import Limits, Mailbox
from quotagate.policy import state
from quotagate.policy.live import load_snapshot
from quotagate.policy.metrics import Metrics
from quotagate.policy.reservations import Reservations, Transaction
from quotagate.policy.service import PolicyService
from quotagate.scan import run_scan
from quotagate.store import open_store

GIB = 1 << 30


def timed(service: PolicyService, recipient: str, checks: int) -> list[float]:
    out = []
    for i in range(checks):
        started = time.perf_counter()
        service.check(recipient, 1000, Transaction(f"198.51.100.{i % 250}", f"t{i}"))
        out.append(time.perf_counter() - started)
        service.reservations.end(Transaction(f"198.51.100.{i % 250}", f"t{i}"), with_data=False, now=time.time())
    return out


def p(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] * 1e6 if q < 100 else max(samples) * 1e6


def per_call(work: Callable[[], object], calls: int) -> float:
    """Seconds per call of ``work``, ``calls`` of them."""
    started = time.perf_counter()
    for _ in range(calls):
        work()
    return (time.perf_counter() - started) / calls


def longest_stall(work: Callable[[], object]) -> tuple[float, float]:
    """Seconds ``work`` took, and the longest another thread (ticking every 0.5 ms) waited meanwhile."""
    gaps: list[float] = []
    done = threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            time.sleep(0.0005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.01)
    started = time.perf_counter()
    work()
    took = time.perf_counter() - started
    done.set()
    ticker.join()
    return took, max(gaps, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--held", type=int, default=50_000)
    parser.add_argument("--checks", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        config = parse_config(
            {
                "store": {"url": f"sqlite:///{base}/q.db"},
                "spool": {"root": f"{base}/spool"},
                "policy": {"client_hold": "100%", "use_maildirsize": False},
            }
        )
        Path(base, "spool").mkdir()
        store = open_store(config.store.url)
        store.migrate()
        store.upsert_mailboxes([Mailbox("big@example.org", Limits(GIB)), Mailbox("other@example.org", Limits(GIB))])
        run_scan(config, store)
        service = PolicyService(config, Metrics())
        service.snapshot = load_snapshot(store)
        store.close()

        idle = timed(service, "other@example.org", args.checks)
        for i in range(args.held):  # the flood: size=1 from many clients, never followed by DATA
            service.check("big@example.org", 1, Transaction(f"203.0.{i // 250 % 250}.{i % 250}", f"f{i}"))
        assert len(service.reservations) == args.held, len(service.reservations)
        others = timed(service, "other@example.org", args.checks)
        flooded = timed(service, "big@example.org", args.checks)

        kept = list(service.reservations)
        rows = [
            [r.transaction.client, r.transaction.id, r.mailbox, r.bytes, r.made_at, r.expires_at, r.state, None]
            for r in kept
        ]
        at_once = longest_stall(lambda: json.dumps({"version": state.VERSION, "reservations": rows}))
        in_pieces = longest_stall(lambda: state.dumps(kept))
        saved = Path(base, "reservations.json")
        state.save(saved, service.reservations)
        started = time.perf_counter()
        restored = Reservations(600).restore(state.load(saved), time.time())
        restore_seconds = time.perf_counter() - started

        # The flood's messages all accepted (in flight), then deliveries seen: of unknown size
        # (the smallest goes), and of a known size (the largest that delivery could be).
        ledger, now = service.reservations, time.time()
        for i in range(args.held):
            ledger.end(Transaction(f"203.0.{i // 250 % 250}.{i % 250}", f"f{i}"), with_data=True, now=now)
        deliveries = min(1000, args.held // 2)
        unsized = per_call(lambda: ledger.delivered("big@example.org", now), deliveries)
        sized = per_call(lambda: ledger.delivered("big@example.org", now, 1), deliveries)

    print(f"{args.checks} checks each, {args.held} reservations held in big@example.org")
    for name, samples in (("idle (baseline)", idle), ("other mailbox", others), ("flooded mailbox", flooded)):
        print(f"  {name:18} p50 {p(samples, 50):7.1f} us   p99 {p(samples, 99):7.1f} us")
    print(f"  other/idle p99 = {p(others, 99) / p(idle, 99):.2f}x (target <= 2x)")
    print(f"  flooded/idle p99 = {p(flooded, 99) / p(idle, 99):.2f}x")
    print(f"  restoring {restored} reservations from their file: {restore_seconds:.3f} s")
    print(f"  saving them: json.dumps at once {at_once[0]:.3f} s, the loop waits {at_once[1] * 1000:.1f} ms")
    print(f"               state.dumps        {in_pieces[0]:.3f} s, the loop waits {in_pieces[1] * 1000:.1f} ms")
    print(f"  longest wait, at once / in pieces = {at_once[1] / in_pieces[1]:.1f}x")
    print(f"  a delivery seen beside {args.held} in flight: of unknown size {unsized * 1e6:.1f} us,")
    print(f"               of known size {sized * 1e6:.1f} us, known / unknown = {sized / unsized:.2f}x")


if __name__ == "__main__":
    main()
