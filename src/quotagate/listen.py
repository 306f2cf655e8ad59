"""Where the daemon listens (and serves metrics): ``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:/path``.

Parsed by the config schema when the file is loaded, so a bad value is a config error naming its
key before anything starts, and again by whoever needs the parts (the daemon, exim-config,
postfix-config).
"""

from __future__ import annotations

# (host, port), or the path of a unix socket
Place = tuple[str, int] | str


def parse_place(spec: str) -> Place:
    """The place ``spec`` names; ValueError saying what is wrong with it otherwise."""
    if spec.startswith("unix:"):
        return spec[len("unix:") :]
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{spec!r} is neither HOST:PORT (a port up to 65535) nor unix:/path")
    return host.strip("[]") or "127.0.0.1", int(port)


def listen_spec(spec: str) -> str:
    """``spec``, checked: where ``[policy] listen`` may point."""
    parse_place(spec)
    return spec


def metrics_spec(spec: str) -> str:
    """``spec``, checked: ``[policy] metrics`` is served over HTTP, so HOST:PORT or "" (none)."""
    if spec and isinstance(parse_place(spec), str):
        raise ValueError(f"{spec!r}: give HOST:PORT (metrics are served over HTTP, not on a unix socket)")
    return spec
