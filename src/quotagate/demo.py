"""A sample spool for ``quotagate demo``: every format and corner a real spool has, in a scratch folder."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

DOMAIN = "example.org"
KIB = 1024


@dataclass(frozen=True)
class Sample:
    config: Path
    csv: Path
    spool: Path
    checks: tuple[tuple[str, int | None, str], ...]  # address, declared size, what it shows


def _message(rng: random.Random, size: int) -> bytes:
    head = f"From: someone@example.net\nSubject: sample {rng.randrange(10**6)}\n\n".encode()
    body = b"x" * max(0, size - len(head) - 1)
    return head + body + b"\n"


def _maildir_folder(path: Path, rng: random.Random, count: int, mean: int, with_size: bool, seq: list[int]) -> None:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        data = _message(rng, int(rng.paretovariate(1.5) * mean / 3))
        seq[0] += 1
        unique = f"1700000000.M{seq[0]}P{i}.demo"
        if with_size:
            unique += f",S={len(data)}"
        where = "new" if i % 5 == 0 else "cur"
        name = unique if where == "new" else unique + ":2,S"
        (path / where / name).write_bytes(data)


def _maildir(
    root: Path, rng: random.Random, folders: dict[str, int], mean: int, seq: list[int], with_size: bool = True
) -> int:
    total = 0
    for folder, count in folders.items():
        target = root if folder == "INBOX" else root / f".{folder}"
        _maildir_folder(target, rng, count, mean, with_size, seq)
        total += sum(f.stat().st_size for sub in ("cur", "new") for f in (target / sub).iterdir())
    return total


def _mbox(path: Path, rng: random.Random, count: int, mean: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for _ in range(count):
            f.write(b"From sender@example.net Thu Nov 26 02:20:14 2026\n")
            f.write(_message(rng, int(rng.paretovariate(1.5) * mean / 3)) + b"\n")


def build(base: Path, seed: int = 2026) -> Sample:
    """Write a spool, a CSV of quotas and a config under ``base``; return what to check."""
    rng = random.Random(seed)
    spool = base / "spool"
    seq = [0]
    rows = ["address,quota,messages,path"]

    def box(local: str) -> Path:
        return spool / DOMAIN / local / "Maildir"

    # Ordinary users: Maildir with folders, sizes in the file names, quotas of 1 MiB.
    for i in range(20):
        local = f"user{i:02d}"
        folders = {"INBOX": rng.randint(2, 30), "Sent": rng.randint(0, 10), "Trash": rng.randint(0, 8)}
        if i % 4 == 0:
            folders["Archive.2024"] = rng.randint(1, 12)
        if i % 7 == 0:
            folders["Entw&APw-rfe"] = 2  # modified UTF-7, as IMAP servers name folders
        _maildir(box(local), rng, folders, 6 * KIB, seq, with_size=i % 3 != 0)
        rows.append(f"{local}@{DOMAIN},1M,,")

    # Over quota: a full INBOX, and one over its message limit.
    _maildir(box("full"), rng, {"INBOX": 80}, 20 * KIB, seq)
    rows.append(f"full@{DOMAIN},512K,,")
    _maildir(box("chatty"), rng, {"INBOX": 60}, 1 * KIB, seq)
    rows.append(f"chatty@{DOMAIN},10M,50,")
    # Nearly full, to show the inclusive check with a declared size.
    used = _maildir(box("nearly"), rng, {"INBOX": 40}, 10 * KIB, seq)
    rows.append(f"nearly@{DOMAIN},{used + 50 * KIB},,")
    # Over quota only because of Trash, which the demo's folder rule leaves out.
    _maildir(box("hoarder"), rng, {"INBOX": 5, "Trash": 120}, 10 * KIB, seq)
    rows.append(f"hoarder@{DOMAIN},512K,,")

    # Maildir++ with maildirsize: one fresh, one stale (the files say more than it claims).
    fresh = _maildir(box("courier"), rng, {"INBOX": 10, "Sent": 3}, 4 * KIB, seq)
    count = sum(
        1 for sub in ("cur", "new") for d in (box("courier"), box("courier") / ".Sent") for _ in (d / sub).iterdir()
    )
    (box("courier") / "maildirsize").write_text(f"2097152S\n{fresh} {count}\n")
    rows.append(f"courier@{DOMAIN},2M,,")
    stale = _maildir(box("stale"), rng, {"INBOX": 25}, 4 * KIB, seq)
    (box("stale") / "maildirsize").write_text(f"2097152S\n{stale // 3} 8\n1024 1\n")
    rows.append(f"stale@{DOMAIN},2M,,")

    # mbox: a single file, and a directory of mbox files.
    _mbox(spool / "mbox" / "carol", rng, 30, 5 * KIB)
    rows.append(f"carol@{DOMAIN},1M,,mbox/carol")
    _mbox(spool / "mbox" / "dave" / "mbox", rng, 15, 5 * KIB)
    _mbox(spool / "mbox" / "dave" / "mail" / "Sent", rng, 40, 5 * KIB)
    rows.append(f"dave@{DOMAIN},256K,,mbox/dave")

    # Not delivered to yet, and one that cannot be read (a symlink loop).
    rows.append(f"newbie@{DOMAIN},1M,,")
    loop = box("broken")
    loop.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(loop.name, loop)
    rows.append(f"broken@{DOMAIN},1M,,")
    rows.append(f"unlimited@{DOMAIN},0,,")

    csv_path = base / "mailboxes.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    config = base / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{base / "quotagate.db"}"\n\n'
        f'[spool]\nroot = "{spool}"\nlayout = "{{domain}}/{{local}}/Maildir"\nformat = "auto"\n\n'
        f'[publish]\nfile = "{base / "overquota"}"\n\n'
        '[[folders]]\nmatch = "Trash"\nexclude = true\n'
    )
    checks = (
        (f"full@{DOMAIN}", None, "over its size limit: refused"),
        (f"chatty@{DOMAIN}", None, "over its message limit: refused"),
        (f"nearly@{DOMAIN}", 20 * KIB, "a 20K message fits"),
        (f"nearly@{DOMAIN}", 200 * KIB, "a 200K message would overflow it: refused though not full"),
        (f"hoarder@{DOMAIN}", None, "Trash is excluded by a folder rule: accepted"),
        (f"broken@{DOMAIN}", None, "cannot be read: no opinion, the MTA carries on"),
        (f"nobody@{DOMAIN}", None, "not in the directory: no opinion"),
    )
    return Sample(config, csv_path, spool, checks)
