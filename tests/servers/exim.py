"""A private Exim (Debian's exim4-daemon-heavy): own config, spool, logs and loopback port.

Debian's Exim re-executes itself to deliver and drops privilege for a config given with -C unless
that config is listed in /etc/exim4/trusted_configs, owned by root and not writable by others.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from quotagate.publish import lsearch_key
from tests.servers.install import require_package_command, unavailable

TRUSTED = Path("/etc/exim4/trusted_configs")
MAIL_UID = 5000

CONFIG = """\
primary_hostname = quotagate.test
domainlist local_domains = {domains}
spool_directory = {work}/spool
log_file_path = {work}/log/%slog
pid_file_path = {work}/exim.pid
daemon_smtp_ports = {ports}
local_interfaces = {address}
exim_user = Debian-exim
exim_group = Debian-exim
host_lookup =
rfc1413_hosts =
message_size_limit = {size_limit}
acl_smtp_rcpt = acl_check_rcpt
smtp_accept_max_nonmail = 1000
{main}

begin acl

{acls}
acl_check_rcpt:
  deny    message = relay not permitted
          !domains = +local_domains
{acl}
  require verify = recipient
{verified_acl}
  accept

begin routers

{routers}
mailboxes:
  driver = accept
  domains = +local_domains
  # Lookup results are untainted: the folder comes from the users file, never from the address.
  address_data = ${{lookup{{${{lc:$local_part@$domain}}}}lsearch{{{work}/users}}{{$value}}fail}}
  transport = maildir_delivery

begin transports

{maildir_delivery}
{transports}

