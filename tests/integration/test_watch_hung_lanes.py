"""Mailboxes on a hung mount, reviewed (eeb699c): lanes of earlier flushes are rescued by every
later flush, and a mailbox given up on is measured again. Neither may cost the healthy
mailboxes their freshness, nor cost a thread per look at a mailbox that never answers."""

from __future__ import annotations

import asyncio
import threading

import pytest

from quotagate.model import Limits, State
from tests.integration.scanenv import Env
from tests.integration.watchrun import deliver, hang, until, watching
from tests.spoolgen import add_message, maildir_folder

HUNG = 24


def test_a_delivery_is_in_the_answer_within_a_second_while_flushes_rescue_hung_lanes(env: Env) -> None:
    """24 mailboxes on a hung NFS mount (their measurements block on a gate) are dirty at once
    (an inotify overflow, a rescan). Each flush now moves what queues behind the stuck lanes of
    earlier flushes to new lanes, MOST_LANES (4) at a time, and waits for each new lane to be
    stuck (a patience, 0.5 s) before it hands anything on: every flush takes ~2 s for the six
    flushes this lasts (on a real mount with 1,000 mailboxes: 250 flushes, ~10 minutes). zoe, on
    a healthy volume and measured by nobody, gets a delivery that puts her over quota: applied
    as a delta at once, but published only when the flush running ends and the next one (which
    captured it, then waits ~2 s of its own) does: 2-4 s, not within a second."""
    hung = [env.add(f"hung{i:02}") for i in range(HUNG)]
    for i in range(HUNG):
        maildir_folder(env.maildir(f"hung{i:02}"))
    zoe_root = env.maildir("zoe")
    add_message(maildir_folder(zoe_root), 1000)
    zoe = env.add("zoe", Limits(5000))

    async def run() -> tuple[int, State]:
        async with watching(env, scan={"mailbox_timeout": 60}) as (tracker, _):
            gate = hang(tracker, hung, 60)
            try:
                for address in hung:
                    tracker.mark_dirty(address)
                # The first flush (four patiences) is over: later ones rescue earlier lanes.
                await asyncio.sleep(2.5)
                assert set(hung) <= tracker._lanes.in_flight()  # still hung
                deliver(zoe_root, 6000)
                await until(lambda: tracker.readings[zoe].state is State.OVER, seconds=1.5)
                return tracker.readings[zoe].bytes, tracker.readings[zoe].state
            finally:
                gate.set()

    assert asyncio.run(run()) == (7000, State.OVER)


def _hung_measurements() -> int:
    """Threads measuring a mailbox for a lane, given up on or not (bounded.in_thread's)."""
    return sum(1 for t in threading.enumerate() if t.name == "quotagate-bounded" and t.is_alive())


@pytest.mark.parametrize("vanished", ["0.1", "1"], ids=["held as an outage, measured again", "unknown, polled again"])
def test_a_mailbox_that_never_answers_costs_one_thread_not_one_per_look(env: Env, vanished: str) -> None:
    """Five mailboxes on a hard-mounted NFS volume whose server went away: a stat blocks in the
    kernel for ever, and a thread blocked there cannot be stopped or killed. Each measurement is
    given up on after [scan] mailbox_timeout (here 0.5 s) and the mailbox is unknown (timed out,
    Format.MISSING); the flush holds them as evidence of an outage and marks them dirty again
    (or, past that check, the next poll looks at the unknown reading, never "unchanged", and
    marks it dirty), and a new lane measures each in a new thread, which blocks too. Five hung
    mailboxes cost five more threads every timeout plus poll, without end (a day at the default
    300 s: ~290 per mailbox; a volume of 1,000 mailboxes: ~290,000 threads), until the process
    runs out of threads or memory. A mailbox whose last measurement is still running (left behind
    in its thread) must not be measured again: one blocked thread per mailbox at most."""
    hung = [env.add(f"hung{i}") for i in range(5)]
    for i in range(5):
        maildir_folder(env.maildir(f"hung{i}"))
    env.add("zoe")
    maildir_folder(env.maildir("zoe"))

    async def run() -> tuple[int, int]:
        async with watching(env, scan={"mailbox_timeout": 0.5, "max_vanished": vanished}) as (tracker, _):
            gate = hang(tracker, hung, 60)  # blocked in the kernel: no check_deadline() ever runs
            before = _hung_measurements()
            try:
                for address in hung:
                    tracker.mark_dirty(address)
                await asyncio.sleep(4.0)  # several timeouts, flushes and polls
                first = _hung_measurements() - before
                await asyncio.sleep(4.0)  # as many again
                return first, _hung_measurements() - before
            finally:
                gate.set()

    threads = asyncio.run(run())
    # One blocked thread per hung mailbox (and perhaps one starting the next job), not more with time.
    assert threads[1] <= 2 * len(hung) and threads[1] <= threads[0] + 1, threads
