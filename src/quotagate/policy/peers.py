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

import ipaddress
import pwd
import socket
import struct
import time
from collections.abc import Iterable

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_TCP_TIME_WAIT = 6
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_REQUEST = struct.Struct("=BBBBI")  # struct inet_diag_req_v2, up to its socket id
_ADDRESSES_KEPT = 60.0  # seconds an answer of is_local is kept
_UID_AT = _HEADER.size + 4 + 48 + 12  # inet_diag_msg: family..retrans, sockid, expires, rqueue, wqueue


class Gone(Exception):
    """The local peer's socket is not there any more (or only in TIME_WAIT, owned by nobody)."""


def _address(family: int, host: str) -> bytes:
    raw = socket.inet_pton(family, host)
    return raw + bytes(16 - len(raw))


def diag_request(family: int, peer: tuple[str, int], ours: tuple[str, int], seq: int) -> bytes:
    """A netlink message asking for the one TCP socket at ``peer`` connected to ``ours``."""
    sockid = struct.pack("!HH", peer[1], ours[1]) + _address(family, peer[0]) + _address(family, ours[0])
    sockid += struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES) + sockid
    return _HEADER.pack(_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, seq, 0) + body


def diag_owner(reply: bytes) -> int | None:
    """The uid in the kernel's answer to :func:`diag_request`; None when there is no such socket
    (the peer is on another host); :class:`Gone` when it is only a TIME_WAIT remnant."""
    if len(reply) < _HEADER.size:
        return None
    length, kind = _HEADER.unpack_from(reply)[:2]
    if kind == _NLMSG_ERROR or min(length, len(reply)) < _UID_AT + 4:
        return None
    if reply[_HEADER.size + 1] == _TCP_TIME_WAIT:
        raise Gone
    owner: int = struct.unpack_from("=I", reply, _UID_AT)[0]
    return owner


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
        self._local: dict[str, tuple[bool, float]] = {}  # address -> whether this host has it, when asked

    def _netlink(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
            sock.settimeout(0.5)  # answered by the kernel at once; never wait long on the loop
            self._sock = sock
        return self._sock

    def is_local(self, host: str) -> bool:
        """Whether ``host`` is an address of this host (a loopback one, or one it can bind); asked
        again after a minute (an address added since)."""
        now = time.monotonic()
        known = self._local.get(host)
        if known is not None and now - known[1] < _ADDRESSES_KEPT:
            return known[0]
        address = ipaddress.ip_address(host.partition("%")[0])  # fe80::1%eth0: the scope aside
        mapped = getattr(address, "ipv4_mapped", None)
        address = mapped or address
        local = address.is_loopback or _bindable(address)
        if len(self._local) >= 4096:
            self._local.clear()
        self._local[host] = (local, now)
        return local

    def owner(self, peer: tuple[str, int], ours: tuple[str, int]) -> int | None:
        """The uid that owns the socket at ``peer`` (on this host), None when no socket of this
        host is there; :class:`Gone` for one that closed; OSError when netlink cannot be asked."""
        family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
        sock = self._netlink()
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        sock.send(diag_request(family, peer, ours, self._seq))
        return diag_owner(sock.recv(4096))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _bindable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True
