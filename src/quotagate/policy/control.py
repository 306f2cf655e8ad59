"""The daemon's control socket: `quotagate reservations` lists and releases held room through it.

A unix socket, mode 0600 (root only, like the daemon's state): one JSON request line in, one JSON
answer line out. Requests: ``{"op": "list", "address": ...}`` and ``{"op": "release",
"address": ...}`` (no address: all). Nothing here trusts the peer beyond the socket's mode:
requests are bounded in size and anything malformed gets ``{"error": ...}``.

With ``[shared] url`` most room is held in Redis for every MX host, not here: a listing shows it
too (each row with ``node``, the host that holds it), a release lets go of it there too and
answers ``shared`` (how many); Redis away, either answers ``shared_error`` (why the room held there
is not listed, or stays) beside what this daemon holds or released itself.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any, Protocol

from quotagate.address import BadAddress, normalize
from quotagate.errors import StartupError
from quotagate.policy.listeners import bind_unix, close_all, unix_server_options
from quotagate.policy.reservations import Reservation, Reservations
from quotagate.policy.state import listing
from quotagate.usage.names import ascii_lower

MAX_REQUEST = 4096
# Reservations a listing shows at most, of this daemon's own (the oldest) and of the shared
# ledger's (the first its SCAN finds).
MAX_LISTED = 10_000


class ControlError(Exception):
    """The daemon could not be asked (not running, no permission) or refused the request."""


class SharedUnavailable(Exception):
    """The shared state could not be asked; the message says why."""


class SharedRoom(Protocol):
    """The room held for every host (:class:`quotagate.policy.shared.RedisLedger`)."""

    async def release(self, mailbox: str | None) -> int:
        """Let go of the room held for ``mailbox`` (every mailbox when None); how many
        reservations went. Raises :class:`SharedUnavailable`."""

    async def held(self, mailbox: str | None) -> list[dict[str, Any]]:
        """The room held for ``mailbox`` (every mailbox when None), as listing rows with the
        host that holds each. Raises :class:`SharedUnavailable`."""


def _names(r: Reservation, address: str) -> bool:
    """Whether ``address`` (lowered) is the reservation's mailbox or its copy's address: the
    address the MTA's log shows for a copy (roomy+news@) lists it too."""
    if r.mailbox == address:
        return True
    return bool(r.copy) and f"{ascii_lower(r.copy)}@{r.mailbox.rpartition('@')[2]}" == address


async def handle(
    reservations: Reservations, request: dict[str, Any], now: float, shared: SharedRoom | None = None
) -> dict[str, Any]:
    op, address = request.get("op"), request.get("address")
    if address is not None and not isinstance(address, str):
        return {"error": "address must be a string"}
    try:
        mailbox = None if address is None else normalize(address)  # as mailboxes are keyed: A-Z lowered
    except BadAddress as exc:
        return {"error": str(exc)}
    if op == "list":
        reservations.expire(now)  # what the daemon no longer counts is not listed
        chosen = list(reservations) if mailbox is None else [r for r in reservations if _names(r, mailbox)]
        # Built on the event loop: the oldest MAX_LISTED (in the order they were made), not a
        # million rows sorted and encoded while every check waits.
        answer: dict[str, Any] = {"reservations": listing(chosen[:MAX_LISTED], now)}
        if len(chosen) > MAX_LISTED:
            answer["more"] = len(chosen) - MAX_LISTED
        if shared is None:
            return answer
        try:
            answer["reservations"] += await shared.held(mailbox)
        except SharedUnavailable as exc:
            answer["shared_error"] = str(exc)
        return answer
    if op == "release":
        # Here first: room held alone while Redis is away must not be written back to it after.
        answer = {"released": reservations.release(mailbox)}
        if shared is not None:
            try:
                answer["shared"] = await shared.release(mailbox)
            except SharedUnavailable as exc:
                answer["shared_error"] = str(exc)
        return answer
    return {"error": f"unknown op {op!r}"}


async def serve(path: Path, reservations: Reservations, shared: SharedRoom | None = None) -> asyncio.AbstractServer:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = None
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=5)  # ValueError: over 64 kB
                request = json.loads(line[:MAX_REQUEST])
                if isinstance(request, dict):
                    answer = await handle(reservations, request, time.time(), shared)
            except (ValueError, RecursionError):  # RecursionError: JSON nested too deep
                pass
            writer.write(json.dumps(answer or {"error": "malformed request"}).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    path.parent.mkdir(parents=True, exist_ok=True)
    # As the policy's unix sockets are made (its directory may be another user's): only a dead
    # daemon's socket is replaced, and the mode is the socket's before it appears there.
    try:
        listener = bind_unix(str(path), 0o600, key="policy.control_socket")
    except StartupError as exc:
        raise ControlError(str(exc)) from None
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.start_unix_server(client, sock=listener.sock, **unix_server_options(loop))
    except BaseException:
        close_all([listener])
        raise


def ask(path: Path, request: dict[str, Any], timeout: float = 5) -> dict[str, Any]:
    """One request to the running daemon (for the CLI)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise ControlError(
            f"cannot ask the daemon at {path}: {exc.strerror or exc} (is quotagate serve running?)"
        ) from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"the daemon at {path} answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise ControlError(f"the daemon at {path} answered something unexpected")
    if "error" in answer:
        raise ControlError(f"the daemon refused: {answer['error']}")
    return answer
