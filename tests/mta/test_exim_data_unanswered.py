"""Exim's check at DATA without PRDR asks the daemon once per recipient, each with readsocket's
2 s timeout, inside the one SMTP command that ends the data. A daemon that accepts connections
but does not answer (stopped, overloaded: its listen backlog still takes them) costs 2 s for
every recipient: 300 recipients are 600 s, past the 10 minutes a client waits for the reply to
the end of data (RFC 5321 4.5.3.2.6), so the client gives up and retries, again and again, and
the message is never accepted. Once one recipient could not be asked, the message cannot be
refused at all (it is refused only when every recipient is): the others are not asked.

Counted here: how many DATA requests the ACL sends to a daemon that answers RCPT checks but no
DATA check, for one message to five recipients."""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN
from tests.mta.test_exim_policy import site_for
from tests.servers.exim import Exim

pytestmark = [pytest.mark.mta, pytest.mark.servers]

RECIPIENTS = [f"r{n}@{DOMAIN}" for n in range(5)]


class Mute:
    """A stand-in daemon: answers RCPT checks (DUNNO), never a check at DATA."""

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", port), backlog=64)
        self.data_requests = 0
        self.lock = threading.Lock()
        self.stopping = False
        self.done = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(conn,), daemon=True).start()

    def one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            received = b""
            try:
                while b"\n\n" not in received:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    received += chunk
                if b"request=quotagate_data" in received:
                    with self.lock:
                        self.data_requests += 1
                    self.done.wait(30)  # silent (Exim half-closed: no end of file to wait for)
                    return
                conn.sendall(b"action=DUNNO\n\n")
            except OSError:
                return

    def close(self) -> None:
        self.stopping = True
        self.done.set()
        self.listener.close()


@pytest.fixture
def mute(work: Path, exim: Exim) -> Iterator[Mute]:
    site, port = site_for(work)
    parts = exim_config.parts(load_config(site.config), "policy")
    exim.configure(
        users={r: f"{DOMAIN}/{r.partition('@')[0]}" for r in RECIPIENTS},
        main=parts.main,
        acls=parts.acls,
        verified_acl=parts.acl,
    )
    server = Mute(port)
    exim.start()
    yield server
    server.close()


def test_exim_stops_asking_at_data_once_the_daemon_did_not_answer(mute: Mute, exim: Exim) -> None:
    with smtplib.SMTP("127.0.0.1", exim.port, timeout=120) as client:
        client.ehlo("client.test")
        assert client.mail("sender@example.net")[0] == 250  # no SIZE=
        assert [client.rcpt(r)[0] for r in RECIPIENTS] == [250] * len(RECIPIENTS)
        code, _ = client.data(b"Subject: many recipients\r\n\r\nhello\r\n")
    assert code == 250, exim.log("main")
    # After the first unanswered request the message can no longer be refused: one is enough.
    assert mute.data_requests <= 1, (
        f"{mute.data_requests} DATA checks of 2 s each for {len(RECIPIENTS)} recipients: "
        f"{2 * mute.data_requests} s of the client's wait for one message"
    )
