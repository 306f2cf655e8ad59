"""The systemd units in packaging/systemd: each verifies, and each service runs /usr/bin/quotagate
able to write the publish file's directory despite ProtectSystem=full."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest

from tests.packaging.units import SOURCE, UNITS, settings, verify
from tests.policy.conftest import DOMAIN, DUNNO, ask, free_port, make_site, request
from tests.servers.daemon import PolicyDaemon
from tests.servers.install import require_command

SERVICES = [u for u in UNITS if u.endswith(".service")]


def test_the_units_are_these() -> None:
    assert sorted(p.name for p in SOURCE.iterdir()) == sorted(UNITS)


def test_each_verifies(tmp_path: Path, manpath: Path) -> None:
    """Here /usr/bin/quotagate is this checkout's: the .deb test verifies the installed units as they are."""
    here = shutil.which("quotagate", path=str(Path(sys.executable).parent))
    assert here is not None
    for name in UNITS:
        (tmp_path / name).write_text((SOURCE / name).read_text().replace("/usr/bin/quotagate", here))
    verify([tmp_path / name for name in UNITS], manpath)


@pytest.mark.parametrize("name", SERVICES)
def test_services_run_the_packaged_command_and_document_it(name: str) -> None:
    unit = settings(SOURCE / name)
    assert unit["ExecStart"][0].startswith("/usr/bin/quotagate ")
    assert "man:quotagate(1)" in unit["Documentation"][0].split()
    assert "man:quotagate.toml(5)" in unit["Documentation"][0].split()


@pytest.mark.parametrize("name", SERVICES)
def test_the_publish_file_directory_stays_writable(name: str) -> None:
    """ProtectSystem=full makes /etc read-only: the default [publish] file lives in /etc/exim4."""
    unit = settings(SOURCE / name)
    assert unit["ProtectSystem"] == ["full"]
    assert "-/etc/exim4" in unit["ReadWritePaths"][0].split()


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_starts_after_the_network_and_a_local_store_server(name: str) -> None:
    """Scenario: boot with the store on this host's PostgreSQL, MariaDB or slapd. Expected: every
    service that opens the store starts after them and after the network is up. (Before, the
    scan loop, scan and warn did not wait for the store: their first round at boot failed; serve
    waited only for network.target, not for a listen address to be up.)"""
    unit = settings(SOURCE / name)
    after = unit["After"][0].split()
    assert {"network-online.target", "postgresql.service", "mariadb.service", "slapd.service"} <= set(after)
    assert unit["Wants"] == ["network-online.target"]


def test_serve_and_watch_tell_systemd_when_ready_and_serve_feeds_the_watchdog() -> None:
    serve, watch = settings(SOURCE / "quotagate.service"), settings(SOURCE / "quotagate-watch.service")
    assert serve["Type"] == watch["Type"] == ["notify"]
    assert serve["WatchdogSec"] == ["30s"]
    assert settings(SOURCE / "quotagate-scan.timer")["Unit"] == ["quotagate-scan.service"]


def test_the_warn_timer_runs_warn() -> None:
    assert settings(SOURCE / "quotagate-warn.timer")["Unit"] == ["quotagate-warn.service"]
    assert settings(SOURCE / "quotagate-warn.service")["ExecStart"] == ["/usr/bin/quotagate warn"]


@pytest.mark.slow
def test_the_serve_unit_allows_every_address_family_serve_opens(tmp_path: Path) -> None:
    """RestrictAddressFamilies= makes socket() fail for any family it does not list. The
    local_users check asks the kernel over AF_NETLINK, and fails open when it cannot: under a
    unit without it, the check would be off with nothing but a log line to say so."""
    strace = require_command("strace", "strace")
    site = make_site(tmp_path)
    port = free_port()
    config = site.base / "quotagate.toml"
    config.write_text(site.toml(listen=[f"127.0.0.1:{port}", f"unix:{tmp_path}/policy.sock"]))
    trace = tmp_path / "trace"
    launcher = [strace, "-f", "-qq", "-e", "trace=socket,socketpair", "-o", str(trace)]
    daemon = PolicyDaemon(config, port, tmp_path / "serve.log", launcher=launcher)
    daemon.start()
    assert daemon.proc is not None
    try:
        assert ask(port, request(f"roomy@{DOMAIN}")) == DUNNO  # a connection from this host: checked
    finally:  # the daemon itself, not strace: it then exits with it
        (serve,) = Path(f"/proc/{daemon.proc.pid}/task/{daemon.proc.pid}/children").read_text().split()
        os.kill(int(serve), signal.SIGTERM)
        daemon.proc.wait(timeout=20)
    opened = set(re.findall(r"socket(?:pair)?\((AF_\w+)", trace.read_text()))
    allowed = set(settings(SOURCE / "quotagate.service")["RestrictAddressFamilies"][0].split())
    assert "AF_NETLINK" in opened
    assert opened <= allowed, f"quotagate.service does not let serve open {sorted(opened - allowed)}"
