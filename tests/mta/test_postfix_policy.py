"""The live check against a real Postfix: check_policy_service as quotagate postfix-config prints it."""

from __future__ import annotations

from pathlib import Path

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.mta import postfix as postfix_config
from tests.servers.daemon import policy_daemon
from tests.servers.exim import owned_by_mail_user
from tests.servers.postfix import private_postfix
from tests.servers.process import free_port

QUOTA = 10_000


def test_postfix_refuses_a_full_mailbox_and_accepts_what_fits(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "quotagate.toml"
    listen = f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\n'
    config.write_text(listen)
    restriction = postfix_config.restriction(load_config(config))
    # 127.0.0.1 is in mynetworks: the check must come before any permit that would match it.
    restrictions = f"reject_unauth_destination, {restriction}, permit"
    boxes = {"full@example.org": "full", "roomy@example.org": "roomy"}
    with private_postfix(restrictions, mailboxes=boxes) as postfix:
        config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{postfix.maildirs}"\n{listen}')
        for address, size in (("full@example.org", QUOTA + 1), ("roomy@example.org", 10)):
            maildir = postfix.maildir(address)
            for sub in ("cur", "new", "tmp"):
                (maildir / sub).mkdir(parents=True, exist_ok=True)
            (maildir / "cur" / f"1.M1.h,S={size}:2,S").write_bytes(b"x" * size)
            assert (
                main(
                    ["--config", str(config), "mailbox", "add", address, "--quota", str(QUOTA), "--path", str(maildir)]
                )
                == 0
            )
        owned_by_mail_user(postfix.maildirs)
        assert main(["--config", str(config), "scan"]) == 0
        with policy_daemon(config, port) as daemon:
            assert postfix.smtp("full@example.org") == 552
            assert postfix.smtp("roomy@example.org", size=QUOTA) == 552  # declared SIZE= does not fit
            assert postfix.smtp("roomy@example.org", size=100) == 250
            assert postfix.smtp("stranger@example.org") == 550  # Postfix's own answer, not ours
            assert "refused full@example.org" in daemon.log()
        assert postfix.delivered("roomy@example.org")
        # With the daemon gone, Postfix falls back to DUNNO: mail is accepted, nothing lost.
        assert postfix.smtp("roomy@example.org") == 250
