"""A private Postfix, beside Debian's Exim: own config, queue, log and loopback port.

Debian's ``postfix`` and ``exim4-daemon-heavy`` conflict as packages, so Postfix is never installed:
its .deb is fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into a cache
(/var/tmp/quotagate-postfix-pkg, one tree per .deb file name). The unpacked daemons link against
``libpostfix-*.so`` through a RUNPATH of /usr/lib/postfix, so they run with ``LD_LIBRARY_PATH``
pointing into the tree; ``import_environment`` passes it on from master(8) to its children.

dpkg -x runs no maintainer scripts: the ``postfix`` user and ``postdrop`` group are created here
when missing, and the queue directory layout is made by hand with the owners Postfix checks.
master(8) runs in the foreground (``-d``) and is stopped with SIGTERM, which it passes on.
Mail for the test domain goes to maildirs through the ``virtual`` delivery agent as uid/gid 5000.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.exim import MAIL_UID
from tests.servers.install import apt_install, unavailable
from tests.servers.process import free_port, private_dir, stop, wait_for_port

PKG_CACHE = Path("/var/tmp/quotagate-postfix-pkg")
DOMAIN = "example.org"
MAIL_OWNER = "postfix"
SETGID_GROUP = "postdrop"
# The queue layout post-install(1) would make: (name, owner, group, mode).
QUEUE_DIRS = [
    *((name, MAIL_OWNER, "root", 0o700) for name in ("active", "bounce", "corrupt", "defer", "deferred")),
    *((name, MAIL_OWNER, "root", 0o700) for name in ("flush", "hold", "incoming", "private", "saved", "trace")),
    ("maildrop", MAIL_OWNER, SETGID_GROUP, 0o730),
    ("public", MAIL_OWNER, SETGID_GROUP, 0o710),
    ("pid", "root", "root", 0o755),
]
# Where messages wait before delivery (or after failing it).
WAITING = ("maildrop", "incoming", "active", "deferred", "hold")
DAEMONS = ("master", "smtpd", "cleanup", "qmgr", "trivial-rewrite", "virtual", "postlogd", "bounce")

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {conf}
daemon_directory = {root}/usr/lib/postfix/sbin
command_directory = {root}/usr/sbin
meta_directory = {root}/etc/postfix
shlib_directory = {root}/usr/lib/postfix
queue_directory = {work}/queue
data_directory = {work}/data
mail_owner = {mail_owner}
setgid_group = {setgid_group}
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C POSTLOG_SERVICE POSTLOG_HOSTNAME
  LD_LIBRARY_PATH={root}/usr/lib/postfix
maillog_file = {work}/maillog
myhostname = quotagate.test
mydomain = quotagate.test
myorigin = quotagate.test
mydestination =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
alias_maps =
alias_database =
local_recipient_maps =
local_transport = error:local delivery is disabled
default_transport = error:outbound mail is disabled
relay_transport = error:outbound mail is disabled
sendmail_path = {root}/usr/sbin/sendmail
newaliases_path = {root}/usr/bin/newaliases
mailq_path = {root}/usr/bin/mailq
manpage_directory = {root}/usr/share/man
readme_directory = no
html_directory = no
biff = no
smtputf8_enable = no
smtpd_tls_security_level = none
smtp_tls_security_level = none
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {maildirs}
virtual_mailbox_maps = texthash:{conf}/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{uid}
virtual_minimum_uid = 100
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = {restrictions}
smtpd_policy_service_default_action = DUNNO
{extra}
"""

# As Debian's master.cf, minus chroot, TLS, submission and the system's port 25.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n - 0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n - - trivial-rewrite
bounce     unix  - - n - 0 bounce
defer      unix  - - n - 0 bounce
trace      unix  - - n - 0 bounce
verify     unix  - - n - 1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n - - proxymap
proxywrite unix  - - n - 1 proxymap
smtp       unix  - - n - - smtp
relay      unix  - - n - - smtp
showq      unix  n - n - - showq
error      unix  - - n - - error
retry      unix  - - n - - error
discard    unix  - - n - - discard
local      unix  - n n - - local
virtual    unix  - n n - - virtual
lmtp       unix  - - n - - lmtp
anvil      unix  - - n - 1 anvil
scache     unix  - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


