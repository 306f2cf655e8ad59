"""The asyncio policy server: many requests per connection (Postfix), or one then a half-close (Exim).

It knows nothing of stores or mailboxes: each request goes to ``answer`` and each answer back.
Limits keep a hostile or broken client from costing more than one connection's worth: a
maximum number of connections (more are closed at once, which both MTAs treat as "no
opinion"), an idle timeout, and the codec's bounds on line and request size.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from quotagate.config import PolicyConfig
from quotagate.policy.codec import PolicyDecoder, PolicyItem, PolicyRequest, encode_action
from quotagate.policy.metrics import Metrics

log = logging.getLogger(__name__)

_READ_SIZE = 65536


@dataclass
class _Connection:
    task: asyncio.Task[None]
    writer: asyncio.StreamWriter
    idle: bool = True  # waiting for a request, none half-read: may be closed at shutdown


def parse_listen(spec: str) -> tuple[str, int] | str:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:/path``."""
    if spec.startswith("unix:"):
        return spec[len("unix:") :]
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"policy.listen: {spec!r} is neither HOST:PORT nor unix:/path")
    return host.strip("[]") or "127.0.0.1", int(port)


def _remove_stale_socket(path: str) -> None:
    """Remove a socket an earlier run left at ``path``; anything else there is an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"policy.listen: {path} exists and is not a socket")
    os.unlink(path)


class PolicyServer:
    def __init__(self, answer: Callable[[PolicyRequest], str], policy: PolicyConfig, metrics: Metrics) -> None:
        self.answer = answer
        self.policy = policy
        self.metrics = metrics
        self._servers: list[asyncio.Server] = []
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._closing = False

    async def start(self) -> list[str]:
        """Listen on every configured address; returns them as bound (a port 0 resolved)."""
        bound = []
        for spec in self.policy.listen:
            where = parse_listen(spec)
            if isinstance(where, str):
                _remove_stale_socket(where)
                server = await asyncio.start_unix_server(self._accept, path=where, limit=_READ_SIZE)
                os.chmod(where, int(self.policy.socket_mode, 8))
                if self.policy.socket_group:
                    os.chown(where, -1, grp.getgrnam(self.policy.socket_group).gr_gid)
                bound.append(f"unix:{where}")
            else:
                server = await asyncio.start_server(self._accept, where[0], where[1], limit=_READ_SIZE)
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    bound.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            self._servers.append(server)
        log.info("listening on %s", ", ".join(bound))
        return bound

    async def close(self) -> None:
        """Stop accepting, close idle connections, let busy ones finish for drain_seconds, cancel the rest."""
        self._closing = True
        for server in self._servers:
            server.close()
        for conn in list(self._connections.values()):
            if conn.idle:
                conn.writer.close()  # its read sees end of file and the handler returns
        pending = [c.task for c in self._connections.values()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.policy.drain_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.policy.max_connections:
            log.warning("more than %d connections: closing a new one", self.policy.max_connections)
            writer.close()
            return
        conn = _Connection(task, writer)
        self._connections[task] = conn
        self.metrics.connections.set(len(self._connections))
        try:
            await self._serve(reader, writer, conn)
        except (ConnectionError, OSError) as exc:
            log.debug("connection dropped: %s", exc)
        finally:
            del self._connections[task]
            self.metrics.connections.set(len(self._connections))
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection) -> None:
        decoder = PolicyDecoder()
        while not (self._closing and not decoder.pending):
            conn.idle = not decoder.pending
            try:
                data = await asyncio.wait_for(reader.read(_READ_SIZE), self.policy.idle_timeout)
            except TimeoutError:
                return
            conn.idle = False
            items = decoder.feed(data) if data else decoder.end()
            if items:
                writer.write(b"".join(encode_action(self._answer(item)) for item in items))
                try:  # a client that never reads its answers must not hold a connection forever
                    await asyncio.wait_for(writer.drain(), self.policy.idle_timeout)
                except TimeoutError:
                    return
            if not data:
                return

    def _answer(self, item: PolicyItem) -> str:
        if isinstance(item, PolicyRequest):
            return self.answer(item)
        log.warning("malformed policy request: %s: DUNNO", item.reason)
        self.metrics.requests.labels("malformed").inc()
        return "DUNNO"
