"""Measuring one mailbox, whatever its format, reusing unchanged folders of the previous reading.

The mailbox is reached through :mod:`safefs` (directory descriptors from an allowed root down)
and read through descriptors only, so nothing a user swaps meanwhile redirects a read. Whatever
goes wrong inside one mailbox makes that mailbox unknown, with the reason; it never stops a scan.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, NamedTuple, TypeVar

from msgspec.structs import replace

from quotagate.accounting import FILES, Profile
from quotagate.config import FolderRule
from quotagate.model import FolderUsage, Format, MailboxUsage, MaildirsizeInfo
from quotagate.usage import maildir, maildirsize, mbox, safefs
from quotagate.usage.folders import counted
from quotagate.usage.names import disk_name, display_name
from quotagate.usage.safefs import Node, Roots

log = logging.getLogger(__name__)

FormatSetting = Literal["maildir", "mbox", "auto"]
# Not tmp/: a home has one of its own (and a Maildir has cur/ and new/ as soon as it has tmp/).
_MAILDIR_MARKERS = ("cur", "new", maildirsize.FILE_NAME)
# Dovecot's dbox (sdbox: mailboxes/INBOX/dbox-Mails; mdbox: storage/dovecot.map.index):
# no mbox home, and no quotagate format.
_DBOX_MARKERS = ("mailboxes/INBOX/dbox-Mails", "storage/dovecot.map.index")
_MDBOX_FILE = re.compile(r"m\.[0-9]+|dovecot\.map\.index.*")  # in an mdbox's storage/
MAILDIRFOLDER = "maildirfolder"  # Maildir++: this folder's quota is its root's
_GUID = re.compile(r"[0-9a-f]{32}")  # a Dovecot mailbox GUID as LAYOUT=index names its directory
_LAYOUT_INDEX = "Dovecot LAYOUT=index (mailboxes in directories named by GUID), which quotagate cannot read"


def _exists(name: str, dir_fd: int) -> bool:
    return maildir.entry_type(dir_fd, name) is not None


def _holds(dir_fd: int) -> bool:
    """Whether the directory holds anything (one that cannot be listed is taken to)."""
    try:
        with os.scandir(dir_fd) as entries:
            return next(entries, None) is not None
    except OSError:
        return True


def _no_maildir(below: Node, home: Node, layout: maildir.Layout) -> bool:
    """Whether the ``maildir_subdir`` directory found is no Maildir: an mbox user's folders of
    that name (Dovecot's Maildir/old), or an empty directory beside mbox mail (a user's, or the
    agent's not filled yet). Then the home is measured as what it holds; empty beside no mbox
    file, it is the Maildir the agent fills later."""
    if not below.is_dir or _looks_like_maildir(below.fd, layout):
        return False
    return _holds(below.fd) or _holds_mbox_file(home.fd)


def _holds_mbox_file(dir_fd: int) -> bool:
    """Whether the directory holds an mbox file (one that cannot be read is taken for one)."""
    try:
        return mbox.holds_mbox(dir_fd, ())
    except OSError:
        return True


def _holds_mail_dirs(name: str, root_fd: int) -> bool:
    """:func:`maildir.holds_mail_dirs`, with an entry that cannot be opened holding none."""
    try:
        return maildir.holds_mail_dirs(root_fd, name)
    except OSError:
        return False


def _root_markers(root_fd: int) -> tuple[str, ...]:
    """Which of cur/, new/ and maildirsize the root holds; maildirsize is looked for only when
    it can matter (not both of the others: see :func:`_half_maildir`)."""
    found = tuple(sub for sub in _MAILDIR_MARKERS[:2] if maildir.is_mail_dir(root_fd, sub))
    return found if len(found) == 2 or not _exists(maildirsize.FILE_NAME, root_fd) else (*found, maildirsize.FILE_NAME)


def _looks_like_maildir(
    root_fd: int, layout: maildir.Layout = "maildir++", markers: tuple[str, ...] | None = None, besides: str = ""
) -> bool:
    """cur/, new/ or maildirsize at the root (``markers``, when looked for already); or, when
    the INBOX's own directories are missing (a tree made by imapsync or doveadm with folders
    only), a ``.Folder`` (``LAYOUT=fs``: a ``Folder``) holding cur/ or new/, other than
    ``besides`` — an mbox home has no such thing, and read as one all that mail would count 0."""
    if markers if markers is not None else _root_markers(root_fd):
        return True
    try:
        names = os.listdir(root_fd)
    except OSError:
        return False
    return any(
        (name.startswith(".") != (layout == "fs"))
        and name not in (".", "..", _MBOX_INDEXES, besides)
        and _holds_mail_dirs(name, root_fd)
        for name in names
    )


# Dovecot's index directory in an mbox home: one directory per folder, so cur/ and new/ for
# the mbox folders named so, which make it no Maildir++ folder.
_MBOX_INDEXES = ".imap"


_HALF_MAILDIR = "only one of cur/ and new/, beside an mbox file: neither a Maildir nor an mbox home"
_TWO_MAILDIRS = "a Maildir here, and another in [spool] maildir_subdir: which is delivered to?"


def _folders_besides(root_fd: int, layout: maildir.Layout, subdir: str) -> bool:
    """Whether a directory with no INBOX of its own holds folders other than ``subdir`` (and,
    under LAYOUT=fs, those below it): at any depth under LAYOUT=fs (``Archive/old`` in a plain
    ``Archive/``), as the folder listing finds them."""
    if layout != "fs":
        return _looks_like_maildir(root_fd, layout, (), besides=subdir)
    listing = maildir.folder_names(root_fd, "fs")
    below = f"{subdir}/"
    return bool(listing.problems) or any(n != subdir and not n.startswith(below) for n in listing.names[1:])


def _half_maildir(root_fd: int, markers: tuple[str, ...]) -> bool:
    """Only one of cur/ and new/ at the root (every delivery agent makes both), no maildirsize,
    and an mbox file: an mbox home whose user made the IMAP folder "new/2024" (Dovecot keeps it
    as the mbox file ``new/2024``), or a Maildir whose user removed cur/ and put a ``From `` file
    beside. Which one, quotagate cannot tell, and its user chose: either reading could leave
    mail out. ``markers``: :func:`_root_markers`."""
    found = [m for m in markers if m != maildirsize.FILE_NAME]
    return len(found) == 1 and len(markers) == 1 and mbox.holds_mbox(root_fd, found)


def _layout_index(root_fd: int) -> bool:
    """Dovecot's ``LAYOUT=index``: every mailbox, INBOX too, a Maildir in a directory named by its
    GUID (the names only in the binary ``dovecot.list.index``), nothing at the root but perhaps a
    ``maildirsize``. Read as a Maildir, or as an mbox home, it would count 0."""
    if maildir.is_mail_dir(root_fd, "cur") or maildir.is_mail_dir(root_fd, "new"):
        return False
    try:
        names = os.listdir(root_fd)
    except OSError:
        return False
    return any(_GUID.fullmatch(name) and _holds_mail_dirs(name, root_fd) for name in names)


def _in_order(folders: list[FolderUsage]) -> tuple[FolderUsage, ...]:
    """Folders by name: one order for a measurement and the store's copy of it."""
    return tuple(sorted(folders, key=lambda f: f.name))