@dataclass
class Postfix:
    root: Path
    work: Path
    port: int
    maildirs: Path
    mailboxes: dict[str, str] = field(default_factory=dict)
    master_pid: int = 0  # also the process group of every Postfix daemon it runs

    @property
    def config_directory(self) -> Path:
        return self.work / "conf"

    def maildir(self, address: str) -> Path:
        """The maildir of a known mailbox (``mailboxes`` maps each address to its folder)."""
        return self.maildirs / self.mailboxes[address.lower()] / "Maildir"

    def smtp(self, rcpt: str, body: bytes = b"Subject: test\r\n\r\nhello\r\n", size: int | None = None) -> int:
        """A real SMTP transaction; returns the RCPT reply code (and sends the message on 250)."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            client.ehlo("client.test")
            assert client.has_extn("size"), "Postfix should advertise SIZE"
            options = [f"SIZE={size}"] if size else []
            code, reply = client.mail("sender@example.net", options)
            assert code == 250, reply
            code, _ = client.rcpt(rcpt)
            if code == 250:
                client.data(body)
            return code

    def delivered(self, address: str, seconds: float = 10) -> list[Path]:
        """The messages in the mailbox's ``new/``, waiting up to ``seconds`` for the first one."""
        new = self.maildir(address) / "new"
        deadline = time.monotonic() + seconds
        while True:
            found = sorted(new.iterdir()) if new.is_dir() else []
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def queue_count(self) -> int:
        """Messages not yet delivered (or deferred), counted in the queue directories."""
        queue = self.work / "queue"
        return sum(len(files) for name in WAITING for _, _, files in os.walk(queue / name))

    def log(self) -> str:
        path = self.work / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def logged(self, text: str, seconds: float = 5) -> bool:
        """Whether ``text`` shows up in the log within ``seconds`` (postlogd writes asynchronously)."""
        deadline = time.monotonic() + seconds
        while text not in self.log():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


@contextmanager
def private_postfix(
    restrictions: str = "permit_mynetworks, reject_unauth_destination",
    mailboxes: dict[str, str] | None = None,
    main: str = "",
    master: str = "",
) -> Iterator[Postfix]:
    """A running private Postfix on 127.0.0.1.

    ``restrictions`` is ``smtpd_recipient_restrictions``; ``mailboxes`` maps each deliverable
    address of example.org to its folder, relative to ``maildirs`` (default: user@example.org in
    ``user``); ``main`` is added to main.cf as is, ``master`` to master.cf.
    """
    if os.geteuid() != 0:
        unavailable("a private Postfix needs root (its own users, queue owners, uid 5000 deliveries)")
    try:
        root = unpacked_postfix()
        ensure_accounts()
        ensure_libraries(root)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        unavailable(f"cannot unpack a private Postfix: {exc}")
    if mailboxes is None:
        mailboxes = {"user@example.org": "user"}
    boxes = {address.lower(): folder for address, folder in mailboxes.items()}
    work = private_dir("postfix")
    server = Postfix(root=root, work=work, port=free_port(), maildirs=work / "maildirs", mailboxes=boxes)
    proc: subprocess.Popen[bytes] | None = None
    try:
        try:
            configure(server, restrictions, main, master)
            proc = start(server)
            server.master_pid = proc.pid
        except (RuntimeError, OSError) as exc:
            unavailable(f"cannot start a private Postfix: {exc}")
        yield server
    finally:
        if proc is not None:
            shut_down(proc)
        shutil.rmtree(work, ignore_errors=True)


