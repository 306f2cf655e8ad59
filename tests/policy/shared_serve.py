"""``quotagate serve`` as a real process with ``[shared]``, and what Redis holds for a mailbox."""

from __future__ import annotations

import json
import time
from typing import Any

import redis as redispy

from quotagate.policy.shared import mailbox_keys
from tests.policy.conftest import Site, wait_for
from tests.servers.daemon import PolicyDaemon
from tests.servers.process import free_port


def shared_toml(
    site: Site, port: int, url: str, prefix: str, shared: dict[str, Any] | None = None, **policy: Any
) -> str:
    toml = site.toml(listen=[f"127.0.0.1:{port}"], state_file=str(site.base / "reservations.json"), **policy)
    toml += f'[shared]\nurl = "{url}"\nprefix = "{prefix}"\nretry_seconds = 0.2\n'
    for key, value in (shared or {}).items():
        toml += f"{key} = {json.dumps(value)}\n"
    return toml


class Serve:
    def __init__(self, site: Site, url: str, prefix: str, command: str = "serve", **policy: Any) -> None:
        self.site = site
        self.port = free_port()
        self.config = site.base / "quotagate.toml"
        self.write(url, prefix, **policy)
        self.daemon = PolicyDaemon(self.config, self.port, site.base / "serve.log", command)

    def write(self, url: str, prefix: str, shared: dict[str, Any] | None = None, **policy: Any) -> None:
        self.config.write_text(shared_toml(self.site, self.port, url, prefix, shared, **policy))

    def start(self) -> None:
        """Started, with its signal handlers in place (they are set right after the start line)."""
        self.daemon.start()
        self.daemon.wait_for_log(": listening on ", seconds=20)
        time.sleep(0.3)

    def reload(self) -> None:
        before = self.daemon.log().count("config reloaded")
        self.daemon.reload()
        wait_for(lambda: self.daemon.log().count("config reloaded") > before, what="config reloaded")


def held(url: str, prefix: str, mailbox: str) -> dict[str, dict[str, Any]]:
    """The reservations Redis holds for ``mailbox`` under ``prefix``."""
    client = redispy.Redis.from_url(url)
    try:
        raw = client.hgetall(mailbox_keys(prefix, mailbox)[0])
        return {(k.decode(errors="replace") if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}
    finally:
        client.close()


def held_bytes(url: str, prefix: str, mailbox: str) -> int:
    client = redispy.Redis.from_url(url)
    try:
        return int(client.hget(mailbox_keys(prefix, mailbox)[1], "b") or 0)
    finally:
        client.close()