begin retry
*  *  F,1h,10m
"""


class Exim:
    def __init__(
        self, work: Path, port: int, maildirs: Path, *, address: str = "127.0.0.1", launcher: Sequence[str] = ()
    ) -> None:
        """Listening on ``address``; ``launcher`` runs the daemon (``ip netns exec NAME``: on
        another test host, whose address ``address`` is)."""
        self.binary = require_package_command("exim4", "exim4-daemon-heavy")
        try:
            pwd.getpwnam("Debian-exim")
        except KeyError:
            unavailable("the Debian-exim user is missing: is exim4-daemon-heavy installed?")
        self.work = work
        self.port = port
        self.maildirs = maildirs
        self.address = address
        self.launcher = list(launcher)
        self.config = work / "exim.conf"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.last_session = ""
        for sub in ("spool", "log"):
            (work / sub).mkdir(parents=True, exist_ok=True)
            shutil.chown(work / sub, "Debian-exim", "Debian-exim")
        work.chmod(0o755)

    def configure(
        self,
        *,
        users: dict[str, str],
        main: str = "",
        acl: str = "",
        verified_acl: str = "",
        routers: str = "",
        transport: str = "",
        acls: str = "",
        domains: str = "example.org",
        transports: str = "",
        size_limit: str = "50M",
        more_ports: tuple[int, ...] = (),
    ) -> None:
        """Write the config (root-owned, 0644) and list it as trusted.

        ``users`` maps each deliverable address to its folder, relative to the maildirs; ``acl``
        goes into acl_smtp_rcpt before ``require verify = recipient``, ``verified_acl`` after it
        (where the policy method's statements go);
        ``domains`` are the local ones; ``transports`` are more transports, for routers given
        in ``routers``; ``size_limit`` is message_size_limit (0: no limit, and no SIZE advertised);
        ``more_ports`` are listened on too (on the same address as the main one).
        """
        (self.work / "users").write_text("".join(f"{lsearch_key(u)}: {d}\n" for u, d in users.items()))
        text = CONFIG.format(
            domains=domains,
            work=self.work,
            address=self.address,
            ports=" : ".join(str(p) for p in (self.port, *more_ports)),
            main=main,
            acl=indent(acl),
            verified_acl=indent(verified_acl),
            acls=acls,
            routers=routers,
            maildir_delivery=self._maildir_transport("maildir_delivery", "", transport),
            transports=transports,
            size_limit=size_limit,
        )
        self.config.write_text(text)
        self.config.chmod(0o644)
        trust(self.config)
        check = subprocess.run([self.binary, "-C", str(self.config), "-bV"], capture_output=True, text=True)
        if check.returncode != 0:
            raise AssertionError(f"exim rejects the config:\n{check.stdout}{check.stderr}\n{text}")

    def fake_session(self, *rcpts: str, size: int | None = None) -> list[str]:
        """``exim -bh``: a fake SMTP session; returns the reply to each RCPT."""
        mail = "MAIL FROM:<sender@example.net>" + (f" SIZE={size}" if size else "")
        lines = ["EHLO client.test", mail] + [f"RCPT TO:<{r}>" for r in rcpts] + ["QUIT"]
        done = subprocess.run(
            [self.binary, "-C", str(self.config), "-bh", "127.0.0.1"],
            input="\r\n".join(lines) + "\r\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.last_session = done.stdout + done.stderr  # -bh logs to stderr: keep it for failing asserts
        return rcpt_replies(done.stdout, len(rcpts))

    def submit(self, sender: str, *rcpts: str, message: bytes) -> str:
        """A message handed to this Exim on its command line (as a local program would), delivered
        at once (``-odi``); returns what Exim said."""
        done = subprocess.run(
            [self.binary, "-C", str(self.config), "-odi", "-f", sender, "--", *rcpts],
            input=message,
            capture_output=True,
            timeout=120,
        )
        said = (done.stdout + done.stderr).decode(errors="replace")
        assert done.returncode == 0, said
        return said

    def start(self) -> None:
        self.daemon = subprocess.Popen([*self.launcher, self.binary, "-C", str(self.config), "-bdf", "-odi"])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.address, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"exim did not listen on {self.address}:{self.port}: {self.log('main')}")

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.terminate()
            self.daemon.wait(timeout=15)
            self.daemon = None

    def smtp(self, rcpt: str, body: bytes = b"Subject: test\r\n\r\nhello\r\n", size: int | None = None) -> int:
        """A real SMTP transaction; returns the RCPT reply code (and sends the message on 250).

        A transaction that fails or stalls reports what Exim logged and which Exim processes were
        still running: a stall seen once in CI under load left nothing else to go on."""
        step = "connect"
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
                step = "EHLO"
                client.ehlo("client.test")
                options = [f"SIZE={size}"] if size else []
                step = "MAIL"
                code, _ = client.mail("sender@example.net", options)
                assert code == 250
                step = "RCPT"
                code, _ = client.rcpt(rcpt)
                if code == 250:
                    step = "DATA"
                    client.data(body)
                step = "QUIT"
            return code
        except (OSError, smtplib.SMTPException) as error:
            raise AssertionError(f"SMTP to exim failed at {step}: {error!r}\n{self.diagnosis()}") from error

    def diagnosis(self) -> str:
        """Exim's logs and its running processes, for a failing assertion."""
        processes = subprocess.run(["ps", "-eo", "pid,ppid,etimes,wchan:20,args"], capture_output=True, text=True)
        running = "\n".join(line for line in processes.stdout.splitlines() if "exim" in line or "quotagate" in line)
        return f"mainlog:\n{self.log('main')}\npaniclog:\n{self.log('panic')}\nprocesses:\n{running}"

    def deliver(self, rcpt: str, data: bytes) -> bool:
        """A local submission delivered at once (``-odi``), as the config routes it: True when
        delivered, False when appendfile deferred it over quota (it is then removed from the queue)."""
        args = [self.binary, "-C", str(self.config), "-odi", "-f", "sender@example.net", rcpt]
        done = subprocess.run(args, input=data, capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            raise AssertionError(f"exim refused the submission:\n{done.stdout!r}{done.stderr!r}")
        queued = self.queued()
        if not queued:
            return True
        subprocess.run([self.binary, "-C", str(self.config), "-Mrm", *queued], capture_output=True, check=True)
        deferrals = [line for line in self.log("main").splitlines() if any(f"{i} == " in line for i in queued)]
        if not deferrals or not all("mailbox is full (MTA-imposed" in line for line in deferrals):
            raise AssertionError(f"exim deferred for another reason: {deferrals}")
        return False

    def queued(self) -> list[str]:
        """The ids of the messages in the queue."""
        out = subprocess.run([self.binary, "-C", str(self.config), "-bpr"], capture_output=True, text=True).stdout
        return [line.split()[2] for line in out.splitlines() if line[:1] == " " and len(line.split()) >= 3]

    def queue_count(self) -> int:
        out = subprocess.run([self.binary, "-C", str(self.config), "-bpc"], capture_output=True, text=True)
        return int(out.stdout.strip() or 0)

    def log(self, name: str) -> str:
        path = self.work / "log" / f"{name}log"
        return path.read_text(errors="replace") if path.exists() else ""

    def folder_router(self, suffix: str) -> str:
        """A router for :meth:`configure`'s ``routers`` taking ``local<suffix>@`` (Exim's
        ``local_part_suffix``: ``+*`` for any detail) to :meth:`folder_transport`'s transport."""
        return _FOLDER_ROUTER.format(suffix=suffix, work=self.work)

    def folder_transport(self, folder: str, options: str = "") -> str:
        """A transport for :meth:`configure`'s ``transports`` saving into the Maildir++ folder
        ``folder`` of the mailbox routed to, with ``options`` (lines) besides."""
        return self._maildir_transport("folder_delivery", f"/{folder}", options)

    def _maildir_transport(self, name: str, folder: str, options: str) -> str:
        return _MAILDIR_TRANSPORT.format(
            name=name, maildirs=self.maildirs, folder=folder, uid=MAIL_UID, options=indent(options)
        )


_FOLDER_ROUTER = """\
folder:
  driver = accept
  domains = +local_domains
  local_part_suffix = {suffix}
  address_data = ${{lookup{{${{lc:$local_part@$domain}}}}lsearch{{{work}/users}}{{$value}}fail}}
  transport = folder_delivery
"""
# A Maildir transport: the mailbox's own (maildir_delivery) or one of its folders.
_MAILDIR_TRANSPORT = """\
{name}:
  driver = appendfile
  directory = {maildirs}/$address_data/Maildir{folder}
  maildir_format
  maildir_tag = ,S=$message_size
  create_directory
  user = {uid}
  group = {uid}
  mode = 0644
{options}"""


def indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def trust(config: Path) -> None:
    lines = TRUSTED.read_text().splitlines() if TRUSTED.exists() else []
    if str(config) not in lines:
        with TRUSTED.open("a") as f:
            f.write(f"{config}\n")
        TRUSTED.chmod(0o644)


def untrust(config: Path) -> None:
    if TRUSTED.exists():
        kept = [line for line in TRUSTED.read_text().splitlines() if line != str(config)]
        TRUSTED.write_text("".join(f"{line}\n" for line in kept))


def rcpt_replies(transcript: str, count: int) -> list[str]:
    """The replies after EHLO and MAIL in an ``exim -bh`` transcript: one per RCPT."""
    replies: list[str] = []
    current: list[str] = []
    for line in transcript.splitlines():
        if len(line) >= 4 and line[:3].isdigit() and line[3] in " -":
            current.append(line)
            if line[3] == " ":
                replies.append("\n".join(current))
                current = []
    # replies: greeting, EHLO, MAIL, RCPT..., QUIT
    return replies[3 : 3 + count]


def owned_by_mail_user(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), MAIL_UID, MAIL_UID)
    os.chown(path, MAIL_UID, MAIL_UID)