def _reusable(previous: MailboxUsage | None, fmt: Format) -> dict[str, FolderUsage]:
    if previous is None or previous.format is not fmt or not previous.known:
        return {}
    return {f.name: f for f in previous.folders if f.stamp is not None}


_SETTLE_TRIES = 3
_DBOX = "Dovecot dbox, which quotagate cannot read"
_UNSETTLED = "folders kept being renamed, or mail moved between them, while measured: measured again next time"


def _holds_less(folders: Sequence[FolderUsage], last: MailboxUsage | None) -> bool:
    """Whether folders read while they kept changing hold less than the mailbox's last reading
    (a reading unknown for that reason carries the folders weighed against: see :func:`_unsettled`)."""
    if last is None or not last.folders:
        return False
    return sum(f.bytes for f in folders) < last.all_bytes or sum(f.messages for f in folders) < last.all_messages


_S = TypeVar("_S")
_R = TypeVar("_R")


def _reused_or_read(
    name: str,
    stamp: _S,
    reuse: dict[str, FolderUsage],
    this_time: dict[str, tuple[_S, FolderUsage]],
    profile: Profile,
    read: Callable[[], tuple[FolderUsage, _S]],
) -> tuple[FolderUsage, _S]:
    """A folder's usage and its stamp as read: its last reading's where its stamp is unchanged
    since, an earlier pass's of this measurement where unchanged since that, else ``read``."""
    old, earlier = reuse.get(display_name(name)), this_time.get(name)
    if old is not None and old.stamp == (*stamp, *profile.stamp_tag):  # type: ignore[misc]
        return old, stamp
    if earlier is not None and earlier[0] == stamp:
        return earlier[1], stamp
    folder, as_read = read()
    this_time[name] = as_read, folder
    return folder, as_read


def _settled(
    one_pass: Callable[[], MailboxUsage | tuple[Stayed, _R | None]],
) -> MailboxUsage | tuple[Stayed, _R | None]:
    """Passes over a mailbox until one finds its folders stayed as read, at most
    :data:`_SETTLE_TRIES`: the last pass's outcome (a MailboxUsage: it cannot be read)."""
    outcome: MailboxUsage | tuple[Stayed, _R | None] = ("names", None)
    for _ in range(_SETTLE_TRIES):
        outcome = one_pass()
        if isinstance(outcome, MailboxUsage) or outcome[0] == "yes":
            break
    return outcome


def _unsettled(fmt: Format, node: Node, last: MailboxUsage | None) -> MailboxUsage:
    """The mailbox is unknown: its folders kept being renamed, or held less than at ``last``
    while they kept changing. It carries ``last``'s folders: the next measurement weighs
    against them again (mail kept moving would otherwise be taken as gone at the next scan)."""
    log.warning("%s: %s", display_name(node.path), _UNSETTLED)
    kept = last.folders if last is not None else ()
    return MailboxUsage(fmt, kept, error=f"{display_name(node.path)}: {_UNSETTLED}")


def _without_beside(found: Found | None) -> Found | None:
    """A reading of an mbox home without the folders of the Maildir beside it (see
    :func:`_with_maildir`): the mbox files alone are weighed against it."""
    if found is None:
        return found
    own = tuple(f for f in found.usage.folders if not f.name.startswith(_BESIDE))
    return found._replace(usage=replace(found.usage, folders=own))


Stayed = Literal["yes", "names", "stamps"]


