"""Accounting profiles: count a mailbox the way the delivery agent that enforces its quota does.

A quota refused at RCPT must be the quota the delivery agent will enforce. Dovecot, Courier and
Exim disagree on which size a message has (the ``S=`` or ``W=`` in its name, or its file), which
folders and messages count, what an odd file name is worth, and whether reaching the limit is
already full. Each profile below is one small table of those rules, read from the programs'
sources (Dovecot 2.3 ``quota-maildir.c``, ``maildir-filename.c``, ``mbox-from.c``; Courier
``maildirquota.c``; Exim 4.96 ``appendfile.c``, ``tf_maildir.c``). The few build- or
config-time switches of the real program are options (``[spool] accounting_options``).

Everything here is pure: the scanner asks a profile what a name is worth, and stats or reads
the file (through a descriptor) only when the profile says the name does not tell.
"""

from __future__ import annotations

import enum
import re
from decimal import Decimal

from msgspec import Struct
from msgspec.structs import replace

from quotagate.config import AccountingOptions, Config, SpoolConfig
from quotagate.model import Boundary, Limits, MaildirsizeInfo
from quotagate.sizes import Allowance
from quotagate.usage.maildirsize import MAX_TRUSTED_BYTES, limits_of
from quotagate.usage.names import imap_canonical, size_from_name

_MAX_DIGITS = 18  # longer values are garbage, not sizes: the file is stat'ed instead


class SizeRule(enum.StrEnum):
    """Where a message's size comes from."""

    NAME = "name"  # quotagate's own: a well-formed S= before the ":" info, else the file size
    DOVECOT_S = "dovecot-S"  # the first ",S=" anywhere; digits then ",", ":" or the end
    VIRTUAL = "virtual-W"  # the first ",W=" (Dovecot's vsize), else the file read as CRLF
    COURIER_S = "courier-S"  # the last ",S=" before the ":"; leading digits, whatever follows
    STAT = "stat"  # the file size (Exim without quota_size_regex)
    REGEX = "regex"  # Exim's quota_size_regex: the first capture, when all digits; else stat


class MboxRule(enum.StrEnum):
    """Where one mbox message ends."""

    BLANK_LINE = "blank-line"  # a "From " line at the start or after an empty line
    DOVECOT = "dovecot"  # a From_ line Dovecot's parser accepts; Content-Length honoured


class Recount(enum.Enum):
    """When a program that goes by maildirsize counts the files again instead, for a file of one
    size line less than 15 minutes old (a file of more lines, or older, is always recounted
    then; one of 5120 bytes or more always)."""

    OVER_LIMIT = "over-limit"  # Dovecot: once the claims are over the limit
    NO_ROOM = "no-room"  # Courier, Exim: once a message does not fit by the claims


