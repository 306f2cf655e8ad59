"""A maildirsize that blocks (a FIFO, swapped in while the daemon reads) holds only its own
mailbox: every other one is answered at once, and the pool of readers stays bounded."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asyncinotify import Inotify
from prometheus_client import CollectorRegistry

from quotagate.model import Usage
from quotagate.policy import files as files_module
from quotagate.policy.filereader import ReaderProcess, Result
from quotagate.policy.files import _WATCH, FILE_WORKERS, REREAD_SECONDS, FileReads
from quotagate.policy.liveusage import Unreadable
from quotagate.policy.metrics import Tally
from quotagate.scan import run_scan
from quotagate.store import open_store
from quotagate.usage.safefs import Roots
from tests.policy.conftest import (
    DOMAIN,
    DUNNO,
    FULL,
    QUOTA,
    REJECT,
    ROOMY,
    ROOMY_USED,
    Serve,
    Site,
    ask,
    connected,
    make_site,
    request,
    run,
    serving_site,
    too_big,
    wait_until,
)

FAST = 0.1  # seconds: the bound for answering the other mailboxes


def maildirsize(site: Site, local: str) -> Path:
    return site.spool / DOMAIN / local / "Maildir" / "maildirsize"


def with_maildirsize(tmp_path: Path, roomy: bool = True) -> Site:
    """The usual site, with a maildirsize in full (and roomy) that the scan finds agreeing: the
    daemon reads them at request time."""
    site = make_site(tmp_path)
    maildirsize(site, "full").write_text(f"{QUOTA}S\n{QUOTA + 1} 1\n")
    if roomy:
        maildirsize(site, "roomy").write_text(f"{QUOTA}S\n{ROOMY_USED} 1\n")
    store = open_store(site.db_url)
    try:
        run_scan(site.config(), store, full=True)
        for address in (FULL, ROOMY) if roomy else (FULL,):
            reading = store.readings()[address]
            assert reading.usage.maildirsize is not None
            assert reading.usage.maildirsize.agrees_with(reading.bytes, reading.messages)
    finally:
        store.close()
    return site


def timed(s: Serve, data: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    received = ask(s.port, data)
    return received, time.monotonic() - started


def threads(s: Serve) -> int:
    return len(os.listdir(f"/proc/{s.pid}/task"))


def file_reads(root: Path, timeout: float = 5, keep_seconds: float = 60) -> tuple[FileReads, CollectorRegistry]:
    """FileReads over ``root`` as the daemon has them, its lookups counted in a registry of its own."""
    registry = CollectorRegistry()
    lookups = Tally("lookups", "", ["source"], registry)
    return FileReads(Roots.of(root), timeout=timeout, keep_seconds=keep_seconds, lookups=lookups), registry


def one_mailbox(root: Path, maildirsize: str) -> Path:
    """A Maildir under ``root`` with this maildirsize."""
    mailbox = root / "Maildir"
    mailbox.mkdir()
    (mailbox / "maildirsize").write_text(maildirsize)
    return mailbox


def counted_asks(files: FileReads) -> list[str]:
    """From now on, the paths ``files`` asks its reader to read (it must have begun)."""
    reader = files._reader
    assert reader is not None
    ask, asked = reader.ask, []

    def counting(path: str, watch: bool) -> None:
        asked.append(path)
        ask(path, watch)

    reader.ask = counting  # type: ignore[method-assign]
    return asked


def test_a_fifo_maildirsize_is_decided_on_the_last_reading_and_the_others_are_read_as_usual(
    serve: Callable[..., Serve], tmp_path: Path
) -> None:
    """Scenario: full's owner makes its maildirsize a FIFO (as a dead mount would leave it
    unreadable). Expected: full is decided on its last reading (over: refused), at once, and
    the others' files are read as usual. (Before, the answer was DUNNO: an over-quota user took
    mail again by spoiling their own file; a symlink or a second hard link did the same.)"""
    site = with_maildirsize(tmp_path)
    fifo = maildirsize(site, "full")
    fifo.unlink()
    os.mkfifo(fifo)
    s = serve(site)
    # roomy's maildirsize now says it is nearly full: a size that fits the scan no longer does.
    maildirsize(site, "roomy").write_text(f"{QUOTA}S\n{ROOMY_USED} 1\n{QUOTA - ROOMY_USED - 100} 1\n")
    answer, seconds = timed(s, request(FULL))
    assert answer == REJECT
    for _ in range(3):
        answer, seconds = timed(s, request(ROOMY, 200))
        assert answer == too_big(200)
        assert seconds < FAST
    assert s.alive()
    assert "maildirsize" in s.log() and FULL in s.log()


@pytest.mark.slow
def test_a_fifo_swapped_in_and_out_while_checking_never_holds_the_other_mailboxes(
    serve: Callable[..., Serve], tmp_path: Path
) -> None:
    site = with_maildirsize(tmp_path)
    s = serve(site, reservation_seconds=0)  # hundreds of checks: none may hold room
    assert timed(s, request(ROOMY, 100))[0] == DUNNO
    before = threads(s)
    target = maildirsize(site, "full")
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        """Replace full's maildirsize by a FIFO and back, as fast as it can."""
        regular, fifo = target.with_name("regular.tmp"), target.with_name("fifo.tmp")
        while not stop.is_set():
            os.mkfifo(fifo)
            os.replace(fifo, target)
            regular.write_text(f"{QUOTA}S\n{QUOTA + 1} 1\n")
            os.replace(regular, target)
            swaps[0] += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    slowest, full_answers, peak = 0.0, set(), before
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for _ in range(3):
                answer, seconds = timed(s, request(FULL))
                full_answers.add(answer)
                assert seconds < 5, "a check of the FIFO's own mailbox was not bounded by file_timeout"
            for _ in range(3):
                answer, seconds = timed(s, request(ROOMY, 100))
                assert answer == DUNNO
                slowest = max(slowest, seconds)
            peak = max(peak, threads(s))
    finally:
        stop.set()
        thread.join()
    assert swaps[0] > 100
    assert slowest < FAST, f"another mailbox waited {slowest:.3f}s"
    assert full_answers <= {DUNNO, REJECT}
    assert peak <= before + FILE_WORKERS, f"{peak} threads, {before} before the swapping"
    assert s.alive()
    assert s.daemon.stop() == 0  # a reader stuck on a FIFO does not keep the daemon from exiting


