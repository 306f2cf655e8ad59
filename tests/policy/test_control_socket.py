"""The control socket (``quotagate reservations``) answers anything malformed with
``{"error": ...}``, even a request line nested too deep for ``json.loads`` (a RecursionError)
or longer than the stream's 64 kB limit (a ValueError from ``readline``). The socket is mode
0600 (root only): a buggy client, not an attack from outside.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from quotagate.policy import control
from quotagate.policy.reservations import Reservations
from tests.policy.conftest import run


async def exchange(path: Path, line: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(line)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "line",
    [b"[" * 3000 + b"\n", b'{"op": "list", "address": "' + b"x" * 70_000 + b'"}\n'],
    ids=["nested-too-deep", "longer-than-64k"],
)
def test_a_malformed_control_request_gets_an_error_answer(short_tmp: Path, line: bytes) -> None:
    """Attack (a buggy client of the control socket): one malformed request line. Expected: one
    JSON line ``{"error": ...}`` back, as for any other malformed request."""
    path = short_tmp / "control.sock"

    async def main() -> bytes:
        server = await control.serve(path, Reservations(600))
        try:
            return await exchange(path, line)
        finally:
            server.close()
            await server.wait_closed()

    answer = run(main())
    assert answer, "no answer at all"
    assert "error" in json.loads(answer)