class Profile(Struct, frozen=True):
    """One delivery agent's accounting rules.

    ``stamp_tag`` is appended to the stamps of folders measured under this profile, so a reading
    taken under another profile (or other options) is never reused by an incremental scan.
    """

    name: str
    program: str
    size: SizeRule
    dot_files: bool  # files whose names start with "." in cur/ and new/ count as messages
    # Every entry of cur/ and new/ counts, whatever its type, as Dovecot's, Courier's and Exim's
    # readdir loops do: by the size in its name, else (lstat, never following) a regular file by
    # its size, a directory by its own size (``directory_bytes``) or 0, anything else by 0.
    any_entry: bool
    excluded_folders: tuple[str, ...]  # Maildir++ names, exactly
    excluded_flags: str  # a message in cur/ with any of these flags after ":2," is left out
    boundary: Boundary
    default_grace: Allowance
    mbox: MboxRule
    stamp_tag: tuple[int, ...] = ()
    size_regex: re.Pattern[str] | None = None
    # A directory in cur/ or new/ counts its own size (Dovecot's and Courier's stat); Exim adds
    # up what is inside, which quotagate does not read: 0.
    directory_bytes: bool = True
    # A symlink counts as a message (Dovecot's count quota indexes it). The programs follow it
    # for its size; quotagate never follows a path a user controls, so it is 0 bytes here.
    symlinks: bool = False
    # A regular file counts its size divided by its link count (Exim's check_dir_size).
    share_hard_links: bool = False
    # The program goes by a Maildir++ maildirsize, and counts the files again only as
    # ``recounts`` says (see :func:`enforced`).
    trusts_maildirsize: bool = False
    recounts: Recount = Recount.OVER_LIMIT
    # Folders [[folders]] rules exclude stand for folders the program saves into with no quota
    # check (Dovecot's quota_rule = Trash:ignore); else only ``excluded_folders`` are (Courier's
    # Trash), and a rule only leaves a folder out of the total.
    saves_excluded_unchecked: bool = False
    # Only folders whose names on disk are modified UTF-7 as the program writes them count
    # (Dovecot: see quotagate.usage.names.imap_canonical); a mail client that made ``.Entwürfe``
    # or ``.R&D`` itself made a folder its quota never sees.
    imap_names_only: bool = False
    # A file named ``..x`` does not count (Dovecot's recount skips ``.``, ``..`` and every name
    # starting with two dots, by its first two characters alone).
    skips_two_dots: bool = False
    # Only INBOX and folders whose directories are dot-named count (Exim's recount descends only
    # into directories maildir_quota_directory_regex matches: cur, new and .*): a Maildir whose
    # IMAP server keeps its folders as LAYOUT=fs plain directories has them left out.
    dot_folders_only: bool = False

    @property
    def describe(self) -> str:
        """One line for ``check`` and logs: the profile and its boundary."""
        at = "at or over the limit" if self.boundary is Boundary.INCLUSIVE else "over the limit"
        return f"{self.name} ({self.program}; full {at})"

    def size_from_name(self, name: str) -> int | None:
        """The size a name gives under this profile, or None: the caller sizes the file."""
        if self.size is SizeRule.NAME:
            return size_from_name(name)
        if self.size is SizeRule.DOVECOT_S:
            return _dovecot_field(name, "S", at_end_ok=True)
        if self.size is SizeRule.VIRTUAL:
            return _dovecot_field(name, "W", at_end_ok=False)
        if self.size is SizeRule.COURIER_S:
            return _courier_size(name)
        if self.size is SizeRule.REGEX and self.size_regex is not None:
            return _regex_size(name, self.size_regex)
        return None

    def leaves_out_folder(self, name: str) -> bool:
        """Whether the folder of this stored name does not count at all under this profile."""
        if name in self.excluded_folders or (self.imap_names_only and not imap_canonical(name)):
            return True
        return self.dot_folders_only and name != "INBOX" and not all(p.startswith(".") for p in name.split("/"))

    def left_out(self, name: str) -> bool:
        """Whether a message file of this name does not count at all: dot files (Dovecot, which
        counts them, still skips a name starting with ``..``), flags (as Courier reads them:
        after the first ``:2,``, while they are capital letters)."""
        if name.startswith(".") and (not self.dot_files or (self.skips_two_dots and name.startswith(".."))):
            return True
        if self.excluded_flags:
            at = name.find(":2,")
            if at >= 0:
                flags = _CAPITALS.match(name, at + 3)
                if flags is not None and any(f in flags[0] for f in self.excluded_flags):
                    return True
        return False


_CAPITALS = re.compile("[A-Z]*")


def _digits(text: str) -> tuple[int, str] | None:
    """Leading ASCII digits of ``text`` as a number ("" is 0, as the C loops give) and the rest."""
    end = 0
    while end < len(text) and "0" <= text[end] <= "9":
        end += 1
    if end > _MAX_DIGITS:
        return None
    return (int(text[:end]) if end else 0), text[end:]


def _dovecot_field(name: str, field: str, *, at_end_ok: bool) -> int | None:
    """Dovecot: the first ``,S=`` (or ``,W=``) anywhere in the name, info included; digits must
    end at ``:``, ``,`` or the end of the name. ``quota-maildir.c`` takes ``x,S=`` as 0 bytes;
    ``maildir_filename_get_size`` (the ``W=`` reader) refuses it."""
    start = name.find(f",{field}=")
    if start < 0:
        return None
    rest = name[start + 3 :]
    if not rest and not at_end_ok:
        return None
    parsed = _digits(rest)
    if parsed is None or (parsed[1] and parsed[1][0] not in ":,"):
        return None
    return parsed[0]