@pytest.mark.parametrize("how", ["append", "rename"])
def test_a_delivery_recorded_in_maildirsize_is_seen_by_the_very_next_check(
    serve: Callable[..., Serve], tmp_path: Path, how: str
) -> None:
    """The value read is kept between checks, but never past a change: the MDA's append (Exim,
    Courier) or rename over it (Dovecot) is seen by the next check, however soon it comes."""
    site = with_maildirsize(tmp_path)
    s = serve(site, reservation_seconds=0)  # only maildirsize can explain a refusal
    s.daemon.wait_for_log("read 2 maildirsize files ahead of requests", seconds=10)  # full's, roomy's
    assert timed(s, request(FULL))[0] == REJECT
    for _ in range(3):
        assert timed(s, request(ROOMY, 100))[0] == DUNNO  # read once, then kept
    path = maildirsize(site, "roomy")
    line = f"{QUOTA - ROOMY_USED} 1\n"
    if how == "append":
        with path.open("a") as f:
            f.write(line)
    else:
        tmp = path.with_name("maildirsize.new")
        tmp.write_text(path.read_text() + line)
        os.replace(tmp, path)
    assert timed(s, request(ROOMY, 100))[0] == REJECT  # the delivery filled it


def test_answers_waiting_for_a_file_read_keep_their_place_in_a_pipeline(tmp_path: Path) -> None:
    """Postfix pipelines requests on one connection: an answer known at once (roomy, nothing to
    read) must not overtake one waiting for full's maildirsize."""
    site = with_maildirsize(tmp_path, roomy=False)
    session = [
        (request(FULL), REJECT),
        (request(ROOMY, 100), DUNNO),
        (request(FULL, 10), REJECT),
        (request(ROOMY, 20_000), too_big(20_000)),
        (request(f"nobody@{DOMAIN}"), DUNNO),
        (request(FULL, state="DATA"), DUNNO),
    ]

    async def main() -> tuple[bytes, bytes]:
        async with serving_site(site) as running:
            async with connected(running.host_port) as client:
                await client.send(b"".join(data for data, _ in session))
                pipelined = b"".join([await client.answer() for _ in session])
            async with connected(running.host_port) as exim:  # one request, half-close, read to EOF
                await exim.send(request(FULL, end=False))
                await exim.half_close()
                return pipelined, await exim.read_to_eof()

    pipelined, exim = run(main())
    assert pipelined == b"".join(answer for _, answer in session)
    assert exim == REJECT


