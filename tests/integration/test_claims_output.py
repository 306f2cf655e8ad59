"""What scan and report say of a maildirsize whose claims are counted, when they exceed the files
in bytes but not in messages (or the other way round)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mta.conftest import DOMAIN, QUOTA, Site, make_site
from tests.servers.exim import owned_by_mail_user


@pytest.fixture
def site() -> Iterator[Site]:
    work = Path(tempfile.mkdtemp(prefix="quotagate-claims-"))
    s = make_site(work, f'[store]\nurl = "sqlite:///{work}/q.db"')
    s.config.write_text(s.config.read_text().replace("[spool]\n", '[spool]\naccounting = "dovecot"\n', 1))
    assert s.quotagate("db", "migrate") == 0
    yield s
    shutil.rmtree(work, ignore_errors=True)


def test_bytes_counted_as_claimed_are_said_to_be(
    site: Site, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Dovecot profile, a 10000-byte limit, two 100-byte messages, and a maildirsize with the
    mailbox's limit line claiming 9000 bytes in 1 message (mail removed by a client without the
    quota plugin, then one delivered). enforced() counts max() of each: 9000 bytes, 2 messages:
    the reading is 9000 bytes, as Dovecot goes by: the scan's warning and the report say so (they
    compared the claims with the reading as a pair, which failed on the messages)."""
    assert site.quotagate("mailbox", "add", f"full@{DOMAIN}", "--quota", str(QUOTA)) == 0
    site.fill("full", 100, name="1700000000.M1P1.test")
    site.fill("full", 100, name="1700000001.M1P1.test")
    (site.maildir("full") / "maildirsize").write_text(f"{QUOTA}S\n9000 1\n")
    owned_by_mail_user(site.spool)
    with caplog.at_level(logging.WARNING):
        assert site.quotagate("scan") == 0
    capsys.readouterr()
    assert site.quotagate("report", "--format", "json") == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["bytes"] == 9000  # counted as claimed
    assert "counted as claimed" in row["maildirsize"], row["maildirsize"]
    assert "counted as claimed" in caplog.text
