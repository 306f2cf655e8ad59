"""`systemctl stop quotagate` as systemd does it: quotagate.service sets no KillMode, so SIGTERM
goes to every process of the unit's cgroup at once, the daemon's helper processes too."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.policy.conftest import FULL, REJECT, Serve, make_site, request
from tests.servers.daemon import QUOTAGATE
from tests.servers.process import wait_for_port

STOPS = 30
pytestmark = [pytest.mark.slow]


def test_a_stop_of_the_whole_unit_logs_no_error(tmp_path: Path) -> None:
    """Scenario: quotagate serve runs under systemd (quotagate.service, default
    KillMode=control-group); the admin runs `systemctl stop quotagate` (or an upgrade's
    try-restart does). systemd sends SIGTERM to the daemon and to its maildirsize reader process
    together (here: to the process group, the daemon started in a session of its own).
    Expected: a clean stop, exit 0, and no ERROR in the log, as for a SIGTERM to the daemon alone
    (tests/policy/test_daemon.py::test_sigterm_with_idle_connections_logs_no_error).
    (A stop often logged "ERROR: the maildirsize reader exited: reads in flight get DUNNO;
    starting another", started a new reader while stopping, and the reader wrote "stopping:
    [Errno 32] Broken pipe": an alert on ERROR lines in the journal fired at restarts.)"""
    site = make_site(tmp_path)
    s = Serve(site)
    for attempt in range(STOPS):  # the order the two see the signal in varies: stop a few times
        log = tmp_path / f"serve-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [QUOTAGATE, "--config", str(s.config), "serve"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(s.port, proc, log, seconds=20)
            assert s.ask(request(FULL)) == REJECT
            os.killpg(proc.pid, signal.SIGTERM)  # what KillMode=control-group does
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log.read_text()
        assert code == 0, text
        assert "ERROR" not in text and "Broken pipe" not in text, f"stop {attempt + 1}:\n{text}"
