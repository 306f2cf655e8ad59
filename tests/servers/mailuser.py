"""Running delivery agents as the mail user, and messages of an exact size for them.

Dovecot's LDA, Courier's deliverquota and procmail write mailboxes as the user who owns them;
the tests run them as :data:`MAIL_UID` (no passwd entry needed), never as root.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.servers.exim import MAIL_UID

# Headers every message carries, so that no agent adds its own (Exim adds From:, Date: and
# Message-Id: to local submissions that lack them): a message is stored exactly as given.
_HEAD = b"From: sender@example.net\nDate: Wed, 02 Dec 2026 10:15:27 +0000\nMessage-Id: <m@example.net>\nSubject: t\n\n"


def message(size: int, body_lines: int = 1) -> bytes:
    """A message of exactly ``size`` bytes with LF line ends: the headers, then ``body_lines``
    lines of filler (the last ending in LF). Its virtual size is :func:`virtual_size`."""
    filler = size - len(_HEAD)
    if filler < 2 * body_lines:
        raise ValueError(f"a message of {body_lines} body lines needs more than {size} bytes")
    lines = [b"x" * (filler // body_lines - 1) + b"\n" for _ in range(body_lines)]
    lines[-1] = b"x" * (filler - sum(map(len, lines[:-1])) - 1) + b"\n"
    data = _HEAD + b"".join(lines)
    assert len(data) == size
    return data


def virtual_size(data: bytes) -> int:
    """Dovecot's virtual size: every bare LF counted as CRLF."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def own(path: Path) -> None:
    """``path`` (a directory the mail user writes into) owned by the mail user."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, MAIL_UID, MAIL_UID)


def run_as_mail_user(
    args: list[str], data: bytes = b"", env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``args`` as the mail user with ``data`` on stdin; the caller judges the exit code."""
    cmd = ["setpriv", f"--reuid={MAIL_UID}", f"--regid={MAIL_UID}", "--clear-groups", *args]
    if os.geteuid() != 0:
        cmd = args
    plain = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", **(env or {})}
    return subprocess.run(cmd, input=data, capture_output=True, timeout=120, env=plain, check=False)


def checked(done: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    """``done``, or an error with its output when it failed."""
    if done.returncode != 0:
        out = (done.stdout + done.stderr).decode(errors="replace")
        raise RuntimeError(f"{' '.join(map(str, done.args))} failed ({done.returncode}):\n{out}")
    return done
