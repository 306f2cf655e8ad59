"""Benchmark ``quotagate serve`` against Dovecot's quota-status, alone and behind a real Exim.

Run it by hand, as root, from the project root (it is not part of the test suite)::

    .venv/bin/python benchmarks/policy.py [--mailboxes 10000] [--requests N] [--quick]

It needs Debian's ``exim4-daemon-heavy`` for the Exim part (skipped, and said so, when it is
missing) and installs ``dovecot-core`` when ``/usr/lib/dovecot/quota-status`` is missing, with a
``/usr/sbin/policy-rc.d`` that keeps the system service from starting (created only if there is
none, and removed afterwards only if this script created it). Everything listens on 127.0.0.1.

What it does, in one run, against the same spool:

1. **The spool.** ``--mailboxes`` (10,000) Maildir++ mailboxes under
   ``/var/tmp/quotagate-bench-policy/spool-<N>`` (``{domain}/{local}/Maildir``), generated once
   from a fixed seed and reused while its marker matches. Each has INBOX (and often ``.Sent``)
   messages whose names carry ``,S=<size>`` (sparse files of that apparent size), a
   ``maildirsize`` that agrees with them, and a byte quota: about 6% are over quota, 1% exactly
   at it, 10% have less than 200 KB left (the declared size decides), the rest have plenty.
   Files belong to uid/gid 5000.
2. **quotagate serve.** ``quotagate mailbox import`` of a CSV (``address,quota,messages,path``)
   into a fresh SQLite store, ``quotagate scan``, then ``quotagate --config CFG serve`` with
   ``[policy] metrics = ""`` and ``reservation_seconds = 0``: with reservations on, every
   accepted check with a size holds room, so repeated requests would turn into refusals and the
   answers would depend on the order of requests. Other keys keep their defaults (uvloop if
   installed, ``refresh_seconds = 30``, ``use_maildirsize = true``, refusals logged at INFO).
3. **Dovecot quota-status.** ``dovecot -c FILE -F`` with a private config: own base_dir,
   state_dir and log, ``protocols =`` empty, a passwd-file userdb listing every mailbox with its
   home, uid/gid 5000 and ``userdb_quota_rule=*:bytes=<quota>`` (the same limit quotagate has),
   ``quota = maildir:User quota``, ``quota_grace = 0``, ``quota_status_success = DUNNO``,
   ``quota_status_nouser = DUNNO``, ``quota_status_overquota`` (and ``_toolarge``) ``= "552 5.2.2
   Mailbox is full"`` -- quotagate's reply -- and ``service quota-status { executable =
   quota-status -p postfix; client_limit = 1 }`` on a loopback port, as Dovecot documents it.
4. **Consistency.** 200 random (address, size) requests plus every over-quota mailbox without a
   size are sent to both servers; each answer is compared with the other server's and with what
   the generator knows (refuse when ``used + size > quota``; without a size, when ``used >=
   quota``).
5. **Policy load.** One load generator (``--procs`` forked processes, default 1, asyncio with
   uvloop and bare protocols), used identically for every server, in four modes: persistent
   connections (1, 8 and 64 of them, each sending request after request and waiting for each
   answer, as Postfix does, with Postfix's full set of 31 attributes) and a new connection per
   request (8 concurrent clients, Exim ``${readsocket}`` style: connect, send the four attributes
   quotagate's ACL sends, half-close, read to end of file). Each row runs ``--warmup`` seconds
   unmeasured, then ``--seconds`` (or until ``--requests`` answers, capped at ``--cap`` seconds);
   with ``--rounds N``, in N slices in which the servers take turns, added up (on a shared VM
   whose speed drifts within a row, one pass per server compares moments, not servers).
   Recipients are drawn from all mailboxes (seeded), sizes from a Pareto distribution (10%
   ``size=0``). Every row also runs against a *null server* (Python + uvloop, answers DUNNO at
   once without reading the request): the ceiling of generator and kernel, so that a row limited
   by the generator shows. It prints req/s, p50 and p99 latency, the server's CPU time per
   request (summed over all its processes, from /proc), the generator's own CPU use, and a table
   of the ratios quotagate/dovecot (req/s) and dovecot/quotagate (latency).
6. **Exim.** A private Exim (own config, spool, logs, ``exim -bdf`` on a loopback port; the
   config is listed in ``/etc/exim4/trusted_configs`` while it runs, and only then) receives 8
   parallel SMTP sessions (EHLO, MAIL FROM with SIZE=, then RCPT after RCPT, each waiting for its
   reply; RSET and a new MAIL every 500 RCPTs; ``recipients_max = 0``,
   ``smtp_accept_max_nonmail = 100000``; nothing is ever delivered) in these configurations: no
   check (``require verify = recipient`` only, the recipient routed by ``dsearch``); quotagate's
   generated ACL (``quotagate exim-config --method policy --section acl``); the same ACL asking
   Dovecot's quota-status; the same ACL asking the null server (the cost of ``${readsocket}``
   itself); Exim's own ``verify = recipient/quota`` (appendfile transport with
   ``maildir_use_size_file`` and each mailbox's quota from a DBM file), measured uncached (a fresh
   hints database, every address checked once) and then cached (the addresses the first pass
   checked, again). No check and quotagate's ACL also run with 1 session, where nothing queues.
   It prints RCPT/s, p50/p99 RCPT latency, the replies, how many RCPTs were refused against how
   many the spool says should be, and the CPU per RCPT of Exim and of the policy server.

8. **Another revision** (``--compare REV``): quotagate's ``src`` as of git revision REV, run
   with the same virtualenv on a store of its own (imported and scanned by it), in every policy
   row; a table of today's req/s, p99 and CPU per request against it.
9. **Without the local-user check** (``--unchecked``): today's daemon again, on the same store,
   with ``[policy] local_users = []``, in every policy row; the same table as ``--compare``'s,
   with and without the kernel lookup of who owns each connection (the new-connection row's cost).
10. **On a unix socket** (``--unix``): today's daemon again, on the same store, listening on a
   unix socket (guarded by its mode: no kernel lookup), in every policy row; the same table against
   today's TCP port, and, with ``--compare``, the unix socket against that revision's TCP port:
   what an MTA on the same host gains by using it.
7. **Workers** (``--workers 1,2``): ``quotagate serve --workers N`` with ``[shared] url =
   --redis`` (keys under a prefix of the run's own) on the same store, for each N, in every policy
   row beside the daemon without ``[shared]``: a table of req/s, p99 and CPU per request (all the
   workers' processes), N workers against the plain daemon; and behind Exim, a row each.

Targets (printed as met / NOT MET): quotagate at least 10x Dovecot's requests per second and a
lower p99 in every policy row; quotagate's ACL adds under 1 ms to Exim's median RCPT latency;
with quotagate, Exim keeps at least half of its no-check RCPT rate.

The machine's cores are shared by the servers and the load generator: the generator's CPU use is
printed with every row, and the load average before the run, so a generator-bound or disturbed
row can be seen. ``--quick`` shortens every row
(same spool). The run's files (store, configs, logs) are kept in
``/var/tmp/quotagate-bench-policy/run`` for inspection and replaced by the next run. Every
process started is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import multiprocessing
import multiprocessing.connection
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from _harness import (
    HOST,
    Interrupted,
    Processes,
    exported_source,
    free_port,
    machine,
    percentile,
    proc_stat,
    run,
    stop_on_sigterm,
    tail,
    verdict,
)
from _spool import keep, write_message

from quotagate.config import load_config
from quotagate.mta import exim as exim_config

GENERATOR_VERSION = 1
SEED = 20240917
DEFAULT_DIR = Path("/var/tmp/quotagate-bench-policy")
MARKER = ".quotagate-bench-policy.json"
DOMAINS = ("example.com", "example.net", "example.org", "mail.example.test")
MAIL_UID = 5000
REJECT_REPLY = "552 5.2.2 Mailbox is full"
QUOTAGATE = Path(sys.executable).parent / "quotagate"
QUOTA_STATUS = Path("/usr/lib/dovecot/quota-status")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
TRUSTED = Path("/etc/exim4/trusted_configs")
# Mailbox classes and their shares. "over": used > quota; "full": used == quota; "near": under
# 200 KB left, so the declared size decides; "roomy": room to spare.
CLASSES = ("over", "full", "near", "roomy")
CLASS_SHARES = (0.06, 0.01, 0.10, 0.83)
SIZE_MIN, SIZE_SHAPE, SIZE_CAP = 2_000, 1.3, 3 << 20  # message sizes on disk
REQ_SIZE_MIN, REQ_SIZE_SHAPE, REQ_SIZE_CAP = 3_000, 1.2, 2 << 20  # declared sizes in requests
NO_SIZE_SHARE = 0.10  # requests with size=0 (no SIZE= declared)
HEADER = b"Return-Path: <sender@example.net>\nFrom: Sender <sender@example.net>\nSubject: policy benchmark\n\n"
SMTP_BATCH = 500  # RCPTs per transaction before RSET + MAIL

Kind = Literal["policy", "oneshot", "smtp"]


# -- the spool ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """One mailbox as the generator made it: the ground truth every server is checked against."""

    address: str
    quota: int
    bytes: int
    messages: int
    kind: str
    files: tuple[tuple[str, str, int], ...]  # (folder dir relative to Maildir, file name, size)

    @property
    def local(self) -> str:
        return self.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    def refuses(self, size: int) -> bool:
        """Inclusive check without grace: refuse when the message does not fit (size 0: when full)."""
        return self.bytes >= self.quota if size <= 0 else self.bytes + size > self.quota


@dataclass(frozen=True)
class Spool:
    root: Path
    boxes: list[Box]

    def home(self, box: Box) -> Path:
        return self.root / box.domain / box.local

    def maildir(self, box: Box) -> Path:
        return self.home(box) / "Maildir"


def plan(count: int, seed: int = SEED) -> list[Box]:
    """Every mailbox, its files and its quota; the same for the same arguments (cheap: no I/O)."""
    rng = random.Random(seed)
    boxes = []
    seq = 0
    for i in range(count):
        address = f"user{i:05d}@{DOMAINS[i % len(DOMAINS)]}"
        n = min(80, int(rng.paretovariate(1.1) * 3))
        files = []
        for _ in range(n):
            size = min(SIZE_CAP, int(SIZE_MIN * rng.paretovariate(SIZE_SHAPE)))
            folder = "" if rng.random() < 0.7 else ".Sent/"
            sub = "new" if rng.random() < 0.1 else "cur"
            name = f"{1_700_000_000 + seq}.M{seq % 1_000_000}P{4242}Q{seq}.bench,S={size}"
            if sub == "cur":
                name += ":2,S"
            files.append((f"{folder}{sub}", name, size))
            seq += 1
        used = sum(f[2] for f in files)
        kind = rng.choices(CLASSES, weights=CLASS_SHARES)[0]
        if kind == "over":
            quota = max(1024, used - rng.randint(1, max(1, used // 5)))
            if quota >= used:  # a tiny mailbox: make it over all the same
                quota = used - 1
        elif kind == "full":
            quota = used
        elif kind == "near":
            quota = used + rng.randint(1_000, 200_000)
        else:
            quota = max(used * rng.randint(2, 30), 10 << 20)
        boxes.append(Box(address, quota, used, n, kind, tuple(files)))
    return boxes


def _mkdir(path: Path, mode: int = 0o700) -> None:
    path.mkdir(mode=mode)
    os.chown(path, MAIL_UID, MAIL_UID)


def _generate(root: Path, boxes: list[Box]) -> None:
    """Write every mailbox under ``root`` (which must not exist yet)."""
    started = time.perf_counter()
    for domain in DOMAINS:
        # Readable by Debian-exim: its dsearch router looks mailboxes up here.
        (root / domain).mkdir(mode=0o755)
    for n, box in enumerate(boxes, start=1):
        home = root / box.domain / box.local
        maildir = home / "Maildir"
        _mkdir(home)
        _mkdir(maildir)
        folders = {f[0].rpartition("/")[0] for f in box.files} | {""}
        for folder in sorted(folders):
            base = maildir / folder if folder else maildir
            if folder:
                _mkdir(base)
                (base / "maildirfolder").touch()
                os.chown(base / "maildirfolder", MAIL_UID, MAIL_UID)
            for sub in ("cur", "new", "tmp"):
                _mkdir(base / sub)
        for where, name, size in box.files:
            write_message(os.path.join(maildir, where, name), size, HEADER, MAIL_UID)
        sizefile = maildir / "maildirsize"
        sizefile.write_text(f"{box.quota}S\n{box.bytes} {box.messages}\n")
        os.chown(sizefile, MAIL_UID, MAIL_UID)
        sizefile.chmod(0o600)
        if n % max(1, len(boxes) // 5) == 0:
            print(f"  generated {n}/{len(boxes)} mailboxes", flush=True)
    print(f"  generation took {time.perf_counter() - started:.1f} s", flush=True)


def ensure_spool(base: Path, count: int) -> Spool:
    """Reuse ``base/spool-<count>`` when it was made with these parameters, else generate it."""
    boxes = plan(count)
    root = base / f"spool-{count}"
    params = {"mailboxes": count, "seed": SEED, "version": GENERATOR_VERSION}
    files = sum(b.messages for b in boxes)

    def build(staging: Path) -> None:
        print(f"spool: generating {count} mailboxes, {files} messages in {root} (seed {SEED})", flush=True)
        _generate(staging, boxes)

    if keep(root, params, MARKER, build):
        print(f"spool: reusing {root}")
    return Spool(root, boxes)


# -- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    box: Box
    size: int

    @property
    def refused(self) -> bool:
        return self.box.refuses(self.size)


def draw_requests(boxes: Sequence[Box], count: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        size = (
            0
            if rng.random() < NO_SIZE_SHARE
            else min(REQ_SIZE_CAP, int(REQ_SIZE_MIN * rng.paretovariate(REQ_SIZE_SHAPE)))
        )
        out.append(Request(rng.choice(boxes), size))
    return out


def postfix_request(req: Request, n: int) -> bytes:
    """What Postfix 3.7 sends at RCPT (SMTPD_POLICY_README's attribute list), one request."""
    return (
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
        f"client_address=192.0.2.{n % 250 + 1}\nclient_name=mx{n % 97}.example.net\n"
        f"client_port={20000 + n % 40000}\nreverse_client_name=mx{n % 97}.example.net\n"
        "server_address=127.0.0.1\nserver_port=25\nhelo_name=mx.example.net\n"
        f"sender=sender{n % 1000}@example.net\nrecipient={req.box.address}\nrecipient_count=0\n"
        f"queue_id=\ninstance={n:x}.65f1c0de.{n % 100000}.0\nsize={req.size}\netrn_domain=\nstress=\n"
        "sasl_method=\nsasl_username=\nsasl_sender=\nccert_subject=\nccert_issuer=\nccert_fingerprint=\n"
        "ccert_pubkey_fingerprint=\nencryption_protocol=\nencryption_cipher=\nencryption_keysize=0\n"
        "policy_context=\ncompatibility_level=3.6\nmail_version=3.7.11\n\n"
    ).encode()


def exim_request(req: Request) -> bytes:
    """What quotagate's generated ACL sends through ${readsocket} (size -1: none declared)."""
    size = req.size if req.size > 0 else -1
    return (f"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient={req.box.address}\nsize={size}\n\n").encode()


def action_of(answer: bytes) -> str:
    text = answer.decode("utf-8", "replace").strip()
    return text.removeprefix("action=").splitlines()[0] if text else "(no answer)"


def refuses(action: str) -> bool:
    return action[:1] == "5" or action.upper().startswith("REJECT")


# -- processes ----------------------------------------------------------------------------------


def _connected(where: int | str) -> socket.socket:
    """A connection to a port of HOST, or to the unix socket at a path."""
    if isinstance(where, int):
        return socket.create_connection((HOST, where), timeout=30)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    try:
        sock.connect(where)
    except OSError:
        sock.close()
        raise
    return sock


def wait_for_port(where: int | str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 30) -> None:
    """Until something listens on ``where`` (a port of HOST, or a unix socket's path)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log)}")
        try:
            _connected(where).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {where} after {seconds} s:\n{tail(log)}")


_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, whole_session: bool = False) -> float:
    """CPU (user + system, reaped children included) of a process or of every process in its session."""
    pids = [pid]
    if whole_session:
        pids = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                fields = proc_stat(int(entry.name))
                if fields is not None and fields[3] == str(pid):  # field 6: session id
                    pids.append(int(entry.name))
    total = 0
    for p in pids:
        fields = proc_stat(p)
        if fields is not None:
            total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / _CLOCK_TICK


def machine_busy() -> float:
    """CPU seconds all CPUs spent busy since boot (everything but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / _CLOCK_TICK


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    session: bool  # several processes (Dovecot, Exim): count the CPU of the whole session
    config: Path | None = None
    path: str = ""  # a unix socket's: asked there, not on the port

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid, self.session)

    @property
    def where(self) -> int | str:
        return self.path or self.port

    @property
    def address(self) -> str:
        return f"unix:{self.path}" if self.path else f"{HOST}:{self.port}"


# -- quotagate ----------------------------------------------------------------------------------


def _quotagate_toml(qdir: Path, spool: Spool, port: int, extra: str = "", control: bool = True, path: str = "") -> str:
    """``control``: name a control socket of the run's own (a revision before it had none);
    ``path``: listen on that unix socket instead of the port."""
    listen = f"unix:{path}" if path else f"{HOST}:{port}"
    return (
        f'[store]\nurl = "sqlite:///{qdir}/quotagate.db"\n'
        f'[spool]\nroot = "{spool.root}"\nlayout = "{{domain}}/{{local}}/Maildir"\n'
        f'[policy]\nlisten = ["{listen}"]\nmetrics = ""\nreservation_seconds = 0\n'
        + (f'control_socket = "{qdir}/control-{port}.sock"\n' if control else "")
        + extra
    )


def _mailbox_csv(path: Path, spool: Spool) -> Path:
    path.write_text(
        "address,quota,messages,path\n"
        + "".join(f"{b.address},{b.quota},0,{b.domain}/{b.local}/Maildir\n" for b in spool.boxes)
    )
    return path


def start_quotagate_at(spool: Spool, work: Path, procs: Processes, rev: str) -> Server:
    """quotagate as it was at git revision ``rev`` (its ``src`` exported from this repository, run
    with this virtualenv's Python and libraries), on a store of its own that it imports and scans."""
    qdir = work / f"quotagate-{rev}"
    source = exported_source(rev, qdir / "source")
    port = free_port()
    config = qdir / "quotagate.toml"
    config.write_text(_quotagate_toml(qdir, spool, port, control=False))
    env = {**os.environ, "PYTHONPATH": source}
    base = [sys.executable, "-m", "quotagate", "--config", str(config)]
    run([*base, "mailbox", "import", str(_mailbox_csv(qdir / "mailboxes.csv", spool))], env=env)
    run([*base, "scan"], env=env)
    log = qdir / "serve.log"
    proc = procs.start([*base, "serve"], log, env=env)
    wait_for_port(port, proc, log)
    return Server(f"quotagate@{rev}", port, proc, session=False)


def start_quotagate(spool: Spool, work: Path, procs: Processes) -> tuple[Server, Path]:
    qdir = work / "quotagate"
    qdir.mkdir()
    port = free_port()
    config = qdir / "quotagate.toml"
    config.write_text(_quotagate_toml(qdir, spool, port))
    csv = _mailbox_csv(qdir / "mailboxes.csv", spool)
    base = [str(QUOTAGATE), "--config", str(config)]
    started = time.perf_counter()
    run([*base, "mailbox", "import", str(csv)])
    imported = time.perf_counter()
    run([*base, "scan"])
    scanned = time.perf_counter()
    print(f"quotagate: mailbox import {imported - started:.1f} s, scan {scanned - imported:.1f} s")
    log = qdir / "serve.log"
    proc = procs.start([*base, "serve"], log)
    wait_for_port(port, proc, log)
    return Server("quotagate", port, proc, session=False), config


def start_quotagate_unchecked(spool: Spool, work: Path, procs: Processes) -> Server:
    """Today's quotagate on the store start_quotagate made, without [policy] local_users: it never
    asks the kernel who owns a connection."""
    qdir = work / "quotagate"
    port = free_port()
    config = qdir / "unchecked.toml"
    config.write_text(_quotagate_toml(qdir, spool, port, "local_users = []\n"))
    log = qdir / "serve-unchecked.log"
    proc = procs.start([str(QUOTAGATE), "--config", str(config), "serve"], log)
    wait_for_port(port, proc, log)
    return Server("quotagate, local_users = []", port, proc, session=False)


def start_quotagate_unix(spool: Spool, work: Path, procs: Processes) -> Server:
    """Today's quotagate on the store start_quotagate made, on a unix socket: its mode decides who
    may ask, so no connection is looked up in the kernel."""
    qdir = work / "quotagate"
    port = free_port()  # names its control socket only
    path = str(qdir / "policy.sock")
    config = qdir / "unix.toml"
    config.write_text(_quotagate_toml(qdir, spool, port, path=path))
    log = qdir / "serve-unix.log"
    proc = procs.start([str(QUOTAGATE), "--config", str(config), "serve"], log)
    wait_for_port(path, proc, log)
    return Server("quotagate, unix socket", port, proc, session=False, path=path)


def start_quotagate_workers(spool: Spool, work: Path, procs: Processes, count: int, redis: str) -> Server:
    """``serve --workers count`` on the store start_quotagate made, sharing state through ``redis``
    (keys under a prefix of this run's own)."""
    qdir = work / "quotagate"
    port = free_port()
    config = qdir / f"workers-{count}.toml"
    shared = f'[shared]\nurl = "{redis}"\nprefix = "bench-{os.getpid()}-{count}"\n'
    config.write_text(_quotagate_toml(qdir, spool, port, shared))
    log = qdir / f"serve-workers-{count}.log"
    proc = procs.start([str(QUOTAGATE), "--config", str(config), "serve", "--workers", str(count)], log)
    wait_for_port(port, proc, log)
    deadline = time.monotonic() + 60
    while count > 1 and f"{count} workers answering" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"quotagate serve --workers {count} did not start:\n{tail(log)}")
        time.sleep(0.1)
    return Server(f"quotagate x{count}", port, proc, session=True)