def reader_pid(s: Serve) -> int:
    """The daemon's maildirsize reader: its one live child process (a killed one may wait to be
    reaped until the next one starts)."""
    children = [
        int(pid)
        for task in os.listdir(f"/proc/{s.pid}/task")
        for pid in Path(f"/proc/{s.pid}/task/{task}/children").read_text().split()
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    ]
    assert len(children) == 1, children
    return children[0]


@pytest.mark.slow
def test_a_reader_process_killed_is_replaced_and_no_request_waits_for_it(
    serve: Callable[..., Serve], tmp_path: Path
) -> None:
    site = with_maildirsize(tmp_path)
    s = serve(site, reservation_seconds=0)
    assert timed(s, request(FULL))[0] == REJECT  # read through the reader
    first = reader_pid(s)
    # A delivery (dropped from the cache): 10 bytes left.
    maildirsize(site, "roomy").write_text(f"{QUOTA}S\n{ROOMY_USED} 1\n{QUOTA - 10 - ROOMY_USED} 1\n")
    os.kill(first, signal.SIGKILL)
    answers = []
    deadline = time.monotonic() + 10
    while too_big(20) not in answers and time.monotonic() < deadline:
        answer, seconds = timed(s, request(ROOMY, 20))
        assert seconds < 1  # no request waits for a reader that is not there
        answers.append(answer)
        time.sleep(0.02)
    # Unknown (DUNNO) while no reader runs, then read by the new one: 10 bytes left, 20 do not fit.
    assert set(answers) <= {DUNNO, too_big(20)} and answers[-1] == too_big(20), answers
    assert reader_pid(s) != first
    assert "maildirsize reader exited" in s.log()


def test_a_value_read_on_a_local_file_system_is_kept_until_it_changes(tmp_path: Path) -> None:
    """keep_seconds bounds only what a network file system could change unseen: on this host's
    ext4 or tmpfs every change raises an event, so an idle mailbox's value stays in memory."""
    mailbox = one_mailbox(tmp_path, "1000S\n100 1\n")
    files, registry = file_reads(tmp_path, keep_seconds=0.05)

    async def main() -> list[object]:
        files.begin()
        try:
            first = files.start(str(mailbox), lambda live: live)
            assert isinstance(first, asyncio.Future)
            seen: list[object] = [await first]
            await asyncio.sleep(0.3)  # six times keep_seconds
            seen.append(files.start(str(mailbox), lambda live: live))  # kept: not a future
            (mailbox / "maildirsize").write_text("1000S\n100 1\n200 1\n")
            await asyncio.sleep(0.05)
            again = files.start(str(mailbox), lambda live: live)  # read again since, or being read
            seen.append(await again if isinstance(again, asyncio.Future) else again)
            return seen
        finally:
            files.close()

    first, kept, changed = asyncio.run(main())
    assert isinstance(first, Usage) and (first.bytes, first.messages) == (100, 1)
    # The same numbers; as of the later lookup (watched, unchanged: current then, not as old as the read).
    assert isinstance(kept, Usage) and (kept.bytes, kept.messages) == (first.bytes, first.messages)
    assert kept.measured_at >= first.measured_at
    assert isinstance(changed, Usage) and (changed.bytes, changed.messages) == (300, 2)
    assert registry.get_sample_value("lookups_total", {"source": "read"}) in (1, 2)


def test_values_are_read_ahead_of_requests_and_again_as_soon_as_they_change(tmp_path: Path) -> None:
    """warm() reads each mailbox before any request asks, and a change is read again at once:
    a request then finds the current value in memory instead of waiting for the reader."""
    boxes = [tmp_path / f"box{n}" / "Maildir" for n in range(20)]
    for n, box in enumerate(boxes):
        box.mkdir(parents=True)
        (box / "maildirsize").write_text(f"1000S\n{n} 1\n")
    files, registry = file_reads(tmp_path)

    async def main() -> tuple[list[Any], Any]:
        files.begin()
        try:
            files.warm(str(box) for box in boxes)
            await asyncio.sleep(1)  # 20 reads, AHEAD at a time
            kept = [files.start(str(box), lambda live: live) for box in boxes]
            (boxes[3] / "maildirsize").write_text("1000S\n3 1\n500 1\n")
            await asyncio.sleep(0.5)  # the event, then the read it asks for
            return kept, files.start(str(boxes[3]), lambda live: live)
        finally:
            files.close()

    kept, changed = asyncio.run(main())
    assert [(u.bytes, u.messages) if isinstance(u, Usage) else u for u in kept] == [(n, 1) for n in range(20)]
    assert isinstance(changed, Usage) and (changed.bytes, changed.messages) == (503, 2)
    counted = [registry.get_sample_value("lookups_total", {"source": source}) for source in ("kept", "read")]
    assert counted == [21, 0]  # no request waited for a read


