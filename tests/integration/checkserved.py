"""A real ``quotagate serve`` over a scratch site, asked over its socket, beside ``quotagate check``
(tests/integration/test_check_against_daemon.py)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quotagate.usage.names import ascii_lower
from tests.policy.conftest import Site, ask
from tests.servers.daemon import QUOTAGATE, PolicyDaemon
from tests.servers.process import free_port


@dataclass
class Served:
    site: Site
    config: Path
    port: int
    daemon: PolicyDaemon

    def ask(self, **attributes: Any) -> str:
        """One request (attributes as given, Postfix's by default) and the action line."""
        attrs = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "192.0.2.1"}
        attrs.update({k: str(v) for k, v in attributes.items() if v is not None})
        text = "".join(f"{k}={v}\n" for k, v in attrs.items()) + "\n"
        return ask(self.port, text.encode()).decode().strip()

    def postfix(self, recipient: str, size: int | str | None = None, **more: Any) -> str:
        return self.ask(recipient=recipient, size=size, protocol_name="ESMTP", **more)

    def exim(self, recipient: str, size: int | None = None, **more: Any) -> str:
        """As the generated Exim ACL asks: no protocol_name, the local part lowered."""
        local, _, domain = recipient.rpartition("@")
        return self.ask(recipient=f"{ascii_lower(local)}@{domain}", size=size, **more)

    def quotagate(self, *args: str) -> tuple[int, str]:
        return run_quotagate(self.config, *args)

    def check(self, *args: str) -> tuple[int, str]:
        return self.quotagate("check", *args)


@contextlib.contextmanager
def served(site: Site, **policy: Any) -> Iterator[Served]:
    port = free_port()
    config = site.base / "quotagate.toml"
    config.write_text(site.toml(listen=[f"127.0.0.1:{port}"], **policy))
    daemon = PolicyDaemon(config, port, site.base / "serve.log")
    daemon.start()
    try:
        yield Served(site, config, port, daemon)
    finally:
        daemon.stop()


def run_quotagate(config: Path, *args: str) -> tuple[int, str]:
    proc = subprocess.run([QUOTAGATE, "--config", str(config), *args], capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def accepted(answer: str) -> bool:
    return answer == "action=DUNNO"