def unpacked_postfix() -> Path:
    """Debian's postfix package, downloaded and unpacked once (the tree is keyed by the .deb's name)."""
    PKG_CACHE.mkdir(parents=True, exist_ok=True)
    debs = list(PKG_CACHE.glob("postfix_*.deb"))
    if not debs:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        download = ["apt-get", "download", "-q", "postfix"]
        for args in (download, ["apt-get", "update", "-qq"], download):  # update only if the lists are stale
            done = subprocess.run(args, cwd=PKG_CACHE, env=env, capture_output=True, text=True, timeout=300)
            debs = list(PKG_CACHE.glob("postfix_*.deb"))
            if debs:
                break
        else:
            raise RuntimeError(f"apt-get download postfix failed: {done.stdout}{done.stderr}")
    deb = max(debs, key=lambda path: path.stat().st_mtime)
    tree = PKG_CACHE / f"root-{deb.name.removesuffix('.deb')}"
    if (tree / ".unpacked").exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)  # half unpacked by an interrupted run
    scratch = Path(tempfile.mkdtemp(prefix="unpacking-", dir=PKG_CACHE))
    try:
        done = subprocess.run(["dpkg", "-x", str(deb), str(scratch)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"dpkg -x {deb} failed: {done.stderr}")
        (scratch / ".unpacked").write_text(deb.name + "\n")
        scratch.chmod(0o755)
        try:
            scratch.rename(tree)
        except OSError:
            if not (tree / ".unpacked").exists():  # another run won the race only if its tree is complete
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return tree


def ensure_accounts() -> None:
    """The ``postfix`` user and ``postdrop`` group Debian's maintainer scripts would have made."""
    try:
        grp.getgrnam(SETGID_GROUP)
    except KeyError:
        create(["groupadd", "--system", SETGID_GROUP])
    try:
        pwd.getpwnam(MAIL_OWNER)
    except KeyError:
        home = ["--no-create-home", "--home-dir", "/var/spool/postfix", "--shell", "/usr/sbin/nologin"]
        create(["useradd", "--system", "--user-group", *home, "--comment", "Postfix", MAIL_OWNER])


def create(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if done.returncode not in (0, 9):  # 9: made meanwhile by a parallel run
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr}")


def library_path(root: Path) -> dict[str, str]:
    return {**os.environ, "LD_LIBRARY_PATH": str(root / "usr/lib/postfix")}


def ensure_libraries(root: Path) -> None:
    """Install the package's library dependencies if missing (plain libraries conflict with nothing)."""
    missing = unresolved(root)
    if not missing:
        return
    done = subprocess.run(["dpkg-deb", "-f", str(deb_of(root)), "Depends"], capture_output=True, text=True)
    wanted = [dep.split("|")[0].split("(")[0].strip() for dep in done.stdout.split(",")]
    libraries = [name for name in wanted if name.startswith("lib") and not installed(name)]
    if libraries:
        apt_install(*libraries)
    missing = unresolved(root)
    if missing:
        raise RuntimeError(f"libraries not found even after installing {libraries}: {missing}")


def deb_of(root: Path) -> Path:
    return PKG_CACHE / (root / ".unpacked").read_text().strip()


def installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return done.stdout.endswith("installed") and "not-installed" not in done.stdout


def unresolved(root: Path) -> list[str]:
    """``ldd``'s "not found" lines for the daemons and commands we run."""
    binaries = [root / "usr/lib/postfix/sbin" / name for name in DAEMONS]
    binaries += sorted((root / "usr/lib/postfix").glob("libpostfix-*.so"))
    missing: set[str] = set()
    for binary in binaries:
        done = subprocess.run(["ldd", str(binary)], env=library_path(root), capture_output=True, text=True)
        missing.update(line.split()[0] for line in done.stdout.splitlines() if "not found" in line)
    return sorted(missing)


def configure(server: Postfix, restrictions: str, main: str, master: str = "") -> None:
    work, conf = server.work, server.config_directory
    conf.mkdir()
    queue = work / "queue"
    queue.mkdir()  # root-owned 0755, like /var/spool/postfix
    for name, owner, group, mode in QUEUE_DIRS:
        (queue / name).mkdir()
        shutil.chown(queue / name, owner, group)
        (queue / name).chmod(mode)
    (work / "data").mkdir(mode=0o700)
    shutil.chown(work / "data", MAIL_OWNER, MAIL_OWNER)
    server.maildirs.mkdir()
    os.chown(server.maildirs, MAIL_UID, MAIL_UID)
    (conf / "vmailbox").write_text("".join(f"{a} {f}/Maildir/\n" for a, f in server.mailboxes.items()))
    (conf / "main.cf").write_text(
        MAIN_CF.format(
            conf=conf,
            root=server.root,
            work=work,
            mail_owner=MAIL_OWNER,
            setgid_group=SETGID_GROUP,
            domain=DOMAIN,
            maildirs=server.maildirs,
            uid=MAIL_UID,
            restrictions=" ".join(restrictions.split()),
            extra=main,
        )
    )
    (conf / "master.cf").write_text(MASTER_CF.format(port=server.port) + master)
    # Postfix waits (in 300 ms naps) until a file it loads is more than a second old: a file edit
    # may still be under way. Backdate ours so master and smtpd start at once.
    past = time.time() - 60
    for name in ("main.cf", "master.cf", "vmailbox"):
        os.utime(conf / name, (past, past))
    (work / "maillog").touch()


def start(server: Postfix) -> subprocess.Popen[bytes]:
    master = server.root / "usr/lib/postfix/sbin/master"
    output = server.work / "master.out"
    with output.open("ab") as out:
        proc = subprocess.Popen(
            [str(master), "-c", str(server.config_directory), "-d"],
            env=library_path(server.root),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(server.port, proc, output, seconds=20)
    except RuntimeError as exc:
        shut_down(proc)
        raise RuntimeError(f"{exc}\n{server.log()[-3000:]}") from None
    return proc


def shut_down(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to master (it passes it on to its children), then make sure none of them is left."""
    stop(proc)
    deadline = time.monotonic() + 10
    while running_in_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if running_in_group(proc.pid):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def running_in_group(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group: master's is its own pid.

    Daemons that outlive master are re-parented to init, which may take a while to reap them.
    """
    found = []
    # Listed by hand: pathlib's glob stats each /proc/PID/stat, and one that exits meanwhile
    # raises ESRCH there, which its existence test does not expect.
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(pid))
    return found