@pytest.mark.slow
def test_a_read_asked_while_the_reader_dies_is_never_left_hanging(tmp_path: Path) -> None:
    """The change that drops a kept value asks for a read at once: when that read goes to a reader
    just killed, the request is answered as unknown, and once the next reader is up (a second at
    most after the last start), the value is read again."""
    mailbox = one_mailbox(tmp_path, "1000S\n100 1\n")
    files, _ = file_reads(tmp_path, timeout=0.5)

    async def main() -> list[Any]:
        files.begin()
        try:
            first = files.start(str(mailbox), lambda live: live)
            seen = [await first if isinstance(first, asyncio.Future) else first]
            reader = files.reader_pid
            assert reader is not None
            os.kill(reader, signal.SIGKILL)
            while Path(f"/proc/{reader}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                time.sleep(0.01)  # dead, and the loop has not seen it yet (no await since)
            (mailbox / "maildirsize").write_text("1000S\n100 1\n5 1\n")  # the next start() sees it first
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                value = files.start(str(mailbox), lambda live: live)
                seen.append(await value if isinstance(value, asyncio.Future) else value)
                if isinstance(seen[-1], Usage) and seen[-1].bytes == 105:
                    break
                await asyncio.sleep(0.05)
            return seen
        finally:
            files.close()

    seen = asyncio.run(main())
    assert isinstance(seen[0], Usage) and seen[0].bytes == 100
    assert isinstance(seen[-1], Usage) and seen[-1].bytes == 105, seen[-3:]
    assert all(isinstance(value, Unreadable) for value in seen[1:-1])


def test_a_maildirsize_rewritten_in_a_loop_keeps_no_reader_busy(tmp_path: Path) -> None:
    """Its user can change it as fast as they like: it is read ahead again at most once per
    REREAD_SECONDS, and a request still gets what it says now (read when asked)."""
    mailbox = one_mailbox(tmp_path, "1000S\n0 0\n")
    target = mailbox / "maildirsize"
    files, _ = file_reads(tmp_path)

    async def main() -> tuple[Any, list[str]]:
        files.begin()
        try:
            await files.ready()
            asked = counted_asks(files)
            files.warm([str(mailbox)])
            await asyncio.sleep(0.2)
            for n in range(1, 201):  # half a second of rewrites
                target.write_text(f"1000S\n{n} 1\n")
                files.drain()
                await asyncio.sleep(0.0025)
            value = files.start(str(mailbox), lambda live: live)
            return (await value if isinstance(value, asyncio.Future) else value), asked
        finally:
            files.close()

    started = time.monotonic()
    last, asked = asyncio.run(main())
    assert isinstance(last, Usage) and last.bytes == 200
    # the warm read; a read again at the first change, then at most once a second; the request's
    allowed = 3 + (time.monotonic() - started) / REREAD_SECONDS
    assert len(asked) <= allowed, f"{len(asked)} reads of a file rewritten 200 times"


@pytest.mark.slow
def test_the_watch_is_on_the_directory_read_while_its_user_swaps_the_path(tmp_path: Path) -> None:
    """A user who owns a directory on the way to their Maildir can swap it between the watch and
    the read. Were the watch on whatever the path led to, it could sit on another directory than
    the one read: the value read would then be kept with its changes unseen."""
    inodes = {}
    for name, used in (("a", 100), ("b", 200)):
        (tmp_path / name / "Maildir").mkdir(parents=True)
        (tmp_path / name / "Maildir" / "maildirsize").write_text(f"1000S\n{used} 1\n")
        inodes[used] = (tmp_path / name / "Maildir").stat().st_ino
    home = tmp_path / "home"
    home.symlink_to("a")
    mailbox = str(home / "Maildir")
    inotify = Inotify()
    results: list[Result] = []
    stop = threading.Event()

    def swapper() -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            link = tmp_path / "next"
            link.symlink_to("b" if n % 2 else "a")
            os.replace(link, home)

    async def main() -> None:
        got: asyncio.Queue[Result] = asyncio.Queue()

        def take(answers: list[Result]) -> None:
            for answer in answers:
                got.put_nowait(answer)

        reader = ReaderProcess(Roots.of(tmp_path), inotify.fd, int(_WATCH), take, lambda: None, 4)
        reader.start(asyncio.get_running_loop())
        assert await reader.ready(10)
        try:
            for _ in range(300):
                reader.ask(mailbox, True)
                results.append(await asyncio.wait_for(got.get(), 10))
        finally:
            reader.close()

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        asyncio.run(main())
    finally:
        stop.set()
        thread.join()
    fdinfo = Path(f"/proc/self/fdinfo/{inotify.fd}").read_text()
    watched = {int(wd, 16): int(ino, 16) for wd, ino in re.findall(r"inotify wd:(\w+) ino:(\w+)", fdinfo)}
    inotify.close()
    read = [(wd, live.bytes) for _, wd, _, live in results if isinstance(live, Usage) and wd is not None]
    assert {used for _, used in read} == {100, 200}  # the swapping did reach the reads
    assert [(wd, used) for wd, used in read if watched[wd] != inodes[used]] == []


def test_a_user_overflowing_the_event_queue_makes_no_mailbox_read_again(tmp_path: Path) -> None:
    """Creating files in one's own Maildir raises events on a directory the daemon watches; enough
    of them overflow the queue, which drops every kept value. That must cost reads only as
    requests ask, not a read of every mailbox at each overflow (a user can cause one a second)."""
    boxes = [tmp_path / f"box{n}" / "Maildir" for n in range(50)]
    for box in boxes:
        box.mkdir(parents=True)
        (box / "maildirsize").write_text("1000S\n1 1\n")
    files, _ = file_reads(tmp_path)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())

    async def main() -> list[str]:
        files.begin()
        try:
            await files.ready()
            files.warm(str(box) for box in boxes)
            for _ in range(100):
                await asyncio.sleep(0.05)
                if len(files._kept) == len(boxes):
                    break
            assert len(files._kept) == len(boxes)
            asked = counted_asks(files)
            for n in range(limit + 100):  # no await: the events queue up unread, and overflow
                (boxes[0] / f"f{n}").touch()
            files.drain()
            assert files._epoch == 1  # the overflow was seen, and everything kept dropped
            await asyncio.sleep(0.5)
            return asked
        finally:
            files.close()

    asked = asyncio.run(main())
    assert asked == [], f"{len(asked)} mailboxes read again after one overflow"


