"""Stores behind one contract, chosen by the URL scheme and imported only when used."""

from __future__ import annotations

from importlib import import_module

from quotagate.config import StoreConfig
from quotagate.store.base import Store, StoreError
from quotagate.store.presets import MailboxTable, mailbox_table

# scheme (before any "+driver") -> "module:class"; optional backends load lazily.
_REGISTRY = {
    "sqlite": "quotagate.store.sql:SqlStore",
    "postgresql": "quotagate.store.sql:SqlStore",
    "mysql": "quotagate.store.sql:SqlStore",
    "mariadb": "quotagate.store.sql:SqlStore",
}


def open_store(url: str, table: MailboxTable | None = None) -> Store:
    """The store for ``url``; an unknown scheme or a missing driver is a clear StoreError.

    ``table`` names where the directory lives in SQL (default: quotagate's own table).
    """
    scheme = url.partition(":")[0].partition("+")[0].lower()
    target = _REGISTRY.get(scheme)
    if target is None:
        known = ", ".join(sorted(_REGISTRY))
        raise StoreError(f"store url {url!r}: unknown scheme {scheme!r} (known: {known})")
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(import_module(module_name), class_name)
        store: Store = cls(url, table)
    except ImportError as exc:
        raise StoreError(f"store url {url!r} needs a driver that is not installed: {exc.name}") from exc
    except Exception as exc:
        raise StoreError(f"store url {url!r}: {exc}") from exc
    return store


def store_for(config: StoreConfig) -> Store:
    """The store the config names, with its schema preset and column overrides."""
    overrides = config.columns.model_dump(exclude_none=True)
    return open_store(config.url, mailbox_table(config.schema_, overrides))


__all__ = ["Store", "StoreError", "open_store", "store_for"]
