"""What `quotagate postfix-config` asks the admin to paste into main.cf, beside the admin's own
policy services (postgrey, policyd-spf, a rate limiter...)."""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

import pytest

from quotagate.cli import main
from tests.servers.postfix import private_postfix
from tests.servers.process import free_port

pytestmark = [pytest.mark.servers, pytest.mark.mta]


def rcpt(port: int, to: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("client.test")
        assert client.mail("sender@example.net")[0] == 250
        return client.rcpt(to)[0]


def test_the_pasted_settings_leave_the_admins_other_policy_services_failing_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: the admin already has a policy service of their own in
    smtpd_recipient_restrictions, written the usual way (`check_policy_service
    inet:127.0.0.1:PORT`, e.g. postgrey); when it is down, Postfix's default
    smtpd_policy_service_default_action (451 4.3.5) makes senders retry later. They add the
    settings `quotagate postfix-config` prints to main.cf.
    Expected: only quotagate's own check fails open (its item already says
    `default_action=DUNNO`); the admin's service still fails with 451 when it is down.
    (postfix-config also printed the global `smtpd_policy_service_default_action = DUNNO`: with
    quotagate's lines pasted, the admin's dead greylisting or SPF service was silently skipped
    and the mail accepted, 250.)"""
    dead = free_port()  # the admin's own policy service, not running
    config = tmp_path / "quotagate.toml"
    config.write_text(f'[policy]\nlisten = ["127.0.0.1:{free_port()}"]\nmetrics = ""\n')
    assert main(["--config", str(config), "postfix-config"]) == 0
    printed = capsys.readouterr().out
    item = re.search(r"^check_policy_service \{.*\}$", printed, re.MULTILINE)
    assert item is not None, printed
    settings = "".join(
        line + "\n" for line in printed.splitlines() if line.startswith("smtpd_") and "_restrictions" not in line
    )
    restrictions = f"reject_unauth_destination, check_policy_service inet:127.0.0.1:{dead}, {item[0]}, permit"

    boxes = {"user@example.org": "user"}
    # The harness's main.cf sets the default action to DUNNO for its own tests: put Postfix's back.
    postfix_default = "smtpd_policy_service_default_action = 451 4.3.5 Server configuration problem\n"
    with private_postfix(restrictions, mailboxes=boxes, main=postfix_default) as before:
        assert rcpt(before.port, "user@example.org") == 451, before.log()[-2000:]
    with private_postfix(restrictions, mailboxes=boxes, main=postfix_default + settings) as after:
        assert rcpt(after.port, "user@example.org") == 451, f"{settings}\n{after.log()[-2000:]}"
