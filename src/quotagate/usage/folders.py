"""Folder rules: which folders count towards the total, and folders with limits of their own."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatchcase

from quotagate.config import FolderRule
from quotagate.model import FolderUsage, Limits
from quotagate.usage.names import ascii_lower, ascii_upper, imap_encoded, imap_name


def rule_for(name: str, rules: Sequence[FolderRule]) -> FolderRule | None:
    """The first rule whose glob matches the folder name (case-sensitive): a Maildir++ name, or
    one with "/" between levels under ``LAYOUT=fs``, as stored and shown (see
    :func:`quotagate.usage.names.display_name`: a backslash doubled, an undecodable byte ``\\xNN``)
    or as an IMAP server shows it (:func:`quotagate.usage.names.imap_name`: ``Gelöscht`` for
    ``Gel&APY-scht``, the name Dovecot's quota rules match)."""
    shown = imap_name(name)
    for rule in rules:
        if _matches(name, shown, rule.match):
            return rule
    return None


def _matches(name: str, shown: str, pattern: str) -> bool:
    return fnmatchcase(name, pattern) or (shown != name and fnmatchcase(shown, pattern))


def counted(
    folders: Sequence[FolderUsage], rules: Sequence[FolderRule], left_out: Callable[[str], bool] | None = None
) -> tuple[int, int]:
    """Bytes and messages that count towards the mailbox limit: excluded folders left out, and
    the folders the accounting profile leaves out (``left_out``: Courier's ``Trash``, a folder
    Dovecot never sees)."""
    total = messages = 0
    for f in folders:
        if left_out is not None and left_out(f.name):
            continue
        rule = rule_for(f.name, rules) if rules else None
        if rule is None or not rule.exclude:
            total += f.bytes
            messages += f.messages
    return total, messages


def detail_excluded(detail: str, rules: Sequence[FolderRule]) -> bool:
    """Whether the first rule that matches the folder a detail names excludes it. A detail is a
    name as an IMAP server shows it (Dovecot saves ``-m Gel&APY-scht`` into a folder of that
    very name): matched as it is, never decoded. A detail that names no folder of its own (see
    :func:`names_a_folder`) lands in INBOX: never excluded."""
    if not names_a_folder(detail):
        return False
    rule = next((r for r in rules if fnmatchcase(detail, r.match)), None)
    return rule is not None and rule.exclude


def names_a_folder(detail: str) -> bool:
    """Whether a delivery agent takes a detail for a folder other than INBOX. Dovecot takes INBOX
    in any case and an empty detail for INBOX, and saves into INBOX a detail it cannot make a
    folder of: one with a ``/``, a ``.`` at either end or two in a row (Maildir++), a ``~`` first,
    a control character, or a directory name past 255 bytes once in modified UTF-7
    (tests/agents/test_left_out_folders.py runs such details through Dovecot)."""
    lowered = ascii_lower(detail)
    return (
        bool(detail)
        and lowered != "inbox"
        and not lowered.startswith("inbox.")
        and "/" not in detail
        and not detail.startswith((".", "~"))
        and not detail.endswith(".")
        and ".." not in detail
        and all(" " <= ch != "\x7f" for ch in detail)
        and len("." + imap_encoded(detail)) <= _NAME_MAX
    )


_NAME_MAX = 255  # bytes in a directory name: the Maildir++ folder ".name"


def any_limits(rules: Sequence[FolderRule]) -> bool:
    """Whether some rule gives folders limits of their own (then ``local+folder`` is checked)."""
    return any(rule.quota or rule.messages for rule in rules)


def folder_limits(name: str, rules: Sequence[FolderRule]) -> Limits | None:
    """The folder's own limits when a rule gives it some."""
    return _own(rule_for(name, rules))


def _own(rule: FolderRule | None) -> Limits | None:
    if rule is None or not (rule.quota or rule.messages):
        return None
    return Limits(rule.quota, rule.messages)


def lowered_folder_limits(name: str, rules: Sequence[FolderRule]) -> Limits | None:
    """The limits of a folder named ``name`` as an MTA that lowers A-Z (Exim) gives it, before it
    is found on disk: the strictest of those of the spellings a sender writes (see
    :func:`spellings`), each by the first rule it meets."""
    return strictest(folder_limits(spelled, rules) for spelled in {name, *spellings(ascii_lower(name))})


def may_be_limited(name: str, rules: Sequence[FolderRule]) -> bool:
    """Whether a folder has limits of its own, or may be taken for one that has by a detail whose
    A-Z an MTA lowered (``myarchive`` beside the rule ``MyArchive``): a reading keeps such folders,
    so that a detail that is several of them is seen to be."""
    if lowered_folder_limits(name, rules) is not None:
        return True
    lowered, shown = ascii_lower(name), ascii_lower(imap_name(name))
    return any(_own(rule) is not None and _matches(lowered, shown, ascii_lower(rule.match)) for rule in rules)


def spellings(lowered: str) -> tuple[str, ...]:
    """How a sender writes a folder name that reached us with its A-Z lowered: as it is, each
    level capitalised (``Archive``, ``Archive.2024``, ``Projects/Work``) and in capitals. Not
    every spelling (2 to the number of its letters), but those folders are named with."""
    levels = re.split(r"([./])", lowered)
    capitalised = "".join(ascii_upper(level[:1]) + level[1:] for level in levels)
    return lowered, capitalised, ascii_upper(lowered)


def strictest(found: Iterable[Limits | None]) -> Limits | None:
    """The least of each limit among ``found`` (a limit of 0 is none); None when none has any."""
    limits = [f for f in found if f is not None]
    if not limits:
        return None
    sizes = [f.bytes for f in limits if f.bytes]
    counts = [f.messages for f in limits if f.messages]
    return Limits(min(sizes, default=0), min(counts, default=0))
