"""A spool, a config and an SQLite store in one temp dir, for the tests that run scans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quotagate.config import Config, parse_config
from quotagate.model import Limits, Mailbox
from quotagate.scan import ScanResult, run_scan
from quotagate.store import Store, open_store

DOMAIN = "example.org"
BIG = Limits(10**9, 0)


def make_config(base: Path, spool_root: Path, /, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "store": {"url": f"sqlite:///{base}/db/q.db"},
        "spool": {"root": str(spool_root)},
        "scan": {"workers": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data)


def open_migrated(config: Config) -> Store:
    store = open_store(config.store.url)
    store.migrate()
    return store


class Env:
    """A spool, a config and a store in one temp dir."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.spool = base / "spool"
        self.spool.mkdir()
        self.stores: list[Store] = []
        self.config = self.configure()

    def configure(self, **sections: Any) -> Config:
        self.config = make_config(self.base, self.spool, **sections)
        return self.config

    @property
    def store(self) -> Store:
        if not self.stores:
            self.stores.append(open_migrated(self.config))
        return self.stores[0]

    def maildir(self, local: str) -> Path:
        return self.spool / DOMAIN / local / "Maildir"

    def add(self, local: str, limits: Limits = BIG, path: str | None = None, enabled: bool = True) -> str:
        address = f"{local}@{DOMAIN}"
        self.store.upsert_mailboxes([Mailbox(address, limits, enabled, path)])
        return address

    def scan(self, **kwargs: Any) -> ScanResult:
        return run_scan(self.config, self.store, **kwargs)

    def close(self) -> None:
        for s in self.stores:
            s.close()
