"""`quotagate check` against the running daemon's reservations, for an address that is not the
mailbox's own (an alias domain's, or one with a folder detail)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quotagate.cli import check as check_cli
from tests.mta.conftest import DOMAIN, QUOTA, make_site
from tests.servers import schemas


def _fake_daemon(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A daemon that holds 5000 bytes for full@example.org, and lists what it holds as the real
    control socket does (``r.mailbox == address``, policy/control.py)."""
    asked: list[str] = []

    def ask(_control: Path, request: dict[str, Any], timeout: float = 0) -> dict[str, Any]:
        asked.append(request["address"])
        if request["address"] != f"full@{DOMAIN}":
            return {"reservations": []}
        row = {"address": f"full@{DOMAIN}", "transaction": "t1", "client": "mx", "bytes": 5000, "age": 1.0}
        return {"reservations": [{**row, "state": "held", "delivered": False}]}

    monkeypatch.setattr(check_cli, "ask", ask)
    return asked


@pytest.mark.parametrize("recipient", [f"full+news@{DOMAIN}", "full@alias.example"])
def test_check_weighs_the_daemons_reservations_of_the_mailbox_it_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipient: str
) -> None:
    """PostfixAdmin on SQLite, alias.example an alias domain of example.org. full@ holds 6000 of
    10000 bytes and the daemon holds 5000 more for it: a 1000-byte message is not let in
    (`check full@example.org --size 1000` exits 1, the room is held). The same mailbox asked
    for as full+news@ or full@alias.example (what Postfix sends the daemon) is accepted (exit 0):
    check asks the control socket for the address typed, not the mailbox it resolved it to, so
    it says '0 bytes in 0 messages held by the daemon' and answers otherwise than the daemon."""
    url = f"sqlite:///{tmp_path}/pfa.db"
    schemas.create(url, "postfixadmin")
    schemas.add_alias_domains(url, {"alias.example": DOMAIN})
    site = make_site(tmp_path, f'[store]\nurl = "{url}"\nschema = "postfixadmin"')
    assert site.quotagate("db", "migrate") == 0
    schemas.add_mailbox(url, "postfixadmin", f"full@{DOMAIN}", QUOTA, maildir=f"{DOMAIN}/full/Maildir")
    site.fill("full", 6000)
    assert site.quotagate("scan") == 0
    _fake_daemon(monkeypatch)
    assert site.quotagate("check", f"full@{DOMAIN}", "--size", "1000") == 1
    assert site.quotagate("check", recipient, "--size", "1000") == 1