@pytest.mark.parametrize("noticed_by", ["a hung one asked again", "another read"])
def test_too_many_reads_hung_at_once_start_the_reader_afresh_and_set_their_mailboxes_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, noticed_by: str
) -> None:
    """Reads that never come back (here: never handed to the reader, as if its threads were stuck
    in users' FUSE mounts) would hold the reader's threads for good; past HUNG_LIMIT of them the
    reader is replaced, and those mailboxes get DUNNO without a read while the others are read."""
    monkeypatch.setattr(files_module, "HUNG_LIMIT", 3)
    stuck = []
    for n in range(3):
        (tmp_path / f"u{n}").mkdir()
        stuck.append(str(one_mailbox(tmp_path / f"u{n}", "1000S\n1 1\n")))
    (tmp_path / "fine").mkdir()
    fine = str(one_mailbox(tmp_path / "fine", "1000S\n7 1\n"))
    files, _ = file_reads(tmp_path, timeout=0.1)

    async def main() -> tuple[list[Any], int | None, int | None, Any, Any]:
        files.begin()
        try:
            await files.ready()
            reader = files._reader
            assert reader is not None
            ask = reader.ask
            reader.ask = lambda path, watch: None if path in stuck else ask(path, watch)  # type: ignore[method-assign]
            first = [files.start(path, lambda live: live) for path in stuck]
            waited = [await value if isinstance(value, asyncio.Future) else value for value in first]
            before = files.reader_pid
            again = files.start(stuck[0] if noticed_by == "a hung one asked again" else fine, lambda live: live)
            assert await wait_until(lambda: reader.running and files.reader_pid != before, timeout=10)
            aside = files.start(stuck[1], lambda live: live)
            files.timeout = 10  # the new reader takes a moment to start (more on a loaded machine)
            value = files.start(fine, lambda live: live)
            read = await value if isinstance(value, asyncio.Future) else value
            return [*waited, again], before, files.reader_pid, aside, read
        finally:
            files.close()

    hung, before, after, aside, read = asyncio.run(main())
    assert all(isinstance(value, Unreadable) for value in hung)
    assert before != after
    assert isinstance(aside, Unreadable) and "set aside" in aside.reason
    assert isinstance(read, Usage) and read.bytes == 7