# -- the null server -----------------------------------------------------------------------------

NULL_SERVER = """\
import asyncio, sys

class Null(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        n = self.buffer.count(b"\\n\\n")
        if n:
            self.buffer = self.buffer[self.buffer.rfind(b"\\n\\n") + 2 :]
            self.transport.write(b"action=DUNNO\\n\\n" * n)

    def eof_received(self):
        self.transport.close()

async def main():
    server = await asyncio.get_running_loop().create_server(Null, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()

try:
    import uvloop
except ImportError:
    asyncio.run(main())
else:
    uvloop.run(main())
"""


def start_null(work: Path, procs: Processes) -> Server:
    """A policy server that answers DUNNO at once without reading anything: the floor of the
    generator, the kernel and Exim's readsocket (Python with uvloop and a bare protocol)."""
    port = free_port()
    log = work / "null-server.log"
    proc = procs.start([sys.executable, "-c", NULL_SERVER, str(port)], log)
    wait_for_port(port, proc, log)
    return Server("null", port, proc, session=False)


# -- Dovecot ------------------------------------------------------------------------------------

DOVECOT_CONFIG = """\
# A private Dovecot that only answers quota-status requests.
base_dir = {dir}/base
state_dir = {dir}/state
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
protocols =
listen = 127.0.0.1
ssl = no
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {uid}
mail_location = maildir:~/Maildir
mail_plugins = quota
passdb {{
  driver = passwd-file
  args = {dir}/users
}}
userdb {{
  driver = passwd-file
  args = {dir}/users
}}
plugin {{
  quota = maildir:User quota
  quota_grace = 0
  quota_status_success = DUNNO
  quota_status_nouser = DUNNO
  quota_status_overquota = "{reply}"
  quota_status_toolarge = "{reply}"
}}
service quota-status {{
  executable = quota-status -p postfix
  inet_listener {{
    address = 127.0.0.1
    port = {port}
  }}
  client_limit = 1
}}
"""


