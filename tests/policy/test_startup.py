"""``quotagate serve`` that cannot start: one line on stderr saying what to do, exit 2, and a live
daemon's unix socket never taken over. Each case runs the real command, as an admin would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.policy.conftest import FULL, REJECT, Site, free_port, request
from tests.servers.daemon import QUOTAGATE, PolicyDaemon


def serve_fails(site: Site, **policy: Any) -> str:
    """Run ``quotagate serve`` over ``site`` with ``policy``; it must exit 2 with one line on stderr, returned."""
    config = site.base / "quotagate.toml"
    config.write_text(site.toml(**policy))
    done = subprocess.run(
        [QUOTAGATE, "--config", str(config), "serve"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr
    return done.stderr.rstrip("\n")


@pytest.fixture
def listening() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_a_busy_port(site: Site, listening: int) -> None:
    assert serve_fails(site, listen=[f"127.0.0.1:{listening}"]) == (
        f"quotagate: policy.listen: cannot listen on 127.0.0.1:{listening}: address already in use "
        f"(by another quotagate serve? 'ss -ltnp' shows which program): stop it or choose another port"
    )


def test_a_busy_metrics_port(site: Site, listening: int) -> None:
    assert serve_fails(site, listen=[f"127.0.0.1:{free_port()}"], metrics=f"127.0.0.1:{listening}") == (
        f"quotagate: policy.metrics: cannot listen on 127.0.0.1:{listening}: address already in use "
        f"(by another quotagate serve? 'ss -ltnp' shows which program): stop it or choose another port"
    )


@pytest.mark.parametrize("spec", ["localhost", "127.0.0.1:99999", "127.0.0.1:port"])
def test_a_bad_listen_value(site: Site, spec: str) -> None:
    """Refused with the config file, before the daemon loads anything."""
    assert serve_fails(site, listen=[spec]) == (
        f"quotagate: {site.base / 'quotagate.toml'}: policy.listen.0: {spec!r} is neither HOST:PORT "
        "(a port up to 65535) nor unix:/path"
    )


def test_an_address_this_host_does_not_have(site: Site) -> None:
    assert serve_fails(site, listen=["192.0.2.1:10032"]) == (
        "quotagate: policy.listen: cannot listen on 192.0.2.1:10032: this host has no such address "
        "(see 'ip address'): listen on one it has, or 127.0.0.1"
    )


def test_an_unknown_socket_group(site: Site, short_tmp: Path) -> None:
    path = short_tmp / "p.sock"
    assert serve_fails(site, listen=[f"unix:{path}"], socket_group="no-such-group") == (
        "quotagate: policy.socket_group: no group 'no-such-group' on this host: "
        "name an existing one ('getent group' lists them), e.g. Debian-exim"
    )
    assert not path.exists()


def test_a_socket_directory_that_does_not_exist(site: Site, short_tmp: Path) -> None:
    path = short_tmp / "missing" / "p.sock"
    assert serve_fails(site, listen=[f"unix:{path}"]) == (
        f"quotagate: policy.listen: cannot create the socket {path}: No such file or directory: "
        "create its directory, writable by the user quotagate runs as (systemd: RuntimeDirectory=quotagate)"
    )


@pytest.mark.slow
def test_a_live_daemons_socket_is_never_taken_over_and_a_dead_ones_is(site: Site, short_tmp: Path) -> None:
    path = short_tmp / "p.sock"
    config = site.base / "first.toml"
    config.write_text(site.toml(listen=[f"unix:{path}"]))
    first = PolicyDaemon(config, None, site.base / "first.log", ready_log="listening on")
    first.start()
    try:
        assert serve_fails(site, listen=[f"unix:{path}"]) == (
            f"quotagate: policy.listen: unix:{path} is in use by a running daemon (another quotagate serve?): "
            "stop it, or listen elsewhere"
        )
        assert _ask_unix(path) == REJECT  # the first one still answers there
        assert f"INFO: serving 2 mailboxes of {site.db_url}: listening on unix:{path}\n" in first.log()
    finally:
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)  # dies without removing its socket
        first.proc.wait(timeout=20)
    assert path.is_socket()

    second = PolicyDaemon(config, None, site.base / "second.log", ready_log="listening on")
    second.start()
    try:
        assert _ask_unix(path) == REJECT
    finally:
        assert second.stop() == 0


def _ask_unix(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(request(FULL))
        answer = b""
        while not answer.endswith(b"\n\n") and (chunk := sock.recv(4096)):
            answer += chunk
        return answer


def test_a_store_url_that_can_never_work_stops_serve_at_start(site: Site) -> None:
    """A missing driver is a config mistake, not an outage: serve says so and exits, rather than
    answering DUNNO forever. (An unreachable server is an outage: see test_daemon.)"""
    site.db_url = "mysql://quotagate:secret@127.0.0.1:1/q"
    assert serve_fails(site, listen=[f"127.0.0.1:{free_port()}"]) == (
        "quotagate: store url 'mysql://quotagate:***@127.0.0.1:1/q' needs the driver MySQLdb, which is not "
        "installed: use 'mysql+pymysql://quotagate:***@127.0.0.1:1/q' (pip install 'quotagate[mysql]')"
    )
