"""Where the shared state lives: ``[shared] url``, parsed once when the config is read. Pure.

``redis://`` and ``rediss://`` go to redis-py as they are. ``redis+sentinel://[:PASSWORD@]HOST:PORT,
HOST:PORT/SERVICE[/DB]`` has no meaning to redis-py (its ``from_url`` knows no Sentinel), so it is
taken apart here: the Sentinels to ask, the service whose master to use, and the database.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from msgspec import Struct

SCHEMES = ("redis", "rediss", "redis+sentinel")


class SharedUrl(Struct, frozen=True):
    """``[shared] url`` taken apart; ``url`` is what redis-py gets when there are no Sentinels."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    password: str | None = None

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)


def parse_shared_url(url: str) -> SharedUrl:
    """Raises ValueError, naming the part that is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"{url!r}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    if scheme != "redis+sentinel":
        parts = urlsplit(url)
        if not parts.hostname and not parts.path:
            raise ValueError(f"{url!r}: no host")
        return SharedUrl(url)
    credentials, at, hosts_path = rest.rpartition("@")
    hosts, _, path = hosts_path.partition("/")
    service, _, db = path.partition("/")
    if not service:
        raise ValueError(f"{url!r}: name the Sentinel service after the hosts: redis+sentinel://HOST:PORT/SERVICE")
    sentinels = tuple(_host_port(h, url) for h in hosts.split(",") if h)
    if not sentinels:
        raise ValueError(f"{url!r}: no Sentinel host")
    if db and not db.isdigit():
        raise ValueError(f"{url!r}: the database after the service must be a number, not {db!r}")
    password = unquote(credentials.partition(":")[2]) if at and ":" in credentials else None
    return SharedUrl(url, sentinels, unquote(service), int(db or 0), password or None)


def _host_port(text: str, url: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, 26379  # Sentinel's own port
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"{url!r}: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