def ensure_dovecot() -> None:
    """Install dovecot-core if quota-status is missing, without letting its service start."""
    if QUOTA_STATUS.exists():
        return
    created = False
    if not POLICY_RC_D.exists():
        POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
        created = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        print("dovecot: installing dovecot-core (its service is kept from starting)", flush=True)
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", "dovecot-core"], env=env)
    finally:
        if created:
            POLICY_RC_D.unlink(missing_ok=True)
    if not QUOTA_STATUS.exists():
        raise RuntimeError(f"{QUOTA_STATUS} is still missing after installing dovecot-core")


def start_dovecot(spool: Spool, work: Path, procs: Processes) -> Server:
    ensure_dovecot()
    ddir = work / "dovecot"
    for sub in ("", "base", "state"):
        (ddir / sub).mkdir(exist_ok=True)
    port = free_port()
    users = ddir / "users"
    users.write_text(
        "".join(
            f"{b.address}:{{PLAIN}}x:{MAIL_UID}:{MAIL_UID}::{spool.home(b)}::userdb_quota_rule=*:bytes={b.quota}\n"
            for b in spool.boxes
        )
    )
    users.chmod(0o644)  # read by Dovecot's auth process (user dovecot); the passwords are dummies
    config = ddir / "dovecot.conf"
    config.write_text(DOVECOT_CONFIG.format(dir=ddir, uid=MAIL_UID, port=port, reply=REJECT_REPLY))
    log = ddir / "dovecot.out"
    proc = procs.start(["dovecot", "-c", str(config), "-F"], log)
    wait_for_port(port, proc, ddir / "dovecot.log")
    return Server("dovecot", port, proc, session=True)


