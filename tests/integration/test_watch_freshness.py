"""The watch's freshness: a departure or a delivery is in the answer within a second, whatever
else is going on (a message moved out with no event after it, a measurement taken before a
delivery, mailboxes queued behind hung ones)."""

from __future__ import annotations

import asyncio
import os
import threading

from quotagate.model import Limits, State
from quotagate.usage.mailbox import Found
from tests.integration.scanenv import Env
from tests.integration.watchrun import deliver, hang, until, watching
from tests.spoolgen import add_message, maildir_folder


def test_a_message_moved_out_of_the_mailbox_lowers_usage_within_a_second(env: Env) -> None:
    """alice is over quota (10,000 bytes for 8,000) and saves one of her two messages out of her
    Maildir (``mv Maildir/cur/<msg> ~/saved``, one rename, and then she does nothing more). The
    MOVED_FROM is held for its MOVED_TO, which never comes, and nothing else happens in the
    spool: a flush must still run to measure her, or she stays over quota until the next rescan
    (an hour by default)."""
    root = env.maildir("alice")
    inbox = maildir_folder(root)
    add_message(inbox, 5000)
    moved = add_message(inbox, 5000)
    alice = env.add("alice", Limits(8000))

    async def run() -> tuple[int, State]:
        async with watching(env) as (tracker, _):
            assert tracker.readings[alice].state is State.OVER
            os.rename(moved, root.parent / "saved")
            await until(lambda: tracker.readings[alice].bytes == 5000, seconds=1.5)
            return tracker.readings[alice].bytes, tracker.readings[alice].state

    assert asyncio.run(run()) == (5000, State.OK)
    assert env.scan(full=True).readings[alice].bytes == 5000


def test_a_delivery_during_a_flush_that_takes_a_late_measurement_is_not_lost(env: Env) -> None:
    """bob's measurement outlasts the flush's patience (a slow disk: here it waits for a gate),
    so it is taken by a later flush. That flush starts while carol is being measured too (dirty
    by a hint). A message delivered to bob while that flush waits for carol, applied as a delta
    to bob's old reading, would then be overwritten by bob's measurement, made before it
    arrived: the delivery lost until something else made him dirty. Bob, handed on already,
    is measured again instead."""
    bob_root = env.maildir("bob")
    add_message(maildir_folder(bob_root), 1000)
    carol_root = env.maildir("carol")
    add_message(maildir_folder(carol_root), 1000)
    bob = env.add("bob", Limits(5000))
    carol = env.add("carol")

    async def run() -> tuple[int, State]:
        async with watching(env) as (tracker, _):
            gates = {bob: threading.Event(), carol: threading.Event()}
            real = tracker._measure_one

            def slow(address: str) -> Found:
                gate = gates.get(address)
                if gate is not None:
                    gate.wait(10)
                return real(address)

            tracker._measure_one = slow  # type: ignore[method-assign]
            try:
                tracker.mark_dirty(bob)
                assert await until(lambda: bob in tracker._lanes.in_flight())
                await asyncio.sleep(0.7)  # past the patience: the flush went on without bob
                # Without a turn of the loop: carol dirty, bob's measurement handed on.
                tracker.mark_dirty(carol)
                gates[bob].set()
                for _ in range(200):
                    if bob not in tracker._lanes.in_flight():
                        break
                    threading.Event().wait(0.01)
                assert tracker._lanes.has_ready()
                # The next flush measures carol (who waits) and takes bob's reading meanwhile.
                assert await until(lambda: carol in tracker._lanes.in_flight())
                deliver(bob_root, 6000)
                await asyncio.sleep(0.2)
                gates[carol].set()
                await until(lambda: tracker.readings[bob].bytes == 7000, seconds=1.5)
                return tracker.readings[bob].bytes, tracker.readings[bob].state
            finally:
                for gate in gates.values():
                    gate.set()

    assert asyncio.run(run()) == (7000, State.OVER)


def test_mailboxes_queued_behind_five_hung_ones_are_measured_within_a_second(env: Env) -> None:
    """Five mailboxes on a hung NFS mount (here: their measurements block on a gate) and zoe,
    on a healthy volume, are dirty in the same flush. Their lane gets stuck at each hung one in
    turn; a flush moves what queues behind to a new lane at most MOST_LANES (4) times, so zoe
    waited behind the fifth until it gave up ([scan] mailbox_timeout, 300 s by default): a later
    flush, due because she queues behind a stuck lane, moves her on, and a delivery that puts
    her over quota is in the answer."""
    hung = [env.add(f"hung{i}") for i in range(5)]
    for i in range(5):
        maildir_folder(env.maildir(f"hung{i}"))
    zoe_root = env.maildir("zoe")
    add_message(maildir_folder(zoe_root), 1000)
    zoe = env.add("zoe", Limits(5000))

    async def run() -> tuple[int, State]:
        async with watching(env, scan={"mailbox_timeout": 60}) as (tracker, _):
            gate = hang(tracker, hung, 30)
            try:
                for address in [*hung, zoe]:
                    tracker.mark_dirty(address)
                await asyncio.sleep(3.0)  # five patiences: every hung one is stuck
                deliver(zoe_root, 6000)
                await until(lambda: tracker.readings[zoe].state is State.OVER, seconds=1.5)
                return tracker.readings[zoe].bytes, tracker.readings[zoe].state
            finally:
                gate.set()

    assert asyncio.run(run()) == (7000, State.OVER)
