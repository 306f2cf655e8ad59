"""A unix socket the daemon listens on is bound in a private directory first (see
policy/listeners.py): under a path of that directory's own length, never longer than the one
configured."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

from quotagate.config import parse_config
from quotagate.policy.listeners import bind_listeners, close_all


def test_a_socket_path_the_kernel_takes_is_listened_on() -> None:
    """Scenario: ``[policy] listen = ["unix:/tmp/<a 100-byte name>"]``: a path of 105 bytes,
    under the 108 bytes of sun_path, which ``bind`` took at 081142c.
    Expected: the daemon listens there and a client connects. (Bound as ``/proc/self/fd/N/<name>``,
    ~117 bytes, it failed "AF_UNIX path too long": serve refused to start on a path the kernel
    accepts.)"""
    name = ("qg-review-" + secrets.token_hex(8)).ljust(100, "p")
    path = Path("/tmp") / name
    assert len(str(path)) == 105
    try:
        listeners = bind_listeners(parse_config({"policy": {"listen": [f"unix:{path}"], "metrics": ""}}).policy)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(path))
        finally:
            close_all(listeners)
    finally:
        path.unlink(missing_ok=True)
