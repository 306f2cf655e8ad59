"""A multi-host test bed built from network namespaces: each host (MX or storage host) is a
namespace of its own, joined by a veth pair to a bridge in the root namespace. The root namespace
is the network between them: the test talks to every host from there, and the servers all hosts
share (Redis, PostgreSQL) listen on its bridge address. The addresses (a free 10.77.N.0/24) exist
only on the bridge and inside the namespaces.

Everything is removed when the bed closes, after a failure too: the processes still running in
its namespaces (all started by the test: nothing else lives there), the namespaces (their veth
ends go with them) and the bridge. Namespaces need root; a test skips without it, except under
CI=true, where it fails and says why.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from tests.servers.install import require_command, unavailable


@dataclass(frozen=True)
class Host:
    """One namespace: its name and its address on the bed's bridge."""

    namespace: str
    address: str

    @property
    def launcher(self) -> list[str]:
        """The prefix that runs a command on this host (the program is exec'd: its pid is the
        command's own, so signals reach it)."""
        return ["ip", "netns", "exec", self.namespace]


@dataclass(frozen=True)
class Bed:
    """The hosts by name, the root namespace's address on the bridge (where servers every host
    reaches listen) and the bed's network, ``10.77.N.0/24`` (whom such a server lets in)."""

    bridge: str
    network: str
    hosts: dict[str, Host]


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def _free_subnet() -> str:
    """The first 10.77.N that no interface of the root namespace uses (another run may)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    for n in range(256):
        if f" 10.77.{n}." not in used:
            return f"10.77.{n}"
    raise RuntimeError("every 10.77.N.0/24 is in use on this machine")


@contextmanager
def namespace_bed(*names: str) -> Iterator[Bed]:
    """Hosts ``names`` (at most 200), each in a namespace on one bridge with the root namespace."""
    if os.geteuid() != 0:
        unavailable("network namespaces need root")
    require_command("ip", "iproute2")
    tag = f"qg{os.getpid()}"  # interface names have at most 15 characters
    bridge = f"{tag}br"
    subnet = _free_subnet()
    hosts = {name: Host(f"{tag}-{name}", f"{subnet}.{11 + i}") for i, name in enumerate(names)}
    made: list[str] = []
    links: list[str] = []
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        for i, host in enumerate(hosts.values()):
            ip("netns", "add", host.namespace)
            made.append(host.namespace)
            outer, inner = f"{tag}v{i}", f"{tag}h{i}"
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            links.append(outer)
            ip("link", "set", inner, "netns", host.namespace)
            ip("link", "set", outer, "master", bridge)
            ip("link", "set", outer, "up")
            inside = ["-n", host.namespace]
            ip(*inside, "link", "set", "lo", "up")
            ip(*inside, "addr", "add", f"{host.address}/24", "dev", inner)
            ip(*inside, "link", "set", inner, "up")
        yield Bed(f"{subnet}.1", f"{subnet}.0/24", hosts)
    finally:
        for namespace in made:
            _kill_inside(namespace)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        # A veth pair goes with its namespace; one not moved there yet does not.
        for link in (*links, bridge):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)


def _kill_inside(namespace: str) -> None:
    """SIGKILL what still runs in ``namespace`` (a test that failed before stopping it): the
    namespace would live on, with its addresses, as long as one process does."""
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=30).stdout
    for pid in pids.split():
        with suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
