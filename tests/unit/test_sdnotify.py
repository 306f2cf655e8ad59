"""Asking systemd for more time to start, while a first scan runs."""

from __future__ import annotations

import asyncio

import pytest

from quotagate import sdnotify


def test_more_time_is_asked_at_once_and_again_until_the_block_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario: a start that lasts several periods of asking. Expected: systemd is asked at
    once, again while it lasts, and no more once the block ended."""
    monkeypatch.setattr(sdnotify, "MORE_TIME", 0.15)  # asked every 0.05 s
    told: list[str] = []
    seen: dict[str, int] = {}

    async def start() -> None:
        async with sdnotify.asking_more_time(told.append):
            await asyncio.sleep(0)
            seen["at once"] = len(told)
            await asyncio.sleep(0.3)
        seen["at the end"] = len(told)
        await asyncio.sleep(0.2)

    asyncio.run(start())
    assert seen["at once"] == 1 and seen["at the end"] >= 2
    assert len(told) == seen["at the end"] and set(told) == {"EXTEND_TIMEOUT_USEC=150000"}
