"""quotagate-watch.service and quotagate.service are Type=notify: systemd waits TimeoutStartSec
(unset in both units, so DefaultTimeoutStartSec, 90 s on Debian 12) for READY=1, then kills the
service and, with Restart=on-failure, starts it again. Both send READY=1 only after priming the
watch with a whole incremental scan, in which one mailbox that does not answer (a user's hung
FUSE or NFS mount: the README's own scenario) is waited for up to [scan] mailbox_timeout, 300 s
by default, and a big spool after boot takes long too: meanwhile they ask for more time
(EXTEND_TIMEOUT_USEC). Before, they did not, and never became ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from quotagate.config import Config
from quotagate.sdnotify import more_time
from tests.packaging.units import SOURCE, settings

pytestmark = pytest.mark.slow

DEFAULT_START_TIMEOUT = 90.0  # systemd's DefaultTimeoutStartSec (Debian 12's systemd 252)

# `quotagate watch`, except that one mailbox's measurement never returns, as on a dead mount
# (the same stand-in the project's own tests use: tests/integration/test_scan_timeout.py).
HUNG_WATCH = textwrap.dedent(
    """
    import sys, time
    import quotagate.scan as scan
    real = scan.measure
    def measure(root, *args, **kw):
        if "/hung/" in root:
            time.sleep(3600)
        return real(root, *args, **kw)
    scan.measure = measure
    from quotagate.cli import entry_point
    sys.argv = ["quotagate", "--config", sys.argv[1], sys.argv[2]]
    sys.exit(entry_point())
    """
)


def _unit_start_timeout(name: str) -> float:
    unit = settings(SOURCE / name)
    for key in ("TimeoutStartSec", "TimeoutSec"):
        if key in unit:
            value = unit[key][-1]
            if value in ("infinity", "0"):
                return float("inf")
            assert value.endswith(("s", "min")), value
            return float(value[:-3]) * 60 if value.endswith("min") else float(value[:-1])
    return DEFAULT_START_TIMEOUT


def _ready_after(tmp_path: Path, command: str, mailbox_timeout: float) -> tuple[float, list[str]]:
    """Seconds from start to READY=1 of `quotagate COMMAND` (watch, or serve with [watch]
    enabled) over a spool with one hung mailbox, and every notify message it sent."""
    spool = tmp_path / "spool"
    for local in ("hung", "ok"):
        for sub in ("cur", "new", "tmp"):
            (spool / "example.org" / local / "Maildir" / sub).mkdir(parents=True)
    config = tmp_path / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{spool}"\n'
        f"[scan]\nworkers = 1\nmailbox_timeout = {mailbox_timeout}\n"
        f'[policy]\nlisten = ["unix:{tmp_path}/policy.sock"]\nmetrics = ""\n'
        f'control_socket = "{tmp_path}/control.sock"\n[watch]\nenabled = true\n'
    )
    quotagate = [sys.executable, "-m", "quotagate", "--config", str(config)]
    for address in ("hung@example.org", "ok@example.org"):
        subprocess.run([*quotagate, "mailbox", "add", address, "--quota", "1M"], check=True, capture_output=True)
    notify = tmp_path / "notify.sock"
    messages: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(mailbox_timeout + 30)
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", HUNG_WATCH, str(config), command],
            env={**os.environ, "NOTIFY_SOCKET": str(notify)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not any("READY=1" in m for m in messages):
                messages.append(sock.recv(4096).decode())
            return time.monotonic() - started, messages
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("unit", "command"), [("quotagate-watch.service", "watch"), ("quotagate.service", "serve")])
def test_one_hung_mailbox_keeps_the_daemon_from_ever_starting_under_its_unit(
    tmp_path: Path, unit: str, command: str
) -> None:
    """Scenario: a Debian admin enables quotagate-watch.service (or quotagate.service with
    [watch] enabled = true, as the README says for the daemon) with the default config; one
    user's Maildir sits on a FUSE/NFS mount that hangs.
    Expected: the service becomes ready within its unit's start timeout (READY=1 before the
    hung mailbox is given up, EXTEND_TIMEOUT_USEC, or a TimeoutStartSec= above what priming may
    take), since a service that never gets ready is killed and restarted for ever: no watch,
    and with serve no policy daemon, so every full mailbox takes mail (fail-open).
    Before the fix: READY=1 came only once the hung mailbox's [scan] mailbox_timeout had run out
    (measured here with 3 s); the default is 300 s, the unit's start timeout 90 s, and nothing
    extended it."""
    probe = 3.0
    delay, messages = _ready_after(tmp_path, command, probe)
    waits_for_the_hung_mailbox = delay >= probe
    extends = any("EXTEND_TIMEOUT_USEC" in m for m in messages)
    default_timeout = Config().scan.mailbox_timeout
    start_timeout = _unit_start_timeout(unit)
    assert extends and messages.index(more_time()) < len(messages) - 1  # asked before READY=1
    assert not (waits_for_the_hung_mailbox and not extends and start_timeout <= default_timeout), (
        f"READY=1 after {delay:.1f} s with mailbox_timeout = {probe}: with the default "
        f"mailbox_timeout ({default_timeout:g} s) {unit} is killed at its start timeout "
        f"({start_timeout:g} s) before it is ever ready; notify messages: {messages}"
    )
