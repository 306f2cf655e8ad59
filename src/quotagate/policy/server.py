"""The asyncio policy server: many requests per connection (Postfix), or one then a half-close (Exim).

It knows nothing of stores or mailboxes: each request goes to ``answer`` and each answer back.
Limits keep a hostile or broken client from costing more than one connection's worth: a
maximum number of connections (more are closed at once, which both MTAs treat as "no
opinion"), an idle timeout between requests, a deadline for each request whatever its byte
rate (a byte a second would otherwise keep the idle timer from ever firing), a client that does
not read its answers is cut off, and the codec bounds line and request size. Running out of
file descriptors on accept and hitting the cap are logged once a minute and counted.

A plain :class:`asyncio.Protocol` rather than streams: an RCPT check is a few microseconds of
work, and a stream reader, writer and task per connection (plus a task per timed read) would
cost more than the check itself. Most answers are known at once and written at once; an answer
that waits for a file read (a future) holds back the ones after it on that connection, so that
a client pipelining requests (Postfix) gets its answers in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pwd
import resource
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from quotagate.config import PolicyConfig
from quotagate.policy.codec import PolicyDecoder, PolicyItem, PolicyRequest, encode_action
from quotagate.policy.listeners import Listener, bind_listeners, unix_server_options
from quotagate.policy.metrics import Metrics
from quotagate.policy.peers import Gone, LocalPeers, uids
from quotagate.policy.service import Session
from quotagate.policy.throttle import Throttled

log = logging.getLogger(__name__)

# A request and its connection's session in, the action out: at once or as a future.
Answer = Callable[[PolicyRequest, Session], "str | asyncio.Future[str]"]

# What accept() fails with when the process or the system is out of descriptors or memory.
_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class _Connection(asyncio.Protocol):
    """One client: bytes in through the decoder, one answer per request out, in order."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.decoder = PolicyDecoder()
        self.transport: asyncio.Transport | None = None
        self.last_activity = self.loop.time()
        self.pending_since: float | None = None  # when the request half-read now began
        # Answers not written yet because an earlier one waits for a file read, in request order.
        self.queue: deque[str | asyncio.Future[str]] = deque()
        self.eof = False  # the client half-closed: close once the queue is written
        self.session = Session()  # the transaction this connection last asked about

    # -- asyncio callbacks ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but offer the same methods.
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        if len(server.connections) >= server.policy.max_connections:
            server.refused()
            self.transport.abort()
            return
        if not server.admits(self.transport):
            self.transport.abort()
            return
        server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        now = self.last_activity = self.loop.time()
        items = self.decoder.feed(data)
        self._reply(items)
        if self.server.closing and self.idle and self.transport is not None:
            self.transport.close()  # shutting down: this client got its answers
        # A request that spans reads must be done within request_timeout of its first byte
        # (the server's sweep sees to it): one half-read after others ended in this read began
        # in it.
        if not self.decoder.pending:
            self.pending_since = None
        elif items or self.pending_since is None:
            self.pending_since = now

    def eof_received(self) -> bool:
        self._reply(self.decoder.end())  # Exim: one request, a half-close, then read to the end
        self.pending_since = None
        if self.queue:  # an answer still waits for a file read: close once it is written
            self.eof = True
            return True
        return False  # close, once the answers are written

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        server.connections.discard(self)
        if not server.closing:  # closed by our shutdown, not by Postfix: the transaction goes on
            self.session.close()
        elif not server.connections and server.drained is not None:
            server.drained.set()

    def pause_writing(self) -> None:
        # The client does not read its answers: stop reading its requests until it does.
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.last_activity = self.loop.time()
        self.transport.resume_reading()

    # -- ours ------------------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Between requests, nothing half-read or unanswered: safe to close at shutdown."""
        return not self.decoder.pending and not self.queue

    def _reply(self, items: list[PolicyItem]) -> None:
        if not items or self.transport is None or self.transport.is_closing():
            return
        out = []
        for item in items:
            answer = self.server.answer_item(item, self.session)
            if isinstance(answer, str) and not self.queue:
                out.append(encode_action(answer))  # the common case: known at once, nothing before it
                continue
            self.queue.append(answer)
            if not isinstance(answer, str):
                answer.add_done_callback(self._answered)
        if out:
            self.transport.write(b"".join(out))

    def _answered(self, _: object) -> None:
        """A file read ended: write every answer now known at the head of the queue."""
        out = []
        while self.queue:
            head = self.queue[0]
            if isinstance(head, str):
                out.append(encode_action(head))
            elif head.done():
                out.append(encode_action("DUNNO" if head.cancelled() or head.exception() else head.result()))
            else:
                break
            self.queue.popleft()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if out:
            self.last_activity = self.loop.time()
            transport.write(b"".join(out))
        if not self.queue and (self.eof or (self.server.closing and not self.decoder.pending)):
            transport.close()

    def expire(self, now: float, policy: PolicyConfig) -> None:
        """Cut the client off when its request is still incomplete request_timeout after its
        first byte, or when it was silent for idle_timeout (reading or, for a client that does
        not read its answers, writing)."""
        transport = self.transport
        if transport is None:
            return
        late = self.pending_since is not None and now - self.pending_since >= policy.request_timeout
        if late and not transport.is_closing():
            self.server.too_slow()
            transport.abort()
        elif now - self.last_activity >= policy.idle_timeout:
            # Closing too: a client that half-closed and never reads its answers would keep them
            # waiting to be written, and its connection, for ever.
            transport.abort()


