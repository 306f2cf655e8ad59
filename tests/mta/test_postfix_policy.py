"""The live check against a real Postfix: check_policy_service as quotagate postfix-config prints it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from quotagate.cli import main
from quotagate.config import load_config
from quotagate.mta import postfix as postfix_config
from quotagate.policy.control import ask
from tests.servers import schemas
from tests.servers.daemon import policy_daemon
from tests.servers.exim import owned_by_mail_user
from tests.servers.postfix import Postfix, private_postfix
from tests.servers.process import free_port
from tests.servers.smtp_clients import at_once, body, mail_sessions
from tests.spoolgen import maildir_folder

QUOTA = 10_000


def full_and_roomy(postfix: Postfix, config: Path, tmp_path: Path, listen: str) -> None:
    """quotagate's config on a store of its own, with full@ (over QUOTA) and roomy@ in Postfix's
    maildirs, scanned."""
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{postfix.maildirs}"\n{listen}')
    for address, size in (("full@example.org", QUOTA + 1), ("roomy@example.org", 10)):
        maildir = postfix.maildir(address)
        maildir_folder(maildir)
        (maildir / "cur" / f"1.M1.h,S={size}:2,S").write_bytes(b"x" * size)
        add = ["--config", str(config), "mailbox", "add", address, "--quota", str(QUOTA), "--path", str(maildir)]
        assert main(add) == 0
    owned_by_mail_user(postfix.maildirs)
    assert main(["--config", str(config), "scan"]) == 0


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
        full_and_roomy(postfix, config, tmp_path, listen)
        with policy_daemon(config, port) as daemon:
            assert postfix.smtp("full@example.org") == 552
            assert postfix.smtp("roomy@example.org", size=QUOTA) == 552  # declared SIZE= does not fit
            assert postfix.smtp("roomy@example.org", size=100) == 250
            assert postfix.smtp("stranger@example.org") == 550  # Postfix's own answer, not ours
            assert "refused full@example.org" in daemon.log()
        assert postfix.delivered("roomy@example.org")
        # With the daemon gone, Postfix falls back to DUNNO: mail is accepted, nothing lost.
        assert postfix.smtp("roomy@example.org") == 250


def test_a_postfix_burst_from_many_clients_lets_in_exactly_the_messages_that_fit(tmp_path: Path) -> None:
    """Ten clients at once, 100 kB each, room for 4.5: the room held at RCPT belongs to each
    transaction (Postfix's instance), goes in flight at END-OF-MESSAGE, and is released once the
    delivery is seen and measured."""
    quota, size, clients = 450_000, 100_000, 10
    port = free_port()
    config = tmp_path / "quotagate.toml"
    listen = f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\ncontrol_socket = "{tmp_path}/control.sock"\n'
    config.write_text(listen)
    item = postfix_config.restriction(load_config(config))
    with private_postfix(
        f"reject_unauth_destination, {item}, permit",
        mailboxes={"roomy@example.org": "roomy"},
        main=f"smtpd_end_of_data_restrictions = {item}\n",
    ) as postfix:
        maildir = postfix.maildir("roomy@example.org")
        maildir_folder(maildir)
        config.write_text(
            f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{postfix.maildirs}"\n'
            f'[scan]\nlock_file = "{tmp_path}/scan.lock"\n{listen}[watch]\nenabled = true\nflush_seconds = 0.1\n'
        )
        add = ["mailbox", "add", "roomy@example.org", "--quota", str(quota), "--path", str(maildir)]
        assert main(["--config", str(config), *add]) == 0
        owned_by_mail_user(postfix.maildirs)
        assert main(["--config", str(config), "scan"]) == 0
        with policy_daemon(config, port):
            sessions = mail_sessions(postfix.port, clients, 20, size)
            codes = at_once(clients, lambda n: sessions[n].rcpt("roomy@example.org")[0])
            for smtp, code in zip(sessions, codes, strict=True):
                if code == 250:
                    assert smtp.data(body(size))[0] == 250
                smtp.quit()
            assert sorted(codes) == [250] * 4 + [452] * 6, postfix.log()[-3000:]
            deadline = time.monotonic() + 20
            while len(list((maildir / "new").iterdir())) < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(list((maildir / "new").iterdir())) == 4
            # Delivered and seen: once a reading includes them, nothing stays held.
            deadline = time.monotonic() + 10
            check = b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=roomy@example.org\n\n"
            while ask(tmp_path / "control.sock", {"op": "list"})["reservations"] and time.monotonic() < deadline:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(check)  # a check without a size holds nothing, and settles the rest
                    sock.recv(100)
                time.sleep(0.3)
            assert ask(tmp_path / "control.sock", {"op": "list"})["reservations"] == []


def test_postfix_with_plus_addressing_refuses_a_full_mailboxs_detail(tmp_path: Path) -> None:
    """recipient_delimiter = +: Postfix delivers full+news@ to full@. The policy check sees the
    recipient as the client sent it, and must not let +anything past a full mailbox."""
    port = free_port()
    config = tmp_path / "quotagate.toml"
    listen = f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\nreservation_seconds = 0\n'
    config.write_text(listen)
    restrictions = f"reject_unauth_destination, {postfix_config.restriction(load_config(config))}, permit"
    boxes = {"full@example.org": "full", "roomy@example.org": "roomy"}
    with private_postfix(restrictions, mailboxes=boxes, main="recipient_delimiter = +\n") as postfix:
        full_and_roomy(postfix, config, tmp_path, listen)
        with policy_daemon(config, port):
            assert postfix.smtp("full+news@example.org") == 552
            assert postfix.smtp("roomy+news@example.org", size=100) == 250
        assert postfix.delivered("roomy@example.org")


def test_postfix_asks_about_an_alias_domain_before_rewriting_it(tmp_path: Path) -> None:
    """PostfixAdmin's alias domain, as its maps make it: alias.example's mail goes to the same
    local part at example.org, rewritten in cleanup, after the policy check saw full@alias.example.
    The daemon takes it for full@example.org (the postfixadmin store's alias_domain)."""
    port = free_port()
    config = tmp_path / "quotagate.toml"
    listen = f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\nreservation_seconds = 0\n'
    config.write_text(listen)
    restrictions = f"reject_unauth_destination, {postfix_config.restriction(load_config(config))}, permit"
    rewrite = tmp_path / "alias-domains.regexp"
    rewrite.write_text("/^(.+)@alias\\.example$/ ${1}@example.org\n")
    rewrite.chmod(0o644)
    main_cf = f"virtual_alias_domains = alias.example\nvirtual_alias_maps = regexp:{rewrite}\n"
    boxes = {"full@example.org": "full", "roomy@example.org": "roomy"}
    with private_postfix(restrictions, mailboxes=boxes, main=main_cf) as postfix:
        url = f"sqlite:///{tmp_path}/pfa.db"
        schemas.create(url, "postfixadmin")
        schemas.add_alias_domains(url, {"alias.example": "example.org"})
        store = f'[store]\nurl = "{url}"\nschema = "postfixadmin"\n[spool]\nroot = "{postfix.maildirs}"\n'
        config.write_text(store + listen)
        assert main(["--config", str(config), "db", "migrate"]) == 0
        for address, size in (("full@example.org", QUOTA + 1), ("roomy@example.org", 10)):
            maildir = postfix.maildir(address)
            maildir_folder(maildir)
            (maildir / "cur" / f"1.M1.h,S={size}:2,S").write_bytes(b"x" * size)
            schemas.add_mailbox(url, "postfixadmin", address, QUOTA, maildir=str(maildir))
        owned_by_mail_user(postfix.maildirs)
        assert main(["--config", str(config), "scan"]) == 0
        with policy_daemon(config, port):
            assert postfix.smtp("full@alias.example") == 552
            assert postfix.smtp("roomy@alias.example", size=100) == 250
        assert postfix.delivered("roomy@example.org")


def _reply(conn: socket.socket) -> int:
    """The code of the SMTP reply coming on ``conn`` (its last line's)."""
    data = b""
    while not any(line[3:4] == b" " for line in data.split(b"\r\n")):
        chunk = conn.recv(4096)
        assert chunk, f"the server closed the connection: {data!r}"
        data += chunk
    return int(next(line for line in data.split(b"\r\n") if line[3:4] == b" ")[:3])


def test_postfix_refuses_a_full_mailbox_for_a_client_whose_helo_and_sender_are_not_utf8(tmp_path: Path) -> None:
    """Scenario: a client whose HELO and sender hold bytes that are not UTF-8 (Latin-1), as a
    spammer's may; Postfix (strict_smtputf8 off, its default) passes them on in the request.
    Expected: the full mailbox is still refused at RCPT. A request the daemon could not decode
    was answered DUNNO: one such byte would have let any client past the check."""
    port = free_port()
    config = tmp_path / "quotagate.toml"
    listen = f'[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\n'
    config.write_text(listen)
    restrictions = f"reject_unauth_destination, {postfix_config.restriction(load_config(config))}, permit"
    with private_postfix(restrictions, mailboxes={"full@example.org": "full", "roomy@example.org": "roomy"}) as postfix:
        full_and_roomy(postfix, config, tmp_path, listen)
        with policy_daemon(config, port) as daemon, socket.create_connection(("127.0.0.1", postfix.port), 30) as conn:
            conn.settimeout(30)
            codes = [_reply(conn)]
            for command in (b"EHLO h\xe9lo.test", b"MAIL FROM:<\xe4rger@example.net>", b"RCPT TO:<full@example.org>"):
                conn.sendall(command + b"\r\n")
                codes.append(_reply(conn))
            conn.sendall(b"QUIT\r\n")
            assert codes == [220, 250, 250, 552], daemon.log()
