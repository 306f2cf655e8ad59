"""Stores behind one contract, chosen by the URL scheme and imported only when used.

Each backend is reached through a typed factory (:data:`Factory`): ``mypy --strict`` checks that
what a backend's ``from_config`` returns keeps the :class:`Store` contract, method by method.
SQLAlchemy and ldap3 load only inside those factories, so a command that never opens a store
never pays for importing them; quotagate's own SQLite file, the default store, is opened with
the standard library's sqlite3 (:mod:`quotagate.store.sqlite`) and needs SQLAlchemy only to be
created or migrated.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from quotagate.config import StoreConfig
from quotagate.store.base import Store, StoreError

Factory = Callable[[StoreConfig], Store]


def _sql(config: StoreConfig) -> Store:
    from sqlalchemy.exc import NoSuchModuleError

    from quotagate.store.sql import from_config

    try:
        return from_config(config)
    except NoSuchModuleError as exc:  # "postgresql+nosuchdriver://"
        raise StoreError(_unknown_driver(config.url)) from exc


def _sqlite(config: StoreConfig) -> Store:
    from quotagate.store.sqlite import SqliteStore, fast_path

    path = fast_path(config)
    return _sql(config) if path is None else SqliteStore(config.url, path)


def _ldap(config: StoreConfig) -> Store:
    from quotagate.store.ldap import from_config

    return from_config(config)


# scheme (before any "+driver") -> its factory; optional backends (and their drivers) load
# only when a URL names them.
_REGISTRY: dict[str, Factory] = {
    "sqlite": _sqlite,
    "postgresql": _sql,
    "mysql": _sql,
    "mariadb": _sql,
    "ldap": _ldap,
    "ldaps": _ldap,
}
# scheme -> the driver quotagate's extras install for it, and that extra. SQLAlchemy's default
# drivers (MySQLdb for mysql://, psycopg2 for postgresql:// before 2.1) are not among them.
_DRIVERS = {"postgresql": ("psycopg", "postgres"), "mysql": ("pymysql", "mysql"), "mariadb": ("pymysql", "mysql")}
# a module an extra installs -> that extra
_EXTRAS = {"psycopg": "postgres", "pymysql": "mysql", "ldap3": "ldap"}
# "scheme://user:PASSWORD@": everything up to the last "@" before any query counts as the
# password, so a password holding an unencoded "@" is hidden whole.
_PASSWORD = re.compile(r"^([^:/]+://[^:/@]*:)[^?#]*@")
# "?password=..." (libpq, and SQLAlchemy's drivers, take it there too)
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd)=)([^&#]*)", re.IGNORECASE)


def scheme_of(url: str) -> str:
    return url.partition(":")[0].partition("+")[0].lower()


def redacted(url: str) -> str:
    """``url`` with its password written ``***``: for every message and log line that names a store."""
    return _QUERY_PASSWORD.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


def _passwords(url: str) -> list[str]:
    match = _PASSWORD.match(url)
    found = [url[match.end(1) : match.end() - 1]] if match else []
    return [p for p in found + [m.group(2) for m in _QUERY_PASSWORD.finditer(url)] if p]


def _scrubbed(text: str, url: str) -> str:
    """``text`` (a driver's message) with ``url`` redacted and its passwords nowhere."""
    text = text.replace(url, redacted(url))
    for password in _passwords(url):
        text = text.replace(password, "***")
    return text


def _at_in_password(url: str) -> bool:
    """Whether the part before the host holds more than one "@": a password with an "@" not
    written %40, which drivers take for part of the host name and then repeat in their errors."""
    if scheme_of(url) == "sqlite":
        return False
    authority = url.partition("://")[2].partition("/")[0].partition("?")[0]
    return authority.count("@") > 1


def _with_driver(url: str, driver: str) -> str:
    return redacted(f"{scheme_of(url)}+{driver}:{url.partition(':')[2]}")


def _install_hint(url: str, missing: str | None) -> str:
    """What to do when the driver module ``missing`` is not installed."""
    if missing in _EXTRAS:
        return f"pip install 'quotagate[{_EXTRAS[missing]}]'"
    ours = _DRIVERS.get(scheme_of(url))
    if ours is None:
        return "install it"
    driver, extra = ours
    return f"use '{_with_driver(url, driver)}' (pip install 'quotagate[{extra}]')"


def _unknown_driver(url: str) -> str:
    driver = url.partition(":")[0].partition("+")[2]
    ours = _DRIVERS.get(scheme_of(url))
    hint = f": use '{_with_driver(url, ours[0])}' (pip install 'quotagate[{ours[1]}]')" if ours else ""
    return f"store url {redacted(url)!r}: unknown driver {driver!r}{hint}"


def store_for(config: StoreConfig) -> Store:
    """The store the config names; an unknown scheme or driver, or a missing driver, is a StoreError
    that says which URL to write or which extra to install (the password never shown)."""
    url = config.url
    factory = _REGISTRY.get(scheme_of(url))
    if factory is None:
        known = ", ".join(sorted(_REGISTRY))
        # Redis holds what the daemons share (reservations, live usage), not the mailboxes' limits.
        hint = "; Redis goes in [shared] url" if scheme_of(url).startswith("redis") else ""
        raise StoreError(f"store url {redacted(url)!r}: unknown scheme {scheme_of(url)!r} (known: {known}){hint}")
    if _at_in_password(url):
        raise StoreError(f"store url {redacted(url)!r}: write an '@' in the user name or password as %40")
    try:
        return factory(config)
    except ImportError as exc:
        if exc.name is None:  # not a missing module: a broken installation
            raise StoreError(f"store url {redacted(url)!r}: {_scrubbed(str(exc), url)}") from exc
        raise StoreError(
            f"store url {redacted(url)!r} needs the driver {exc.name}, which is not installed: "
            + _install_hint(url, exc.name)
        ) from exc
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"store url {redacted(url)!r}: {_scrubbed(str(exc), url)}") from exc


def _own_sqlite(config: StoreConfig) -> bool:
    return scheme_of(config.url) == "sqlite" and config.schema_ == "quotagate"


def open_store(config: StoreConfig | str, *, migrate: bool = False) -> Store:
    """The store ``config`` names (a bare URL: every other setting at its default), to use in
    ``with``, which closes it.

    ``migrate``: create or upgrade quotagate's own SQLite file on first use, so a new install
    needs no ``db migrate``. Any other store is the admin's database, changed only by ``quotagate
    db migrate``; for those the flag does nothing.
    """
    if isinstance(config, str):
        config = StoreConfig(url=config)
    store = store_for(config)
    if migrate and _own_sqlite(config):
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store


__all__ = ["Factory", "Store", "StoreError", "open_store", "redacted", "store_for"]