# -- the load generator -------------------------------------------------------------------------


@dataclass
class Job:
    """What one generator process does: its connections, what they send, when to measure."""

    kind: Kind
    port: int
    payloads: Sequence[bytes]  # policy/oneshot: one request each; smtp: one recipient address each
    refused: Sequence[bool]  # policy/oneshot: the expected answer of each payload
    first: list[int]  # each connection's first payload index; it then steps by ``stride``
    stride: int
    start: float  # time.monotonic(): send from here on (connections are opened before)
    measure_from: float
    measure_until: float
    max_measured: int  # 0: until measure_until
    mail_sizes: Sequence[int] = ()  # smtp: SIZE= of each transaction, cycled
    truth: dict[bytes, Box] = field(default_factory=dict)  # smtp: address -> mailbox
    keep_order: bool = False  # smtp: report which payloads were sent (for a cached rerun)
    path: str = ""  # policy/oneshot: ask the unix socket there, not the port


@dataclass
class Result:
    latencies: array[float] = field(default_factory=lambda: array("d"))
    answers: Counter[str] = field(default_factory=Counter)
    mismatches: int = 0  # refusals where none was expected, or the other way round
    expected_refusals: int = 0
    errors: int = 0
    cpu: float = 0.0
    elapsed: float = 0.0
    sent: array[int] = field(default_factory=lambda: array("i"))

    def merge(self, other: Result) -> None:
        self.latencies.extend(other.latencies)
        self.answers.update(other.answers)
        self.mismatches += other.mismatches
        self.expected_refusals += other.expected_refusals
        self.errors += other.errors
        self.cpu += other.cpu
        self.elapsed = max(self.elapsed, other.elapsed)
        self.sent.extend(other.sent)


def _policy_done(buf: bytearray, eof: bool) -> int:
    end = buf.find(b"\n\n")
    return end + 2 if end >= 0 else -1


def _eof_done(buf: bytearray, eof: bool) -> int:
    return len(buf) if eof else -1


def _smtp_done(buf: bytearray, eof: bool) -> int:
    """The end of the first complete SMTP reply (its last line has a space after the code)."""
    pos = 0
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return -1
        if nl - pos >= 4 and buf[pos + 3 : pos + 4] == b" ":
            return nl + 1
        pos = nl + 1


