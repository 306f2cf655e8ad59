"""A private redis-server: its own directory, loopback, a high port, no persistence; stoppable and
startable again on the same port (an outage), never the system's Redis."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers.install import require_command, unavailable
from tests.servers.process import free_port, private_dir, spawn_as, stop, wait_for_port


class RedisProcess:
    def __init__(self, binary: str, work: Path, port: int) -> None:
        self.binary = binary
        self.work = work
        self.port = port
        self.log = work / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.work)]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]
        self.proc = spawn_as("redis", args, self.log)
        try:
            wait_for_port(self.port, self.proc, self.log)
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
def private_redis() -> Iterator[RedisProcess]:
    binary = require_command("redis-server", "redis-server")
    work = private_dir("redis", owner="redis")
    server = RedisProcess(binary, work, free_port())
    try:
        try:
            server.start()
        except RuntimeError as exc:
            unavailable(f"cannot start a private redis-server: {exc}")
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
