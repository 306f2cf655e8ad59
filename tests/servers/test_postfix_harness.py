"""The private Postfix harness works: it delivers, refuses unknown users and asks a policy service."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from types import TracebackType

import pytest

from tests.servers.postfix import Postfix, private_postfix, running_in_group

MAILBOXES = {"alice@example.org": "alice", "bob@example.org": "bob"}


class PolicyServer:
    """A tiny Postfix policy service: ``552`` for the full recipients, ``DUNNO`` for the rest.

    Speaks the policy protocol: ``name=value`` lines up to an empty line, then ``action=...`` and
    an empty line; the connection stays open for further requests.
    """

    def __init__(self, full: set[str]) -> None:
        self.full = full
        self.requests: list[dict[str, str]] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()

    def __enter__(self) -> PolicyServer:
        self.spawn(self.accept)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stopping.set()
        with self.lock:
            for conn in self.open:
                with suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv
        for thread in list(self.threads):
            thread.join(timeout=5)
        self.listener.close()

    def spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with self.lock:
                self.open.append(conn)
                self.connections += 1
            self.spawn(self.serve, conn)

    def serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            attributes: dict[str, str] = {}
            for raw in reader:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line:
                    name, _, value = line.partition("=")
                    attributes[name] = value
                    continue
                with self.lock:
                    self.requests.append(attributes)
                full = attributes.get("recipient", "").lower() in self.full
                action = "552 5.2.2 Mailbox is full" if full else "DUNNO"
                conn.sendall(f"action={action}\n\n".encode())
                attributes = {}


@pytest.fixture(scope="module")
def postfix() -> Iterator[Postfix]:
    with private_postfix(mailboxes=MAILBOXES) as server:
        yield server
    assert_gone(server)


def assert_gone(server: Postfix) -> None:
    """No process is left in the group of the Postfix master."""
    assert server.master_pid
    assert running_in_group(server.master_pid) == []


def wait_for_empty_queue(server: Postfix, seconds: float = 10) -> int:
    deadline = time.monotonic() + seconds
    while server.queue_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.queue_count()


def test_a_known_mailbox_gets_the_message_in_its_maildir(postfix: Postfix) -> None:
    body = b"Subject: harness\r\n\r\ndelivered by the private Postfix\r\n"
    assert postfix.smtp("alice@example.org", body, size=len(body)) == 250
    [message] = postfix.delivered("alice@example.org", seconds=10)
    assert b"delivered by the private Postfix" in message.read_bytes()
    assert message.stat().st_uid == 5000
    assert wait_for_empty_queue(postfix) == 0
    assert postfix.logged("status=sent (delivered to maildir)"), postfix.log()


def test_an_unknown_recipient_gets_550(postfix: Postfix) -> None:
    assert postfix.smtp("nobody@example.org") == 550
    assert postfix.logged("User unknown in virtual mailbox table"), postfix.log()
    assert not (postfix.maildirs / "nobody").exists()


def test_a_policy_service_refuses_the_full_mailbox_with_552() -> None:
    with PolicyServer(full={"alice@example.org"}) as policy:
        restrictions = f"reject_unauth_destination, check_policy_service inet:127.0.0.1:{policy.port}, permit"
        with private_postfix(restrictions, mailboxes=MAILBOXES) as server:
            assert server.smtp("alice@example.org") == 552
            assert server.smtp("bob@example.org") == 250
            assert server.smtp("Alice@Example.org") == 552
            assert len(server.delivered("bob@example.org")) == 1
            assert not (server.maildirs / "alice").exists()
            refused = "552 5.2.2 <alice@example.org>: Recipient address rejected: Mailbox is full"
            assert server.logged(refused), server.log()
        assert_gone(server)
    recipients = [request["recipient"] for request in policy.requests]
    assert recipients == ["alice@example.org", "bob@example.org", "Alice@Example.org"]
    assert {request["request"] for request in policy.requests} == {"smtpd_access_policy"}
    assert {request["protocol_state"] for request in policy.requests} == {"RCPT"}
    assert policy.connections <= len(policy.requests)


def test_exim_is_still_installed() -> None:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "exim4-daemon-heavy"], capture_output=True, text=True, check=False
    )
    assert done.stdout == "install ok installed"