class _Client(asyncio.Protocol):
    """One connection: write, then wait until ``done`` says the answer is complete."""

    def __init__(self, done: Callable[[bytearray, bool], int]) -> None:
        self.done = done
        self.buffer = bytearray()
        self.eof = False
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._check()

    def eof_received(self) -> bool:
        self.eof = True
        self._check()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._check()

    def _check(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.done(self.buffer, self.eof)
        if end >= 0:
            answer = bytes(self.buffer[:end])
            del self.buffer[:end]
            waiter.set_result(answer)
        elif self.eof:
            waiter.set_exception(ConnectionError("closed before a complete answer"))

    async def ask(self, data: bytes, half_close: bool = False) -> bytes:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        if data:
            self.transport.write(data)
            if half_close:
                self.transport.write_eof()
        self._check()
        return await self.waiter


class _Run:
    """Shared by the connections of one generator process: the clock, the counts, the result."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.result = Result()
        self.measured = 0
        self.last_end = job.measure_from
        self.cpu_from: float | None = None

    def go_on(self) -> bool:
        now = time.monotonic()
        if self.cpu_from is None and now >= self.job.measure_from:
            self.cpu_from = time.process_time()
        if self.job.max_measured and self.measured >= self.job.max_measured:
            return False
        return now < self.job.measure_until

    def record(self, started: float, ended: float, action: str, refused: bool, expected: bool, index: int) -> None:
        if self.job.keep_order:
            self.result.sent.append(index)
        if started < self.job.measure_from or ended > self.job.measure_until:
            return
        if self.job.max_measured and self.measured >= self.job.max_measured:
            return
        self.measured += 1
        self.last_end = ended
        r = self.result
        r.latencies.append(ended - started)
        r.answers[action] += 1
        r.expected_refusals += expected
        r.mismatches += refused != expected

    def error(self, started: float) -> None:
        if started >= self.job.measure_from:
            self.result.errors += 1


async def _until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _connect(job: Job, done: Callable[[bytearray, bool], int]) -> tuple[asyncio.BaseTransport, _Client]:
    """A connection to the policy server the job asks: its unix socket, or its port."""
    loop = asyncio.get_running_loop()
    if job.path:
        return await loop.create_unix_connection(lambda: _Client(done), job.path)
    return await loop.create_connection(lambda: _Client(done), HOST, job.port)


async def _persistent(run_: _Run, first: int) -> None:
    job = run_.job
    transport, client = await _connect(job, _policy_done)
    await _until(job.start)
    i = first
    try:
        while run_.go_on():
            index = i % len(job.payloads)
            i += job.stride
            started = time.monotonic()
            try:
                answer = await client.ask(job.payloads[index])
            except ConnectionError:
                run_.error(started)
                return
            action = action_of(answer)
            run_.record(started, time.monotonic(), action, refuses(action), job.refused[index], index)
    finally:
        transport.close()


async def _oneshot(run_: _Run, first: int) -> None:
    job = run_.job
    await _until(job.start)
    i = first
    while run_.go_on():
        index = i % len(job.payloads)
        i += job.stride
        started = time.monotonic()
        try:
            transport, client = await _connect(job, _eof_done)
            try:
                answer = await client.ask(job.payloads[index], half_close=True)
            finally:
                transport.close()
        except OSError:  # ConnectionError included
            run_.error(started)
            await asyncio.sleep(0.001)
            continue
        action = action_of(answer)
        run_.record(started, time.monotonic(), action, refuses(action), job.refused[index], index)


async def _smtp(run_: _Run, first: int, session: int) -> None:
    job = run_.job
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_connection(lambda: _Client(_smtp_done), HOST, job.port)
    try:
        await client.ask(b"")  # the greeting
        await client.ask(b"EHLO bench.example.net\r\n")
        await _until(job.start)
        i, transaction, in_batch = first, session, SMTP_BATCH
        size = 0
        while run_.go_on():
            if in_batch >= SMTP_BATCH:
                if transaction != session:
                    await client.ask(b"RSET\r\n")
                size = job.mail_sizes[transaction % len(job.mail_sizes)]
                transaction += len(job.first)
                reply = await client.ask(f"MAIL FROM:<sender@example.net> SIZE={size}\r\n".encode())
                if not reply.startswith(b"250"):
                    raise RuntimeError(f"MAIL refused: {reply!r}")
                in_batch = 0
            index = i % len(job.payloads)
            i += job.stride
            in_batch += 1
            address = job.payloads[index]
            started = time.monotonic()
            reply = await client.ask(b"RCPT TO:<" + address + b">\r\n")
            code = reply[:3].decode("ascii", "replace")
            box = job.truth[address]
            run_.record(started, time.monotonic(), code, code[0] != "2", box.refuses(size), index)
        await client.ask(b"QUIT\r\n")
    finally:
        transport.close()


async def _drive(job: Job) -> Result:
    run_ = _Run(job)
    if job.kind == "policy":
        tasks = [_persistent(run_, f) for f in job.first]
    elif job.kind == "oneshot":
        tasks = [_oneshot(run_, f) for f in job.first]
    else:
        tasks = [_smtp(run_, f, n) for n, f in enumerate(job.first)]
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            run_.result.errors += 1
            print(f"  load generator: a connection failed: {outcome!r}", file=sys.stderr, flush=True)
    r = run_.result
    r.cpu = time.process_time() - (run_.cpu_from if run_.cpu_from is not None else time.process_time())
    r.elapsed = (run_.last_end if job.max_measured else job.measure_until) - job.measure_from
    return r


def _worker(job: Job, pipe: multiprocessing.connection.Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler, inherited by fork
    try:
        import uvloop

        result = uvloop.run(_drive(job))
    except ImportError:
        result = asyncio.run(_drive(job))
    pipe.send(result)
    pipe.close()


@dataclass(frozen=True)
class Measured:
    label: str
    server: str
    count: int
    rate: float
    p50: float
    p99: float
    server_cpu: float  # seconds, during the measured window
    generator_cpu: float
    window: float
    result: Result
    extra_cpu: list[tuple[str, float]]  # other servers' CPU seconds in the window (the policy server behind Exim)
    machine: float  # CPUs busy on average during the window, whoever used them

    @property
    def others(self) -> float:
        """CPUs busy on average with something else than this row's servers and generator."""
        ours = self.server_cpu + self.generator_cpu + sum(c for _, c in self.extra_cpu)
        return self.machine - ours / self.window

    @property
    def server_us(self) -> float:
        return self.server_cpu / self.count * 1e6 if self.count else float("nan")


@dataclass(frozen=True)
class Timing:
    warmup: float
    seconds: float
    requests: int
    cap: float
    procs: int
    rounds: int = 1  # slices each policy row is cut into, the servers taking turns (see --rounds)

    def slice(self, index: int) -> Timing:
        """The timing of one of ``rounds`` slices: its share of the row, the full warm-up first."""
        if self.rounds == 1:
            return self
        warmup = self.warmup if index == 0 else min(self.warmup, 0.5)
        return Timing(warmup, self.seconds / self.rounds, -(-self.requests // self.rounds), self.cap, self.procs)


def load(
    label: str,
    kind: Kind,
    server: Server,
    connections: int,
    payloads: Sequence[bytes],
    refused: Sequence[bool],
    timing: Timing,
    *,
    extra: Sequence[Server] = (),
    mail_sizes: Sequence[int] = (),
    truth: dict[bytes, Box] | None = None,
    keep_order: bool = False,
    offset: int = 0,
) -> Measured:
    """Run one row: ``connections`` spread over the generator processes, measured as ``timing`` says."""
    procs = max(1, min(timing.procs, connections))
    ctx = multiprocessing.get_context("fork")
    start = time.monotonic() + 0.5 + 0.02 * connections
    measure_from = start + timing.warmup
    measure_until = measure_from + (timing.cap if timing.requests else timing.seconds)
    workers = []
    for p in range(procs):
        mine = [offset + c for c in range(connections) if c % procs == p]
        job = Job(
            kind,
            server.port,
            payloads,
            refused,
            mine,
            connections,
            start,
            measure_from,
            measure_until,
            -(-timing.requests // procs) if timing.requests else 0,
            mail_sizes,
            truth or {},
            keep_order,
            server.path,
        )
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(job, send), daemon=True)
        proc.start()
        send.close()
        workers.append((proc, receive))
    result = Result()
    try:
        time.sleep(max(0.0, measure_from - time.monotonic()))
        cpu0 = [s.cpu() for s in (server, *extra)] + [machine_busy()]
        if not timing.requests:
            time.sleep(max(0.0, measure_until - time.monotonic()))
            cpu1 = [s.cpu() for s in (server, *extra)] + [machine_busy()]
        deadline = measure_until + 30
        for proc, receive in workers:
            if not receive.poll(max(0.1, deadline - time.monotonic())):
                raise RuntimeError(f"{label}: a load generator process did not finish")
            try:
                result.merge(receive.recv())
            except EOFError:
                raise RuntimeError(f"{label}: a load generator process died (exit code {proc.exitcode})") from None
            proc.join(5)
        if timing.requests:
            cpu1 = [s.cpu() for s in (server, *extra)] + [machine_busy()]
    finally:
        for proc, _ in workers:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    lat = sorted(result.latencies)
    window = result.elapsed if result.elapsed > 0 else float("nan")
    extra_cpu = [(s.name, b - a) for s, a, b in zip(extra, cpu0[1:-1], cpu1[1:-1], strict=True)]
    busy = (cpu1[-1] - cpu0[-1]) / (window if timing.requests else timing.seconds)
    m = Measured(
        label,
        server.name,
        len(lat),
        len(lat) / window,
        percentile(lat, 0.50) * 1000,
        percentile(lat, 0.99) * 1000,
        cpu1[0] - cpu0[0],
        result.cpu,
        window,
        result,
        extra_cpu,
        busy,
    )
    _print_row(m)
    return m


def _print_row(m: Measured, prefix: str = "") -> None:
    print(
        f"  {prefix + m.label:<24} {m.server:<9} {m.count:>7} in {m.window:5.1f} s  {m.rate:>8.0f}/s  "
        f"p50 {m.p50:7.3f} ms  p99 {m.p99:7.3f} ms  server {m.server_us:6.0f} µs CPU/req"
        + "".join(f"  {n} {c / max(1, m.count) * 1e6:5.0f} µs" for n, c in m.extra_cpu)
        + f"  generator CPU {m.generator_cpu / m.window * 100:3.0f}%  others {m.others:4.2f} CPU"
        + (f"  errors {m.result.errors}" if m.result.errors else ""),
        flush=True,
    )


def merged(slices: Sequence[Measured]) -> Measured:
    """One row from its slices (see ``--rounds``): answers, windows and CPU summed, latencies
    pooled; printed as the row."""
    if len(slices) == 1:
        return slices[0]
    result = Result()
    extra: dict[str, float] = {}
    for m in slices:
        result.merge(m.result)
        for name, cpu in m.extra_cpu:
            extra[name] = extra.get(name, 0.0) + cpu
    window = sum(m.window for m in slices)
    count = sum(m.count for m in slices)
    lat = sorted(result.latencies)
    m = Measured(
        slices[0].label,
        slices[0].server,
        count,
        count / window,
        percentile(lat, 0.50) * 1000,
        percentile(lat, 0.99) * 1000,
        sum(m.server_cpu for m in slices),
        sum(m.generator_cpu for m in slices),
        window,
        result,
        list(extra.items()),
        sum(m.machine * m.window for m in slices) / window,
    )
    _print_row(m, f"{len(slices)} rounds: ")
    return m


# -- consistency --------------------------------------------------------------------------------


def ask_all(server: Server, payloads: Sequence[bytes]) -> list[str]:
    """One persistent connection, one request at a time."""
    actions = []
    with _connected(server.where) as s:
        buf = b""
        for data in payloads:
            s.sendall(data)
            while b"\n\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError(f"{server.address} closed the connection")
                buf += chunk
            answer, _, buf = buf.partition(b"\n\n")
            actions.append(action_of(answer))
    return actions


def consistency(spool: Spool, servers: Sequence[Server], sample: int) -> bool:
    rng = random.Random(SEED + 1)
    reqs = draw_requests(spool.boxes, sample, SEED + 2)
    overs = [Request(b, 0) for b in spool.boxes if b.kind == "over"]
    rng.shuffle(overs)
    ok = True
    print(f"consistency: {len(reqs)} random requests and all {len(overs)} over-quota mailboxes (no size)")
    for label, batch in (("random", reqs), ("over quota", overs)):
        payloads = [postfix_request(r, n) for n, r in enumerate(batch)]
        answers = {s.name: ask_all(s, payloads) for s in servers}
        truth = [r.refused for r in batch]
        parts = [f"  {label:<10} {len(batch):>5} requests, {sum(truth):>4} should be refused:"]
        for s in servers:
            wrong = sum(refuses(a) != t for a, t in zip(answers[s.name], truth, strict=True))
            kinds = Counter(answers[s.name])
            parts.append(
                f"{s.name} refused {sum(refuses(a) for a in answers[s.name])}, {wrong} disagree with the spool"
            )
            ok &= wrong == 0
            odd = [a for a in kinds if a not in ("DUNNO", REJECT_REPLY)]
            if odd:
                parts.append(f"(unexpected answers {dict((a, kinds[a]) for a in odd)})")
        if len(servers) == 2:
            a, b = (answers[s.name] for s in servers)
            between = [i for i in range(len(batch)) if a[i] != b[i]]
            parts.append(f"{servers[0].name} vs {servers[1].name}: {len(between)} differ")
            for i in between[:5]:
                r = batch[i]
                parts.append(
                    f"\n    {r.box.address} size {r.size} used {r.box.bytes} quota {r.box.quota}: "
                    f"{servers[0].name} {a[i]!r}, {servers[1].name} {b[i]!r}"
                )
        print(" ".join(parts), flush=True)
    return ok


# -- Exim ---------------------------------------------------------------------------------------

EXIM_CONFIG = """\
primary_hostname = quotagate.bench
domainlist local_domains = {domains}
spool_directory = {work}/spool
log_file_path = {work}/log/%slog
pid_file_path = {work}/exim.pid
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
exim_user = Debian-exim
exim_group = Debian-exim
host_lookup =
rfc1413_hosts =
tls_advertise_hosts =
message_size_limit = 50M
acl_smtp_rcpt = acl_check_rcpt
recipients_max = 0
smtp_accept_max = 100
smtp_accept_max_nonmail = 100000

begin acl

{acls}
acl_check_rcpt:
  deny    message = relay not permitted
          !domains = +local_domains
{acl}
  require verify = {verify}
  accept

begin routers

mailboxes:
  driver = accept
  domains = +local_domains
  local_parts = dsearch;{spool}/$domain_data
  transport = maildir_delivery

begin transports

maildir_delivery:
  driver = appendfile
  directory = {spool}/$domain_data/$local_part_data/Maildir
  maildir_format
  maildir_use_size_file
  maildir_tag = ,S=$message_size
  quota_size_regex = ,S=(\\d+)
  quota = ${{lookup{{${{lc:$local_part@$domain}}}}dbm{{{quotas}}}{{$value}}{{0}}}}
  user = {uid}
  group = {uid}
  mode = 0600

begin retry
*  *  F,1h,10m
"""


def exim_binary() -> str | None:
    return shutil.which("exim4") or (str(Path("/usr/sbin/exim4")) if Path("/usr/sbin/exim4").exists() else None)


class Trust:
    """Lines this run added to /etc/exim4/trusted_configs, removed again at the end."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.created = False

    def add(self, config: Path) -> None:
        lines = TRUSTED.read_text().splitlines() if TRUSTED.exists() else []
        if str(config) in lines:
            return
        if not TRUSTED.exists():
            self.created = True
        with TRUSTED.open("a") as f:
            f.write(f"{config}\n")
        TRUSTED.chmod(0o644)
        self.added.append(str(config))

    def remove(self, config: Path) -> None:
        if str(config) not in self.added or not TRUSTED.exists():
            return
        kept = [line for line in TRUSTED.read_text().splitlines() if line != str(config)]
        TRUSTED.write_text("".join(f"{line}\n" for line in kept))
        self.added.remove(str(config))

    def remove_all(self) -> None:
        if not self.added or not TRUSTED.exists():
            return
        kept = [line for line in TRUSTED.read_text().splitlines() if line not in self.added]
        if self.created and not kept:
            TRUSTED.unlink()
        else:
            TRUSTED.write_text("".join(f"{line}\n" for line in kept))
        self.added.clear()


def start_exim(
    name: str,
    acl: str,
    verify: str,
    spool: Spool,
    work: Path,
    quotas: Path,
    procs: Processes,
    trust: Trust,
    acls: str = "",
) -> Server:
    binary = exim_binary()
    assert binary is not None
    edir = work / f"exim-{name}"
    edir.mkdir(mode=0o755)
    for sub in ("spool", "log"):
        (edir / sub).mkdir()
        shutil.chown(edir / sub, "Debian-exim", "Debian-exim")
    port = free_port()
    config = edir / "exim.conf"
    config.write_text(
        EXIM_CONFIG.format(
            domains=" : ".join(DOMAINS),
            work=edir,
            port=port,
            acl="".join(f"  {line}\n" for line in acl.splitlines()),
            acls=acls,
            verify=verify,
            spool=spool.root,
            quotas=quotas,
            uid=MAIL_UID,
        )
    )
    config.chmod(0o644)
    trust.add(config)
    run([binary, "-C", str(config), "-bV"])
    proc = procs.start([binary, "-C", str(config), "-bdf"], edir / "exim.out")
    wait_for_port(port, proc, edir / "log" / "mainlog")
    return Server("exim", port, proc, session=True, config=config)


def stop_exim(exim: Server, procs: Processes, trust: Trust) -> None:
    procs.stop(exim.proc)
    if exim.config is not None:
        trust.remove(exim.config)


def build_quotas(spool: Spool, work: Path) -> Path:
    """The per-mailbox quota as a DBM file for the transport's ``quota`` (exim_dbmbuild)."""
    text = work / "quotas"
    text.write_text("".join(f"{b.address}: {b.quota}\n" for b in spool.boxes))
    target = work / "quotas.db"
    run(["exim_dbmbuild", str(text), str(target)])
    target.chmod(0o644)
    return target


# -- report -------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def policy_rows(spool: Spool, servers: Sequence[Server], timing: Timing) -> list[tuple[str, dict[str, Measured]]]:
    """Every mode against every server (the null server last: the ceiling of generator and kernel)."""
    reqs = draw_requests(spool.boxes, 100_000, SEED + 3)
    refused = [r.refused for r in reqs]
    postfix = [postfix_request(r, n) for n, r in enumerate(reqs)]
    exim = [exim_request(r) for r in reqs]
    modes: list[tuple[str, Kind, int, list[bytes]]] = [
        ("persistent, 1 conn", "policy", 1, postfix),
        ("persistent, 8 conns", "policy", 8, postfix),
        ("persistent, 64 conns", "policy", 64, postfix),
        ("new conn/req, 8 clients", "oneshot", 8, exim),
    ]
    rows = []
    for n, (label, kind, conns, payloads) in enumerate(modes):
        slices: dict[str, list[Measured]] = {s.name: [] for s in servers}
        # The servers take turns, a slice each per round: what drifts on the machine during a row
        # (another process, the CPU's clock, sockets left in TIME_WAIT) falls on all of them alike.
        for turn in range(timing.rounds):
            for s in servers:
                # The null server answers DUNNO to everything: its "wrong" answers mean nothing.
                expected = refused if s.name != "null" else [False] * len(refused)
                measured = load(label, kind, s, conns, payloads, expected, timing.slice(turn), offset=n * 1000)
                slices[s.name].append(measured)
        rows.append((label, {name: merged(taken) for name, taken in slices.items()}))
    return rows


def print_policy_table(rows: list[tuple[str, dict[str, Measured]]]) -> bool:
    print()
    print(
        "Policy servers: req/s, latency (ms), server CPU per request (µs, all its processes), answers that "
        "disagree with the spool; null = a server answering DUNNO at once (the generator's and kernel's ceiling)"
    )
    head = (
        f"{'mode':<24} {'quotagate':>9} {'dovecot':>8} {'q/d':>6} {'null':>6} | {'p50 q':>7} {'p50 d':>7} {'d/q':>6} | "
        f"{'p99 q':>7} {'p99 d':>7} {'d/q':>6} | {'CPU q':>5} {'CPU d':>5} | {'wrong':>7} | target"
    )
    print(head)
    print("-" * len(head))
    all_ok = True
    for label, r in rows:
        q, d, z = r["quotagate"], r["dovecot"], r.get("null")
        ok = q.rate >= 10 * d.rate and q.p99 < d.p99
        all_ok &= ok
        print(
            f"{label:<24} {q.rate:>9.0f} {d.rate:>8.0f} {ratio(q.rate, d.rate):>5.1f}x "
            f"{z.rate if z else float('nan'):>6.0f} | "
            f"{q.p50:>7.3f} {d.p50:>7.3f} {ratio(d.p50, q.p50):>5.1f}x | "
            f"{q.p99:>7.3f} {d.p99:>7.3f} {ratio(d.p99, q.p99):>5.1f}x | "
            f"{q.server_us:>5.0f} {d.server_us:>5.0f} | "
            f"{q.result.mismatches:>3}/{d.result.mismatches:<3} | {verdict(ok)}"
        )
    return all_ok


def print_workers_table(rows: list[tuple[str, dict[str, Measured]]], counts: Sequence[int]) -> None:
    """One worker without [shared] beside N workers sharing reservations through Redis (N = 1: the
    cost of Redis alone; N > 1 against N = 1: how workers scale)."""
    if not counts:
        return
    print()
    print(
        "Workers: req/s and p99 (ms) of serve --workers N with [shared] (Redis: every check with a size asks it) "
        "beside one daemon without [shared] (column 1); ratio = N workers with [shared] / 1 without"
    )
    names = [f"quotagate x{n}" for n in counts]
    head = f"{'mode':<24} {'1':>7} " + " ".join(f"{n:>7} {'ratio':>6}" for n in counts) + f" | {'p99 1':>7} "
    head += " ".join(f"{'p99 ' + str(n):>7}" for n in counts) + " | CPU µs/req " + " ".join(["1", *map(str, counts)])
    print(head)
    print("-" * len(head))
    for label, r in rows:
        one = r["quotagate"]
        many = [r[name] for name in names]
        print(
            f"{label:<24} {one.rate:>7.0f} "
            + " ".join(f"{m.rate:>7.0f} {ratio(m.rate, one.rate):>5.2f}x" for m in many)
            + f" | {one.p99:>7.3f} "
            + " ".join(f"{m.p99:>7.3f}" for m in many)
            + f" | {one.server_us:.0f} "
            + " ".join(f"{m.server_us:.0f}" for m in many)
        )


def print_against_table(
    rows: list[tuple[str, dict[str, Measured]]],
    name: str,
    other: str,
    ours: tuple[str, str] = ("quotagate", "today"),
) -> None:
    """Today's quotagate (or ``ours``: a server's name and its column) against another server
    measured in the same run (``other``: its column): quotagate at another revision (--compare),
    today's without the local-user check (--unchecked) or on a unix socket (--unix)."""
    print()
    print(f"{ours[0]} against {name} (same spool, same load, same run): req/s, p99 (ms), CPU per request (µs)")
    head = f"{'mode':<24} {ours[1]:>7} {other:>7} {'ratio':>6} | {'p99':>7} {other:>7} | "
    head += f"{'CPU':>5} {other:>5} {'ratio':>6}"
    print(head)
    print("-" * len(head))
    for label, r in rows:
        now, then = r[ours[0]], r[name]
        print(
            f"{label:<24} {now.rate:>7.0f} {then.rate:>7.0f} {ratio(now.rate, then.rate):>5.2f}x | "
            f"{now.p99:>7.3f} {then.p99:>7.3f} | {now.server_us:>5.0f} {then.server_us:>5.0f} "
            f"{ratio(now.server_us, then.server_us):>5.2f}x"
        )


@dataclass(frozen=True)
class EximRows:
    rows: list[Measured]  # 8 sessions each
    single: dict[str, Measured]  # 1 session: the latency a check adds when nothing queues


def exim_rows(
    spool: Spool,
    work: Path,
    policy_servers: Sequence[Server],
    qg_acl: str,
    qg_acls: str,
    timing: Timing,
    procs: Processes,
    trust: Trust,
) -> EximRows:
    quotas = build_quotas(spool, work)
    rng = random.Random(SEED + 4)
    addresses = [b.address.encode() for b in spool.boxes]
    truth = {b.address.encode(): b for b in spool.boxes}
    drawn = [rng.choice(addresses) for _ in range(100_000)]
    sizes = [max(1, r.size) for r in draw_requests(spool.boxes, 5_000, SEED + 5)]
    unused = [False] * len(drawn)
    qg = next(s for s in policy_servers if s.name == "quotagate")
    target = f"inet:{HOST}:{qg.port}"
    if target not in qg_acl:
        raise RuntimeError(f"{target} not found in quotagate's ACL:\n{qg_acl}")
    configs: list[tuple[str, str, list[Server]]] = [("no check", "", [])]
    for s in policy_servers:
        configs.append((f"{s.name} ACL", qg_acl.replace(target, f"inet:{HOST}:{s.port}"), [s]))
    named = qg_acls.replace(target, f"inet:{HOST}:{qg.port}")
    rows: list[Measured] = []
    single: dict[str, Measured] = {}
    for name, acl, extra in configs:
        exim = start_exim(name.replace(" ", "-"), acl, "recipient", spool, work, quotas, procs, trust, named)
        try:
            rows.append(load(name, "smtp", exim, 8, drawn, unused, timing, extra=extra, mail_sizes=sizes, truth=truth))
            if name in ("no check", "quotagate ACL"):
                single[name] = load(
                    f"{name}, 1 session",
                    "smtp",
                    exim,
                    1,
                    drawn,
                    unused,
                    timing,
                    extra=extra,
                    mail_sizes=sizes,
                    truth=truth,
                )
        finally:
            stop_exim(exim, procs, trust)
    # Exim's own quota check: uncached (fresh hints database, every address once), then cached
    # (the addresses the first pass checked, again: answers are cached by recipient alone).
    once = list(addresses)
    rng.shuffle(once)
    exim = start_exim("verify-quota", "", "recipient/quota", spool, work, quotas, procs, trust)
    try:
        first = load(
            "verify quota, uncached",
            "smtp",
            exim,
            8,
            once,
            unused,
            timing,
            mail_sizes=sizes,
            truth=truth,
            keep_order=True,
        )
        rows.append(first)
        again = [once[i] for i in sorted(set(first.result.sent))]
        rows.append(load("verify quota, cached", "smtp", exim, 8, again, unused, timing, mail_sizes=sizes, truth=truth))
    finally:
        stop_exim(exim, procs, trust)
    return EximRows(rows, single)


def print_exim_table(er: EximRows) -> tuple[bool, bool]:
    print()
    print(
        "Exim, 8 SMTP sessions: RCPT/s, RCPT latency (ms), replies, RCPTs refused / that the spool says should be, "
        "CPU per RCPT (µs) of Exim and of the policy server"
    )
    head = (
        f"{'configuration':<24} {'RCPT/s':>8} {'vs none':>8} | {'p50':>7} {'+p50':>7} {'p99':>7} | "
        f"{'replies':<26} {'refused':>15} | {'exim':>5} {'policy':>6}"
    )
    print(head)
    print("-" * len(head))
    base = er.rows[0]
    for m in er.rows:
        codes = " ".join(f"{c}:{n}" for c, n in sorted(m.result.answers.items()))
        refused = sum(n for c, n in m.result.answers.items() if c[:1] != "2")
        policy = f"{m.extra_cpu[0][1] / max(1, m.count) * 1e6:6.0f}" if m.extra_cpu else f"{'-':>6}"
        print(
            f"{m.label:<24} {m.rate:>8.0f} {m.rate / base.rate:>7.2f}x | {m.p50:>7.3f} {m.p50 - base.p50:>+7.3f} "
            f"{m.p99:>7.3f} | {codes:<26} {refused:>6}/{m.result.expected_refusals:<8} | "
            f"{m.server_us:>5.0f} {policy}"
        )
    none1, q1 = er.single.get("no check"), er.single.get("quotagate ACL")
    if none1 and q1:
        print(
            f"1 session (nothing queues): no check p50 {none1.p50:.3f} ms ({none1.rate:.0f} RCPT/s), "
            f"quotagate ACL p50 {q1.p50:.3f} ms ({q1.rate:.0f} RCPT/s): +{q1.p50 - none1.p50:.3f} ms"
        )
    q = next(m for m in er.rows if m.label == "quotagate ACL")
    return q.p50 - base.p50 < 1.0, q.rate >= 0.5 * base.rate


# -- main ---------------------------------------------------------------------------------------


def versions(load: tuple[float, float, float]) -> str:
    load1, load5, _ = load
    cpus, *rest = machine()
    parts = [f"{cpus} (load average {load1:.2f} {load5:.2f} before the run)", *rest]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        parts.append(f"uvloop {importlib.metadata.version('uvloop')}")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        parts.append(
            "Dovecot " + subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.split()[0]
        )
    binary = exim_binary()
    if binary:
        with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
            out = subprocess.run([binary, "-bV"], capture_output=True, text=True).stdout
            parts.append("Exim " + out.split()[2])
    return ", ".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=10_000, help="mailboxes in the spool (default 10000)")
    parser.add_argument("--requests", type=int, default=0, help="answers measured per row (default: time-based)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per row (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each row (default 2)")
    parser.add_argument("--cap", type=float, default=60.0, help="most seconds a --requests row may take (default 60)")
    parser.add_argument("--procs", type=int, default=1, help="load generator processes (default 1)")
    parser.add_argument("--check", type=int, default=200, help="random requests in the consistency check")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where the spool and run live ({DEFAULT_DIR})")
    parser.add_argument("--no-exim", action="store_true", help="skip the Exim part")
    parser.add_argument(
        "--workers",
        default="",
        help="also serve --workers N with [shared] url = --redis, for each N of this comma-separated list "
        "(1,2: one and two workers sharing through Redis, beside the plain one)",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="[shared] url for --workers rows")
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="also quotagate as of git revision REV (e.g. fe3ff0a, before reservations), in every policy row",
    )
    parser.add_argument(
        "--unchecked",
        action="store_true",
        help="also today's quotagate with [policy] local_users = [], in every policy row: what asking the "
        "kernel who owns each connection costs",
    )
    parser.add_argument(
        "--unix",
        action="store_true",
        help="also today's quotagate on a unix socket, in every policy row: what an MTA on the same host gains",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="cut each policy row into this many slices, the servers taking turns (the full warm-up before "
        "the first, 0.5 s before the others), and add them up: a machine whose speed drifts during a row "
        "(a shared VM) then weighs on every server alike",
    )
    parser.add_argument("--quick", action="store_true", help="short rows (2 s + 0.5 s warm-up), same spool")
    args = parser.parse_args(argv)
    try:
        args.workers = sorted({int(n) for n in args.workers.split(",") if n.strip()})
    except ValueError:
        parser.error("--workers takes numbers separated by commas, e.g. 2 or 2,4")
    if args.quick:
        args.seconds, args.warmup, args.check = 2.0, 0.5, 100
    if (
        args.mailboxes < 10
        or args.seconds <= 0
        or args.warmup < 0
        or args.procs < 1
        or args.requests < 0
        or args.rounds < 1
    ):
        parser.error("--mailboxes >= 10, --seconds > 0, --warmup >= 0, --procs >= 1, --requests >= 0, --rounds >= 1")
    if os.geteuid() != 0:
        parser.error("run it as root: Dovecot and Exim need it, and the spool belongs to uid 5000")
    return args


@dataclass
class Servers:
    """The three servers every row is measured against, and quotagate's config."""

    quotagate: Server
    config: Path
    dovecot: Server
    null: Server
    workers: list[Server]  # serve --workers N, for each N of --workers
    compared: Server | None  # quotagate at --compare REV
    unchecked: Server | None  # today's quotagate without [policy] local_users (--unchecked)
    unix: Server | None  # today's quotagate on a unix socket (--unix)


@dataclass
class Outcome:
    consistent: bool
    rows: list[tuple[str, dict[str, Measured]]]
    exim: EximRows | None
    workers: list[int]
    compared: str | None  # the name of the --compare server
    unchecked: str | None  # the name of the --unchecked server
    unix: str | None  # the name of the --unix server


def start_servers(spool: Spool, work: Path, procs: Processes, args: argparse.Namespace) -> Servers:
    qg, qg_config = start_quotagate(spool, work, procs)
    workers = [start_quotagate_workers(spool, work, procs, n, args.redis) for n in args.workers]
    dc = start_dovecot(spool, work, procs)
    null = start_null(work, procs)
    over = sum(b.kind == "over" for b in spool.boxes)
    print(
        f"servers: quotagate {HOST}:{qg.port} (reservation_seconds = 0, metrics off), Dovecot quota-status "
        f"{HOST}:{dc.port}, null server {HOST}:{null.port}; {len(spool.boxes)} mailboxes, {over} over quota"
    )
    if workers:
        print("workers: " + ", ".join(f"{w.name} {HOST}:{w.port}" for w in workers) + f", [shared] {args.redis}")
    compared = start_quotagate_at(spool, work, procs, args.compare) if args.compare else None
    if compared is not None:
        print(f"compared: {compared.name} {HOST}:{compared.port}")
    unchecked = start_quotagate_unchecked(spool, work, procs) if args.unchecked else None
    if unchecked is not None:
        print(f"unchecked: {unchecked.name} {HOST}:{unchecked.port}")
    unix = start_quotagate_unix(spool, work, procs) if args.unix else None
    if unix is not None:
        print(f"unix: {unix.name} {unix.address}")
    return Servers(qg, qg_config, dc, null, workers, compared, unchecked, unix)


def measure(
    args: argparse.Namespace,
    spool: Spool,
    work: Path,
    servers: Servers,
    with_exim: bool,
    procs: Processes,
    trust: Trust,
) -> Outcome:
    """The consistency check, the policy rows, then (when Exim is there) the Exim rows."""
    timing = Timing(args.warmup, args.seconds, args.requests, args.cap, args.procs, args.rounds)
    qg, dc, null = servers.quotagate, servers.dovecot, servers.null
    others = [*servers.workers, *(s for s in (servers.compared, servers.unchecked, servers.unix) if s is not None)]
    consistent = consistency(spool, [qg, dc, *others], args.check)
    per_row = f"{args.requests} answers (cap {args.cap:g} s)" if args.requests else f"{args.seconds:g} s"
    print(
        f"policy load: {per_row} per row after {args.warmup:g} s warm-up, {args.procs} generator "
        f"process(es); persistent rows send Postfix's 31 attributes, new-connection rows quotagate's ACL's 4"
    )
    rows = policy_rows(spool, [qg, *others, dc, null], timing)
    exim: EximRows | None = None
    if with_exim:
        # What exim-config --method policy prints: the RCPT statements, and the ACLs they sit beside.
        parts = exim_config.parts(load_config(servers.config), "policy")
        print(f"exim: {per_row} per config after {args.warmup:g} s warm-up, RSET + MAIL every {SMTP_BATCH} RCPTs")
        exim = exim_rows(spool, work, [qg, *servers.workers, dc, null], parts.acl, parts.acls, timing, procs, trust)
    else:
        print("exim: skipped (--no-exim, or exim4-daemon-heavy is not installed)")
    return Outcome(
        consistent,
        rows,
        exim,
        args.workers,
        servers.compared.name if servers.compared else None,
        servers.unchecked.name if servers.unchecked else None,
        servers.unix.name if servers.unix else None,
    )


def report(outcome: Outcome, work: Path) -> None:
    """The tables, the targets, what else ran meanwhile, the servers' errors."""
    rows, exim, consistent = outcome.rows, outcome.exim, outcome.consistent
    policy_ok = print_policy_table(rows)
    print_workers_table(rows, outcome.workers)
    if outcome.compared is not None:
        print_against_table(rows, outcome.compared, "then")
    if outcome.unchecked is not None:
        print_against_table(rows, outcome.unchecked, "bare")
    if outcome.unix is not None:
        print_against_table(rows, outcome.unix, "unix")
        if outcome.compared is not None:
            print_against_table(rows, outcome.compared, "then", ours=(outcome.unix, "unix"))
    exim_ok = print_exim_table(exim) if exim is not None else None
    print()
    print("targets:")
    print(f"  every answer agrees with the spool (consistency check): {verdict(consistent)}")
    print(f"  quotagate >= 10x Dovecot's req/s and a lower p99, in every policy row: {verdict(policy_ok)}")
    if exim_ok is not None:
        print(f"  quotagate's ACL adds < 1 ms to Exim's median RCPT latency (8 sessions): {verdict(exim_ok[0])}")
        print(f"  Exim with quotagate's ACL keeps >= 50% of its no-check RCPT rate: {verdict(exim_ok[1])}")
    measured = [m for _, r in rows for m in r.values()]
    if exim is not None:
        measured += exim.rows + list(exim.single.values())
    disturbed = [f"{m.label} ({m.server}) {m.others:.2f}" for m in measured if m.others > 0.25 and m.window >= 1]
    print(
        f"other processes: {len(disturbed)} of {len(measured)} rows ran while something else kept more than "
        "0.25 CPU busy on average" + (": " + ", ".join(disturbed) if disturbed else "")
    )
    report_logs(work)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with_exim = not args.no_exim and exim_binary() is not None and _has_user("Debian-exim")
    load_before = os.getloadavg()
    stop_on_sigterm()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    procs = Processes()
    trust = Trust()
    base = args.dir.resolve()
    started = time.monotonic()
    try:
        spool = ensure_spool(base, args.mailboxes)
        work = base / "run"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, mode=0o755)
        print(f"machine: {versions(load_before)}")
        print(f"run files: {work}")
        servers = start_servers(spool, work, procs, args)
        report(measure(args, spool, work, servers, with_exim, procs, trust), work)
        print(f"total time {time.monotonic() - started:.0f} s")
        return 0
    except (KeyboardInterrupt, Interrupted):
        print("interrupted: stopping everything this run started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        trust.remove_all()


def report_logs(work: Path) -> None:
    """Errors the servers logged during the run (there should be none)."""
    found = []
    for name, path, marker in (
        ("quotagate", work / "quotagate" / "serve.log", "ERROR"),
        ("dovecot", work / "dovecot" / "dovecot.log", "rror"),
    ):
        with contextlib.suppress(OSError):
            found += [f"{name}: {line}" for line in path.read_text(errors="replace").splitlines() if marker in line]
    print(f"server logs: {len(found)} error line(s)")
    for line in found[:5]:
        print(f"  {line}")


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
