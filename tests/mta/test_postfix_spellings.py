"""Spellings of a recipient through real Postfix with postfix-config's items (RCPT and
END-OF-MESSAGE): a local part Postfix does not take for a mailbox's is not the daemon's either."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.mta import postfix as postfix_config
from tests.servers.daemon import policy_daemon
from tests.servers.exim import owned_by_mail_user
from tests.servers.postfix import Postfix, private_postfix
from tests.servers.process import free_port
from tests.servers.smtp_clients import body
from tests.servers.smtp_raw import Raw, held
from tests.spoolgen import maildir_folder

QUOTA = 450_000
ROOMY, OTHER = "roomy@example.org", "other@example.org"


@contextmanager
def postfix_site(
    tmp_path: Path,
    main_cf: str = "",
    extra: dict[str, str] | None = None,
    watch: bool = False,
    unmanaged: dict[str, str] | None = None,
) -> Iterator[tuple[Postfix, Path]]:
    """Postfix with postfix-config's RCPT and END-OF-MESSAGE items, roomy@ (QUOTA, 10 bytes
    used) and other@ (plenty), plus ``extra`` mailboxes (QUOTA each) and ``unmanaged`` ones
    (Postfix delivers them, quotagate knows nothing of them); quotagate serve running, with
    [watch] only when asked. Yields Postfix and the daemon's control socket."""
    port = free_port()
    config = tmp_path / "quotagate.toml"
    listen = f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\ncontrol_socket = "{tmp_path}/control.sock"\n'
    config.write_text(listen)
    item = postfix_config.restriction(load_config(config))
    boxes = {ROOMY: "roomy", OTHER: "other", **(extra or {})}
    with private_postfix(
        f"reject_unauth_destination, {item}, permit",
        mailboxes={**boxes, **(unmanaged or {})},
        main=f"smtpd_end_of_data_restrictions = {item}\n{main_cf}",
    ) as postfix:
        config.write_text(
            f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{postfix.maildirs}"\n'
            f'[scan]\nlock_file = "{tmp_path}/scan.lock"\n{listen}'
            + ("[watch]\nenabled = true\nflush_seconds = 0.1\n" if watch else "")
        )
        for address in boxes:
            maildir = postfix.maildir(address)
            maildir_folder(maildir)
            (maildir / "cur" / "1.M1.h,S=10:2,S").write_bytes(b"x" * 10)
            quota = 100 * QUOTA if address == OTHER else QUOTA
            add = ["mailbox", "add", address, "--quota", str(quota), "--path", str(maildir)]
            assert main(["--config", str(config), *add]) == 0
        owned_by_mail_user(postfix.maildirs)
        assert main(["--config", str(config), "scan"]) == 0
        with policy_daemon(config, port):
            yield postfix, tmp_path / "control.sock"


KATE = "kate@example.org"
KELVIN_KATE = "\u212aate@example.org"  # KELVIN SIGN + "ate": Python's str.lower() makes it "kate"


def send(client: Raw, message: bytes) -> tuple[int, str]:
    """DATA with ``message`` (no line starts with a dot), and the reply to its end."""
    assert client.cmd("DATA")[0] == 354
    client.send(message + b".\r\n")
    return client.reply()


def test_a_local_part_postfix_does_not_lower_to_a_mailbox_holds_nothing_there(tmp_path: Path) -> None:
    """Scenario: as postfix-config says (the check after reject_unauth_destination, before
    permit; END-OF-MESSAGE item; ``recipient_delimiter = +`` matching folder_delimiter): nothing
    misconfigured. kate@ holds 10 bytes of 450 kB. A client sends ``MAIL SIZE=445000``,
    ``RCPT TO:<\u212aate@example.org>`` (KELVIN SIGN + "ate": the daemon lowers it to kate@,
    holds 445 kB; Postfix, lowering A-Z only, finds no such user: 550), ``RCPT TO:<other@>``,
    DATA with 445 kB, QUIT. Another client asks for kate@ with SIZE=10000.
    Expected: 250 and nothing held for kate@ ("by nothing once its transactions end"). Today
    452: at END-OF-MESSAGE the refused recipient's room went in flight with a message kate@
    never gets, for reservation_seconds."""
    with postfix_site(tmp_path, "recipient_delimiter = +\n", extra={KATE: "kate"}) as (postfix, control):
        with Raw(postfix.port, "127.0.0.52") as attacker:
            attacker.cmd("EHLO client.test")
            assert attacker.cmd("MAIL FROM:<s@example.net> SIZE=445000")[0] == 250
            code, text = attacker.cmd(f"RCPT TO:<{KELVIN_KATE}>".encode())
            assert code == 550, text
            assert attacker.cmd(f"RCPT TO:<{OTHER}>")[0] == 250
            assert send(attacker, body(445_000))[0] == 250
            assert attacker.cmd("QUIT")[0] == 221

        with Raw(postfix.port, "127.0.0.53") as honest:
            honest.cmd("EHLO honest.test")
            assert honest.cmd("MAIL FROM:<h@example.net> SIZE=10000")[0] == 250
            code, text = honest.cmd(f"RCPT TO:<{KATE}>")
            honest.cmd("QUIT")
        attackers = [r for r in held(control, KATE) if r["client"] == "127.0.0.52"]
        assert (code, attackers) == (250, []), text
