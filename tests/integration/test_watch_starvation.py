"""One mailbox that takes long to measure holds up no other mailbox's measurement, nor the
publication of their readings."""

from __future__ import annotations

import asyncio

from quotagate.model import Limits
from tests.integration.scanenv import Env
from tests.integration.watchrun import until, watching
from tests.spoolgen import add_message, maildir_folder


def test_a_slow_mailbox_does_not_hold_up_the_others(env: Env) -> None:
    """zed (an mbox home, read whole by the dovecot profile) drops an 8 TiB sparse file beside
    his inbox: his measurement runs until [scan] mailbox_timeout (here 6 s, by default 300 s),
    and any sender can make him dirty again. Bob's delivery meanwhile (a name without S=: his
    folder must be read) is in the tracker's reading (what ``serve`` answers from) and in the
    store (what ``watch`` publishes) within a second or two."""
    bob = env.maildir("bob")
    maildir_folder(bob)
    home = env.spool / "example.org" / "zed" / "mail"
    home.mkdir(parents=True)
    (home / "inbox").write_bytes(b"From a@example.net Thu Nov  9 22:33:52 2023\nSubject: x\n\nhi\n")
    env.add("bob", Limits(10**6))
    zed = env.add("zed", path="example.org/zed/mail")

    async def run() -> None:
        async with watching(env, spool={"accounting": "dovecot"}, scan={"mailbox_timeout": 6}) as (tracker, _):
            with open(home / "big", "wb") as big:
                big.write(b"From a@example.net Thu Nov  9 22:33:52 2023\n\n")
                big.truncate(8 << 40)
            await asyncio.sleep(0.3)  # zed is being measured
            assert zed in tracker._lanes.in_flight()
            tracker.mark_dirty(zed)  # a delivery hint: zed is not measured twice at once
            add_message(bob, 300, where="new", with_size=False)
            assert await until(lambda: tracker.readings["bob@example.org"].bytes == 300, seconds=2.0)
            assert await until(lambda: env.store.readings()["bob@example.org"].bytes == 300, seconds=1.0)
            assert tracker._lanes.in_flight() == {zed}

    asyncio.run(run())
