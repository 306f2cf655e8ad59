"""Benchmark the CPU of one policy request inside the daemon: decoding it and deciding it.

Run it by hand from the project root (it is not part of the test suite)::

    .venv/bin/python benchmarks/request_cpu.py [--mailboxes 2000] [--compare fe3ff0a]

No sockets and no event loop turns are measured: only what quotagate's own Python does per
request, which is what "less work per request" can change (``benchmarks/policy.py`` measures the
whole daemon, kernel and uvloop included). In one run, for this checkout and for quotagate as of
git revision ``--compare``:

1. A spool of ``--mailboxes`` Maildir++ mailboxes (one message, a ``maildirsize`` that agrees),
   imported and scanned into a SQLite store of that revision's own, through its own CLI.
2. In a process of its own, the revision's PolicyService on that store: every mailbox asked for
   once (today's daemon then keeps each maildirsize value; fe3ff0a read it inline at every
   request, a ``stat`` included), then each mailbox asked again, ``--repeat`` times; the best
   pass counts. Two kinds of request: Postfix's (24 attributes, ends with an empty line) and the
   one quotagate's Exim ACL sends (4 attributes, then a half-close).
3. The same Exim request as a whole connection through the revision's own server protocol
   (``_Connection``: made, the request's bytes, the half-close, lost) on a stand-in transport
   that only collects what is written: what the daemon's Python does per ``${readsocket}``
   beyond the decision (its timers, session and queue), without the kernel's part. The local-user
   check is left out (the stand-in has no peer): ``benchmarks/peer_lookup.py`` measures it.

It prints µs per request for each and the ratio today / then.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _harness import exported_source, machine, run

MEASURE = r"""
import asyncio, json, sys, time
from pathlib import Path
from quotagate.config import load_config
from quotagate.policy.codec import PolicyDecoder
from quotagate.policy.live import load_snapshot
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from quotagate.store import open_store

config = load_config(Path(sys.argv[1]))
repeat = int(sys.argv[2])
service = PolicyService(config, Metrics())
store = open_store(config.store.url)
service.snapshot = load_snapshot(store)
store.close()
addresses = sorted(service.snapshot.mailboxes)
postfix = "".join(
    f"{name}={value}\n"
    for name, value in [
        ("request", "smtpd_access_policy"), ("protocol_state", "RCPT"), ("protocol_name", "ESMTP"),
        ("client_address", "192.0.2.1"), ("client_name", "mx.example.net"),
        ("reverse_client_name", "mx.example.net"), ("helo_name", "mx.example.net"),
        ("sender", "a@example.net"), ("queue_id", ""), ("instance", "123.456.7"), ("size", "1000"),
        ("etrn_domain", ""), ("stress", ""), ("sasl_method", ""), ("sasl_username", ""),
        ("sasl_sender", ""), ("ccert_subject", ""), ("ccert_issuer", ""), ("ccert_fingerprint", ""),
        ("encryption_protocol", ""), ("encryption_cipher", ""), ("encryption_keysize", "0"),
        ("client_port", "25"), ("server_port", "25"),
    ]
)
exim = "request=smtpd_access_policy\nprotocol_state=RCPT\nsize=1000\n"
kinds = {
    "postfix": ([(postfix + f"recipient={a}\n\n").encode() for a in addresses], False),
    "exim": ([(exim + f"recipient={a}\n").encode() for a in addresses], True),
}
respond = getattr(service, "respond", None) or service.answer


def decoded(data, half_close):
    decoder = PolicyDecoder()
    items = decoder.feed(data)
    return (items + decoder.end()) if half_close else items


class Transport:  # stands in for a TCP transport: takes the answer, has no peer (no local-user check)

    def __init__(self):
        self.closing = False
        self.written = []

    def get_extra_info(self, name, default=None):
        return default

    def write(self, data):
        self.written.append(data)

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    abort = close


