"""Measuring one mailbox, whatever its format, reusing unchanged folders of the previous reading."""

from __future__ import annotations

import errno
import os
import stat
from typing import Literal

from quotagate.model import FolderUsage, Format, MailboxUsage
from quotagate.usage import maildir, maildirsize, mbox
from quotagate.usage.names import display_name

FormatSetting = Literal["maildir", "mbox", "auto"]
_MAILDIR_MARKERS = ("cur", "new", "tmp", maildirsize.FILE_NAME)


def _looks_like_maildir(root: str) -> bool:
    return any(os.path.lexists(os.path.join(root, m)) for m in _MAILDIR_MARKERS)


def _in_order(folders: list[FolderUsage]) -> tuple[FolderUsage, ...]:
    """Folders by name: one order for a measurement and the store's copy of it."""
    return tuple(sorted(folders, key=lambda f: f.name))


def _reusable(previous: MailboxUsage | None, fmt: Format) -> dict[str, FolderUsage]:
    if previous is None or previous.format is not fmt or not previous.known:
        return {}
    return {f.name: f for f in previous.folders if f.stamp is not None}


def _maildir(root: str, root_mtime: int, previous: MailboxUsage | None, racy_cutoff_ns: int) -> MailboxUsage:
    # The root is listed even when its mtime is unchanged: stored names are for display, and a
    # folder whose name is not UTF-8 can only be found again under its name on disk.
    reuse = _reusable(previous, Format.MAILDIR)
    folders = []
    for name in maildir.folder_names(root):
        path = maildir.folder_path(root, name)
        shown = display_name(name)
        old = reuse.get(shown)
        if old is not None and old.stamp == maildir.stamp(path):
            folders.append(old)
            continue
        try:
            folders.append(maildir.read_folder(path, shown, racy_cutoff_ns))
        except FileNotFoundError:
            continue  # the folder was removed while we looked
    parsed = maildirsize.read(root)
    info = parsed.info if parsed else None
    root_stamp = None if root_mtime >= racy_cutoff_ns else root_mtime
    return MailboxUsage(Format.MAILDIR, _in_order(folders), root_stamp, maildirsize=info)


def _mbox_dir(root: str, previous: MailboxUsage | None, racy_cutoff_ns: int) -> MailboxUsage:
    reuse = _reusable(previous, Format.MBOX)
    folders = []
    for name, path in mbox.mbox_files(root):
        shown = display_name(name)
        old = reuse.get(shown)
        if old is not None and old.stamp == mbox.file_stamp(path):
            folders.append(old)
            continue
        try:
            folders.append(mbox.read_file_folder(path, shown, racy_cutoff_ns))
        except FileNotFoundError:
            continue
    return MailboxUsage(Format.MBOX, _in_order(folders))


def _mbox_file(path: str, previous: MailboxUsage | None, racy_cutoff_ns: int) -> MailboxUsage:
    old = _reusable(previous, Format.MBOX).get(maildir.INBOX)
    if old is not None and old.stamp == mbox.file_stamp(path, follow=True):
        return MailboxUsage(Format.MBOX, (old,))
    return MailboxUsage(Format.MBOX, (mbox.read_file_folder(path, maildir.INBOX, racy_cutoff_ns, follow=True),))


def _describe(exc: OSError) -> str:
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or str(exc)
    where = exc.filename if isinstance(exc.filename, str) else ""
    return f"{display_name(where)}: {reason}" if where else reason


def measure(
    root: str, fmt: FormatSetting, previous: MailboxUsage | None = None, racy_cutoff_ns: int = 0
) -> MailboxUsage:
    """Usage of the mailbox at ``root``, reusing folders whose stamps match ``previous``.

    A missing mailbox is empty (the MTA creates it on first delivery). One that cannot be read
    is returned with ``error`` set: its usage is unknown, never "over quota". The root itself
    may be a symlink (an admin's choice); nothing below it is followed.
    """
    try:
        st = os.stat(root)
        if stat.S_ISREG(st.st_mode):
            if fmt == "maildir":
                return MailboxUsage(Format.MAILDIR, error=f"{display_name(root)}: is a file, not a Maildir")
            return _mbox_file(root, previous, racy_cutoff_ns)
        if not stat.S_ISDIR(st.st_mode):
            return MailboxUsage(Format.MISSING, error=f"{display_name(root)}: neither a file nor a directory")
        if fmt == "maildir" or (fmt == "auto" and _looks_like_maildir(root)):
            return _maildir(root, st.st_mtime_ns, previous, racy_cutoff_ns)
        return _mbox_dir(root, previous, racy_cutoff_ns)
    except FileNotFoundError as exc:
        if exc.filename in (root, None):
            return MailboxUsage(Format.MISSING)
        return MailboxUsage(Format.MISSING, error=_describe(exc))
    except OSError as exc:
        return MailboxUsage(Format.MISSING, error=_describe(exc))


def unchanged(root: str, previous: MailboxUsage) -> bool:
    """True when nothing in the mailbox changed since ``previous`` was measured.

    The cheap test an incremental scan runs before measuring: one stat of the root and of each
    folder's cur/ and new/ (or of each mbox file). Anything unsure answers False.
    """
    if not previous.known:
        return False
    try:
        if previous.format is Format.MISSING:
            return not os.path.lexists(root)
        if previous.format is Format.MAILDIR:
            if previous.root_stamp is None or os.stat(root).st_mtime_ns != previous.root_stamp:
                return False
            for f in previous.folders:
                if f.stamp is None or f.stamp != maildir.stamp(maildir.folder_path(root, f.name)):
                    return False
            return True
        if len(previous.folders) == 1 and previous.folders[0].name == maildir.INBOX:
            only = previous.folders[0]
            return only.stamp is not None and only.stamp == mbox.file_stamp(root, follow=True)
    except OSError:
        return False
    return False  # mbox directories may gain nested files anywhere: always re-list them
