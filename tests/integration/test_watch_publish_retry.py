"""StorePublisher: a batch whose commit failed is given again by the tracker; the marks must
come out of the retry as they would have out of the first attempt."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from quotagate.model import Limits
from quotagate.store import Store, StoreError
from quotagate.watch.runner import StorePublisher
from tests.integration.scanenv import DOMAIN, Env
from tests.spoolgen import add_message, maildir_folder

LIMITS = Limits(10_000, 0)


def _env(tmp_path: Path) -> Env:
    env = Env(tmp_path)
    env.configure(publish={"file": str(tmp_path / "overquota")}, policy={"folder_delimiter": "+-"})
    return env


def _lines(env: Env) -> list[str]:
    assert env.config.publish.file is not None
    return [line for line in env.config.publish.file.read_text().splitlines() if not line.startswith("#")]


def _fail_once(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    real = store.save_readings
    calls = [0]

    def save(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise StoreError("database went away")
        real(*args, **kwargs)

    monkeypatch.setattr(store, "save_readings", save)


def test_added_detail_mailbox_marked_after_a_failed_commit_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(tmp_path)
    add_message(maildir_folder(env.maildir("john")), 10_001)
    add_message(maildir_folder(env.maildir("john-doe")), 10)
    john = env.add("john", LIMITS)
    doe = env.add("john-doe", LIMITS)
    env.scan()
    readings = env.store.readings()
    publisher = StorePublisher(env.config, env.store)
    publisher.reset({john: readings[john]})  # john-doe@ not yet followed
    assert env.config.publish.file is not None
    env.config.publish.file.write_text(f"john@{DOMAIN}\n")
    _fail_once(monkeypatch, env.store)

    async def run() -> None:
        with pytest.raises(StoreError):
            await publisher([readings[doe]], [])
        await publisher([readings[doe]], [])  # the tracker keeps the batch and gives it again

    asyncio.run(run())
    assert publisher.own == [doe]
    assert _lines(env) == [f"john@{DOMAIN}", f"john-doe@{DOMAIN}@"]


def test_removed_detail_mailbox_unmarked_after_a_failed_commit_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(tmp_path)
    add_message(maildir_folder(env.maildir("john")), 10_001)
    add_message(maildir_folder(env.maildir("john-doe")), 10)
    env.add("john", LIMITS)
    doe = env.add("john-doe", LIMITS)
    env.scan()
    readings = env.store.readings()
    publisher = StorePublisher(env.config, env.store)
    publisher.reset(readings)
    assert publisher.own == [doe]
    assert _lines(env) == [f"john@{DOMAIN}", f"john-doe@{DOMAIN}@"]
    _fail_once(monkeypatch, env.store)

    async def run() -> None:
        with pytest.raises(StoreError):
            await publisher([], [doe])
        await publisher([], [doe])

    asyncio.run(run())
    assert publisher.own == []
    assert _lines(env) == [f"john@{DOMAIN}"]