def _maildir(
    node: Node,
    previous: MailboxUsage | None,
    racy_cutoff_ns: int,
    profile: Profile,
    layout: maildir.Layout,
    last: MailboxUsage | None = None,
) -> MailboxUsage:
    """Every folder read, then looked at again: a folder renamed after the listing, or mail moved
    from one not read yet into one read already, would go uncounted. What changed is read
    again, a few times; a mailbox whose folders keep being renamed is unknown, one whose folders
    keep taking mail (deliveries, flags) is taken as last read, unless it then holds less than
    at its ``last`` reading: mail moved between folders, each time into the one not being read,
    would be in none of the readings."""
    # The root is listed even when its mtime is unchanged: stored names are for display, and a
    # folder whose name is not UTF-8 can only be found again under its name on disk.
    reuse = _reusable(previous, Format.MAILDIR)
    this_time: dict[str, tuple[maildir.Stamp, FolderUsage]] = {}

    def one_pass() -> MailboxUsage | tuple[Stayed, tuple[maildir.Folders, _Read] | None]:
        listing = maildir.folder_names(node.fd, layout)
        if listing.unreadable is not None:
            return MailboxUsage(Format.MAILDIR, error=f"{display_name(node.path)}: {listing.unreadable}")
        read = _read_folders(node, listing.names, reuse, this_time, racy_cutoff_ns, profile, layout)
        if read is None:
            return "names", None
        return _folders_stayed(node.fd, listing.names, read.stamps, layout), (listing, read)

    outcome = _settled(one_pass)
    if isinstance(outcome, MailboxUsage):
        return outcome
    stayed, found = outcome
    if found is None or stayed == "names" or (stayed == "stamps" and _holds_less(found[1].folders, last)):
        return _unsettled(Format.MAILDIR, node, last)
    listing, read = found
    parsed = maildirsize.read(node.fd, owner=node.st.st_uid)
    if parsed is not None and parsed.problem:
        log.warning("%s: maildirsize not used: %s", display_name(node.path), parsed.problem)
    info = parsed.info if parsed else None
    # Stamped by the ctime (see maildir.changed_ns): folders added behind a root's mtime set back
    # are seen. Racy by it too: the mtime says nothing once its owner has set it back.
    changed = maildir.changed_ns(node.st)
    root_stamp = None if changed >= racy_cutoff_ns else changed
    problems = listing.problems + (
        [f"symlinked cur/ or new/ not followed, their mail not counted: {maildir.some(read.symlinked)}"]
        if read.symlinked
        else []
    )
    warning = "; ".join(problems) or None
    return MailboxUsage(Format.MAILDIR, _in_order(read.folders), root_stamp, maildirsize=info, warning=warning)


class _Read(NamedTuple):
    """The folders of one pass over a Maildir, and each folder's stamp as it was read."""

    folders: list[FolderUsage]
    stamps: dict[str, maildir.Stamp]
    symlinked: list[str]


def _read_folders(
    node: Node,
    names: Sequence[str],
    reuse: dict[str, FolderUsage],
    this_time: dict[str, tuple[maildir.Stamp, FolderUsage]],
    racy_cutoff_ns: int,
    profile: Profile,
    layout: maildir.Layout,
) -> _Read | None:
    """Every folder listed, read, or reused where unchanged (since the last reading, or since
    an earlier pass of this measurement: ``this_time``); None when one of them could not be
    opened (renamed, removed or swapped for a symlink since the listing): its mail, perhaps
    under another name now, would be missing."""
    folders, stamps, symlinked = [], {}, []
    for name in names:
        fd = maildir.open_folder(node.fd, name, layout)
        if fd is None:
            return None
        try:
            seen = maildir.look(fd)  # one lstat of cur/ and new/ each, for both uses
            symlinked += maildir.symlinked_mail_dirs(seen, name, layout)
            shown = display_name(name)
            folder, stamps[name] = _reused_or_read(
                name,
                seen.stamp,
                reuse,
                this_time,
                profile,
                functools.partial(maildir.read_folder, fd, shown, racy_cutoff_ns, profile, seen.stamp),
            )
            own = None if name == maildir.INBOX else _own_maildirsize(fd, node, shown)
            folders.append(folder if folder.own_maildirsize == own else folder._replace(own_maildirsize=own))
        finally:
            os.close(fd)
    return _Read(folders, stamps, symlinked)


def _folders_stayed(
    root_fd: int, names: Sequence[str], stamps: dict[str, maildir.Stamp], layout: maildir.Layout
) -> Stayed:
    """Whether the mailbox still has the folders it was read with ("names" when not), each as it
    was read ("stamps" when one changed since)."""
    again = maildir.folder_names(root_fd, layout)
    if again.unreadable is not None or sorted(again.names) != sorted(names):
        return "names"
    same = all(maildir.folder_stamp(root_fd, name, layout) == stamp for name, stamp in stamps.items())
    return "yes" if same else "stamps"


def _own_maildirsize(folder_fd: int, node: Node, shown: str) -> tuple[int, int] | None:
    """What the folder's own maildirsize claims, when it keeps one: a folder without a
    ``maildirfolder`` file is a quota root of its own to Exim's appendfile (no
    ``quota_directory``), which then counts deliveries to it there and not in the root's."""
    parsed = maildirsize.read(folder_fd, owner=node.st.st_uid)
    if parsed is None or _exists(MAILDIRFOLDER, folder_fd):
        return None
    if parsed.info is None:
        log.warning("%s: maildirsize of folder %s not used: %s", display_name(node.path), shown, parsed.problem)
        return None
    return parsed.info.bytes, parsed.info.messages


