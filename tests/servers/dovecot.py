"""Debian's Dovecot (dovecot-core) with a private config: its LDA delivers and ``doveadm`` counts.

No Dovecot service runs: ``dovecot-lda`` and ``doveadm`` are run as the mail user with ``HOME``
and ``USER`` set, which is all Dovecot needs to find a user's mail without a userdb lookup.
Logs go to stderr, where a refusal ("Quota exceeded") is read from.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.servers.install import require_command, unavailable
from tests.servers.mailuser import checked, own, run_as_mail_user

LDA = "/usr/lib/dovecot/dovecot-lda"
EX_NOPERM = 77  # dovecot-lda -e: the message was rejected (over quota)

CONFIG = """\
base_dir = {work}/run
state_dir = {work}/run
log_path = /dev/stderr
info_log_path = /dev/stderr
protocols =
ssl = no
first_valid_uid = 1
mail_location = {location}
mail_plugins = quota
lda_mailbox_autocreate = yes
plugin {{
  quota = {backend}:User quota
  quota_vsizes = {vsizes}
  quota_rule = {rule}:storage={bytes}B:messages={messages}
{extra}}}
"""


@dataclass(frozen=True)
class Quota:
    """What ``doveadm quota get`` says: storage in KiB as Dovecot prints it, and messages."""

    kib: int
    messages: int


class Dovecot:
    """One private Dovecot config; each user's home is ``homes/<user>``."""

    def __init__(self, work: Path) -> None:
        require_command("doveadm", "dovecot-core")
        if not Path(LDA).exists():
            unavailable(f"{LDA} is missing after installing dovecot-core")
        self.work = work
        self.homes = work / "homes"
        self.config = work / "dovecot.conf"
        own(work / "run")
        self.homes.mkdir(parents=True, exist_ok=True)

    def configure(
        self,
        *,
        backend: str,
        limit_bytes: int,
        limit_messages: int = 0,
        location: str = "maildir:~/Maildir",
        rule: str = "*",
        extra: str = "",
    ) -> None:
        """``backend`` "maildir" (physical sizes, maildirsize) or "count" (virtual sizes, index);
        ``rule`` "*" (the limit given here wins) or "?" (a maildirsize's definition wins)."""
        self.config.write_text(
            CONFIG.format(
                work=self.work,
                location=location,
                backend=backend,
                vsizes="yes" if backend == "count" else "no",
                bytes=limit_bytes,
                messages=limit_messages,
                rule=rule,
                extra=extra,
            )
        )
        self.config.chmod(0o644)

    def home(self, user: str) -> Path:
        home = self.homes / user
        if not home.exists():
            own(home)
        return home

    def reset(self, user: str) -> Path:
        """An empty home for ``user``."""
        shutil.rmtree(self.homes / user, ignore_errors=True)
        return self.home(user)

    def _env(self, user: str) -> dict[str, str]:
        return {"HOME": str(self.home(user)), "USER": user}

    def deliver(self, user: str, data: bytes, folder: str = "INBOX") -> bool:
        """Deliver with ``dovecot-lda -e`` (into ``folder``, created when missing): True when
        saved, False when refused over quota."""
        args = [LDA, "-c", str(self.config), "-e", "-f", "sender@example.net", "-m", folder]
        done = run_as_mail_user(args, data, self._env(user))
        log = done.stderr.decode(errors="replace")
        if done.returncode == 0 and "saved mail to" in log:
            return True
        if done.returncode == EX_NOPERM and "Quota exceeded" in log:
            return False
        raise RuntimeError(f"dovecot-lda failed ({done.returncode}) for another reason:\n{log}")

    def doveadm(self, user: str, *args: str) -> str:
        done = checked(run_as_mail_user(["doveadm", "-c", str(self.config), *args], env=self._env(user)))
        return done.stdout.decode()

    def quota(self, user: str) -> Quota:
        """``doveadm quota get``: Dovecot's own totals, as it enforces them."""
        values = {}
        for line in self.doveadm(user, "-f", "tab", "quota", "get").splitlines()[1:]:
            _, kind, value, *_ = line.split("\t")
            values[kind] = int(value)
        return Quota(values["STORAGE"], values["MESSAGE"])

    def recalc(self, user: str) -> None:
        """``doveadm quota recalc``: count the mailbox again from scratch."""
        self.doveadm(user, "quota", "recalc")

    def status(self, user: str, mailbox: str = "*") -> tuple[int, int]:
        """Messages and virtual bytes of the mailboxes matching ``mailbox``, summed by Dovecot."""
        out = self.doveadm(user, "-f", "flow", "mailbox", "status", "-t", "messages vsize", mailbox)
        fields = dict(part.split("=") for part in out.split())
        return int(fields["messages"]), int(fields["vsize"])