class _User:
    """A uid as a log line shows it, looked up only when the line is written (once a minute at
    most: a user database can be slow, and a refused user can connect in a loop)."""

    def __init__(self, uid: int) -> None:
        self.uid = uid

    def __str__(self) -> str:
        if self.uid < 0:
            return "a socket already closed"
        try:
            return f"uid {self.uid} ({pwd.getpwuid(self.uid).pw_name})"
        except KeyError:
            return f"uid {self.uid}"


class PolicyServer:
    def __init__(self, answer: Answer, policy: PolicyConfig, metrics: Metrics) -> None:
        self.answer = answer
        self.policy = policy
        self.metrics = metrics
        self.connections: set[_Connection] = set()
        metrics.connections.set_function(lambda: len(self.connections))  # counted when scraped
        self.closing = False
        self._servers: list[asyncio.Server] = []
        self._over_cap = Throttled(log)
        self._slow = Throttled(log)
        self._accept_failed: dict[str, Throttled] = {}
        self._descriptors_log = Throttled(log)
        self._malformed_log = Throttled(log)  # a client can send thousands: counted, logged once a minute
        self._peers = LocalPeers()
        self._peer_log = Throttled(log)
        self._sweeper: asyncio.TimerHandle | None = None
        self.drained: asyncio.Event | None = None  # set once the last connection is gone, when closing
        # The policy their uids were looked up for, and the uids.
        self._local_users: tuple[PolicyConfig | None, frozenset[int]] = (None, frozenset())

    async def load_local_users(self) -> None:
        """Look up the uids of [policy] local_users, off the loop (a user database may be slow):
        at start and at each reload (a user created since is found then)."""
        policy = self.policy
        self._local_users = (policy, await asyncio.to_thread(uids, policy.local_users))

    def _local_uids(self) -> frozenset[int]:
        """The uids, asked on every new connection: looked up again only for a policy they were
        not loaded for yet (at once, rather than refuse the MTA)."""
        if self._local_users[0] is not self.policy:
            self._local_users = (self.policy, uids(self.policy.local_users))
        return self._local_users[1]

    def admits(self, transport: asyncio.BaseTransport) -> bool:
        """Whether to serve a new connection: from another host, or from this one by a user of
        [policy] local_users (see :mod:`quotagate.policy.peers`). A unix socket's mode decides
        who reaches it."""
        if not self.policy.local_users:
            return True
        peer, ours = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        if not isinstance(peer, tuple) or not isinstance(ours, tuple):
            return True
        try:
            owner = self._peers.owner(peer, ours)
        except Gone:
            owner = -1
        except OSError as exc:
            self._peer_log.warning("cannot tell which local user connected (%s): serving every one", exc)
            return True
        if owner is None or owner in self._local_uids():
            return True  # another host's, or an MTA's
        self.metrics.connections_closed.labels("local_user").inc()
        self._peer_log.warning(
            "a connection from this host by %s, not one of [policy] local_users: closed (if it is"
            " the MTA, add its user there)",
            _User(owner),
        )
        return False

    def refused(self) -> None:
        """A connection over max_connections, closed at once: both MTAs then carry on without us."""
        self.metrics.connections_closed.labels("max_connections").inc()
        cap = self.policy.max_connections
        self._over_cap.warning("more than max_connections (%d) connections: closing new ones", cap)

    def too_slow(self) -> None:
        self.metrics.connections_closed.labels("request_timeout").inc()
        timeout = self.policy.request_timeout
        self._slow.warning("a request took longer than request_timeout (%gs): closing its connection", timeout)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Out of descriptors (or memory) on accept: asyncio tries again a second later and would
        log each failure with a traceback; one line a minute per errno, and a count, say enough."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS:
            name = errno.errorcode.get(exc.errno, str(exc.errno))
            self.metrics.accept_errors.labels(name).inc()
            throttled = self._accept_failed.setdefault(name, Throttled(log))
            throttled.warning("cannot accept a connection: %s (%s)", name, exc.strerror)
            return
        loop.default_exception_handler(context)

    def check_descriptors(self) -> None:
        """uvloop, unlike asyncio, accepts and closes connections by itself when the process runs
        out of descriptors and tells nobody: watch how many are open against the limit instead,
        and say so (once a minute) when new connections may soon be refused."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            used = len(os.listdir("/proc/self/fd"))
        except OSError:
            return
        self.metrics.open_descriptors.set(used)
        if soft != resource.RLIM_INFINITY and soft - used <= max(16, soft // 10):
            self._descriptors_log.warning(
                "%d of %d file descriptors in use: new connections may be refused (raise LimitNOFILE, "
                "or lower [policy] max_connections)",
                used,
                soft,
            )

    async def start(self, listeners: list[Listener] | None = None) -> list[str]:
        """Serve on ``listeners`` (bound by a supervisor and shared by its workers), or on every
        configured address; returns where, as bound (a port 0 resolved)."""
        loop = asyncio.get_running_loop()
        if listeners is None:
            listeners = bind_listeners(self.policy)
        loop.set_exception_handler(self._loop_exception)
        await self.load_local_users()
        keep = unix_server_options(loop)
        for listener in listeners:
            if listener.unix:
                server = await loop.create_unix_server(lambda: _Connection(self), sock=listener.sock, **keep)
            else:
                server = await loop.create_server(lambda: _Connection(self), sock=listener.sock)
            self._servers.append(server)
        self._sweep()
        return [listener.name for listener in listeners]

    def _sweep(self) -> None:
        """Every connection's deadlines, looked at a few times within the shorter timeout (and at
        least once a second): one timer for all, not two made and cancelled for each of Exim's
        one-request connections. A connection is cut off at most that period late."""
        policy = self.policy
        now = asyncio.get_running_loop().time()
        for connection in list(self.connections):
            connection.expire(now, policy)
        period = min(1.0, policy.idle_timeout / 4, policy.request_timeout / 4)
        self._sweeper = asyncio.get_running_loop().call_later(period, self._sweep)

    async def close(self) -> None:
        """Stop accepting, close idle connections, let busy ones finish for drain_seconds, cut the rest."""
        self.closing = True
        for server in self._servers:
            server.close()
        drained = self.drained = asyncio.Event()
        for conn in list(self.connections):
            if conn.idle and conn.transport is not None:
                conn.transport.close()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), self.policy.drain_seconds)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), 1)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._peers.close()

    def answer_item(self, item: PolicyItem, session: Session) -> str | asyncio.Future[str]:
        if isinstance(item, PolicyRequest):
            return self.answer(item, session)
        self._malformed_log.warning("malformed policy request: %s: DUNNO", item.reason)
        self.metrics.requests.labels("malformed").inc()
        return "DUNNO"
