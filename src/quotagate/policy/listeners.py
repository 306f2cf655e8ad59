"""The daemon's listening sockets, bound before anything serves on them.

Bound here, synchronously, rather than by the event loop: ``serve --workers N`` binds them once in
the supervising process and hands the same sockets to every worker (see :mod:`quotagate.policy.workers`),
and a single daemon binds them the same way. Every value is checked before the first socket is
bound, so a bad one leaves nothing behind; each failure is one line saying what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
import secrets
import socket
import stat
import sys
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from quotagate.config import ConfigError, PolicyConfig
from quotagate.errors import StartupError
from quotagate.listen import Place, parse_place
from quotagate.usage import safefs

_BACKLOG = 1024  # Exim opens a connection per check: bursts of them must not be refused


@dataclass(frozen=True)
class Listener:
    """A bound, listening socket and where it listens, as the start-up line shows it."""

    sock: socket.socket
    name: str

    @property
    def unix(self) -> bool:
        return self.sock.family == socket.AF_UNIX


def parse_listen(spec: str, key: str = "policy.listen") -> Place:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:/path``; anything else is a ConfigError naming ``key``
    (the config schema has refused it already when the value came from a config file)."""
    try:
        return parse_place(spec)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


_LISTEN_ADVICE = {
    errno.EADDRINUSE: "address already in use (by another quotagate serve? 'ss -ltnp' shows which program): "
    "stop it or choose another port",
    errno.EADDRNOTAVAIL: "this host has no such address (see 'ip address'): listen on one it has, or 127.0.0.1",
    errno.EACCES: "permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE)",
}


def listen_error(key: str, spec: str, exc: OSError) -> StartupError:
    """Why ``spec`` cannot be listened on, and what to do, in one line."""
    if isinstance(exc, socket.gaierror):
        reason = f"cannot resolve the host ({exc.strerror}): give an address, or a name /etc/hosts has"
    else:
        reason = _LISTEN_ADVICE.get(exc.errno or 0) or (os.strerror(exc.errno) if exc.errno else str(exc))
    return StartupError(f"{key}: cannot listen on {spec}: {reason}")


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise StartupError(
            f"policy.socket_group: no group {name!r} on this host: "
            "name an existing one ('getent group' lists them), e.g. Debian-exim"
        ) from None


_SUN_PATH = 107  # the bytes of a unix socket's path the kernel takes


def _remove_stale_socket(parent: int, name: str, path: str, key: str) -> None:
    """Remove a socket an earlier run left at ``name`` in the directory ``parent`` (``path`` as
    the config names it); anything else there is an error (naming the config ``key``). Reached
    through the directory's descriptor: the directory may be another user's, who cannot redirect
    a path beneath it (the entry itself, a socket or not, is all it can change).

    A socket is stale when connecting to it is refused: nobody listens. One that answers is a
    running daemon's: taking it over would leave that daemon listening on a socket nobody can reach.
    """
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{key}: {path} exists and is not a socket: move it away, or listen elsewhere")
    through = f"/proc/self/fd/{parent}/{name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)  # connecting to a unix socket does not wait on the network
        try:
            probe.connect(through if len(os.fsencode(through)) <= _SUN_PATH else path)
        except ConnectionRefusedError:
            os.unlink(name, dir_fd=parent)
            return
        except TimeoutError:
            pass  # its backlog is full: someone listens
        except OSError as exc:
            raise StartupError(
                f"{key}: cannot tell whether unix:{path} is in use ({exc.strerror or exc}): remove it if not"
            ) from None
    raise StartupError(
        f"{key}: unix:{path} is in use by a running daemon (another quotagate serve?): stop it, or listen elsewhere"
    )


_BOUND = "s"  # the socket's name in its private directory