def _courier_size(name: str) -> int | None:
    """Courier's ``maildir_parsequota``: the last ``,S=`` before the ``:``, then its leading
    digits, whatever follows them (``x,S=12abc`` is 12 bytes, ``x,S=:2,S`` is 0)."""
    base = name.partition(":")[0]
    start = base.rfind(",S=")
    if start < 0:
        return None
    parsed = _digits(base[start + 3 :])
    return None if parsed is None else parsed[0]


def _regex_size(name: str, pattern: re.Pattern[str]) -> int | None:
    """Exim's ``quota_size_regex``: the first capture of the first match, used only when it is
    all digits (``strtol`` must consume it); otherwise Exim stats the file."""
    match = pattern.search(name)
    if match is None or match.lastindex is None:
        return None
    captured = match.group(1)
    if not captured or len(captured) > _MAX_DIGITS or not (captured.isascii() and captured.isdigit()):
        return None
    return int(captured)


NO_GRACE = Allowance()
DOVECOT_GRACE = Allowance(fraction=Decimal("0.1"))  # Dovecot's quota_grace default

PROFILES: dict[str, Profile] = {
    "files": Profile(
        name="files",
        program="quotagate's own rules",
        size=SizeRule.NAME,
        dot_files=False,
        any_entry=False,
        excluded_folders=(),
        excluded_flags="",
        boundary=Boundary.INCLUSIVE,
        default_grace=NO_GRACE,
        mbox=MboxRule.BLANK_LINE,
    ),
    "dovecot": Profile(
        name="dovecot",
        program="Dovecot quota = maildir:",
        size=SizeRule.DOVECOT_S,
        dot_files=True,
        any_entry=True,
        excluded_folders=(),
        excluded_flags="",
        boundary=Boundary.INCLUSIVE,
        default_grace=DOVECOT_GRACE,
        saves_excluded_unchecked=True,
        imap_names_only=True,
        skips_two_dots=True,
        mbox=MboxRule.DOVECOT,
        stamp_tag=(1, 1),
        trusts_maildirsize=True,
    ),
    "dovecot-count": Profile(
        name="dovecot-count",
        program="Dovecot quota = count: with quota_vsizes = yes",
        size=SizeRule.VIRTUAL,
        dot_files=False,
        any_entry=False,
        excluded_folders=(),
        excluded_flags="",
        boundary=Boundary.INCLUSIVE,
        default_grace=DOVECOT_GRACE,
        saves_excluded_unchecked=True,
        imap_names_only=True,
        mbox=MboxRule.DOVECOT,
        stamp_tag=(2, 1),
        symlinks=True,
    ),
    "courier": Profile(
        name="courier",
        program="Courier maildrop/deliverquota",
        size=SizeRule.COURIER_S,
        dot_files=False,
        any_entry=True,
        excluded_folders=("Trash",),
        excluded_flags="T",
        boundary=Boundary.INCLUSIVE,
        default_grace=NO_GRACE,
        mbox=MboxRule.BLANK_LINE,
        stamp_tag=(3, 2),
        trusts_maildirsize=True,
        recounts=Recount.NO_ROOM,
    ),
    "exim": Profile(
        name="exim",
        program="Exim appendfile",
        size=SizeRule.STAT,
        dot_files=True,
        any_entry=True,
        excluded_folders=(),
        excluded_flags="",
        boundary=Boundary.INCLUSIVE,
        default_grace=NO_GRACE,
        mbox=MboxRule.BLANK_LINE,
        stamp_tag=(4, 1),
        directory_bytes=False,
        share_hard_links=True,
        trusts_maildirsize=True,
        recounts=Recount.NO_ROOM,
    ),
}
FILES = PROFILES["files"]


