"""Where a mailbox lives on disk, safely: a hostile local part must never escape the spool."""

from __future__ import annotations

import os

from quotagate.config import SpoolConfig
from quotagate.model import Mailbox


class UnsafePath(ValueError):
    """The address cannot be turned into a path inside the spool."""


def _safe_component(value: str, what: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        raise UnsafePath(f"{what} {value!r} cannot name a folder safely")
    return value


def mailbox_path(mailbox: Mailbox, spool: SpoolConfig) -> str:
    """The directory's path for the mailbox, or the spool layout filled with its address.

    A relative path from the directory is taken relative to the spool root.
    """
    if mailbox.path:
        return os.path.join(spool.root, mailbox.path)
    local, _, domain = mailbox.address.rpartition("@")
    relative = spool.layout.format(
        local=_safe_component(local, "local part"), domain=_safe_component(domain, "domain"), address=mailbox.address
    )
    return os.path.join(spool.root, relative)
