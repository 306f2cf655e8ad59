"""procmail and formail (Debian ``procmail``): mbox files as they write them.

procmail delivers with ``-m`` and an empty rcfile to ``DEFAULT``, adding its own ``From_`` line
and escaping body ``From `` lines; it does not add a final newline a message lacks, so the next
``From_`` line follows without an empty line. ``formail`` prefixes a ``From_`` line.
"""

from __future__ import annotations

from pathlib import Path

from tests.servers.install import require_command
from tests.servers.mailuser import checked, run_as_mail_user


class Procmail:
    def __init__(self, work: Path) -> None:
        self.procmail = require_command("procmail", "procmail")
        self.formail_path = require_command("formail", "procmail")
        self.rcfile = work / "procmailrc"
        self.rcfile.write_text("")
        self.rcfile.chmod(0o644)

    def deliver(self, mbox: Path, data: bytes) -> None:
        """``procmail -m DEFAULT=mbox``: append ``data`` as the next message."""
        args = [self.procmail, "-f", "sender@example.net", "-m", f"DEFAULT={mbox}", str(self.rcfile)]
        checked(run_as_mail_user(args, data))

    def formail(self, data: bytes) -> bytes:
        """``formail``: ``data`` with a ``From_`` line in front, as it would be appended."""
        return checked(run_as_mail_user([self.formail_path], data)).stdout
