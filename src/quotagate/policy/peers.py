"""Which local user is on the other end of a TCP connection to the policy port.

The policy protocol has no authentication: whoever connects speaks for an SMTP client, and names
its ``client_address`` and ``instance`` itself. A remote host can reach the port only as the
admin lets it (listen address, firewall), but every local user can connect to any address of the
host, and by naming a new client address in each request would escape ``client_hold`` and hold
all of a mailbox's room. So a connection from this host is served only for the users the MTA runs
as (``[policy] local_users``): the kernel says who owns the peer's socket (``sock_diag`` over
netlink, the interface ``ss`` uses, one exact lookup per connection).

A peer that is not on this host is served as before. A local peer whose socket is already gone
(it sent its request and closed at once, which neither Exim nor Postfix does) cannot be vouched
for and is not served. Netlink refused (a sandbox) fails open: the check is then off, said once.
"""

from __future__ import annotations

import functools
import pwd
import socket
import struct
from collections.abc import Iterable
from typing import Any

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_TCP_TIME_WAIT = 6
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
# struct nlmsghdr, then struct inet_diag_req_v2 with its inet_diag_sockid: ports in network order
# (given as htons of each), addresses padded to 16 bytes, interface, cookie. One pack per question.
_QUESTION = struct.Struct("=IHHIIBBBBIHH16s16sIII")
_SEQ = struct.Struct("=8xI")  # nlmsghdr's sequence number
# nlmsghdr, then struct inet_diag_msg: family, state, timer, retrans; sockid, expires, rqueue,
# wqueue (skipped); uid, inode. One unpack reads an answer.
_ANSWER = struct.Struct("=IHHIIxB2x60xII")


class Gone(Exception):
    """The local peer's socket is no one's any more: closed (TIME_WAIT, or orphaned)."""


@functools.lru_cache(maxsize=1024)
def _address(family: int, host: str) -> bytes:
    """The address as the socket id holds it (its bytes; the pack pads them to 16)."""
    return socket.inet_pton(family, host.partition("%")[0])  # fe80::1%eth0: the scope goes apart


def diag_request(family: int, peer: tuple[Any, ...], ours: tuple[Any, ...], seq: int, scope: int = 0) -> bytes:
    """A netlink message asking for the one TCP socket at ``peer`` connected to ``ours`` (each a
    peername: host and port first; ``scope``: the interface of a link-local IPv6 address)."""
    return _QUESTION.pack(
        _QUESTION.size,
        _SOCK_DIAG_BY_FAMILY,
        _NLM_F_REQUEST,
        seq,
        0,
        family,
        socket.IPPROTO_TCP,
        0,
        0,
        _ALL_STATES,
        socket.htons(peer[1]),
        socket.htons(ours[1]),
        _address(family, peer[0]),
        _address(family, ours[0]),
        scope,
        _NO_COOKIE,
        _NO_COOKIE,
    )


def diag_seq(reply: bytes) -> int | None:
    """The sequence number a reply answers (None: too short to say)."""
    return _SEQ.unpack_from(reply)[0] if len(reply) >= _HEADER.size else None


def diag_owner(reply: bytes) -> int | None:
    """The uid in the kernel's answer to :func:`diag_request`; None when there is no such socket
    on this host (the peer is another host's); :class:`Gone` when the socket is no one's any more
    (a TIME_WAIT remnant, or one its program closed: the kernel reports uid 0 or no inode)."""
    if len(reply) < _ANSWER.size:  # an error (no such socket), or cut short
        return None
    length, kind, _, _, _, state, owner, inode = _ANSWER.unpack_from(reply)
    if kind == _NLMSG_ERROR or length < _ANSWER.size:
        return None
    if state == _TCP_TIME_WAIT or inode == 0:
        raise Gone
    return int(owner)


def uids(names: Iterable[str]) -> frozenset[int]:
    """The uids of the users named that exist on this host."""
    found = set()
    for name in names:
        try:
            found.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            continue
    return frozenset(found)


class LocalPeers:
    """Asks the kernel who owns the peer of a connection; one netlink socket, kept open."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0

    def _netlink(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
            # The kernel answers within send(): the answer is there to read at once, and the loop
            # never waits (no answer is an OSError, which serves the connection).
            sock.setblocking(False)
            self._sock = sock
        return self._sock

    def owner(self, peer: tuple[Any, ...], ours: tuple[Any, ...]) -> int | None:
        """The uid that owns the socket at ``peer`` (a peername: host, port and, for IPv6, flow
        and scope), None when no socket of this host is there (a remote peer); :class:`Gone` for
        one of this host that is closed; OSError when netlink cannot be asked.

        A socket of this host is found whatever address it used (any of the host's, a link-local
        one, a non-local bind), and a remote one never is: the kernel's own table decides.
        """
        family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
        scope = peer[3] if family == socket.AF_INET6 and len(peer) > 3 else 0
        sock = self._sock or self._netlink()
        seq = self._seq = (self._seq + 1) & 0xFFFFFFFF
        sock.send(diag_request(family, peer, ours, seq, scope))
        while True:  # an answer left over from an earlier question is not this one's
            reply = sock.recv(4096)
            if diag_seq(reply) == seq:
                return diag_owner(reply)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
