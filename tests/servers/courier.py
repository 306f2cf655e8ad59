"""Courier's maildrop package (Debian ``maildrop``): ``maildirmake -q`` and ``deliverquota``.

Debian names them ``maildirmake.maildrop`` and ``deliverquota.maildrop`` (the plain names are
alternatives Dovecot's package may take). They run as the mail user, like a delivery would.
"""

from __future__ import annotations

from pathlib import Path

from tests.servers.install import require_command
from tests.servers.mailuser import checked, run_as_mail_user

EX_TEMPFAIL = 75
EX_NOPERM = 77  # deliverquota: the maildir is over its quota


class Courier:
    def __init__(self) -> None:
        self.maildirmake = require_command("maildirmake.maildrop", "maildrop")
        self.deliverquota = require_command("deliverquota.maildrop", "maildrop")

    def make(self, maildir: Path, definition: str = "", folders: tuple[str, ...] = ()) -> None:
        """A Maildir (``maildirmake``), its folders (``-f``) and its quota (``-q``), whereby
        Courier counts what is there and writes ``maildirsize``."""
        if not maildir.exists():
            checked(run_as_mail_user([self.maildirmake, str(maildir)]))
        for folder in folders:
            if not (maildir / f".{folder}").exists():
                checked(run_as_mail_user([self.maildirmake, "-f", folder, str(maildir)]))
        if definition:
            self.set_quota(maildir, definition)

    def set_quota(self, maildir: Path, definition: str) -> None:
        """``maildirmake -q``: Courier writes a new maildirsize, counting the mailbox itself."""
        checked(run_as_mail_user([self.maildirmake, "-q", definition, str(maildir)]))

    def deliver(self, maildir: Path, data: bytes) -> bool:
        """``deliverquota``: True when delivered, False when refused over quota (exit 77)."""
        done = run_as_mail_user([self.deliverquota, str(maildir)], data)
        if done.returncode == 0:
            return True
        if done.returncode == EX_NOPERM:
            return False
        out = (done.stdout + done.stderr).decode(errors="replace")
        raise RuntimeError(f"deliverquota failed ({done.returncode}) for another reason:\n{out}")

    def count(self, maildir: Path) -> tuple[int, int]:
        """Courier's own count: the maildirsize it wrote, summed (bytes, messages)."""
        lines = (maildir / "maildirsize").read_text().splitlines()[1:]
        pairs = [tuple(map(int, line.split())) for line in lines if line.strip()]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)
