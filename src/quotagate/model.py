"""The words of quotagate as frozen values: mailboxes, limits, usage, decisions.

Frozen ``msgspec.Struct`` classes rather than dataclasses: a class is made in microseconds, not
a millisecond (every command imports these), and a scan makes several per mailbox.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from msgspec import Struct


class AliasDomains(Struct, frozen=True):
    """An admin's alias domains (PostfixAdmin's ``alias_domain``): ``user@alias.example`` is
    delivered to ``user@example.org``, unless it has an alias of its own (``own``: PostfixAdmin's
    Postfix maps look the explicit aliases up first)."""

    targets: dict[str, str] = {}  # alias domain -> the domain it reaches
    own: frozenset[str] = frozenset()  # addresses in an alias domain with an alias row of their own

    def target(self, address: str, base: str | None = None) -> str | None:
        """``local@target`` for a (lowercase) address in an alias domain, None otherwise: also
        when it, or ``base`` (the address without its detail: Postfix tries ``full@alias``
        after ``full+news@``), has an alias of its own."""
        local, _, domain = address.rpartition("@")
        reached = self.targets.get(domain)
        if reached is None or address in self.own or base in self.own:
            return None
        return f"{local}@{reached}"


class Limits(Struct, frozen=True):
    """Bytes and messages a mailbox may hold; 0 means unlimited."""

    bytes: int = 0
    messages: int = 0

    @property
    def unlimited(self) -> bool:
        return self.bytes == 0 and self.messages == 0


class Mailbox(Struct, frozen=True):
    """One address, its limits, whether it is enabled and (optionally) where its mail lives."""

    address: str
    limits: Limits = Limits()
    enabled: bool = True
    path: str | None = None

    @property
    def local(self) -> str:
        return self.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


class Format(enum.StrEnum):
    """How a mailbox was found on disk."""

    MAILDIR = "maildir"
    MBOX = "mbox"
    MISSING = "missing"  # not created yet: the MTA makes it on first delivery


class Boundary(enum.StrEnum):
    """Whether a message that would reach the limit is refused (the delivery agents' default) or
    only usage already past it is (Exim with ``quota_is_inclusive = false``)."""

    INCLUSIVE = "inclusive"  # full when usage + message > limit: over at >= limit
    EXCLUSIVE = "exclusive"  # full when usage > limit, whatever the message: over at > limit


class State(enum.StrEnum):
    OK = "ok"
    OVER = "over"
    UNKNOWN = "unknown"


class FolderUsage(NamedTuple):
    """Usage of one folder.

    ``stamp`` holds the modification times (and for mbox the size) seen when the folder was
    read; an incremental scan skips the folder while they are unchanged. ``None`` means
    "read it again next time" (the folder changed too recently for its mtime to be trusted).
    ``own_maildirsize`` is what a maildirsize of the folder's own claims (bytes, messages): Exim's
    appendfile without ``quota_directory`` keeps one in each folder it delivers to that has no
    ``maildirfolder`` file, and enforces its quota there apart from the root's.
    A named tuple rather than a dataclass: a scan builds one per folder, hundreds of thousands.
    """

    name: str
    bytes: int
    messages: int
    stamp: tuple[int, ...] | None = None
    own_maildirsize: tuple[int, int] | None = None


class MaildirsizeInfo(Struct, frozen=True):
    """What a Maildir++ ``maildirsize`` file claimed when the mailbox was measured (``rewritten``:
    or what ``scan --fix-maildirsize`` wrote into it in that same measurement)."""

    bytes: int
    messages: int
    definition: str
    rewritten: bool = False
    # What the agents' readers look at before they believe the claims (see
    # quotagate.accounting.enforced): size lines after the definition, the file's length in
    # bytes (as far as it was read) and when it last changed (its mtime, seconds).
    size_lines: int = 1
    file_bytes: int = 0
    changed_at: float = 0.0

    def agrees_with(self, bytes_: int, messages: int) -> bool:
        return self.bytes == bytes_ and self.messages == messages


class MailboxUsage(Struct, frozen=True):
    """What a mailbox holds on disk, folder by folder, or why it could not be measured.

    ``warning`` names what a measured mailbox holds but was not counted (a symlinked folder,
    folders past the walk's bounds): measured, not unknown, since its owner made it so and an
    unknown mailbox is let through.
    """

    format: Format
    folders: tuple[FolderUsage, ...] = ()
    root_stamp: int | None = None
    error: str | None = None
    maildirsize: MaildirsizeInfo | None = None
    warning: str | None = None

    @property
    def known(self) -> bool:
        return self.error is None

    @property
    def all_bytes(self) -> int:
        return sum(f.bytes for f in self.folders)

    @property
    def all_messages(self) -> int:
        return sum(f.messages for f in self.folders)

    @property
    def own_maildirsizes(self) -> tuple[FolderUsage, ...]:
        """The folders keeping a maildirsize of their own (see :class:`FolderUsage`)."""
        return tuple(f for f in self.folders if f.own_maildirsize is not None)

    def folder(self, name: str) -> FolderUsage | None:
        for f in self.folders:
            if f.name == name:
                return f
        return None


class Usage(Struct, frozen=True):
    """Counted usage of a mailbox after folder rules, with when and how it was measured."""

    bytes: int
    messages: int
    measured_at: float
    source: str = "scan"


class Action(enum.StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    DEFER = "defer"
    DUNNO = "dunno"


class Refusal(enum.StrEnum):
    """Why a mailbox refuses a message: each has its own reply ([policy] *_reply)."""

    FULL = "full"  # no message of any size fits: reject_reply
    DOES_NOT_FIT = "does-not-fit"  # room left, but less than the message declared: fit_reply
    MESSAGES = "messages"  # the message count limit is reached: messages_reply


class Numbers(Struct, frozen=True):
    """What a decision weighed, for the log line and ``quotagate check``; None where it was not
    reached (an unknown recipient has no limits, an unmeasured mailbox no usage)."""

    limit_bytes: int | None = None
    limit_messages: int | None = None
    used_bytes: int | None = None
    used_messages: int | None = None
    reserved_bytes: int | None = None
    reserved_messages: int | None = None
    size: int | None = None  # the declared size; None when unknown (an exclusive check)
    grace_bytes: int | None = None
    measured_at: float | None = None
    source: str | None = None


NOT_WEIGHED = Numbers()


class Decision(Struct, frozen=True):
    """The answer for one recipient and one declared size, with the numbers behind it."""

    action: Action
    reason: str
    numbers: Numbers = NOT_WEIGHED
    refusal: Refusal | None = None


class Reading(Struct, frozen=True):
    """A stored measurement of one mailbox: raw usage per folder plus the totals that count."""

    address: str
    path: str
    usage: MailboxUsage
    bytes: int
    messages: int
    state: State
    measured_at: float

    @property
    def reason(self) -> str | None:
        """Why the mailbox is unknown, or what its measurement left out."""
        return self.usage.error or self.usage.warning

    def same_measure(self, other: Reading) -> bool:
        """Equal apart from when it was measured: nothing to write."""
        return (self.path, self.usage, self.bytes, self.messages, self.state) == (
            other.path,
            other.usage,
            other.bytes,
            other.messages,
            other.state,
        )


class ScanSummary(Struct, frozen=True):
    started_at: float
    finished_at: float
    full: bool
    mailboxes: int
    measured: int
    messages: int
    bytes: int
    over: int
    unknown: int
    written: int

    @property
    def seconds(self) -> float:
        return self.finished_at - self.started_at
