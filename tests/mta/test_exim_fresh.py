"""Freshness against real Exim: a mailbox is accepted within a second of its owner deleting mail,
and refused within a second of filling up, with no scan in between."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN, QUOTA, Site
from tests.servers.daemon import policy_daemon
from tests.servers.exim import Exim
from tests.servers.process import free_port

FRESH = 1.0  # seconds: the promise of the watch


def make(
    work: Path, mode: str, watch_mode: str = "auto", poll_seconds: float = 0.2, policy: str = ""
) -> tuple[Site, int]:
    spool = work / "mail"
    spool.mkdir(exist_ok=True)
    (work / "db").mkdir(exist_ok=True)
    (work / "db").chmod(0o755)
    port = free_port()
    config = work / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{work}/db/q.db"\n[spool]\nroot = "{spool}"\n'
        f'[publish]\nfile = "{work}/overquota"\n'
        f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\nreservation_seconds = 0\n{policy}'
        f'[watch]\nenabled = {"true" if mode == "daemon" else "false"}\nmode = "{watch_mode}"\n'
        f"flush_seconds = 0.1\npoll_seconds = {poll_seconds}\n"
    )
    site = Site(work, spool, config)
    site.full_and_roomy()
    return site, port


def configure(site: Site, exim: Exim, mode: str) -> None:
    config = load_config(site.config)
    if mode == "daemon":
        parts = exim_config.parts(config, "policy")
        exim.configure(users=users(), main=parts.main, acls=parts.acls, verified_acl=parts.acl)
    else:
        parts = exim_config.parts(config, "router", "lsearch")
        exim.configure(users=users(), routers=parts.routers, acls=parts.acls)


def users() -> dict[str, str]:
    return {f"{u}@{DOMAIN}": f"{DOMAIN}/{u}" for u in ("full", "roomy")}


def answer_within(seconds: float, ask: Callable[[], str], wanted: Callable[[str], bool]) -> float:
    """Seconds until ``ask()`` gives a wanted reply; fails past ``seconds``."""
    start = time.monotonic()
    while True:
        reply = ask()
        elapsed = time.monotonic() - start
        if wanted(reply):
            return elapsed
        assert elapsed < seconds, f"still {reply!r} after {elapsed:.2f} s"
        time.sleep(0.05)


def rcpt(exim: Exim, local: str) -> Callable[[], str]:
    return lambda: exim.fake_session(f"{local}@{DOMAIN}")[0]


@pytest.mark.parametrize("mode", ["router", "daemon"])
def test_deleting_mail_lets_mail_in_within_a_second(work: Path, exim: Exim, mode: str) -> None:
    site, port = make(work, mode)
    configure(site, exim, mode)
    command = "serve" if mode == "daemon" else "watch"
    with policy_daemon(site.config, port if mode == "daemon" else None, command) as process:
        process.wait_for_log("watching", seconds=20)
        assert rcpt(exim, "full")()[0] == "5"
        site.empty("full")  # the owner deletes her mail
        answer_within(FRESH, rcpt(exim, "full"), lambda r: r.startswith("250"))


@pytest.mark.parametrize("mode", ["router", "daemon"])
def test_a_delivery_that_fills_a_mailbox_shuts_it_within_a_second(work: Path, exim: Exim, mode: str) -> None:
    # The daemon checks the message again at DATA with its real size: a grace lets this one,
    # a little more than the room left, fill the mailbox.
    site, port = make(work, mode, policy='grace = "5%"\n')
    configure(site, exim, mode)
    command = "serve" if mode == "daemon" else "watch"
    with policy_daemon(site.config, port if mode == "daemon" else None, command) as process:
        process.wait_for_log("watching", seconds=20)
        exim.start()
        body = b"Subject: big\r\n\r\n" + b"x" * QUOTA + b"\r\n"
        assert exim.smtp(f"roomy@{DOMAIN}", body=body) == 250  # no SIZE=: fits the exclusive check
        answer_within(FRESH, rcpt(exim, "roomy"), lambda r: r[0] == "5" and "Mailbox is full" in r)


def test_polling_when_inotify_is_not_used(work: Path, exim: Exim) -> None:
    site, _ = make(work, "router", watch_mode="poll")
    configure(site, exim, "router")
    with policy_daemon(site.config, None, "watch") as process:
        process.wait_for_log("by poll", seconds=20)
        assert rcpt(exim, "full")()[0] == "5"
        site.empty("full")
        answer_within(FRESH + 1, rcpt(exim, "full"), lambda r: r.startswith("250"))


def test_exims_delivery_hint_refreshes_a_spool_that_is_not_watched(work: Path, exim: Exim) -> None:
    # Polled once a minute and no maildirsize: only the event_action hint can explain the refusal.
    site, port = make(work, "daemon", watch_mode="poll", poll_seconds=60)
    parts = exim_config.parts(load_config(site.config), "policy")
    exim.configure(users=users(), verified_acl=parts.acl, transport=parts.transports)
    with policy_daemon(site.config, port, "serve") as process:
        process.wait_for_log("watching", seconds=20)
        exim.start()
        body = b"Subject: big\r\n\r\n" + b"x" * QUOTA + b"\r\n"
        assert exim.smtp(f"roomy@{DOMAIN}", body=body) == 250
        answer_within(FRESH, rcpt(exim, "roomy"), lambda r: r[0] == "5" and "Mailbox is full" in r)
