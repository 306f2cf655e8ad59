"""The daemon's decisions on a real spool and SQLite store, without the network."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from quotagate.config import Config, parse_config
from quotagate.model import Action, AliasDomains, Limits, Mailbox
from quotagate.policy.codec import PolicyRequest
from quotagate.policy.live import load_snapshot
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from quotagate.scan import run_scan
from quotagate.store import open_store

FULL = "action=552 5.2.2 Mailbox is full"


def too_big(size: int) -> str:
    return f"action=552 5.2.2 Message of {size} bytes does not fit in this mailbox"


def message(folder: Path, name: str, size: int) -> None:
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "cur" / f"{name},S={size}:2,S").write_bytes(b"x" * size)


class World:
    def __init__(self, tmp_path: Path, **policy: Any) -> None:
        self.spool = tmp_path / "spool"
        self.now = time.time()
        self.config: Config = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path}/q.db"},
                "spool": {"root": str(self.spool)},
                "folders": [{"match": "Junk", "quota": 1000}, {"match": "Trash", "exclude": True}],
                "policy": policy,
            }
        )
        self.store = open_store(self.config.store.url)
        self.store.migrate()
        self.service = PolicyService(self.config, Metrics(), clock=lambda: self.now)

    def maildir(self, local: str) -> Path:
        return self.spool / "example.org" / local / "Maildir"

    def add(self, local: str, quota: int, used: int, enabled: bool = True, messages: int = 0) -> None:
        self.store.upsert_mailboxes([Mailbox(f"{local}@example.org", Limits(quota, messages), enabled)])
        message(self.maildir(local), f"1.M1.{local}", used)

    def scan(self) -> None:
        run_scan(self.config, self.store, full=True)
        self.service.snapshot = load_snapshot(self.store)
        self.now = time.time() + 1  # the daemon's clock runs on from the scan

    def ask(self, recipient: str, size: int | None = None, state: str = "RCPT") -> str:
        attrs = {"request": "smtpd_access_policy", "protocol_state": state, "recipient": recipient}
        if size is not None:
            attrs["size"] = str(size)
        return "action=" + self.service.answer(PolicyRequest(attrs))


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.add("full", 1000, 1500)
    w.add("roomy", 10_000, 100)
    w.add("off", 1000, 5000, enabled=False)
    w.add("free", 0, 10**6)
    w.scan()
    return w


def test_decisions(world: World) -> None:
    assert world.ask("full@example.org") == FULL
    assert world.ask("FULL@Example.ORG", 10) == FULL
    assert world.ask("roomy@example.org") == "action=DUNNO"
    assert world.ask("roomy@example.org", 9900) == "action=DUNNO"
    assert world.ask("roomy@example.org", 20_000) == FULL  # the 9900 just accepted fill it
    for other in ("off@example.org", "free@example.org", "stranger@example.org", "not an address", ""):
        assert world.ask(other) == "action=DUNNO", other
    assert world.ask("full@example.org", state="DATA") == "action=DUNNO"


def test_room_is_held_for_accepted_mail_until_it_expires(world: World) -> None:
    assert world.ask("roomy@example.org", 6000) == "action=DUNNO"
    # Only the room held stands in the way: refused for now, never for good.
    assert world.ask("roomy@example.org", 6000).startswith("action=452 4.2.2 Too many messages in progress")
    world.now += world.config.policy.reservation_seconds + 1
    assert world.ask("roomy@example.org", 6000) == "action=DUNNO"


def test_defer_instead_of_reject(tmp_path: Path) -> None:
    w = World(tmp_path, on_full="defer")
    w.add("full", 1000, 1500)
    w.scan()
    assert w.ask("full@example.org") == "action=452 4.2.2 Mailbox is full"


def test_plus_folder_is_checked_against_its_folder_rule(world: World) -> None:
    message(world.maildir("roomy") / ".Junk", "2.M2.j", 900)
    world.scan()
    assert world.ask("roomy+Junk@example.org", 50) == "action=DUNNO"
    assert world.ask("roomy+Junk@example.org", 200) == too_big(200)  # 900 + 200 > the Junk rule's 1000
    assert world.ask("roomy+Sent@example.org", 200) == "action=DUNNO"  # no rule: the mailbox total
    # A Junk folder not created yet is empty, and fits 500 bytes; but the mailbox itself is full.
    assert world.service.check("full+Junk@example.org", 2000).decision.reason == "message does not fit in the mailbox"
    refused = world.service.check("full+Junk@example.org", 500).decision
    assert refused.action is Action.REJECT and refused.numbers.limit_bytes == 1000
    assert world.ask("full+Sent@example.org") == FULL


def test_each_character_of_the_folder_delimiter_parts_a_detail(tmp_path: Path) -> None:
    """As Postfix's recipient_delimiter and Dovecot's: "+-" means either, split at the first."""
    w = World(tmp_path, folder_delimiter="+-")
    w.add("full", 1000, 1500)
    w.add("roomy", 10_000, 100)
    w.scan()
    for recipient in ("full+news@example.org", "full-news@example.org", "full-a+b@example.org"):
        assert w.ask(recipient) == FULL, recipient
    assert w.ask("roomy-news@example.org") == "action=DUNNO"
    assert w.ask("-full@example.org") == "action=DUNNO"  # nothing before the delimiter: no mailbox
    w = World(tmp_path / "off", folder_delimiter="")
    w.add("full", 1000, 1500)
    w.scan()
    assert w.ask("full+news@example.org") == "action=DUNNO"


def test_an_alias_domain_reaches_its_target_domains_mailboxes(world: World) -> None:
    """PostfixAdmin's alias domains: the MTA asks about full@alias.example as the client sent it,
    before rewriting it to full@example.org, whose mailbox it is."""
    aliases = AliasDomains({"alias.example": "example.org"}, frozenset({"own@alias.example"}))
    world.service.snapshot = replace(world.service.snapshot, domain_aliases=aliases)
    assert world.ask("full@alias.example") == FULL
    assert world.ask("FULL@Alias.Example") == FULL
    assert world.ask("full+Sent@alias.example") == FULL
    assert world.ask("roomy@alias.example", 100) == "action=DUNNO"
    assert world.ask("full@other.example") == "action=DUNNO"
    world.add("own", 1000, 1500)  # full, but own@alias.example has an alias of its own: not it
    world.scan()
    world.service.snapshot = replace(world.service.snapshot, domain_aliases=aliases)
    assert world.ask("own@example.org") == FULL
    assert world.ask("own@alias.example") == "action=DUNNO"
    assert world.service.check("full@alias.example", None).address == "full@example.org"


def test_a_trusted_maildirsize_is_read_live(world: World) -> None:
    roomy = world.maildir("roomy")
    (roomy / "maildirsize").write_text("10000S\n100 1\n")
    world.scan()  # the scan finds it agreeing with the files: from now on it is read live
    assert world.ask("roomy@example.org", 5000) == "action=DUNNO"
    with (roomy / "maildirsize").open("a") as f:
        f.write("9900 1\n")  # a delivery, as Exim or Dovecot would record it
    assert world.ask("roomy@example.org") == FULL


def test_a_stale_maildirsize_is_never_trusted(world: World) -> None:
    roomy = world.maildir("roomy")
    (roomy / "maildirsize").write_text("10000S\n99999 5\n")  # disagrees with the files
    world.scan()
    assert world.ask("roomy@example.org") == "action=DUNNO"


def test_an_internal_error_is_dunno(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(world.service, "check", broken)
    assert world.ask("full@example.org") == "action=DUNNO"
    assert world.service.metrics.errors._value.get() == 1


def test_check_reports_the_numbers(world: World) -> None:
    outcome = world.service.check("full@example.org", None)
    assert outcome.decision.action is Action.REJECT
    assert outcome.decision.numbers.used_bytes == 1500
    assert outcome.usage is not None and outcome.usage.source == "scan"