STALE_SECONDS = 15 * 60
"""A maildirsize older than this is never believed once it would decide (Dovecot's
``MAILDIRSIZE_STALE_SECS``; Courier and Exim the same)."""


def enforced(
    files: tuple[int, int], claims: MaildirsizeInfo | None, limits: Limits, profile: Profile, now: float
) -> tuple[int, int]:
    """Bytes and messages the delivery agent will hold a mailbox to: its files (``files``, after
    folder rules), or more when its ``maildirsize`` claims more and the agent still believes it.

    Mail removed by something that does not write to ``maildirsize`` (an IMAP server without the
    quota plugin, a cleanup job, the user's shell) leaves it claiming the old total. The agents
    believe the claims, and refuse by them, unless they recount:

    - a file of 5120 bytes or more, always (each reads it into a 5120-byte buffer);
    - a file of more than one size line, or older than :data:`STALE_SECONDS`, once it would
      decide: Dovecot (``maildirsize_parse``) when the claims are over the limit; Courier and
      Exim when a message does not fit by them, which makes them go by the files for every
      refusal (the claims only let in what the files let in too);
    - a file whose limit line is not the mailbox's (the admin changed it): Dovecot recounts,
      and quotagate cannot tell which Courier would take.

    A fresh file of one size line is believed even over the limit: the agent refuses by it.
    Claims below the files never lower the count: the files are what the admin's limit is for,
    and a user may edit the file. ``now`` tells how old the file is.
    """
    if not profile.trusts_maildirsize or claims is None or claims.rewritten:
        return files
    if limits_of(claims.definition) != limits:
        return files  # a limit line not the mailbox's (its limit changed since): the agent recounts
    if claims.bytes < 0 or claims.messages < 0 or claims.file_bytes >= MAX_TRUSTED_BYTES:
        return files  # corrupted, or too large to read: the agent recounts
    believed_when_deciding = claims.size_lines <= 1 and now - claims.changed_at < STALE_SECONDS
    if not believed_when_deciding:
        over = (limits.bytes and claims.bytes > limits.bytes) or (limits.messages and claims.messages > limits.messages)
        if profile.recounts is Recount.NO_ROOM or over:
            return files
    return max(files[0], claims.bytes), max(files[1], claims.messages)


def profile_for(spool: SpoolConfig) -> Profile:
    """The profile ``[spool] accounting`` names, with ``[spool] accounting_options`` applied, for
    the spool's Maildir layout."""
    profile = with_options(PROFILES[spool.accounting], spool.accounting_options)
    if profile.name == "exim" and spool.maildir_layout == "fs":
        profile = replace(profile, dot_folders_only=True)
    return profile


def with_options(base: Profile, options: AccountingOptions) -> Profile:
    """A profile with the real program's build- or config-time switches set.

    Each switch changes the stamp tag too: counts taken under other switches are read again.
    """
    profile = base
    if base.name == "courier" and options.trash_quota:
        profile = replace(profile, excluded_folders=(), excluded_flags="", stamp_tag=(*profile.stamp_tag, 1))
    if base.name == "exim":
        if not options.quota_is_inclusive:
            profile = replace(profile, boundary=Boundary.EXCLUSIVE)
        if options.quota_size_regex:
            tag = sum(options.quota_size_regex.encode()) + 2  # any change re-reads; collisions only cost a read
            profile = replace(
                profile,
                size=SizeRule.REGEX,
                size_regex=re.compile(options.quota_size_regex),
                stamp_tag=(*profile.stamp_tag, tag),
            )
    if options.grace is not None:
        profile = replace(profile, default_grace=options.grace)
    return profile


def grace_for(config: Config) -> Allowance:
    """The grace a decision allows: ``[policy] grace`` when it is set, else the profile's default
    (Dovecot's ``quota_grace`` of 10%, or ``accounting_options.grace``; none for the others)."""
    if config.policy.grace is not None:
        return config.policy.grace
    return profile_for(config.spool).default_grace


def virtual_size(data_size: int, lf: int, crlf: int) -> int:
    """Dovecot's virtual size of a message: every bare LF counted as CRLF."""
    return data_size + lf - crlf
