"""Stores behind one contract, chosen by the URL scheme and imported only when used."""

from __future__ import annotations

from importlib import import_module

from quotagate.config import StoreConfig
from quotagate.store.base import Store, StoreError

# scheme (before any "+driver") -> module with a ``from_config(StoreConfig) -> Store``;
# optional backends (and their drivers) load only when a URL names them.
_REGISTRY = {
    "sqlite": "quotagate.store.sql",
    "postgresql": "quotagate.store.sql",
    "mysql": "quotagate.store.sql",
    "mariadb": "quotagate.store.sql",
    "ldap": "quotagate.store.ldap",
    "ldaps": "quotagate.store.ldap",
}


def scheme_of(url: str) -> str:
    return url.partition(":")[0].partition("+")[0].lower()


def store_for(config: StoreConfig) -> Store:
    """The store the config names; an unknown scheme or a missing driver is a clear StoreError."""
    url = config.url
    module_name = _REGISTRY.get(scheme_of(url))
    if module_name is None:
        known = ", ".join(sorted(_REGISTRY))
        raise StoreError(f"store url {url!r}: unknown scheme {scheme_of(url)!r} (known: {known})")
    try:
        store: Store = import_module(module_name).from_config(config)
    except ImportError as exc:
        raise StoreError(f"store url {url!r} needs a driver that is not installed: {exc.name}") from exc
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"store url {url!r}: {exc}") from exc
    return store


def open_store(url: str) -> Store:
    """The store at ``url`` with every other setting at its default."""
    return store_for(StoreConfig(url=url))


__all__ = ["Store", "StoreError", "open_store", "store_for"]