async def connections(payloads, respond, repeat):
    from quotagate.policy.server import PolicyServer, _Connection

    server = PolicyServer(respond, config.policy, Metrics())
    if hasattr(server, "load_local_users"):
        await server.load_local_users()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for data in payloads:
            connection = _Connection(server)
            transport = Transport()
            connection.connection_made(transport)
            connection.data_received(data)
            connection.eof_received()
            connection.connection_lost(None)
            assert transport.written, "no answer written at once"
        best = min(best, time.perf_counter() - started)
    return best / len(payloads) * 1e6


async def main():
    results = {}
    for kind, (payloads, half_close) in kinds.items():
        for data in payloads:  # once: today's daemon reads and keeps each maildirsize
            answer = respond(decoded(data, half_close)[0])
            if not isinstance(answer, str):
                await answer
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            for data in payloads:
                answer = respond(decoded(data, half_close)[0])
                assert isinstance(answer, str), "a maildirsize read during the measured pass"
            best = min(best, time.perf_counter() - started)
        results[kind] = best / len(payloads) * 1e6
    results["exim connection"] = await connections(kinds["exim"][0], respond, repeat)
    files = getattr(service, "files", None)
    if files is not None and hasattr(files, "close"):
        files.close()
    print(json.dumps(results))

asyncio.run(main())
"""


def build_spool(root: Path, mailboxes: int) -> Path:
    """``mailboxes`` Maildir++ mailboxes under ``root``, and the CSV that imports them."""
    lines = ["address,quota,messages,path\n"]
    for n in range(mailboxes):
        local = f"user{n:05d}"
        maildir = root / "example.org" / local / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        (maildir / "cur" / f"1.M{n}P1.bench,S=1000:2,S").write_bytes(b"x" * 1000)
        (maildir / "maildirsize").write_text("100000S\n1000 1\n")
        lines.append(f"{local}@example.org,100000,0,example.org/{local}/Maildir\n")
    csv = root.parent / "mailboxes.csv"
    csv.write_text("".join(lines))
    return csv


def measure(work: Path, spool: Path, csv: Path, name: str, source: str | None, repeat: int) -> dict[str, float]:
    """µs per request of each kind, for quotagate from ``source`` (None: this checkout)."""
    config = work / f"{name}.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{work}/{name}.db"\n'
        f'[spool]\nroot = "{spool}"\nlayout = "{{domain}}/{{local}}/Maildir"\n'
        '[policy]\nmetrics = ""\nreservation_seconds = 0\n'
    )
    env = {**os.environ, "PYTHONPATH": source} if source is not None else None
    base = [sys.executable, "-m", "quotagate", "--config", str(config)]
    run([*base, "mailbox", "import", str(csv)], env=env)
    run([*base, "scan"], env=env)
    out = run([sys.executable, "-c", MEASURE, str(config), str(repeat)], env=env).output
    return dict(json.loads(out.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=2000, help="mailboxes (default 2000)")
    parser.add_argument("--compare", default="fe3ff0a", help="git revision to compare with (default fe3ff0a)")
    parser.add_argument("--repeat", type=int, default=5, help="measured passes, the best counts (default 5)")
    args = parser.parse_args(argv)
    print(" | ".join(machine()))
    with tempfile.TemporaryDirectory(prefix="quotagate-bench-request-") as tmp:
        work = Path(tmp)
        spool = work / "spool"
        csv = build_spool(spool, args.mailboxes)
        today = measure(work, spool, csv, "today", None, args.repeat)
        then = measure(work, spool, csv, "then", exported_source(args.compare, work / "then"), args.repeat)
    passes = f"best of {args.repeat} passes over {args.mailboxes} mailboxes"
    print(f"\nCPU per request inside quotagate (decode + decide), {passes}")
    print(f"{'request':<16} {'today µs':>9} {args.compare + ' µs':>12} {'ratio':>6}")
    for kind in today:
        print(f"{kind:<16} {today[kind]:>9.1f} {then[kind]:>12.1f} {today[kind] / then[kind]:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
