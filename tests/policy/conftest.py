"""A real store and spool for the policy daemon, an in-process server, and small socket clients.

Every site has two mailboxes of :data:`QUOTA` bytes, measured by a real scan: ``full`` holds
one byte more than its quota, ``roomy`` holds :data:`ROOMY_USED` bytes. pytest-asyncio is not
installed: tests call :func:`run` with a coroutine, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from quotagate.config import Config, parse_config
from quotagate.model import Limits, Mailbox, Reading
from quotagate.policy.daemon import Daemon
from quotagate.policy.live import load_snapshot
from quotagate.policy.metrics import Metrics
from quotagate.policy.server import Answer, PolicyServer
from quotagate.policy.service import PolicyService
from quotagate.scan import run_scan
from quotagate.store import open_store
from tests.servers.daemon import PolicyDaemon
from tests.servers.process import free_port as free_port  # re-exported: the policy tests import it from here
from tests.spoolgen import add_message, maildir_folder

DOMAIN = "example.org"
QUOTA = 10_000
ROOMY_USED = 1_000
FULL = f"full@{DOMAIN}"
ROOMY = f"roomy@{DOMAIN}"
REJECT = b"action=552 5.2.2 Mailbox is full\n\n"


def too_big(size: int) -> bytes:
    """The refusal of a message that does not fit in a mailbox that is not full."""
    return f"action=552 5.2.2 Message of {size} bytes does not fit in this mailbox\n\n".encode()


DEFER = b"action=452 4.2.2 Mailbox is full\n\n"
DUNNO = b"action=DUNNO\n\n"
# Only room held for other messages stands in the way: a temporary refusal (see service._decide).
BUSY = b"action=452 4.2.2 Too many messages in progress for this mailbox, try again later\n\n"

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    """Run ``coro`` on a fresh event loop, failing (not hanging) after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def request(
    recipient: str,
    size: int | None = None,
    state: str = "RCPT",
    *,
    end: bool = True,
    client: str = "192.0.2.1",
    instance: str | None = None,
) -> bytes:
    """One policy request as Postfix sends it (``end=False`` leaves out the empty line, as Exim may)."""
    attributes = {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "protocol_name": "ESMTP",
        "client_address": client,
        "sender": "sender@example.net",
        "recipient": recipient,
        "queue_id": "",
    }
    if size is not None:
        attributes["size"] = str(size)
    if instance is not None:
        attributes["instance"] = instance
    text = "".join(f"{name}={value}\n" for name, value in attributes.items())
    return text.encode() + (b"\n" if end else b"")


@dataclass
class Site:
    """A spool, a SQLite store and the config that names them, in one temp dir."""

    base: Path
    spool: Path
    db_url: str
    accounting: str | None = None  # [spool] accounting, when not the default

    def rescan(self) -> None:
        """A full scan with the site's config (after its spool or accounting changed)."""
        with open_store(self.db_url) as store:
            run_scan(self.config(), store, full=True)

    def reading(self, address: str) -> Reading:
        """The store's reading of ``address``."""
        with open_store(self.db_url) as store:
            return store.readings()[address]

    def data(self, **policy: Any) -> dict[str, Any]:
        return {
            "store": {"url": self.db_url},
            "spool": {"root": str(self.spool)} | ({"accounting": self.accounting} if self.accounting else {}),
            "scan": {"workers": 1},
            "policy": {"listen": ["127.0.0.1:0"], "metrics": "", "control_socket": str(self.control), **policy},
        }

    @property
    def control(self) -> Path:
        """The daemon's control socket: one per site, not the machine's /run/quotagate one."""
        return self.base / "control.sock"

    def config(self, **policy: Any) -> Config:
        return parse_config(self.data(**policy))

    def toml(self, **policy: Any) -> str:
        """The config as a TOML file for ``quotagate serve`` (values: str, bool, number or list of str)."""
        lines = [
            f'[store]\nurl = "{self.db_url}"',
            f'[spool]\nroot = "{self.spool}"' + (f'\naccounting = "{self.accounting}"' if self.accounting else ""),
            "[scan]\nworkers = 1",
            "[policy]",
        ]
        settings = {"metrics": "", "control_socket": str(self.control), **policy}
        for key, value in settings.items():
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def service(self, config: Config, metrics: Metrics) -> PolicyService:
        service = PolicyService(config, metrics)
        store = open_store(self.db_url)
        try:
            service.snapshot = load_snapshot(store)
        finally:
            store.close()
        return service


