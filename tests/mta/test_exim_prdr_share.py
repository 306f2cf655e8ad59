"""Through real Exim with the generated configuration, a PRDR client at its share of a mailbox
(client_hold) at DATA: the recipient is deferred and gets no copy, the message is accepted for
its other recipient, and the room the transaction held at RCPT for the deferred one is let go:
in flight, it piled up round after round in a mailbox that never got the mail, far past the
client's share, and stayed after every one of its transactions ended."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from quotagate.policy.control import ask as ask_control
from tests.mta.conftest import DOMAIN, Site
from tests.mta.test_exim_policy import site_for
from tests.servers.daemon import PolicyDaemon, policy_daemon
from tests.servers.exim import Exim

pytestmark = [pytest.mark.mta, pytest.mark.servers]

QUOTA = 10_000  # client_hold: 10%, 1,000 bytes
VICTIM, OTHER = f"roomy@{DOMAIN}", f"other@{DOMAIN}"
BODY = b"Subject: prdr\r\n\r\n" + (b"y" * 98 + b"\r\n") * 12  # about 1,200 bytes at DATA


class Smtp:
    """A raw SMTP client (smtplib cannot read PRDR's replies after the data)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.reply()
        self.say("EHLO client.test")

    def reply(self) -> str:
        lines = []
        while True:
            line = self.file.readline().decode()
            assert line, "connection closed"
            lines.append(line.rstrip())
            if line[3:4] != "-":
                return "\n".join(lines)

    def say(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.say("QUIT")
        self.file.close()
        self.sock.close()


@pytest.fixture
def receiving(work: Path, exim: Exim) -> Iterator[tuple[Site, PolicyDaemon]]:
    site, port = site_for(work)
    with site.config.open("a") as config:
        config.write(f'control_socket = "{work}/control.sock"\n')
    for local in ("roomy", "other"):
        assert site.quotagate("mailbox", "add", f"{local}@{DOMAIN}", "--quota", str(QUOTA)) == 0
        site.fill(local, 10)
    assert site.quotagate("scan") == 0
    parts = exim_config.parts(load_config(site.config), "policy")
    users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{u}" for u in ("roomy", "other")}
    exim.configure(users=users, main=parts.main, acls=parts.acls, verified_acl=parts.acl)
    with policy_daemon(site.config, port) as daemon:
        exim.start()
        yield site, daemon


def test_exim_prdr_recipient_deferred_for_the_clients_share_holds_no_room_after_the_client_left(
    receiving: tuple[Site, PolicyDaemon], exim: Exim
) -> None:
    site, daemon = receiving
    rounds = 5
    for _ in range(rounds):
        holder = Smtp(exim.port)  # a second connection of the same client holds 300 bytes
        assert holder.say("MAIL FROM:<s@example.net> SIZE=300").startswith("250")
        assert holder.say(f"RCPT TO:<{VICTIM}>").startswith("250")
        client = Smtp(exim.port)
        assert client.say("MAIL FROM:<s@example.net> SIZE=500 PRDR").startswith("250")
        assert client.say(f"RCPT TO:<{VICTIM}>").startswith("250")  # 800 held: within 1,000
        assert client.say(f"RCPT TO:<{OTHER}>").startswith("250")
        assert client.say("DATA").startswith("354")
        client.sock.sendall(BODY + b".\r\n")
        replies = [client.reply() for _ in range(4)]  # 353, one per recipient, the message's
        assert replies[0].startswith("353"), replies
        assert replies[1].startswith("452"), (replies, exim.log("main"), daemon.log())  # the victim
        assert replies[2].startswith("250") and replies[3].startswith("250"), replies
        client.close()
        holder.close()
    assert not (site.maildir("roomy") / "new").exists() or not any((site.maildir("roomy") / "new").iterdir())
    held = ask_control(site.work / "control.sock", {"op": "list", "address": VICTIM})["reservations"]
    total = sum(r["bytes"] for r in held)
    assert held == [], f"{len(held)} reservations, {total} bytes, for a mailbox that got nothing: {held}"
