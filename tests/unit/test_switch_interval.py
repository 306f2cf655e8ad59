"""``quotagate serve`` lets the event loop in every millisecond: Python's default switch interval,
5 ms, is all a refresh in a thread may add to an answer (see quotagate.policy.daemon)."""

from __future__ import annotations

import sys

import pytest

from quotagate.config import parse_config
from quotagate.policy import daemon


def test_serve_sets_the_switch_interval_before_the_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[float] = []
    ran: list[float] = []

    async def run(self: daemon.Daemon) -> None:
        ran.append(asked[-1])

    monkeypatch.setattr(sys, "setswitchinterval", asked.append)  # the test process keeps its own
    monkeypatch.setattr(daemon.Daemon, "run", run)
    daemon.serve(lambda: parse_config({}))
    assert ran == [daemon.SWITCH_INTERVAL] and daemon.SWITCH_INTERVAL <= 0.001
