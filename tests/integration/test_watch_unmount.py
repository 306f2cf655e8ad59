"""A per-domain volume unmounted under the watcher is an outage, not mailboxes emptied: a full
mailbox on it stays over quota until it is found on a mounted file system again."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.model import Limits, State
from tests.integration.scanenv import Env
from tests.integration.watchrun import until, watching
from tests.spoolgen import add_message, maildir_folder


@pytest.fixture
def volume(env: Env) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = env.spool / "vol.test"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False, stderr=subprocess.DEVNULL)


def mount(path: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)


def test_an_unmounted_domain_volume_keeps_its_full_mailbox_over(env: Env, volume: Path) -> None:
    """vol.test is a volume of its own holding full's Maildir as ``vol.test/full`` (the user's
    directory itself, as Postfix virtual setups lay it out). It is unmounted: its mount point is
    left, empty, so full's Maildir looks missing below a parent that is there. That is an
    outage: full is unknown, kept over quota, in the tracker and in the store."""
    add_message(maildir_folder(volume / "full"), 5000)
    full = env.add("full", Limits(1000), path="vol.test/full")
    add_message(maildir_folder(env.maildir("bob")), 100)
    env.add("bob")

    async def run() -> None:
        async with watching(env) as (tracker, _):
            assert tracker.readings[full].state is State.OVER
            subprocess.run(["umount", str(volume)], check=True)
            await until(lambda: tracker.readings[full].bytes != 5000, seconds=1.0)
            await asyncio.sleep(0.3)
            assert tracker.readings[full].state is State.OVER, tracker.readings[full].usage.format
            assert not tracker.readings[full].usage.known
            assert env.store.readings()[full].state is State.OVER

    asyncio.run(run())


def test_an_unmounted_mailbox_counts_again_once_found_again(env: Env, volume: Path) -> None:
    """The volume mounted again (here, a new one where full's Maildir is made again, under quota):
    full is measured as it is found there, and the watcher follows it again."""
    add_message(maildir_folder(volume / "full"), 5000)
    full = env.add("full", Limits(1000), path="vol.test/full")

    async def run() -> None:
        async with watching(env) as (tracker, _):
            subprocess.run(["umount", str(volume)], check=True)
            assert await until(lambda: not tracker.readings[full].usage.known)
            mount(volume)
            add_message(maildir_folder(volume / "full"), 300)
            assert await until(lambda: tracker.readings[full].usage.known, seconds=3.0)
            assert (tracker.readings[full].bytes, tracker.readings[full].state) == (300, State.OK)

    asyncio.run(run())
