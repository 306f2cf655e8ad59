"""A refresh under load: checks answered while the next snapshot is built in a worker thread
never see a half-built one.

The store flips between two states, each written in one transaction: in "roomy" every mailbox
has room for the message asked about, in "full" none has. Between two awaits the loop answers a
check for every mailbox; a snapshot changed under it (or handed over half-built) would answer
some of them from one state and some from the other.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from quotagate.config import parse_config
from quotagate.model import FolderUsage, Format, Limits, Mailbox, MailboxUsage, Reading, State
from quotagate.policy.codec import PolicyRequest
from quotagate.policy.live import SnapshotLoader
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from quotagate.store import Store, open_store
from tests.policy.conftest import run

MAILBOXES = 300
QUOTA = 10_000
SIZE = 1_000
FLIPS = 6


def _reading(address: str, used: int, at: float) -> Reading:
    usage = MailboxUsage(Format.MAILDIR, (FolderUsage("", used, 1),))
    return Reading(address, f"/m/{address}", usage, used, 1, State.OK, at)


def _addresses(flip: int) -> list[str]:
    """Every state also brings a mailbox of its own and drops the other's: new and removed rows."""
    return [f"u{i}@example.org" for i in range(MAILBOXES)] + [f"extra{flip % 2}@example.org"]


def _write(store: Store, flip: int) -> None:
    used = QUOTA - SIZE // 2 if flip % 2 else 0  # odd: no room for SIZE
    now = time.time()
    addresses = _addresses(flip)
    store.upsert_mailboxes([Mailbox(a, Limits(QUOTA)) for a in addresses])
    store.save_readings([_reading(a, used, now) for a in addresses], [f"extra{(flip + 1) % 2}@example.org"])


def test_checks_during_refreshes_answer_from_one_whole_snapshot(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    config = parse_config({"store": {"url": url}, "policy": {"use_maildirsize": False, "reservation_seconds": 0}})
    service = PolicyService(config, Metrics())
    loader = SnapshotLoader()
    answers: set[str] = set()
    mixed: list[tuple[int, set[str]]] = []

    async def load_often(store: Store) -> None:
        for flip in range(FLIPS):
            await asyncio.to_thread(_write, store, flip)
            service.snapshot = await asyncio.to_thread(loader.load, store)
        done.set()

    async def check_all_the_time() -> None:
        rounds = 0
        while not done.is_set():
            seen = {
                service.answer(PolicyRequest({"recipient": a, "size": str(SIZE), "protocol_state": "RCPT"}))
                for a in _addresses(0)[:MAILBOXES]
            }
            if len(seen) != 1:
                mixed.append((rounds, seen))
            answers.update(seen)
            rounds += 1
            # A breath for the loader's thread (the GIL): under coverage a round is slow enough
            # to starve it. Rounds still interleave with every swap of the snapshot.
            await asyncio.sleep(0.005)

    done = asyncio.Event()
    with open_store(url, migrate=True) as store:
        _write(store, 0)
        service.snapshot = loader.load(store)

        async def both() -> None:
            await asyncio.gather(load_often(store), check_all_the_time())

        run(both(), timeout=120)
        final = service.snapshot
    assert mixed == []
    refusals = answers - {"DUNNO"}
    # Both states were answered from (the "full" one refuses the message, one way only).
    assert "DUNNO" in answers and len(refusals) == 1 and next(iter(refusals)).startswith("552 5.2.2 ")
    assert "extra1@example.org" in final.mailboxes and "extra0@example.org" not in final.readings
