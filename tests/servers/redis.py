"""A private redis-server: its own directory, loopback (or the one address given), a high port,
no persistence; stoppable and startable again on the same port (an outage), never the system's
Redis."""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers.install import require_command, unavailable
from tests.servers.process import free_port, private_dir, spawn_as, stop, wait_for_port


class RedisProcess:
    def __init__(self, binary: str, work: Path, port: int, host: str = "127.0.0.1") -> None:
        self.binary = binary
        self.host = host
        # Off loopback, protected mode turns away clients without a password: give it one.
        self.password = "" if host == "127.0.0.1" else secrets.token_hex(16)
        self.work = work
        self.port = port
        self.log = work / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--bind", self.host, "--port", str(self.port), "--dir", str(self.work)]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = spawn_as("redis", args, self.log)
        try:
            wait_for_port(self.port, self.proc, self.log, host=self.host)
        except RuntimeError:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL: gone at once, as a crashed or unreachable Redis (what it held is lost)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


@contextmanager
def private_redis(host: str = "127.0.0.1") -> Iterator[RedisProcess]:
    """A private redis-server bound to ``host`` only (an address of this namespace)."""
    binary = require_command("redis-server", "redis-server")
    work = private_dir("redis", owner="redis")
    server = RedisProcess(binary, work, free_port(), host)
    try:
        try:
            server.start()
        except RuntimeError as exc:
            unavailable(f"cannot start a private redis-server: {exc}")
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