def _dbox(listing: mbox.Listing) -> bool:
    """Whether the files below an mbox home are Dovecot's dbox, at any depth (a home whose mail
    is in ``~/dbox``, a dbox whose INBOX Dovecot has not made yet): mail in ``dbox-Mails/``
    (sdbox) or in ``storage/`` (mdbox), never an mbox folder."""
    return any(
        "dbox-Mails" in parts[:-1] or (len(parts) > 1 and parts[-2] == "storage" and _MDBOX_FILE.fullmatch(parts[-1]))
        for parts in (name.split("/") for name in listing.files)
    )


def _mbox_dir(
    node: Node,
    previous: MailboxUsage | None,
    racy_cutoff_ns: int,
    profile: Profile,
    last: MailboxUsage | None = None,
    beside: str = "",
) -> MailboxUsage:
    """Every mbox file read, then looked at again, as :func:`_maildir` does; ``beside``: the
    Maildir measured beside them (see :func:`mbox.mbox_files`)."""
    reuse = _reusable(previous, Format.MBOX)
    this_time: dict[str, tuple[mbox.MboxStamp, FolderUsage]] = {}

    def one_pass() -> MailboxUsage | tuple[Stayed, tuple[mbox.Listing, _MboxRead] | None]:
        listing = mbox.mbox_files(node.fd, beside)
        if any(_exists(marker, node.fd) for marker in _DBOX_MARKERS) or _dbox(listing):
            return MailboxUsage(Format.MBOX, error=f"{display_name(node.path)}: {_DBOX}")
        if any(_GUID.fullmatch(part) for m in listing.maildirs for part in m.rstrip("/").split("/")):
            return MailboxUsage(Format.MAILDIR, error=f"{display_name(node.path)}: {_LAYOUT_INDEX}")
        if _inbox_elsewhere(node.fd, listing):
            return MailboxUsage(Format.MBOX, error=f"{display_name(node.path)}: {_INBOX_ELSEWHERE}")
        read = _read_mbox_files(node, listing.files, reuse, this_time, racy_cutoff_ns, profile)
        if read is None:
            return "names", None
        return _mbox_files_stayed(node.fd, listing, read.stamps, beside), (listing, read)

    outcome = _settled(one_pass)
    if isinstance(outcome, MailboxUsage):
        return outcome
    stayed, found = outcome
    if found is None or stayed == "names" or (stayed == "stamps" and _holds_less(found[1].folders, last)):
        return _unsettled(Format.MBOX, node, last)
    listing, read = found
    folders = read.folders
    if read.mmdf:  # mail, in a format quotagate does not count: left out, the mailbox would hold less
        reason = f"MMDF folders, which quotagate does not count: {maildir.some(read.mmdf)}"
        return MailboxUsage(Format.MBOX, error=f"{display_name(node.path)}: {reason}")
    passed_over = [display_name(name) for name in listing.maildirs] + read.passed_over
    if passed_over and not any(f.bytes or f.messages for f in folders):
        # Mail of a format quotagate does not read (Exim's mailstore .env/.msg pairs, Maildirs
        # below a layout it does not know), not an empty mailbox: counted 0, a full one takes mail.
        # An empty file is no sign of an mbox home (Dovecot keeps an empty dovecot-uidvalidity.*
        # beside the mail of every format).
        reason = f"no mbox file, only what quotagate cannot count ({maildir.some(passed_over)})"
        hint = "check [spool] format, layout and maildir_subdir"
        return MailboxUsage(Format.MBOX, error=f"{display_name(node.path)}: {reason}: {hint}")
    if passed_over:
        log.info("%s: not counted, not mbox files: %s", display_name(node.path), maildir.some(passed_over))
    return MailboxUsage(Format.MBOX, _in_order(folders))


_INBOX_ELSEWHERE = (
    "Dovecot's index of an INBOX kept outside this directory (.imap/INBOX, and no inbox file: mail_location's"
    " INBOX=, as Debian's /var/mail/%u), whose mail quotagate would not count with the folders"
)


def _inbox_elsewhere(root_fd: int, listing: mbox.Listing) -> bool:
    """Whether an mbox home's INBOX is a file elsewhere (Debian's Dovecot keeps the folders in
    ``~/mail`` and INBOX in ``/var/mail/%u``): Dovecot indexes it in ``.imap/INBOX/`` here, and
    counts it with the folders; measured alone, the folders would say the mailbox holds less."""
    if any(name.lower() == "inbox" for name in listing.files):
        return False
    with safefs.dir_opened(".imap", root_fd) as index:
        return index is not None and maildir.entry_type(index, "INBOX") == stat.S_IFDIR


class _MboxRead(NamedTuple):
    """The mbox files of one pass over a home, each file's stamp as read, and what was passed over."""

    folders: list[FolderUsage]
    stamps: dict[str, mbox.MboxStamp]
    passed_over: list[str]
    mmdf: list[str]  # of them, MMDF folders: mail


