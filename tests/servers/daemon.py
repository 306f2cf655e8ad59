"""``quotagate serve`` as a real process on a loopback port, for tests that put an MTA in front."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers.process import wait_for_port

QUOTAGATE = str(Path(sys.executable).parent / "quotagate")


class PolicyDaemon:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [QUOTAGATE, "--config", str(self.config), "serve"], stdout=out, stderr=subprocess.STDOUT
            )
        wait_for_port(self.port, self.proc, self.log_path, seconds=20)

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
def policy_daemon(config: Path, port: int) -> Iterator[PolicyDaemon]:
    daemon = PolicyDaemon(config, port, config.parent / "serve.log")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
