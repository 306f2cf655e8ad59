"""Folder rules: which folders count towards the total, and folders with limits of their own."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from quotagate.config import FolderRule
from quotagate.model import FolderUsage, Limits
from quotagate.usage.names import imap_name


def rule_for(name: str, rules: Sequence[FolderRule], caseless: bool = False) -> FolderRule | None:
    """The first rule whose glob matches the folder name (case-sensitive): a Maildir++ name, or
    one with "/" between levels under ``LAYOUT=fs``, as stored and shown (see
    :func:`quotagate.usage.names.display_name`: a backslash doubled, an undecodable byte ``\\xNN``)
    or as an IMAP server shows it (:func:`quotagate.usage.names.imap_name`: ``Gelöscht`` for
    ``Gel&APY-scht``, the name Dovecot's quota rules match). ``caseless``: a name whose case an
    MTA lowered (Exim's folder details) matches a rule in any case."""
    shown = imap_name(name)
    for rule in rules:
        if fnmatchcase(name, rule.match) or (shown != name and fnmatchcase(shown, rule.match)):
            return rule
        if caseless and fnmatchcase(shown.casefold(), rule.match.casefold()):
            return rule
    return None


def counted(
    folders: Sequence[FolderUsage], rules: Sequence[FolderRule], left_out: Sequence[str] = ()
) -> tuple[int, int]:
    """Bytes and messages that count towards the mailbox limit: excluded folders left out, and
    the folders the accounting profile leaves out (``left_out``, e.g. Courier's ``Trash``)."""
    total = messages = 0
    for f in folders:
        if f.name in left_out:
            continue
        rule = rule_for(f.name, rules) if rules else None
        if rule is None or not rule.exclude:
            total += f.bytes
            messages += f.messages
    return total, messages


def any_limits(rules: Sequence[FolderRule]) -> bool:
    """Whether some rule gives folders limits of their own (then ``local+folder`` is checked)."""
    return any(rule.quota or rule.messages for rule in rules)


def folder_limits(name: str, rules: Sequence[FolderRule], caseless: bool = False) -> Limits | None:
    """The folder's own limits when a rule gives it some (``caseless``: see :func:`rule_for`)."""
    rule = rule_for(name, rules, caseless)
    if rule is None or not (rule.quota or rule.messages):
        return None
    return Limits(rule.quota, rule.messages)
