"""The policy port serves this host's MTA (and root), not any local user: another user could name
any client_address in each request and so hold all of a mailbox's room (client_hold is per
client). The kernel tells who owns the peer's socket (sock_diag); a user not in [policy]
local_users is closed on at once."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from pathlib import Path

import pytest

from quotagate.policy.metrics import Metrics
from quotagate.policy.peers import Gone, LocalPeers, diag_owner, diag_request
from tests.policy.conftest import DUNNO, ROOMY, Site, read_answer, request, run, serving_site

NOBODY = 65534


def ask_as(uid: int, host: str, port: int, data: bytes) -> bytes:
    """One request from a process of ``uid`` (a forked child, as a local user's program would be)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no imports, only system calls
        code = 1
        try:
            os.close(read)
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect((host, port))
                try:
                    sock.sendall(data)
                    answer = read_answer(sock)
                except ConnectionError:  # reset: the server aborted the connection
                    answer = b""
                os.write(write, answer or b"(closed)")
            code = 0
        except BaseException:  # noqa: BLE001 - the child only reports through its pipe and exit code
            pass
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        got = pipe.read()
    os.waitpid(pid, 0)
    return got


@pytest.mark.skipif(os.geteuid() != 0, reason="a test as another user needs root")
@pytest.mark.parametrize("local_users", [None, []], ids=["default", "every-local-user"])
def test_a_local_user_not_in_local_users_is_not_served(
    site: Site, tmp_path: Path, local_users: list[str] | None, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {} if local_users is None else {"local_users": local_users}

    async def go() -> tuple[bytes, bytes, float]:
        async with serving_site(site, **settings) as running:
            host, port = running.host_port
            as_root = await asyncio.to_thread(ask_as, 0, host, port, request(ROOMY, 1))
            nobody = request(ROOMY, 1, client="198.51.100.7")
            as_nobody = await asyncio.to_thread(ask_as, NOBODY, host, port, nobody)
            return as_root, as_nobody, running.sample("quotagate_policy_connections_closed_total", reason="local_user")

    as_root, as_nobody, closed = run(go())
    assert as_root == DUNNO
    if local_users is None:
        assert as_nobody == b"(closed)"
        assert closed == 1
        assert "uid 65534 (nobody), not one of [policy] local_users: closed" in caplog.text
    else:
        assert as_nobody == DUNNO
        assert closed == 0


@pytest.mark.parametrize("loopback", ["127.0.0.1", "::1"])
def test_the_kernel_names_the_owner_of_a_connection_on_this_host(loopback: str) -> None:
    peers = LocalPeers()
    family = socket.AF_INET6 if ":" in loopback else socket.AF_INET
    try:
        with socket.create_server((loopback, 0), family=family) as server:
            client = socket.create_connection(server.getsockname()[:2])
            conn, peer = server.accept()
            with conn:
                assert peers.owner(peer, conn.getsockname()) == os.geteuid()
                assert peers.owner((loopback, 1), conn.getsockname()) is None  # no such socket: remote
                client.close()  # closed by its program (FIN_WAIT2, orphaned): no one's, whoever it was
                with pytest.raises(Gone):
                    peers.owner(peer, conn.getsockname())
    finally:
        peers.close()


def _reply(kind: int, state: int = 1, uid: int = 0, inode: int = 99) -> bytes:
    header = struct.pack("=IHHII", 16 + 72, kind, 0, 1, 0)
    body = struct.pack("=BBBB", 2, state, 0, 0) + bytes(48) + struct.pack("=IIIII", 0, 0, 0, uid, inode)
    return header + body


def test_what_the_kernel_answers_is_read_safely() -> None:
    assert diag_owner(_reply(20, uid=5000)) == 5000
    assert diag_owner(_reply(2)) is None  # NLMSG_ERROR: no such socket here
    assert diag_owner(_reply(20)[:40]) is None  # cut short
    with pytest.raises(Gone):
        diag_owner(_reply(20, state=6))  # TIME_WAIT: closed, owned by nobody
    with pytest.raises(Gone):
        diag_owner(_reply(20, uid=0, inode=0))  # orphaned: its program closed it; uid 0 means nothing
    sent = diag_request(socket.AF_INET, ("127.0.0.1", 40000), ("127.0.0.1", 10032), 7)
    assert len(sent) == struct.unpack_from("=I", sent)[0] == 16 + 56
    assert struct.unpack_from("!HH", sent, 24) == (40000, 10032)
    Metrics()  # the counter the daemon increments exists with its label