def restarted(site: Site, rules: list[dict[str, Any]], rows: list[list[Any]] | None = None) -> PolicyService:
    """The daemon started again over ``site``'s store with the folder ``rules``: its state file
    restored (``rows`` written there first, as a release before wrote them), its snapshot loaded."""
    path = site.base / "reservations.json"
    if rows is not None:
        path.write_text(json.dumps({"version": 1, "reservations": rows}))
    data = site.data()
    data["folders"] = rules
    data["policy"]["state_file"] = str(path)
    config = parse_config(data)
    daemon = Daemon(lambda: config)
    daemon._restore_reservations()
    store = open_store(site.db_url)
    try:
        daemon.service.snapshot = load_snapshot(store)
    finally:
        store.close()
    return daemon.service


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_site(base: Path, db_url: str | None = None) -> Site:
    """A scanned site; its store is a SQLite file unless ``db_url`` names another (empty) one."""
    spool = base / "mail"
    (base / "db").mkdir(parents=True)
    site = Site(base, spool, db_url or f"sqlite:///{base}/db/q.db")
    for local, used in (("full", QUOTA + 1), ("roomy", ROOMY_USED)):
        folder = maildir_folder(spool / DOMAIN / local / "Maildir")
        add_message(folder, used)
    store = open_store(site.db_url)
    try:
        store.migrate()
        store.upsert_mailboxes([Mailbox(FULL, Limits(QUOTA)), Mailbox(ROOMY, Limits(QUOTA))])
        result = run_scan(site.config(), store)
        assert result.summary.measured == 2 and result.summary.unknown == 0, result.summary
        readings = store.readings()
        assert readings[FULL].bytes == QUOTA + 1, readings
        assert readings[ROOMY].bytes == ROOMY_USED, readings
    finally:
        store.close()
    return site


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory under /tmp, for unix socket paths (at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="qg-", dir="/tmp") as path:
        yield Path(path)


@dataclass
class Running:
    server: PolicyServer
    metrics: Metrics
    addresses: list[str]

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.addresses[0].rpartition(":")
        return host.strip("[]"), int(port)

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def serving(
    config: Config,
    answer: Answer,
    metrics: Metrics,
) -> AsyncIterator[Running]:
    """A started :class:`PolicyServer`, closed (drained) on the way out."""
    server = PolicyServer(answer, config.policy, metrics)
    addresses = await server.start()
    try:
        yield Running(server, metrics, addresses)
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def serving_site(site: Site, **policy: Any) -> AsyncIterator[Running]:
    """The real service over ``site``'s store, behind a server on a loopback port."""
    config = site.config(**policy)
    metrics = Metrics()
    service = site.service(config, metrics)
    service.files.begin()
    await service.files.ready()
    try:
        async with serving(config, service.respond, metrics) as running:
            yield running
    finally:
        service.files.close()


class Client:
    """One asyncio client connection; always closed, so no transport is left for the GC to warn about."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, where: tuple[str, int] | str) -> Client:
        if isinstance(where, str):
            reader, writer = await asyncio.open_unix_connection(where)
        else:
            reader, writer = await asyncio.open_connection(*where)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 10) -> bytes:
        """The next answer: everything up to and including the empty line that ends it."""
        return await asyncio.wait_for(self.reader.readuntil(b"\n\n"), timeout)

    async def ask(self, data: bytes, timeout: float = 10) -> bytes:
        await self.send(data)
        return await self.answer(timeout)

    async def half_close(self) -> None:
        self.writer.write_eof()
        await self.writer.drain()

    async def read_to_eof(self, timeout: float = 10) -> bytes:
        """Everything until the server closes; a reset counts as end of file."""
        try:
            return await asyncio.wait_for(self.reader.read(), timeout)
        except ConnectionError:
            return b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def connected(where: tuple[str, int] | str) -> AsyncIterator[Client]:
    client = await Client.connect(where)
    try:
        yield client
    finally:
        await client.close()


async def wait_until(condition: Callable[[], bool], timeout: float = 5, step: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; returns its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(step)
    return True


# --- quotagate serve as a real process ----------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def read_answer(sock: socket.socket) -> bytes:
    """Up to the empty line that ends an answer, or to end of file."""
    received = b""
    while not received.endswith(b"\n\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def ask(port: int, data: bytes, timeout: float = 10) -> bytes:
    """One request on a new connection, Postfix style."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answer(sock)


class Serve:
    """A site, its config file and ``quotagate serve`` over it."""

    def __init__(self, site: Site, **policy: Any) -> None:
        self.site = site
        self.port = free_port()
        self.config = site.base / "quotagate.toml"
        self.write_config(**policy)
        self.daemon = PolicyDaemon(self.config, self.port, site.base / "serve.log")

    def write_config(self, **policy: Any) -> None:
        self.config.write_text(self.site.toml(listen=[f"127.0.0.1:{self.port}"], **policy))

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def alive(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def ask(self, data: bytes) -> bytes:
        return ask(self.port, data)

    def log(self) -> str:
        return self.daemon.log()

    def signal_and_wait_for_log(self, sig: int, text: str) -> None:
        """Send ``sig`` and wait until ``text`` appears once more in the log."""
        before = self.log().count(text)
        os.kill(self.pid, sig)
        wait_for(lambda: self.log().count(text) > before, what=f"{text!r} in the log:\n{self.log()[-2000:]}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(site: Site | None = None, **policy: Any) -> Serve:
        s = Serve(site or make_site(tmp_path), **policy)
        s.daemon.start()
        started.append(s)
        return s

    yield start
    for s in started:  # SIGTERM, as systemd stops it (and coverage keeps what it measured)
        try:
            s.daemon.stop()
        except subprocess.TimeoutExpired:
            assert s.daemon.proc is not None
            s.daemon.proc.kill()
            s.daemon.proc.wait(timeout=10)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
