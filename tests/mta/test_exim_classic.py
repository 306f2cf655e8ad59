"""The classic design against real Exim: the published over-quota set refuses at RCPT time."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN, HOSTILE, QUOTA, Site, make_site, safe
from tests.servers.exim import Exim

LOOKUPS = {
    "lsearch": lambda work: f'[store]\nurl = "sqlite:///{work}/db/q.db"',
    "sqlite": lambda work: f'[store]\nurl = "sqlite:///{work}/db/q.db"',
}


def smtp_quote(local: str) -> str:
    if all(c.isalnum() or c in "!#$%&'*+-/=?^_`{|}~." for c in local) and ".." not in local:
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rcpt(local: str) -> str:
    return f"{smtp_quote(local)}@{DOMAIN}"


def prepare(work: Path, exim: Exim, lookup: str, method: str) -> Site:
    (work / "db").mkdir()
    (work / "db").chmod(0o755)
    site = make_site(work, LOOKUPS[lookup](work))
    locals_ = ["full", "roomy", *HOSTILE]
    for local in locals_:
        assert (
            site.quotagate(
                "mailbox",
                "add",
                f"{local}@{DOMAIN}",
                "--quota",
                str(QUOTA),
                "--path",
                f"{DOMAIN}/{safe(local)}/Maildir",
            )
            == 0
        )
    site.fill("full", QUOTA + 1)
    site.fill("roomy", 10)
    # Half the hostile ones are over quota, so a lookup whose meaning changed would show.
    for i, local in enumerate(HOSTILE):
        site.fill(local, QUOTA * 2 if i % 2 else 5)
    assert site.quotagate("scan") == 0
    parts = exim_config.parts(load_config(site.config), method, lookup)  # type: ignore[arg-type]
    users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{safe(u)}" for u in locals_}
    exim.configure(users=users, main=parts.main, acl=parts.acl, routers=parts.routers)
    return site


def refused_full(reply: str) -> bool:
    return reply[0] == "5" and "Mailbox is full" in reply


@pytest.mark.parametrize("method", ["router", "acl"])
@pytest.mark.parametrize("lookup", sorted(LOOKUPS))
def test_fake_session_refuses_full_mailbox_until_mail_is_deleted(
    work: Path, exim: Exim, lookup: str, method: str
) -> None:
    site = prepare(work, exim, lookup, method)
    full, roomy, stranger = exim.fake_session(f"full@{DOMAIN}", f"roomy@{DOMAIN}", f"stranger@{DOMAIN}")
    assert refused_full(full), full
    assert roomy.startswith("250"), roomy
    assert stranger.startswith("550") and "Mailbox is full" not in stranger, stranger

    site.empty("full")
    assert site.quotagate("scan") == 0
    (full,) = exim.fake_session(f"full@{DOMAIN}")
    assert full.startswith("250"), full


@pytest.mark.parametrize("method", ["router", "acl"])
@pytest.mark.parametrize("lookup", sorted(LOOKUPS))
def test_hostile_local_parts_neither_break_nor_change_the_lookup(
    work: Path, exim: Exim, lookup: str, method: str
) -> None:
    prepare(work, exim, lookup, method)
    replies = exim.fake_session(*(rcpt(local) for local in HOSTILE))
    for i, (local, reply) in enumerate(zip(HOSTILE, replies, strict=True)):
        if i % 2:
            assert refused_full(reply), (local, reply)
        else:
            assert reply.startswith("250"), (local, reply)
    # Not in the directory: an injection would make these match an over-quota row.
    tricks = ["x' OR '1'='1", "x' OR over_quota = '1' --", "*", "%", "full@example.org' --"]
    for local, reply in zip(tricks, exim.fake_session(*(rcpt(t) for t in tricks)), strict=True):
        assert "Mailbox is full" not in reply, (local, reply)


@pytest.mark.parametrize("lookup", sorted(LOOKUPS))
def test_real_smtp_refuses_at_rcpt_and_nothing_reaches_the_queue(work: Path, exim: Exim, lookup: str) -> None:
    site = prepare(work, exim, lookup, "router")
    exim.start()
    assert exim.smtp(f"full@{DOMAIN}") // 100 == 5
    assert exim.smtp(f"roomy@{DOMAIN}") == 250
    assert exim.smtp(f"stranger@{DOMAIN}") == 550
    assert exim.queue_count() == 0, exim.log("main") + exim.log("panic")
    received = [line for line in exim.log("main").splitlines() if " <= " in line]
    assert len(received) == 1, received  # roomy's message only: nothing for full was ever accepted
    delivered = list((site.maildir("roomy") / "new").iterdir())
    assert len(delivered) == 1

    site.empty("full")
    assert site.quotagate("scan") == 0
    assert exim.smtp(f"full@{DOMAIN}") == 250
