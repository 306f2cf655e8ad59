"""A raw SMTP client for tests that must say exactly what a hostile or unusual client says (odd
addresses, PRDR, pipelining), each from a loopback address of its own, and the daemon's held room
as its control socket lists it."""

from __future__ import annotations

import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from quotagate.policy.control import ask as ask_control


class Raw:
    """A plain-socket SMTP client from ``source`` (a loopback address: a client of its own)."""

    def __init__(self, port: int, source: str = "127.0.0.1", host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = b""
        self.greeting = self.reply()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self._line()
            lines.append(line[4:].decode(errors="replace"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, text: str | bytes) -> tuple[int, str]:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def offer(port: int, source: str, recipient: str, message: bytes) -> tuple[tuple[int, str], tuple[int, str] | None]:
    """Another client (from ``source``) offers ``message`` to ``recipient``, declaring its size:
    the RCPT reply, and the reply to its end of data (None when DATA was not let in)."""
    with Raw(port, source) as other:
        assert other.cmd("EHLO other.test")[0] == 250
        assert other.cmd(f"MAIL FROM:<other@example.net> SIZE={len(message)}")[0] == 250
        rcpt = other.cmd(f"RCPT TO:<{recipient}>")
        data = other.cmd(message + b".") if other.cmd("DATA")[0] == 354 else None
        other.cmd("QUIT")
    return rcpt, data


def held(control: Path, address: str) -> list[dict[str, Any]]:
    """The daemon's reservations for ``address`` (held and in flight), through its control socket."""
    rows: list[dict[str, Any]] = ask_control(control, {"op": "list", "address": address})["reservations"]
    return rows
