"""``quotagate --config CFG serve`` as a real process: signals, systemd notify, metrics, logs, a store that is down."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.policy.conftest import (
    DEFER,
    DUNNO,
    FULL,
    QUOTA,
    REJECT,
    ROOMY,
    Serve,
    free_port,
    make_site,
    read_answer,
    request,
    scrape,
    wait_for,
)

# --- signals ------------------------------------------------------------------------------------


def test_sigterm_exits_zero_promptly_and_stops_listening(serve: Callable[..., Serve]) -> None:
    s = serve()
    assert s.ask(request(FULL)) == REJECT
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as idle:  # a Postfix connection, idle
        idle.sendall(request(FULL))
        assert read_answer(idle) == REJECT
        assert s.daemon.proc is not None
        started = time.monotonic()
        s.daemon.proc.send_signal(signal.SIGTERM)
        code = s.daemon.proc.wait(timeout=10)
        elapsed = time.monotonic() - started
        assert idle.recv(4096) == b""  # closed by the server, not left hanging
    assert code == 0, s.log()
    assert elapsed < 3, f"took {elapsed:.1f}s (drain_seconds is 5 and nothing was busy)"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", s.port), timeout=5).close()


def test_sigterm_with_idle_connections_logs_no_error(serve: Callable[..., Serve]) -> None:
    s = serve()
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as idle:
        idle.sendall(request(FULL))
        assert read_answer(idle) == REJECT
        assert s.daemon.stop() == 0
    log = s.log()
    assert "stopping: draining connections" in log
    assert "ERROR" not in log and "Traceback" not in log, log


@pytest.mark.slow
def test_sighup_reloads_the_reply_and_a_broken_config_keeps_the_old_one(serve: Callable[..., Serve]) -> None:
    s = serve()
    assert s.ask(request(FULL)) == REJECT

    s.write_config(on_full="defer")
    s.signal_and_wait_for_log(signal.SIGHUP, "config reloaded")
    assert s.ask(request(FULL)) == DEFER

    s.write_config(reject_reply="550 5.2.2 Over quota, try elsewhere")
    s.signal_and_wait_for_log(signal.SIGHUP, "config reloaded")
    assert s.ask(request(FULL)) == b"action=550 5.2.2 Over quota, try elsewhere\n\n"

    s.config.write_text("[policy\nthis is not TOML\n")  # saved half-edited
    s.signal_and_wait_for_log(signal.SIGHUP, "config not reloaded")
    assert s.alive()
    assert s.ask(request(FULL)) == b"action=550 5.2.2 Over quota, try elsewhere\n\n"
    assert s.ask(request(ROOMY, 100)) == DUNNO

    s.write_config(reject_reply="not a reply")  # valid TOML, invalid value
    s.signal_and_wait_for_log(signal.SIGHUP, "config not reloaded")
    assert s.alive()
    assert s.ask(request(FULL)) == b"action=550 5.2.2 Over quota, try elsewhere\n\n"
    log = s.log()
    assert "not valid TOML" in log
    assert "policy.reject_reply: 'not a reply' must start with a 5xx code" in log
    assert s.daemon.stop() == 0


# --- systemd notify -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_systemd_is_told_ready_reloading_and_stopping(
    serve: Callable[..., Serve], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        if kind == "path":
            address = str(tmp_path / "notify")
            listener.bind(address)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
        else:
            name = f"quotagate-test-{os.getpid()}-{time.monotonic_ns()}"
            listener.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        listener.settimeout(10)

        s = serve()
        assert listener.recv(4096) == b"READY=1"
        assert s.ask(request(FULL)) == REJECT  # ready means answering

        os.kill(s.pid, signal.SIGHUP)
        assert listener.recv(4096) == b"RELOADING=1"
        assert listener.recv(4096) == b"READY=1"

        assert s.daemon.proc is not None
        s.daemon.proc.send_signal(signal.SIGTERM)
        assert listener.recv(4096) == b"STOPPING=1"
        assert s.daemon.proc.wait(timeout=10) == 0


# --- metrics ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_metrics_count_refusals_and_time_every_request(serve: Callable[..., Serve]) -> None:
    metrics_port = free_port()
    s = serve(metrics=f"127.0.0.1:{metrics_port}")
    answers = [s.ask(request(FULL)), s.ask(request(FULL, 10)), s.ask(request(ROOMY, 100)), s.ask(request(ROOMY))]
    assert answers == [REJECT, REJECT, DUNNO, DUNNO]

    def scraped() -> bool:
        try:
            scrape(metrics_port)
        except OSError:
            return False
        return True

    wait_for(scraped, what="the metrics endpoint")
    samples = scrape(metrics_port)
    assert samples['quotagate_policy_requests_total{decision="reject"}'] == 2
    assert samples['quotagate_policy_requests_total{decision="accept"}'] == 2
    assert samples["quotagate_policy_request_seconds_count"] == 4
    assert samples['quotagate_policy_request_seconds_bucket{le="+Inf"}'] == 4
    assert samples["quotagate_policy_request_seconds_sum"] > 0
    buckets = [v for k, v in samples.items() if k.startswith("quotagate_policy_request_seconds_bucket")]
    assert len(buckets) > 5 and buckets == sorted(buckets)
    assert samples["quotagate_policy_errors_total"] == 0
    assert samples["quotagate_policy_usage_age_seconds_count"] == 4


# --- the store down, and the refusal log line ---------------------------------------------------


@pytest.mark.slow
def test_a_store_unavailable_at_start_still_answers_dunno_and_logs_it(
    serve: Callable[..., Serve], tmp_path: Path
) -> None:
    site = make_site(tmp_path)
    site.db_url = "postgresql+psycopg://x@127.0.0.1:1/none"
    s = serve(site, refresh_seconds=0.5)
    assert s.ask(request(FULL)) == DUNNO  # fail-open: nothing known, nothing refused
    assert s.ask(request(ROOMY, QUOTA * 10)) == DUNNO
    wait_for(lambda: "cannot refresh from the store" in s.log(), what="the store error in the log")
    assert s.alive()
    assert s.daemon.stop() == 0


def test_a_refusal_logs_one_line_with_the_recipient_numbers_and_usage_age(serve: Callable[..., Serve]) -> None:
    s = serve()
    assert s.ask(request(ROOMY, 100)) == DUNNO
    assert s.ask(request(FULL, 500)) == REJECT
    assert s.daemon.stop() == 0
    lines = [line for line in s.log().splitlines() if "refused" in line]
    assert len(lines) == 1, s.log()
    assert re.search(
        rf"refused {re.escape(FULL)}: .*used {QUOTA + 1} of {QUOTA} bytes, 0 reserved, size 500, "
        r"usage from scan, \d+\.\ds old",
        lines[0],
    ), lines[0]


@pytest.mark.slow
def test_the_event_loop_pings_the_systemd_watchdog_at_half_its_period(
    serve: Callable[..., Serve], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        address = str(tmp_path / "notify")
        listener.bind(address)
        listener.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        monkeypatch.setenv("WATCHDOG_USEC", "400000")  # WatchdogSec=0.4s: a ping every 0.2 s
        s = serve()
        received = [listener.recv(4096) for _ in range(6)]
        assert b"READY=1" in received
        assert received.count(b"WATCHDOG=1") >= 4, received
        assert s.ask(request(FULL)) == REJECT


@pytest.mark.slow
def test_no_watchdog_pings_for_another_process(
    serve: Callable[..., Serve], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd sets WATCHDOG_PID to the process it watches: a child that inherited it stays quiet."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        address = str(tmp_path / "notify")
        listener.bind(address)
        listener.settimeout(1)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        monkeypatch.setenv("WATCHDOG_USEC", "100000")
        monkeypatch.setenv("WATCHDOG_PID", "1")
        serve()
        assert listener.recv(4096) == b"READY=1"
        with pytest.raises(TimeoutError):
            listener.recv(4096)
