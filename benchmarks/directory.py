"""Benchmark what following the directory costs the event loop with ``[watch]``, against loading
every mailbox again (what ``serve``'s refreshes and ``watch``'s directory task did before).

Run it by hand from the project root (it is not part of the test suite)::

    .venv/bin/python benchmarks/directory.py [--mailboxes 200000] [--changed 100]

With a tracker following ``--mailboxes`` mailboxes (in memory: no spool, no store), ``--changed``
of them given new limits, it times, best of ``--repeat``:

1. ``Tracker.load`` of every mailbox (the baseline, on the loop before);
2. ``serve``: the refresh's difference between two loads (``compact.mailbox_changes``, in the
   loader's thread) and ``Tracker.update`` with it (on the loop);
3. ``watch``: the directory task's difference (``runner._differences``, in a thread, listing a
   real SQLite store) and the loop's part: the copy of what the tracker follows and
   ``Tracker.update``;
4. the outage rule for two mailboxes leaving: ``left_problem`` (stops counting early) against
   ``vanished_problem`` over the whole directory.

It prints the times and each one's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from decimal import Decimal

from _harness import best, machine

from quotagate.config import parse_config
from quotagate.model import Format, Limits, Mailbox, MailboxUsage, Reading, State
from quotagate.outage import left_problem, vanished_problem
from quotagate.policy import compact
from quotagate.store import open_store
from quotagate.store.base import Changes
from quotagate.watch.runner import _differences
from quotagate.watch.tracker import Tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mailboxes", type=int, default=200_000)
    parser.add_argument("--changed", type=int, default=100, help="mailboxes given new limits (default 100)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, changed = args.mailboxes, args.changed
    print(f"machine: {', '.join(machine())}; {n:,} mailboxes, {changed} changed, best of {args.repeat}")

    work = tempfile.mkdtemp(prefix="quotagate-bench-directory-")
    config = parse_config({"spool": {"root": work}})
    tracker = Tracker(config, publish=None, mode="poll")  # type: ignore[arg-type]  # never flushed
    before = [Mailbox(f"user{i}@example{i % 50}.org", Limits(10**9)) for i in range(n)]
    after = [*before[: n - changed], *(Mailbox(m.address, Limits(5 * 10**8)) for m in before[n - changed :])]
    usage = MailboxUsage(Format.MAILDIR)
    tracker.readings = {m.address: Reading(m.address, "", usage, 1, 1, State.OK, 0.0) for m in before}

    tracker.load(before, {})
    # Each call does the same work whatever the tracker follows already: a path for every mailbox.
    baseline = best(args.repeat, lambda: tracker.load(after, {}))

    old = compact.updated(None, Changes(None, True, before, [], True, [], [], None))
    new = compact.updated(old, Changes(None, True, after, [], True, [], [], None))
    diff = compact.mailbox_changes(old, new)
    assert diff is not None and len(diff[0]) == changed
    serve_thread = best(args.repeat, lambda: compact.mailbox_changes(old, new))
    serve_loop = best(args.repeat, lambda: tracker.update(*diff))

    store = open_store(f"sqlite:///{work}/quotagate.db", migrate=True)  # the directory task's own
    store.upsert_mailboxes(after)
    tracker.load(before, {})
    written, leaving = _differences(store, dict(tracker.mailboxes))
    assert len(written) == changed and not leaving

    def watch_on_loop() -> None:
        dict(tracker.mailboxes)
        tracker.update(written, leaving)

    watch_thread = best(args.repeat, lambda: _differences(store, dict(tracker.mailboxes)))
    watch_loop = best(args.repeat, watch_on_loop)
    store.close()
    shutil.rmtree(work)

    gone = {before[0].address, before[1].address}
    still = {a: r for a, r in tracker.readings.items() if a not in gone}
    share = Decimal("0.1")
    assert left_problem(tracker.readings, gone, share) == vanished_problem(tracker.readings, still, share)
    whole = best(args.repeat, lambda: vanished_problem(tracker.readings, still, share))
    early = best(args.repeat, lambda: left_problem(tracker.readings, gone, share))

    print(f"  {'':48} {'ms':>8}  ratio to its baseline")
    rows = [
        ("baseline: Tracker.load of every mailbox (loop)", baseline, baseline),
        ("serve: mailbox_changes (loader thread)", serve_thread, baseline),
        ("serve: Tracker.update with them (loop)", serve_loop, baseline),
        ("watch: _differences (thread)", watch_thread, baseline),
        ("watch: copy + Tracker.update (loop)", watch_loop, baseline),
        ("outage rule, whole count: vanished_problem", whole, whole),
        ("outage rule, 2 leaving: left_problem", early, whole),
    ]
    for label, seconds, base in rows:
        print(f"  {label:48} {seconds * 1000:8.2f}  {seconds / base:8.4f}x")


if __name__ == "__main__":
    main()
