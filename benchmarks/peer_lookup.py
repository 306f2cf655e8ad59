"""Benchmark the daemon's local-user check on its own: what asking the kernel who owns a
connection's peer (``LocalPeers.owner``, one ``sock_diag`` netlink request) costs a new
connection, against what the daemon asks of every connection anyway (its peer and socket names).

Run it by hand from the project root (it is not part of the test suite)::

    .venv/bin/python benchmarks/peer_lookup.py [--connections 20000]

For each of ``--connections`` loopback connections, made and accepted one after another as
Exim's readsocket makes them, it times (``time.perf_counter``, summed over the connections):

1. the baseline: ``getpeername()`` and ``getsockname()`` of the accepted socket;
2. ``LocalPeers.owner(peer, ours)``, the first question about that connection.

It prints the microseconds per connection of each and the ratio. The daemon's whole cost per
connection is larger (the benchmark's own sockets are in a hot cache; under load the lookup also
moves kernel work onto the daemon): ``benchmarks/policy.py --no-exim --unchecked`` measures that,
the daemon with and without the check, as server CPU per request.
"""

from __future__ import annotations

import argparse
import socket
import time

from _harness import machine

from quotagate.policy.peers import LocalPeers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=20_000)
    args = parser.parse_args()
    print("machine:", ", ".join(machine()))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    peers = LocalPeers()
    names = lookup = 0.0
    uid = None
    try:
        for _ in range(args.connections):
            client = socket.create_connection(listener.getsockname())
            server, _peer = listener.accept()
            started = time.perf_counter()
            peer, ours = server.getpeername(), server.getsockname()
            named = time.perf_counter()
            uid = peers.owner(peer, ours)
            looked = time.perf_counter()
            names += named - started
            lookup += looked - named
            client.close()
            server.close()
    finally:
        peers.close()
        listener.close()
    n = args.connections
    print(f"owner of the last peer: uid {uid}")
    print(f"peer and socket names (baseline)  {names / n * 1e6:7.2f} µs per connection")
    print(f"LocalPeers.owner (sock_diag)      {lookup / n * 1e6:7.2f} µs per connection")
    print(f"ratio lookup / baseline           {lookup / names:7.2f}x")


if __name__ == "__main__":
    main()
