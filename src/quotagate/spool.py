"""Where a mailbox lives on disk, safely: neither a hostile local part nor a path from the
directory may lead outside the spool."""

from __future__ import annotations

import os
import re

from quotagate.config import SpoolConfig
from quotagate.model import Mailbox, Reading
from quotagate.usage.safefs import Escape, Roots

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafePath(ValueError):
    """The mailbox cannot be given a path inside the spool."""


def _safe_component(value: str, what: str) -> str:
    if not value or value in (".", "..") or "/" in value or _CONTROL.search(value):
        raise UnsafePath(f"{what} {value!r} cannot name a folder safely")
    return value


def spool_roots(spool: SpoolConfig) -> Roots:
    """The directories mailboxes may live beneath: ``[spool] root`` and ``extra_roots``."""
    return Roots.of(spool.root, extra=spool.extra_roots)


def mailbox_path(mailbox: Mailbox, spool: SpoolConfig, roots: Roots) -> str:
    """The directory's path for the mailbox, or the spool layout filled with its address.

    A relative path from the directory is taken relative to the spool root. The result must lie
    beneath ``roots`` (:func:`spool_roots`, after ``..`` is resolved): anything
    else is an :class:`UnsafePath`, and the mailbox is unknown. Symlinks on the way are checked
    when the mailbox is opened (see :mod:`quotagate.usage.safefs`).
    """
    if mailbox.path is not None:
        if _CONTROL.search(mailbox.path):
            raise UnsafePath(f"path {mailbox.path} holds control characters")
        path = os.path.normpath(os.path.join(spool.root, mailbox.path))
    else:
        local, _, domain = mailbox.address.rpartition("@")
        try:
            relative = spool.layout.format(
                local=_safe_component(local, "local part"),
                domain=_safe_component(domain, "domain"),
                address=_safe_component(mailbox.address, "address"),
            )
        except IndexError:  # {local[1]} of a one-letter local part
            too_short = f"[spool] layout {spool.layout!r} does not fit {mailbox.address!r}: give it a path"
            raise UnsafePath(too_short) from None
        path = os.path.normpath(os.path.join(spool.root, relative))
    try:
        roots.split(path)
    except Escape:
        raise UnsafePath(f"path {path!r} is outside [spool] root (and extra_roots)") from None
    return path


def located(path: str, previous: Reading | None, spool: SpoolConfig) -> str:
    """Where the mailbox at ``path`` was found by its reading ``previous``: the Maildir in its
    ``[spool] maildir_subdir`` when that is where it was measured, else ``path`` itself.

    An incremental scan and the watcher look again where the mail was found; any other stored
    path (the mailbox moved in the directory, the setting changed) is not reused: the mailbox
    is measured afresh at ``path``.
    """
    below = os.path.join(path, spool.maildir_subdir) if spool.maildir_subdir else None
    return below if previous is not None and previous.path == below else path