def _bind_privately(sock: socket.socket, parent: int, name: str, mode: int, gid: int) -> None:
    """Bind ``sock`` at ``name`` in the directory ``parent`` with ``mode`` and group ``gid`` (-1:
    unchanged), both set before the socket appears there.

    That directory may belong to another user (``/var/spool/postfix/private``, the postfix
    user's), who can swap any name in it for a symlink between two calls: a chmod or chown by
    path would follow it to a file of root's. So the socket is bound in a directory of this
    process's own, made beside the final place (the same file system) and reached only through
    its descriptor, set up and listening there where nobody else can reach, then hard-linked into
    place (a link never replaces what is there: EEXIST) and its private name removed.
    """
    private = f".{name}.{secrets.token_hex(6)}"
    os.mkdir(private, 0o700, dir_fd=parent)
    try:
        fd = os.open(private, safefs.LOOK, dir_fd=parent)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:  # swapped since the mkdir
                raise OSError(errno.EPERM, "its directory was changed meanwhile by another user")
            # The directory itself, whatever its name now, under a short name: the kernel takes
            # 107 bytes of a unix socket's path, and the final one may use them all.
            sock.bind(f"/proc/self/fd/{fd}/{_BOUND}")
            try:
                os.chmod(_BOUND, mode, dir_fd=fd)  # nobody else can write this directory
                if gid >= 0:
                    os.chown(_BOUND, -1, gid, dir_fd=fd, follow_symlinks=False)
                sock.listen(_BACKLOG)  # answering as soon as it is there
                os.link(_BOUND, name, src_dir_fd=fd, dst_dir_fd=parent, follow_symlinks=False)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(_BOUND, dir_fd=fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(OSError):  # swapped for another directory: not ours to keep
            os.rmdir(private, dir_fd=parent)


def bind_unix(path: str, mode: int, gid: int = -1, key: str = "policy.listen") -> Listener:
    """A unix socket listening at ``path`` with ``mode`` and group ``gid`` (-1: unchanged), one
    an earlier run left there replaced; StartupError (naming the config ``key``) when it cannot be."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        directory, name = os.path.split(path)
        with safefs.admins_directory(directory or ".") as parent:
            _remove_stale_socket(parent, name, path, key)
            _bind_privately(sock, parent, name, mode, gid)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"{key}: cannot create the socket {path}: {os.strerror(exc.errno) if exc.errno else exc}: "
            "create its directory, writable by the user quotagate runs as (systemd: RuntimeDirectory=quotagate)"
        ) from None
    except StartupError:
        sock.close()
        raise
    sock.setblocking(False)
    return Listener(sock, f"unix:{path}")


def _bind_tcp(spec: str, host: str, port: int) -> list[Listener]:
    """One socket per address ``host`` resolves to (a name may have an IPv4 and an IPv6 one), as
    asyncio's create_server binds them: SO_REUSEADDR, IPv6 sockets IPv6 only."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise listen_error("policy.listen", spec, exc) from None
    bound: list[Listener] = []
    for family, kind, proto, _, address in dict.fromkeys(infos):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
        except OSError as exc:
            sock.close()
            close_all(bound)
            raise listen_error("policy.listen", spec, exc) from None
        sock.setblocking(False)
        name, bound_port = sock.getsockname()[:2]
        bound.append(Listener(sock, f"[{name}]:{bound_port}" if ":" in name else f"{name}:{bound_port}"))
    return bound


def unix_server_options(loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """What ``loop.create_unix_server(sock=...)`` needs for a socket bound here: Python 3.13's
    asyncio removes a unix socket's file when its server closes, and one bound here was bound
    under a private name through a descriptor (see :func:`_bind_privately`), by then another
    directory's; a supervisor's socket is also served by other workers. uvloop's loop (not an
    asyncio.BaseEventLoop) neither removes it nor takes the option."""
    if sys.version_info >= (3, 13) and isinstance(loop, asyncio.BaseEventLoop):
        return {"cleanup_socket": False}
    return {}


def bind_listeners(policy: PolicyConfig) -> list[Listener]:
    """Listen on every ``[policy] listen`` address: unix sockets with ``socket_mode`` and
    ``socket_group``; all or nothing."""
    places = [(spec, parse_listen(spec)) for spec in policy.listen]
    gid = _group_id(policy.socket_group) if policy.socket_group else -1
    mode = int(policy.socket_mode, 8)
    bound: list[Listener] = []
    try:
        for spec, where in places:
            if isinstance(where, str):
                bound.append(bind_unix(where, mode, gid))
            else:
                bound.extend(_bind_tcp(spec, *where))
    except BaseException:
        close_all(bound)
        raise
    return bound


def serve_metrics(spec: str, registry: CollectorRegistry) -> None:
    """``[policy] metrics`` (HOST:PORT, or "" for none) served over HTTP from a thread of its own."""
    if not spec:
        return
    where = parse_listen(spec, "policy.metrics")
    assert not isinstance(where, str), "the config schema refuses a unix socket for metrics"
    try:
        start_http_server(where[1], where[0], registry=registry)
    except OSError as exc:
        raise listen_error("policy.metrics", spec, exc) from None


def close_all(listeners: list[Listener]) -> None:
    """Close the sockets and remove the unix sockets' files (only this process's own)."""
    for listener in listeners:
        if listener.unix:
            # The name it listens by (it was bound by another: see _bind_privately).
            path = listener.name.removeprefix("unix:")
            with contextlib.suppress(OSError):
                os.unlink(path)
        listener.sock.close()
