"""SMTP clients run as a process of their own, so that they can run on another test host
(``ip netns exec``): one connection per source address, every RCPT at once, then DATA (or QUIT)
when the test says so, after it has seen every RCPT reply, on every host.

Run as ``python -m tests.servers.smtp_clients HOST PORT RCPT SIZE SOURCE...``: it prints the
RCPT codes as one JSON line, reads ``data`` or ``quit`` from its input, and prints the DATA codes
(0 where no DATA was sent).
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def body(size: int) -> bytes:
    return b"Subject: burst\r\n\r\n" + (b"x" * 998 + b"\r\n") * (size // 1000)


def mail_sessions(port: int, count: int, first: int, size: int | None = None) -> list[smtplib.SMTP]:
    """``count`` SMTP sessions to 127.0.0.1:``port``, each from a loopback address of its own
    (127.0.0.``first`` and on: a client of its own to the policy service), after EHLO and MAIL
    FROM (with SIZE= when ``size`` is given)."""
    sessions = []
    for n in range(count):
        smtp = smtplib.SMTP(timeout=60, source_address=(f"127.0.0.{first + n}", 0))
        smtp.connect("127.0.0.1", port)
        smtp.ehlo("client.test")
        assert smtp.mail("sender@example.net", [f"SIZE={size}"] if size else [])[0] == 250
        sessions.append(smtp)
    return sessions


def at_once(count: int, step: Callable[[int], int], timeout: float = 60) -> list[int]:
    """``step(n)`` for each ``n`` below ``count``, each in a thread of its own, all released at
    the same moment (clients sending together); what each returned, in order (0 for one that did
    not finish within ``timeout``)."""
    start = threading.Barrier(count)
    codes = [0] * count

    def one(n: int) -> None:
        start.wait(timeout=30)
        codes[n] = step(n)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return codes


class Clients:
    """The clients' process: :meth:`rcpt` once, then :meth:`finish` once."""

    def __init__(
        self, launcher: Sequence[str], host: str, port: int, rcpt: str, size: int, sources: Sequence[str]
    ) -> None:
        args = [*launcher, sys.executable, "-m", "tests.servers.smtp_clients", host, str(port), rcpt, str(size)]
        self.proc = subprocess.Popen(
            [*args, *sources], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def _line(self) -> list[int]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=60)
            assert self.proc.stderr is not None
            raise AssertionError(f"the clients failed: {self.proc.stderr.read().decode(errors='replace')}")
        return [int(code) for code in json.loads(line)]

    def rcpt(self) -> list[int]:
        return self._line()

    def finish(self, send: bool) -> list[int]:
        """DATA from every client let in (``send``) or QUIT from all; the DATA codes."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"data\n" if send else b"quit\n")
        self.proc.stdin.flush()
        codes = self._line()
        assert self.proc.wait(timeout=60) == 0
        return codes

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)  # closes the pipes too


def _run(host: str, port: int, rcpt: str, size: int, sources: list[str]) -> None:
    clients = []
    for source in sources:
        client = smtplib.SMTP(timeout=60, source_address=(source, 0))
        client.connect(host, port)
        client.ehlo("client.test")
        clients.append(client)

    def one(n: int) -> int:
        assert clients[n].mail("sender@example.net", [f"SIZE={size}"])[0] == 250
        return clients[n].rcpt(rcpt)[0]

    codes = at_once(len(clients), one)
    print(json.dumps(codes), flush=True)
    send = sys.stdin.readline().strip() == "data"
    sent = [
        client.data(body(size))[0] if send and code == 250 else 0 for client, code in zip(clients, codes, strict=True)
    ]
    for client in clients:
        client.quit()
    print(json.dumps(sent), flush=True)


if __name__ == "__main__":
    _run(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:])
