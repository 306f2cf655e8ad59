"""``quotagate serve`` as a real process on a loopback port, for tests that put an MTA in front."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.servers.process import wait_for_port

QUOTAGATE = str(Path(sys.executable).parent / "quotagate")


class PolicyDaemon:
    """``quotagate serve`` (or another long-running command: ``watch``) as a child process."""

    def __init__(
        self,
        config: Path,
        port: int | None,
        log: Path,
        command: str = "serve",
        ready_log: str = "watching",
        *,
        host: str = "127.0.0.1",
        launcher: Sequence[str] = (),
    ) -> None:
        """``command`` with its options (``serve --workers 2``). Started means ``host:port``
        answers or, without a port, ``ready_log`` is in the log;
        ``launcher`` runs it (``ip netns exec NAME``: on another test host)."""
        self.config = config
        self.host = host
        self.launcher = list(launcher)
        self.port = port
        self.log_path = log
        self.command = command
        self.ready_log = ready_log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [*self.launcher, QUOTAGATE, "--config", str(self.config), *self.command.split()],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if self.port is not None:
            wait_for_port(self.port, self.proc, self.log_path, seconds=20, host=self.host)
        else:
            self.wait_for_log(self.ready_log, seconds=20)

    def wait_for_log(self, text: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.log():
            assert self.proc is not None and self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, f"{text!r} not logged: {self.log()}"
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        self.proc = None
        return code

    def reload(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def policy_daemon(
    config: Path, port: int | None, command: str = "serve", ready_log: str = "watching"
) -> Iterator[PolicyDaemon]:
    daemon = PolicyDaemon(config, port, config.parent / f"{command.split()[0]}.log", command, ready_log)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
