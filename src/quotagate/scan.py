"""The scan flow: directory -> usage -> store -> publish."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import NamedTuple

from msgspec import Struct
from msgspec.structs import replace

from quotagate import bounded
from quotagate.accounting import Profile, enforced, profile_for
from quotagate.address import shadowed
from quotagate.config import Config, FolderRule
from quotagate.decide import is_over
from quotagate.historian import after_scan
from quotagate.misread import layout_hint, misread_warning
from quotagate.model import Format, Limits, Mailbox, MailboxUsage, Reading, ScanSummary, State
from quotagate.outage import Outage, found_before, left_problem, root_problem, vanished_problem
from quotagate.publish import published_first
from quotagate.spool import UnsafePath, located, mailbox_path, spool_roots
from quotagate.store import Store
from quotagate.usage.folders import counted
from quotagate.usage.mailbox import FormatSetting, Found, measure, timed_out, unchanged_each
from quotagate.usage.maildir import Layout
from quotagate.usage.maildirsize import MAX_SIZE, definition_for
from quotagate.usage.names import display_name
from quotagate.usage.safefs import Roots

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
# Below this many mailboxes to read, a process pool costs more than it saves.
_POOL_MIN = 64
_LOOK_CHUNK = 64  # mailboxes looked at per hand-over to the looking thread (one each would cost more)


class Job(NamedTuple):
    """One mailbox to measure: :func:`quotagate.usage.mailbox.measure`'s arguments, in its order
    (a tuple, so that a worker process gets it pickled whole)."""

    root: str
    fmt: FormatSetting
    previous: Found | None
    racy_cutoff_ns: int
    roots: Roots
    fix_rules: tuple[FolderRule, ...] | None
    subdir: str
    profile: Profile
    definition: str | None
    layout: Layout
    reuse: bool
    require_parent: bool


class ScanResult(Struct, frozen=True):
    summary: ScanSummary
    readings: dict[str, Reading]  # what this scan measured or kept (see _stored_now: not all)
    maildirsize_mismatches: list[str]
    maildirsize_fixed: list[str]
    published: bool
    # Every enabled mailbox's reading as the store and the published file hold them after the
    # scan: its own, or (without folders) what another writer stored meanwhile.
    stored: dict[str, Reading]


def _measure_job(job: Job) -> Found:
    try:
        return measure(*job)
    except Exception as exc:  # one bad mailbox is one unknown mailbox, never a failed scan
        log.exception("%s: cannot be measured", display_name(job.root))
        return Found(job.root, MailboxUsage(Format.MISSING, error=f"internal error: {type(exc).__name__}"))


class _Candidate(NamedTuple):
    """A mailbox to scan, where it is, and what the last scan left of it."""

    mailbox: Mailbox
    path: str
    where: str
    kept: Reading | None  # the last reading, when the mailbox may be unchanged on disk: look first
    reuse: MailboxUsage | None  # the last usage, whose unchanged folders need not be read again
    definition: str | None


def _unchanged_all(
    looks: Sequence[tuple[str, MailboxUsage]], roots: Roots, profile: Profile, layout: Layout, timeout: float
) -> list[bool]:
    """Whether each mailbox is unchanged on disk since its usage was measured, looked at in a
    daemon thread, :data:`_LOOK_CHUNK` mailboxes at a time: a dead mount under one of them hangs
    even a ``stat``, and would hang the scan (and keep its lock). A chunk not looked at within
    ``timeout`` counts as changed: its mailboxes are measured, each under the same timeout."""
    chunks = [looks[i : i + _LOOK_CHUNK] for i in range(0, len(looks), _LOOK_CHUNK)]

    def look(chunk: Sequence[tuple[str, MailboxUsage]]) -> list[bool]:
        return unchanged_each(chunk, roots, profile, layout)

    def hung(chunk: Sequence[tuple[str, MailboxUsage]]) -> list[bool]:
        log.warning(
            "looking whether %d mailboxes changed took longer than %gs (a hung mount?): measuring them",
            len(chunk),
            timeout,
        )
        return [False] * len(chunk)

    return [same for part in bounded.in_thread(look, chunks, timeout, hung) for same in part]


def _measure_all(
    jobs: Sequence[Job], workers: int, timeout: float, measure_job: Callable[[Job], Found]
) -> Iterator[Found]:
    """Measure in parallel processes (the per-file work holds the GIL), in input order; a mailbox
    that takes longer than ``timeout`` (a hung mount, a FIFO) is unknown, the rest goes on."""

    def late(job: Job) -> Found:
        return timed_out(job.root, timeout)

    if workers <= 1 or len(jobs) < _POOL_MIN:
        yield from bounded.in_thread(measure_job, jobs, timeout, late)
        return
    import multiprocessing  # here: a scan with few mailboxes to read never loads it

    # fork is the cheapest start, but forking a process that runs other threads (the daemon,
    # watch, a mailbox left hanging in a thread) can copy a lock some thread holds: then start
    # workers from a clean server process.
    ctx = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
    yield from bounded.in_processes(measure_job, jobs, timeout, late, workers, ctx)


def files_of(usage: MailboxUsage, config: Config, profile: Profile) -> tuple[int, int]:
    """Bytes and messages of the mailbox's files under the folder rules and the profile, whatever
    its maildirsize claims (see :func:`quotagate.accounting.enforced`)."""
    return counted(usage.folders, config.folders, profile.leaves_out_folder)


def _totals(
    mailbox: Mailbox, usage: MailboxUsage, config: Config, profile: Profile, now: float
) -> tuple[int, int, State]:
    """Bytes and messages that count under the accounting profile and the folder rules, and the
    state they put the mailbox in (at the profile's boundary)."""
    files = files_of(usage, config, profile)
    if not usage.known:
        return *files, State.UNKNOWN
    bytes_, messages = enforced(files, usage.maildirsize, mailbox.limits, profile, now)
    over = is_over(mailbox.limits, bytes_, messages, config.scan.threshold, profile.boundary)
    return bytes_, messages, State.OVER if over else State.OK


def reading_for(
    mailbox: Mailbox, path: str, usage: MailboxUsage, config: Config, profile: Profile, now: float
) -> Reading:
    """The reading of ``usage`` under ``config``'s folder rules and threshold and ``profile``
    (:func:`quotagate.accounting.profile_for` of its spool, asked once by the caller)."""
    return Reading(mailbox.address, path, usage, *_totals(mailbox, usage, config, profile, now), now)


def _maildirsize_disagrees(r: Reading, config: Config, profile: Profile) -> bool:
    """Whether the maildirsize claims other than the files hold (even where the agent goes by the
    claims and so does the reading: see :func:`quotagate.accounting.enforced`)."""
    info = r.usage.maildirsize
    if info is None or not r.usage.known:
        return False
    if not info.agrees_with(r.bytes, r.messages):
        return True  # the reading is the files, or the larger of them and the claims: not the claims
    # Agreeing with the reading, it disagrees with the files only where the claims were counted.
    return profile.trusts_maildirsize and not info.agrees_with(*files_of(r.usage, config, profile))


def _definition(mailbox: Mailbox, set_limit: bool) -> str | None:
    """The quota definition ``--set-limit`` writes for a mailbox: none for an unlimited one,
    whose file keeps its own (quotagate has no limit to give it)."""
    return definition_for(mailbox.limits) if set_limit and not mailbox.limits.unlimited else None


def _needs_fix(r: Reading, definition: str | None, config: Config, profile: Profile) -> bool:
    """Whether ``--fix-maildirsize`` has work in a mailbox as it was last measured."""
    if _maildirsize_disagrees(r, config, profile):
        return True
    if definition is None or r.usage.format is not Format.MAILDIR or not r.usage.known:
        return False
    return r.usage.maildirsize is None or r.usage.maildirsize.definition != definition


def run_scan(
    config: Config,
    store: Store,
    *,
    full: bool = False,
    fix_maildirsize: bool = False,
    set_limit: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    measure_job: Callable[[Job], Found] = _measure_job,
) -> ScanResult:
    """One scan: measure every enabled mailbox (only changed folders unless ``full``), publish the
    over-quota set, then store the readings that changed in one transaction.

    ``fix_maildirsize`` rewrites maildirsize files that disagree with the files, keeping their
    quota definition unless ``set_limit``: then it is the mailbox's limits (and a Maildir
    without a maildirsize gets one).

    A mailbox measured before whose directory is there no more is "missing" (empty, not created
    yet); one with a directory above it gone (an unmounted per-domain volume) is unknown, and
    keeps its flag, unless ``force``.

    Raises :class:`Outage`, having changed and recorded nothing, when the spool looks vanished
    rather than empty (see :mod:`quotagate.outage`), unless ``force``; PublishError, having
    stored and recorded nothing, when the published file cannot be written. ``measure_job`` (a
    picklable function) is for tests that need a mailbox to hang.
    """
    started = time.time()
    if not force and (problem := root_problem(config.spool, config.scan.mailbox_timeout)):
        raise Outage(problem)
    cutoff_ns = int((started - config.scan.racy_seconds) * 1e9)
    mailboxes = [m for m in store.mailboxes() if m.enabled]
    previous = store.readings()
    workers = config.scan.workers or os.cpu_count() or 1
    roots = spool_roots(config.spool)
    fix_rules = tuple(config.folders) if fix_maildirsize else None
    profile = profile_for(config.spool)

    readings: dict[str, Reading] = {}
    pending: list[tuple[Mailbox, str]] = []
    jobs: list[Job] = []
    candidates: list[_Candidate] = []
    for mailbox in mailboxes:
        try:
            path = mailbox_path(mailbox, config.spool, roots)
        except UnsafePath as exc:
            usage = MailboxUsage(Format.MISSING, error=str(exc))
            readings[mailbox.address] = reading_for(mailbox, "", usage, config, profile, started)
            continue
        prev = previous.get(mailbox.address)
        where = located(path, prev, config.spool)  # the Maildir below path, if found there before
        prev_usage = prev.usage if prev is not None and prev.path == where and not full else None
        definition = _definition(mailbox, set_limit)
        recheck = fix_maildirsize and prev is not None and _needs_fix(prev, definition, config, profile)
        kept = prev if prev_usage is not None and not recheck else None
        candidates.append(_Candidate(mailbox, path, where, kept, prev_usage, definition))
    looks = [(c.where, c.kept.usage) for c in candidates if c.kept is not None]
    same_on_disk = iter(_unchanged_all(looks, roots, profile, config.spool.maildir_layout, config.scan.mailbox_timeout))
    for mailbox, path, where, prev, prev_usage, definition in candidates:
        if prev is not None and prev_usage is not None and next(same_on_disk):
            # Unchanged on disk: the stored reading stands unless its limits or folder rules moved.
            totals = _totals(mailbox, prev_usage, config, profile, started)
            same = totals == (prev.bytes, prev.messages, prev.state)
            readings[mailbox.address] = prev if same else Reading(mailbox.address, where, prev_usage, *totals, started)
            continue
        pending.append((mailbox, path))
        # The last reading, wherever and however it was taken: what the mailbox was says how to
        # read it now (see measure), even where its folders are not reused.
        last = previous.get(mailbox.address)
        jobs.append(
            Job(
                path,
                config.spool.format,
                Found(last.path, last.usage) if last is not None else None,
                cutoff_ns,
                roots,
                fix_rules,
                config.spool.maildir_subdir,
                profile,
                definition,
                config.spool.maildir_layout,
                reuse=not full,
                require_parent=not force and found_before(last, where),
            )
        )

    total = len(mailboxes)
    done = len(readings)
    if progress:
        progress(done, total)
    for (mailbox, _), found in zip(
        pending, _measure_all(jobs, workers, config.scan.mailbox_timeout, measure_job), strict=True
    ):
        readings[mailbox.address] = reading_for(mailbox, found.path, found.usage, config, profile, started)
        done += 1
        if progress and (done % 50 == 0 or done == total):
            progress(done, total)

    if not force and (problem := vanished_problem(previous, readings, config.scan.max_vanished)):
        raise Outage(problem)
    # A scan that measured nothing again changed no usage: nothing in it can look misread.
    if pending and (warning := misread_warning(previous, readings)):
        log.warning("%s", warning)  # it names maildir_subdir: a Maildir moved down looks like fs folders
    elif hint := layout_hint(readings):
        log.warning("%s", hint)
    log_left_out(readings)

    changed = []
    for address, r in readings.items():
        prev = previous.get(address)
        if r is prev:
            continue
        if r.state is State.UNKNOWN and prev is not None and prev.state is State.OVER:
            r = readings[address] = kept_over(r, prev)
        if prev is not None and r.same_measure(prev):
            readings[address] = prev
        else:
            changed.append(r)
            if r.state is State.UNKNOWN:
                log.warning("%s: usage unknown: %s", address, r.reason)
    now = _stored_now(store, previous, readings, None if force else config.scan.max_vanished)
    changed = [r for r in changed if r.address in readings]
    removed = set(now.current) - now.enabled
    stored = {a: r for a, r in now.current.items() if a in now.enabled} | readings
    over = {a for a, r in stored.items() if r.state is State.OVER}
    own = shadowed(stored, over, config.policy.folder_delimiter)
    flags = flag_changes(changed, removed, {a: r.state for a, r in (previous | now.current).items()})
    with published_first(config.publish.file, over, own) as published:
        store.save_readings(changed, removed, flags)
    after_scan(config, store, changed, started)
    moved = {a: o for a, o in flags.items() if o or (a in previous and previous[a].state is State.OVER)}
    log_transitions(moved, readings, {m.address: m.limits for m in mailboxes})

    fixed = sorted(a for a, r in readings.items() if r.usage.maildirsize and r.usage.maildirsize.rewritten)
    mismatches = sorted([*fixed, *(a for a, r in readings.items() if _maildirsize_disagrees(r, config, profile))])

    summary = ScanSummary(
        started_at=started,
        finished_at=time.time(),
        full=full or not previous,
        mailboxes=total,
        measured=len(pending),
        messages=sum(r.messages for r in readings.values()),
        bytes=min(sum(r.bytes for r in readings.values()), MAX_SIZE),  # a forged size saturates one mailbox
        over=sum(r.state is State.OVER for r in readings.values()),
        unknown=sum(r.state is State.UNKNOWN for r in readings.values()),
        written=len(changed) + len(removed),
    )
    store.record_scan(summary)
    return ScanResult(summary, readings, mismatches, fixed, published, stored)


def log_left_out(readings: Mapping[str, Reading]) -> None:
    """One line per measured mailbox whose measurement left something out (a symlinked folder,
    folders past the walk's bounds), at every scan: what its owner hid stays visible. The
    layout hint is said once for all mailboxes (see :func:`quotagate.misread.layout_hint`)."""
    for address, r in sorted(readings.items()):
        left_out = r.usage.warning if r.usage.known else None
        if left_out:
            log.warning("%s: measured, but not counted: %s", address, left_out)


def kept_over(unknown: Reading, prev: Reading, say: bool = True) -> Reading:
    """A full mailbox that cannot be measured stays full, with its last numbers and the reason
    (logged unless not ``say``).

    Its owner controls most of what makes a mailbox unknown (an unreadable folder, a swapped
    symlink, a FIFO): were its flag cleared, a full mailbox could be opened at will. It is
    measured again at the next scan, and the flag follows the first measurement that works.
    """
    if say:
        log.warning("%s: usage unknown (%s); kept over quota until it can be measured", unknown.address, unknown.reason)
    return replace(unknown, bytes=prev.bytes, messages=prev.messages, state=State.OVER)


def flag_changes(changed: Iterable[Reading], removed: Iterable[str], previous: Mapping[str, State]) -> dict[str, bool]:
    """Over-quota flags to publish: those that changed, plus every mailbox seen for the first time
    (the admin's table may hold flags from before). Removed or disabled mailboxes are cleared.
    ``previous``: each mailbox's state as stored."""
    flags = {}
    for r in changed:
        prev = previous.get(r.address)
        over = r.state is State.OVER
        if prev is None or (prev is State.OVER) != over:
            flags[r.address] = over
    for address in removed:
        if previous.get(address) is State.OVER:
            flags[address] = False
    return flags


class _Stored(NamedTuple):
    current: dict[str, Reading]  # the stored readings as they are now, without folders
    enabled: set[str]  # the directory's enabled mailboxes, now


def _stored_now(
    store: Store, previous: Mapping[str, Reading], readings: dict[str, Reading], max_vanished: Decimal | None
) -> _Stored:
    """The store as it is once the scan has measured, which took a while: what another writer
    put there meanwhile (``watch``'s flush of a delivery it saw, another host's scan) is newer
    than the scan's measurement of that mailbox, and a mailbox the admin disabled or removed
    meanwhile is gone. Those leave ``readings`` (the scan writes nothing for them); the set it
    publishes is the store's as it is now, with its own readings for the rest. (A writer that
    comes between this look and the commit, a moment later, can still be overwritten.)

    Raises :class:`Outage` when too many of the mailboxes measured left the directory meanwhile
    (an emptied table re-imported, a bad LDAP filter): ``max_vanished``, unless None (``force``)."""
    current = store.readings(with_folders=False)
    enabled = {m.address for m in store.mailboxes() if m.enabled}
    if max_vanished is not None and (problem := left_problem(readings, readings.keys() - enabled, max_vanished)):
        raise Outage(f"the directory changed while the scan measured: {problem}")
    for address in list(readings):
        stored, before = current.get(address), previous.get(address)
        newer = stored is not None and (before is None or stored.measured_at != before.measured_at)
        if newer or address not in enabled:
            del readings[address]
    return _Stored(current, enabled)


def log_transitions(moved: Mapping[str, bool], readings: Mapping[str, Reading], limits: Mapping[str, Limits]) -> None:
    """One line per mailbox now refused or no longer refused (``moved``: address -> over): the
    admin answering "why was my mail refused at 10:02?" finds the numbers behind it."""
    for address, over in sorted(moved.items()):
        r = readings.get(address)
        if r is None:
            log.info("%s is no longer over quota: disabled or gone from the directory", address)
        elif r.state is State.UNKNOWN:
            log.info("%s is no longer over quota: usage unknown (%s)", address, r.reason)
        else:
            lim = limits.get(address, Limits())
            log.info(
                "%s is %s: %d of %s bytes, %d of %s messages",
                address,
                "over quota" if over else "back under quota",
                r.bytes,
                lim.bytes or "unlimited",
                r.messages,
                lim.messages or "unlimited",
            )


def summary_line(s: ScanSummary) -> str:
    kind = "full" if s.full else "incremental"
    return (
        f"scan ({kind}): {s.mailboxes} mailboxes ({s.measured} read), {s.messages} messages, "
        f"{s.bytes} bytes, {s.over} over quota, {s.unknown} unknown, {s.written} written, "
        f"{s.seconds:.2f} s"
    )