def _read_mbox_files(
    node: Node,
    names: Sequence[str],
    reuse: dict[str, FolderUsage],
    this_time: dict[str, tuple[mbox.MboxStamp, FolderUsage]],
    racy_cutoff_ns: int,
    profile: Profile,
) -> _MboxRead | None:
    """Every file listed, read (or reused where unchanged, as :func:`_read_folders`); None when
    one could not be opened (renamed or removed since the listing)."""
    folders, stamps, passed_over, mmdf = [], {}, [], []
    for name in names:
        fd = mbox.open_file(node.fd, name)
        if fd is None:
            return None
        try:
            shown = display_name(name)
            if not mbox.is_mbox(fd):  # looked at every time: a reading of an older version may count it
                passed_over.append(shown)
                if mbox.is_mmdf(fd):
                    mmdf.append(shown)
                continue
            read = functools.partial(mbox.read_file_folder, fd, shown, racy_cutoff_ns, profile)
            now = mbox.stamp_of(os.fstat(fd))
            folder, stamps[name] = _reused_or_read(name, now, reuse, this_time, profile, read)
            folders.append(folder)
        finally:
            os.close(fd)
    return _MboxRead(folders, stamps, passed_over, mmdf)


def _mbox_files_stayed(
    root_fd: int, listing: mbox.Listing, stamps: dict[str, mbox.MboxStamp], beside: str = ""
) -> Stayed:
    """Whether the home still has the files it was read with ("names" when not), each as it
    was read ("stamps" when one changed since)."""
    if mbox.mbox_files(root_fd, beside) != listing:
        return "names"
    return "yes" if all(mbox.file_stamp(root_fd, name) == stamp for name, stamp in stamps.items()) else "stamps"


def _mbox_file(
    node: Node, root: str, previous: MailboxUsage | None, racy_cutoff_ns: int, profile: Profile
) -> MailboxUsage:
    if not mbox.is_mbox(node.fd):
        reason = "not an mbox file (neither empty nor starting with a From line)"
        return MailboxUsage(Format.MBOX, error=f"{display_name(root)}: {reason}")
    old = _reusable(previous, Format.MBOX).get(maildir.INBOX)
    if old is not None and old.stamp == (*mbox.stamp_of(node.st), *profile.stamp_tag):
        return MailboxUsage(Format.MBOX, (old,))
    return MailboxUsage(Format.MBOX, (mbox.read_file_folder(node.fd, maildir.INBOX, racy_cutoff_ns, profile)[0],))


def _describe(exc: OSError) -> str:
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)
    where = exc.filename if isinstance(exc.filename, str) else ""
    return f"{display_name(where)}: {reason}" if where else reason


def _bounded(usage: MailboxUsage, root: str) -> MailboxUsage:
    """Sizes past what a 64-bit store column holds (forged ``S=`` values) saturate at it.

    The mailbox's owner wrote those names: the mailbox counts as full, not as unknown, which
    would take it out of the check and let a full mailbox take mail again.
    """
    if not usage.known or usage.all_bytes <= maildirsize.MAX_SIZE:
        return usage
    log.warning("%s: sizes too large to be real (forged S= values?): counted as full", display_name(root))
    share = maildirsize.MAX_SIZE // len(usage.folders)
    return replace(usage, folders=tuple(f._replace(bytes=min(f.bytes, share)) for f in usage.folders))


def _measure_node(
    node: Node | None,
    root: str,
    fmt: FormatSetting,
    previous: MailboxUsage | None,
    racy_cutoff_ns: int,
    profile: Profile,
    layout: maildir.Layout,
    last: MailboxUsage | None = None,
    beside: str = "",
) -> MailboxUsage:
    if node is None:
        return MailboxUsage(Format.MISSING)
    if not node.is_dir:
        if fmt == "maildir":
            return MailboxUsage(Format.MAILDIR, error=f"{display_name(root)}: is a file, not a Maildir")
        return _bounded(_mbox_file(node, root, previous, racy_cutoff_ns, profile), root)
    if fmt == "maildir" or (fmt == "auto" and _looks_like_maildir(node.fd, layout)):
        if _layout_index(node.fd):  # Dovecot's maildirsize at the root, the mail in GUID dirs
            return MailboxUsage(Format.MAILDIR, error=f"{display_name(root)}: {_LAYOUT_INDEX}")
        return _bounded(_maildir(node, previous, racy_cutoff_ns, profile, layout, last), root)
    return _bounded(_mbox_dir(node, previous, racy_cutoff_ns, profile, last, beside), root)


