"""Debian's own Exim configuration (exim4-config), copied from /etc/exim4 and built privately.

Facts this works around (Debian 12, exim4-config 4.96):
- ``update-exim4.conf -d COPY -o FILE`` builds from a copy, but ``-o`` skips the validation the
  system run does: ``exim -C FILE -bV`` checks the result.
- With ``-d``, the copy's ``exim4.conf.localmacros`` is read only if ``/etc/exim4/`` has one: when
  it has none, the copy's is put before the template, which is what update-exim4.conf does with it.
- conf.d files whose names hold a dot are skipped.
- The generated file keeps ``CONFDIR = /etc/exim4``: the test's own macros point it at the copy,
  so that nothing of the machine's /etc/exim4 is read.
"""

from __future__ import annotations

import grp
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.servers.exim import rcpt_replies
from tests.servers.install import require_command, require_package_command

SYSTEM = Path("/etc/exim4")
# A client from an address in Debian's relay_from_hosts (update-exim4.conf always adds 127.0.0.1),
# one that logged in, and one from outside. -bh runs a fake session: nothing is sent anywhere.
RELAYED = ("127.0.0.1",)
AUTHENTICATED = ("127.0.0.2", "-oMaa", "plain_server", "-oMai", "client-user")
OUTSIDE = ("127.0.0.2",)
CLIENTS = {"relayed": RELAYED, "authenticated": AUTHENTICATED, "outside": OUTSIDE}


@dataclass
class DebianExim:
    """A copy of /etc/exim4 under ``work``, set up as an internet site for ``domain``."""

    work: Path
    domain: str
    split: bool

    def __post_init__(self) -> None:
        self.binary = require_package_command("exim4", "exim4-daemon-heavy")
        require_command("update-exim4.conf", "exim4-config")
        self.confdir = self.work / "exim4"
        self.output = self.work / "exim4.conf"
        self.last_session = ""
        if self.confdir.exists():
            shutil.rmtree(self.confdir)
        shutil.copytree(SYSTEM, self.confdir, symlinks=True)
        (self.confdir / "exim4.conf.localmacros").unlink(missing_ok=True)
        (self.confdir / "conf.d" / "main" / "000_localmacros").unlink(missing_ok=True)
        settings = {
            "dc_eximconfig_configtype": "internet",
            "dc_other_hostnames": self.domain,
            "dc_local_interfaces": "127.0.0.1",
            "dc_relay_nets": "",
            "dc_use_split_config": "true" if self.split else "false",
            "CFILEMODE": "640",  # the generated configuration will hold a database password
        }
        (self.confdir / "update-exim4.conf.conf").write_text("".join(f"{k}='{v}'\n" for k, v in settings.items()))
        macros = "conf.d/main/000_localmacros" if self.split else "exim4.conf.localmacros"
        self.add_files({macros: self.admin_macros()})
        self.template = (self.confdir / "exim4.conf.template").read_text()

    def admin_macros(self) -> str:
        """The admin's own localmacros, which quotagate's must leave alone: no reverse DNS for the
        fake clients, and Debian's CONFDIR pointed at the copy."""
        return f"MAIN_HOST_LOOKUP =\nCONFDIR = {self.confdir}\n"

    def add_files(self, files: dict[str, str]) -> None:
        """Files as ``exim-config --debian --write`` leaves them, relative to the copy."""
        for name, text in files.items():
            path = self.confdir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o644)

    def add_mailbox_router(self, router: str, quotagate_router: str = "") -> None:
        """The admin's router for the test domain's mailboxes, where Debian's mailbox routers are;
        in a non-split configuration, quotagate's router is pasted before it, as its file says."""
        if self.split:
            self.add_files({"conf.d/router/890_mailboxes": router})
            return
        assert "\nuserforward:\n" in self.template
        self.template = self.template.replace("\nuserforward:\n", f"\n{quotagate_router}\n{router}\nuserforward:\n", 1)

    def build(self) -> Path:
        """update-exim4.conf from the copy, then Exim's own check of the result."""
        template = self.template
        if not self.split and not (SYSTEM / "exim4.conf.localmacros").exists():
            template = (self.confdir / "exim4.conf.localmacros").read_text() + template
        (self.confdir / "exim4.conf.template").write_text(template)
        done = subprocess.run(
            ["update-exim4.conf", "-d", str(self.confdir), "-o", str(self.output)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        check = subprocess.run([self.binary, "-C", str(self.output), "-bV"], capture_output=True, text=True)
        assert check.returncode == 0, f"exim rejects Debian's generated config:\n{check.stdout}{check.stderr}"
        return self.output

    def session(self, client: tuple[str, ...], *rcpts: str) -> list[str]:
        """``exim -bh``: a fake SMTP session from ``client``; the reply to each RCPT."""
        lines = ["EHLO client.test", "MAIL FROM:<sender@example.net>"] + [f"RCPT TO:<{r}>" for r in rcpts] + ["QUIT"]
        done = subprocess.run(
            [self.binary, "-C", str(self.output), "-bh", *client],
            input="\r\n".join(lines) + "\r\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.last_session = done.stdout + done.stderr  # -bh logs to stderr
        return rcpt_replies(done.stdout, len(rcpts))

    def output_is_private(self) -> bool:
        """The generated configuration is root:Debian-exim and unreadable to others."""
        st = self.output.stat()
        return (
            st.st_uid == 0
            and st.st_gid == grp.getgrnam("Debian-exim").gr_gid
            and not st.st_mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP)
        )