def _maildir_below_too(
    node: Node | None, fmt: FormatSetting, subdir: str, roots: Roots, layout: maildir.Layout
) -> bool:
    """Whether a directory measured as a Maildir also holds one as ``subdir`` (a symlink to one,
    or a dot directory under Maildir++): what the delivery agent delivers to (``home_mailbox = .maildir/``,
    ``mail_location = maildir:~/Maildir``), while the markers here may be anyone's (its owner's
    empty ``cur/``, ``new/`` or ``maildirsize``): counted as a folder of the home, its own
    folders would be left out."""
    if not subdir or node is None or not node.is_dir:
        return False
    try:
        mode = os.stat(subdir, dir_fd=node.fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return False
    # A plain directory is looked at only where the folder listing would count it as a folder
    # (``.maildir`` under Maildir++), not its folders: a plain ``Maildir`` there is named by the
    # listing (:data:`maildir.LAYOUT_HINT`), and one under LAYOUT=fs is counted with its folders.
    if not (stat.S_ISLNK(mode) or (stat.S_ISDIR(mode) and layout != "fs" and subdir.startswith("."))):
        return False
    below = _maildir_below(node, fmt, subdir, roots, layout)
    if below is None:
        return False
    try:
        itself = (below.st.st_dev, below.st.st_ino) == (node.st.st_dev, node.st.st_ino)  # Maildir -> .
        return not itself and below.is_dir and _looks_like_maildir(below.fd, layout)
    finally:
        below.close()


def _maildir_below(
    node: Node | None, fmt: FormatSetting, subdir: str, roots: Roots, layout: maildir.Layout
) -> Node | None:
    """The Maildir in ``subdir`` of a mailbox directory that is not a Maildir itself (the caller
    has looked), or None.

    PostfixAdmin's ``maildir`` column names the user's directory and Dovecot keeps the Maildir in
    ``Maildir/`` below it, beside Sieve scripts and the like. A plain directory is opened through
    the descriptor, following nothing; a symlink (or an entry swapped meanwhile) is resolved by
    walking from the spool root again, as a symlinked mailbox root is: followed only while it
    stays beneath the allowed roots, else :class:`safefs.Escape` makes the mailbox unknown.
    """
    if not subdir or fmt == "mbox" or node is None or not node.is_dir:
        return None
    fd = safefs.open_dir(subdir, node.fd)
    if fd is not None:
        return Node(fd, os.fstat(fd), os.path.join(node.path, subdir), node.followed)
    try:
        seen = os.stat(subdir, dir_fd=node.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not (stat.S_ISLNK(seen.st_mode) or stat.S_ISDIR(seen.st_mode)):
        return None  # a file of that name is not a Maildir
    below = safefs.open_node(os.path.join(node.path, subdir), roots)
    if below is not None and not below.is_dir:
        below.close()
        return None  # a symlink to a file: no Maildir there either
    if below is not None:
        below.followed = below.followed or node.followed  # walked from where the root led
    return below


def _fix(
    node: Node | None,
    root: str,
    roots: Roots,
    usage: MailboxUsage,
    rules: Sequence[FolderRule],
    profile: Profile,
    definition: str | None,
) -> MailboxUsage:
    """Rewrite a disagreeing maildirsize through the descriptor the mailbox was just measured
    by, keeping the file's own quota definition (Courier, and Dovecot with ``?:`` rules, take
    the limit from it) unless ``definition`` (``--set-limit``: the mailbox's limits) is given;
    then a Maildir without one gets one too. The usage then records the file as it is now."""
    info = usage.maildirsize
    if node is None or not usage.known or usage.format is not Format.MAILDIR:
        return usage
    if usage.warning:
        log.warning(
            "%s: maildirsize not rewritten: the measurement left something out (%s)", display_name(root), usage.warning
        )
        return usage
    if info is None and definition is None:
        return usage
    if own := [f.name for f in usage.own_maildirsizes]:
        log.warning(
            "%s: maildirsize not rewritten: folders %s keep their own (Exim without quota_directory "
            "counts deliveries to them there, not in the root's); set quota_directory in the transport",
            display_name(root),
            ", ".join(own),
        )
        return usage
    wanted = definition if definition is not None else info.definition if info else ""
    bytes_, messages = counted(usage.folders, rules, profile.leaves_out_folder)
    if info is not None and info.agrees_with(bytes_, messages) and info.definition == wanted:
        return usage
    try:
        maildirsize.rewrite(node, root, roots, wanted, bytes_, messages)
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot rewrite maildirsize: %s", display_name(root), exc)
        return usage
    return replace(usage, maildirsize=MaildirsizeInfo(bytes_, messages, wanted, rewritten=True))


class Found(NamedTuple):
    """A mailbox's usage and where it was found: its path, or the Maildir in its subdirectory.

    The path is what a reading records, so that the live readers (maildirsize, inotify) and the
    next incremental scan look at the Maildir itself.
    """

    path: str
    usage: MailboxUsage


def timed_out(root: str, timeout: float) -> Found:
    """The mailbox at ``root`` not measured within ``timeout`` seconds (a hung mount, a file read
    without end): unknown."""
    return Found(root, MailboxUsage(Format.MISSING, error=f"timed out after {timeout:g} s"))


def measure(
    root: str,
    fmt: FormatSetting,
    previous: Found | None,
    racy_cutoff_ns: int,
    roots: Roots,
    fix_rules: Sequence[FolderRule] | None,
    subdir: str,
    profile: Profile = FILES,
    definition: str | None = None,
    layout: maildir.Layout = "maildir++",
    reuse: bool = True,
    require_parent: bool = False,
) -> Found:
    """Usage of the mailbox at ``root``, reusing folders whose stamps match ``previous`` when it
    was found at the same place (unless ``reuse`` is False: ``scan --full``).

    ``root`` must lie beneath ``roots``. A directory that is not a Maildir but holds one in
    ``subdir`` (``[spool] maildir_subdir``; "" for none) is measured as that Maildir, unless
    ``fmt`` is "mbox" or ``previous`` found an mbox home there whose files are still there (see
    :func:`_mbox_kept`). A missing mailbox is empty (the MTA creates it on first delivery); with
    ``require_parent`` (the mailbox was measured before), only when its own directory is missing:
    a directory above it missing makes it unknown. One that cannot be read, or that leads outside
    the roots, is returned with ``error`` set: its usage is unknown, never "over quota". The root
    (and the subdirectory) may be a symlink that stays beneath the roots; nothing below is
    followed. With ``fix_rules`` (the folder rules), a maildirsize that disagrees with the files
    is rewritten (``scan --fix-maildirsize``), with ``definition`` as its quota definition line
    when given (``--set-limit``). Sizes, and what counts, follow the accounting ``profile`` (see
    :mod:`quotagate.accounting`); folders are found as ``layout`` (``[spool] maildir_layout``)
    lays them out.
    """
    reusable = previous if reuse else None
    try:
        with safefs.opened(root, roots, require_parent=require_parent) as node:
            # Found in its subdirectory before, its own directory is a parent of that one;
            # unknown at the last reading, it may have been so since then.
            if node is None and require_parent and previous and (previous.path != root or not previous.usage.known):
                raise safefs.missing_above(root)
            # Looked at once: a directory that looks like a Maildir is measured as one.
            dir_node = node if node is not None and node.is_dir and fmt != "mbox" else None
            markers = _root_markers(dir_node.fd) if dir_node is not None else ()
            looks = dir_node is not None and _looks_like_maildir(dir_node.fd, layout, markers)
            below = None if looks else _maildir_below(node, fmt, subdir, roots, layout)
            if below is not None and node is not None and _no_maildir(below, node, layout):
                below.close()
                below = None
            if looks and not markers and subdir:
                # A Maildir by its folders alone: the one in maildir_subdir (~/.maildir, or
                # ~/Maildir under LAYOUT=fs, which looks like such a folder) is the agent's,
                # unless other folders beside it make the home one too: which, is not known.
                below = _maildir_below(node, fmt, subdir, roots, layout)
                if below is not None and below.is_dir and _looks_like_maildir(below.fd, layout):
                    looks = False
                    if dir_node is not None and _folders_besides(dir_node.fd, layout, subdir):
                        below.close()
                        return Found(root, MailboxUsage(Format.MAILDIR, error=f"{display_name(root)}: {_TWO_MAILDIRS}"))
                elif below is not None:
                    below.close()
                    below = None
            half = dir_node is not None and looks and fmt == "auto" and _half_maildir(dir_node.fd, markers)
            if looks and not half and _maildir_below_too(node, fmt, subdir, roots, layout):
                return Found(root, MailboxUsage(Format.MAILDIR, error=f"{display_name(root)}: {_TWO_MAILDIRS}"))
            if half:
                looks, below = False, _maildir_below(node, fmt, subdir, roots, layout)
                if below is not None and not (below.is_dir and _looks_like_maildir(below.fd, layout)):
                    below.close()  # a directory of that name, no Maildir (an mbox user's folder)
                    below = None
                if below is None:  # no Maildir below it either, where the agent would deliver
                    return Found(root, MailboxUsage(Format.MAILDIR, error=f"{display_name(root)}: {_HALF_MAILDIR}"))
            try:
                maildir_too = looks or below is not None
                if fmt != "maildir" and maildir_too and node is not None and _mbox_kept(node.fd, root, previous):
                    found = _measure_at(
                        node,
                        root,
                        "mbox",
                        reusable,
                        racy_cutoff_ns,
                        roots,
                        fix_rules,
                        profile,
                        definition,
                        layout,
                        _without_beside(previous),
                        subdir,
                    )
                    maildir_node, at = (node, root) if looks else (below, os.path.join(root, subdir))
                    beside = _measure_at(
                        maildir_node, at, "maildir", None, racy_cutoff_ns, roots, None, profile, None, layout
                    )
                    return found._replace(usage=_with_maildir(found.usage, beside.usage))
                if below is None:
                    # Looked at above: an mbox home is not looked at again (a listing each time).
                    found_as: FormatSetting = "maildir" if looks else "mbox" if fmt == "auto" else fmt
                    return _measure_at(
                        node,
                        root,
                        found_as,
                        reusable,
                        racy_cutoff_ns,
                        roots,
                        fix_rules,
                        profile,
                        definition,
                        layout,
                        previous,
                    )
                where = os.path.join(root, subdir)
                return _measure_at(
                    below,
                    where,
                    "maildir",
                    reusable,
                    racy_cutoff_ns,
                    roots,
                    fix_rules,
                    profile,
                    definition,
                    layout,
                    previous,
                )
            finally:
                if below is not None:
                    below.close()
    except OSError as exc:
        return Found(root, MailboxUsage(Format.MISSING, error=_describe(exc)))
    except (ValueError, OverflowError, UnicodeError) as exc:
        return Found(root, MailboxUsage(Format.MISSING, error=f"{display_name(root)}: {exc}"))


_MBOX_KEPT = "a Maildir beside the mbox files counted before: counted with them until they are gone"
_BESIDE = "(Maildir) "  # the Maildir's folders among the mbox files': no file has these names
_MAILDIR_PARTS = frozenset({"cur", "new", "tmp"})


def _mbox_kept(root_fd: int, root: str, previous: Found | None) -> bool:
    """Whether the directory at ``root``, an mbox home at the last reading, still holds one of the
    mbox files that reading counted: then it stays an mbox home, and a Maildir that appears in
    it counts with them (see :func:`_with_maildir`). After an unknown reading (its owner may
    have made it so), any mbox file at its top counts.

    Its owner may make one (an empty ``Maildir/``, ``.x/cur``): read as a Maildir alone, it would
    measure empty while the delivery agent goes on writing the mbox files. A migration that
    leaves an mbox behind (an archive) counts both, too much rather than too little, and says so
    at each scan; it ends when they are gone.
    """
    if previous is None or previous.path != root:
        return False
    if previous.usage.format is Format.MBOX:
        names = [disk_name(f.name) for f in previous.usage.folders if not f.name.startswith(_BESIDE)]
        # One that cannot be opened (its owner's lease) is an OSError: the mailbox unknown, not
        # the empty Maildir beside it measured alone.
        return any(mbox.file_is_mbox(root_fd, name, strict=True) for name in names)
    # Regular files only (a device or a FIFO opened as root may do more than read it); not an
    # empty one, which proves nothing.
    return not previous.usage.known and mbox.holds_mbox(root_fd, ())


def beside_mbox(usage: MailboxUsage) -> bool:
    """Whether ``usage`` counts a Maildir beside an mbox home's files (see :func:`_mbox_kept`):
    read again at each look, and not watched (the home's one watch does not see into it)."""
    return usage.warning == _MBOX_KEPT


def _with_maildir(mbox_usage: MailboxUsage, maildir_usage: MailboxUsage) -> MailboxUsage:
    """The mbox home's usage with the Maildir beside it counted too (its folders named apart and
    never kept: both are read again at each scan until the mbox files are gone); unknown when
    either is. A home that is the Maildir has its messages in cur/ and new/: counted once, there."""
    if not mbox_usage.known:
        return mbox_usage
    if not maildir_usage.known:
        return maildir_usage
    files = tuple(f for f in mbox_usage.folders if f.name.partition("/")[0] not in _MAILDIR_PARTS)
    beside = tuple(f._replace(name=_BESIDE + f.name, stamp=None) for f in maildir_usage.folders)
    return replace(mbox_usage, folders=files + beside, warning=_MBOX_KEPT)


def _measure_at(
    node: Node | None,
    where: str,
    fmt: FormatSetting,
    previous: Found | None,
    racy_cutoff_ns: int,
    roots: Roots,
    fix_rules: Sequence[FolderRule] | None,
    profile: Profile,
    definition: str | None,
    layout: maildir.Layout,
    last: Found | None = None,
    beside: str = "",
) -> Found:
    reuse = previous.usage if previous is not None and previous.path == where else None
    before = last.usage if last is not None and last.path == where else None
    usage = _measure_node(node, where, fmt, reuse, racy_cutoff_ns, profile, layout, before, beside)
    if fix_rules is None:
        return Found(where, usage)
    return Found(where, _fix(node, where, roots, usage, fix_rules, profile, definition))


def unchanged(
    root: str,
    previous: MailboxUsage,
    roots: Roots,
    profile: Profile = FILES,
    layout: maildir.Layout = "maildir++",
    kept: dict[str, int] | None = None,
) -> bool:
    """True when nothing in the mailbox changed since ``previous`` was measured.

    The cheap test an incremental scan runs before measuring: the root and each folder's cur/
    and new/ (or the mbox file) looked at through descriptors (``kept``: see
    :func:`safefs.open_node`); a ``LAYOUT=fs`` tree, whose folders may come and go below the
    root without changing its mtime, is listed again. Anything unsure answers False, and so does
    a reading taken under another accounting profile (its stamps end in another tag) or one
    with a warning (what it left out is looked at again).
    """
    if not previous.known or previous.warning is not None:
        return False
    try:
        # Only looked at: never listed, but for a LAYOUT=fs tree's folders.
        with safefs.opened(root, roots, kept, look=layout != "fs") as node:
            if previous.format is Format.MISSING:
                return node is None
            if node is None:
                return False
            if previous.format is Format.MAILDIR:
                if not node.is_dir or previous.root_stamp != maildir.changed_ns(node.st):
                    return False
                if layout == "fs" and not _same_folders(node.fd, previous):
                    return False
                tag = profile.stamp_tag
                return all(
                    f.stamp is not None
                    and f.stamp == _tagged(maildir.folder_stamp(node.fd, disk_name(f.name), layout), tag)
                    for f in previous.folders
                )
            if len(previous.folders) == 1 and previous.folders[0].name == maildir.INBOX and not node.is_dir:
                only = previous.folders[0]
                return only.stamp is not None and only.stamp == (*mbox.stamp_of(node.st), *profile.stamp_tag)
    except (OSError, ValueError):
        return False
    return False  # mbox directories may gain nested files anywhere: always re-list them


def unchanged_each(
    looks: Iterable[tuple[str, MailboxUsage]],
    roots: Roots,
    profile: Profile = FILES,
    layout: maildir.Layout = "maildir++",
) -> list[bool]:
    """:func:`unchanged` of each ``(root, previous)``, walking through the directories kept open
    on the way (see :func:`safefs.open_node`): once :data:`safefs.KEPT_MAX` are, they are closed
    and the next walk starts afresh."""
    kept: dict[str, int] = {}
    try:
        same = []
        for root, previous in looks:
            if len(kept) >= safefs.KEPT_MAX:
                _close_all(kept)
            same.append(unchanged(root, previous, roots, profile, layout, kept))
        return same
    finally:
        _close_all(kept)


def _close_all(kept: dict[str, int]) -> None:
    while kept:
        os.close(kept.popitem()[1])  # taken out first: a close that fails is never tried again


def _same_folders(root_fd: int, previous: MailboxUsage) -> bool:
    listing = maildir.folder_names(root_fd, "fs")
    if listing.problems or listing.unreadable:
        return False
    return sorted(display_name(n) for n in listing.names) == [f.name for f in previous.folders]


def _tagged(stamp: tuple[int, ...] | None, tag: tuple[int, ...]) -> tuple[int, ...] | None:
    return None if stamp is None else (*stamp, *tag)
