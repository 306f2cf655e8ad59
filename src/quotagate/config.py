"""The one validated config schema. Every default lives here; a bad value names its key.

Sections are frozen :class:`msgspec.Struct` classes, decoded from the TOML tables by
:func:`parse_config`. msgspec rather than pydantic: a config is read by every command, and cron
runs ``quotagate scan`` every few minutes; pydantic's import and schema build took ~100 ms of each
process, msgspec's a few. A value that needs more than a type and a bound is a type of its own
below (``Size``, ``Percent``, a reply...): :func:`_decode` turns the TOML value into it, and a
ValueError it raises becomes a config error naming the key.
"""

from __future__ import annotations

import logging
import os
import re
import string
import tomllib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import msgspec.inspect
from msgspec import Meta, Struct, field

from quotagate.errors import QuotagateError
from quotagate.history import Retention
from quotagate.listen import listen_spec, metrics_spec
from quotagate.sharedurl import SharedUrl, parse_shared_url
from quotagate.sizes import Allowance, format_percent, parse_allowance, parse_percent, parse_size

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("/etc/quotagate/quotagate.toml")
_STATE_DIR = "/var/lib/quotagate"
ENV_VAR = "QUOTAGATE_CONFIG"


class ConfigError(QuotagateError):
    """A config file that cannot be read or does not validate."""


class Size(int):
    """Bytes, written ``"500M"``, ``"2G"`` or as a plain number."""


class Percent(Decimal):
    """A share, written ``"99%"`` (a bare number above 1 is percent too); held as a fraction."""


class Checked(str):
    """A string with rules of its own: :meth:`check` returns it, or raises ValueError saying why not."""

    @classmethod
    def check(cls, value: str) -> str:
        return value


class ListenAddress(Checked):
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:/path``."""

    @classmethod
    def check(cls, value: str) -> str:
        return listen_spec(value)


class MetricsAddress(Checked):
    """``HOST:PORT``, or "" for none."""

    @classmethod
    def check(cls, value: str) -> str:
        return metrics_spec(value)


class Regex(Checked):
    """A regular expression with a capture group for a size (or "" for none), as Exim's."""

    @classmethod
    def check(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if value and compiled.groups < 1:
            raise ValueError("needs a capture group for the size, as Exim's does")
        return value


class DirectoryName(Checked):
    """One directory name, or ""."""

    @classmethod
    def check(cls, value: str) -> str:
        if value in (".", "..") or "/" in value or re.search(r"[\x00-\x1f\x7f]", value):
            raise ValueError(f"must be one directory name (or empty), not {value!r}")
        return value


class Reply(Checked):
    """An SMTP reply of one line with a code of class :attr:`code` and the str.format
    placeholders in :attr:`fields` (None: used as it is, braces and all)."""

    code: ClassVar[str] = "5"
    fields: ClassVar[frozenset[str] | None] = None

    @classmethod
    def check(cls, value: str) -> str:
        if not re.fullmatch(rf"{cls.code}\d\d [^\r\n]*", value):
            raise ValueError(f"{value!r} must start with a {cls.code}xx code and be one line")
        if cls.fields is None:
            return value
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc} (write {{{{ and }}}} for a brace)") from None
        if used - cls.fields:
            known = ", ".join(f"{{{name}}}" for name in sorted(cls.fields))
            extra = ", ".join(sorted(used - cls.fields))
            raise ValueError(f"{value!r} has {extra!r}: the placeholders here are {known}")
        return value


class TemporaryReply(Reply):
    code = "4"


# The placeholders a reply may hold (str.format fields), filled in by policy/replies.py.
class FitReply(Reply):
    fields = frozenset({"size", "limit"})


class MessagesReply(Reply):
    fields = frozenset({"limit"})


class OctalMode(Checked):
    @classmethod
    def check(cls, value: str) -> str:
        try:
            int(value, 8)
        except ValueError:
            raise ValueError(f"{value!r} is not an octal mode such as 0660") from None
        return value


class SharedUrlText(Checked):
    """A Redis URL as :func:`quotagate.sharedurl.parse_shared_url` reads it."""

    @classmethod
    def check(cls, value: str) -> str:
        parse_shared_url(value)
        return value


class KeyPrefix(Checked):
    @classmethod
    def check(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", value):
            raise ValueError(f"{value!r}: letters, digits and _ . : - only")
        return value


class HostPort(Checked):
    @classmethod
    def check(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not HOST:PORT")
        return value


class PlainAddress(Checked):
    @classmethod
    def check(cls, value: str) -> str:
        if "@" not in value or re.search(r"[\x00-\x20<>,;\x7f]", value):
            raise ValueError(f"{value!r} is not one plain address")
        return value


def _path(value: Any) -> Path:
    if not isinstance(value, str):
        raise ValueError(f"Expected a path as a string, got {value!r}")
    return Path(value)


def _percent(value: Any) -> Percent:
    """A share; a bare TOML number is percent (``99`` is 99%), but one between 0 and 1 is
    refused: ``0.99`` meant as 99% would be 0.99%, a threshold that flags every mailbox."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1:
        raise ValueError(f'{value!r} is ambiguous: write a share as a string, "{value * 100:g}%" or "{value:g}%"')
    return Percent(parse_percent(value))


_DECODERS: dict[type, Callable[[Any], Any]] = {
    Size: lambda value: Size(parse_size(value)),
    Percent: _percent,
    Allowance: parse_allowance,
    Path: _path,
}


def _decode(kind: type, value: Any) -> Any:
    """The value of a type msgspec does not know, from what TOML gave (msgspec's ``dec_hook``)."""
    if isinstance(kind, type) and issubclass(kind, Checked):
        if not isinstance(value, str):
            raise ValueError(f"Expected a string, got {value!r}")
        return kind(kind.check(value))
    if kind in _DECODERS:
        if isinstance(value, bool):
            raise ValueError(f"Expected a value, got {value!r}")
        return _DECODERS[kind](value)
    raise NotImplementedError(kind)


class _Section(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ColumnsConfig(_Section, frozen=True):
    """Overrides of the preset's table and column names (see ``quotagate.store.presets``)."""

    table: str | None = None
    address: str | None = None
    local_part: str | None = None
    domain: str | None = None
    quota: str | None = None
    quota_unit: Size | None = None
    messages: str | None = None
    enabled: str | None = None
    path: str | None = None
    overquota: str | None = None
    usage_table: str | None = None

    def overrides(self) -> dict[str, Any]:
        """The names set, by key."""
        return {name: value for name, value in msgspec.structs.asdict(self).items() if value is not None}


class LdapConfig(_Section, frozen=True):
    """Where mailboxes live in an LDAP tree, and how quotagate binds to publish into it."""

    bind_dn: str = ""
    password: str = ""
    password_file: Path | None = None
    base: str = ""
    scope: Literal["base", "one", "sub"] = "sub"
    filter: str = "(mail=*)"
    address_attribute: str = "mail"
    quota_attribute: str = "quotagateQuota"
    quota_unit: Size = Size(1)
    messages_attribute: str = ""
    path_attribute: str = ""
    # An entry is enabled unless this attribute holds one of disabled_values (e.g. accountStatus).
    enabled_attribute: str = ""
    disabled_values: list[str] = field(default_factory=lambda: ["disabled", "inactive", "FALSE", "0", "no"])
    timeout: Annotated[float, Meta(gt=0, description="seconds")] = 10

    def __post_init__(self) -> None:
        if self.password and self.password_file:
            raise ValueError("set password or password_file, not both")


class StoreConfig(_Section, frozen=True):
    url: str = "sqlite:////var/lib/quotagate/quotagate.db"
    # Where mailboxes and their limits live: quotagate's own table, or the admin's schema.
    schema_: Literal["quotagate", "postfixadmin", "classic"] = field(default="quotagate", name="schema")
    columns: ColumnsConfig = ColumnsConfig()
    ldap: LdapConfig = LdapConfig()
    # Where an LDAP store keeps quotagate's own readings (per-folder usage, scan history).
    state: str = "sqlite:////var/lib/quotagate/state.db"

    def __post_init__(self) -> None:
        if self.schema_ == "quotagate" and self.columns.overrides():
            raise ValueError("columns apply to an admin's schema: set schema = 'postfixadmin' or 'classic'")


class AccountingOptions(_Section, frozen=True):
    """The real program's build- or config-time switches an accounting profile follows."""

    # courier: Courier built with TRASHQUOTA counts Trash and T-flagged mail (Debian's does not).
    trash_quota: bool = False
    # exim: appendfile's quota_is_inclusive; false = full only when usage is past the limit.
    quota_is_inclusive: bool = True
    # exim: appendfile's quota_size_regex (e.g. ",S=(\d+)"); "" = every file is stat'ed.
    quota_size_regex: Regex = Regex("")
    # The grace a decision allows when [policy] grace is not set: the profile's own by default
    # (Dovecot's quota_grace, 10%; none for the others).
    grace: Allowance | None = None


# Which options each profile takes (see quotagate.accounting); grace applies to every profile.
_PROFILE_OPTIONS = {
    "files": {"grace"},
    "dovecot": {"grace"},
    "dovecot-count": {"grace"},
    "courier": {"trash_quota", "grace"},
    "exim": {"quota_is_inclusive", "quota_size_regex", "grace"},
}


class SpoolConfig(_Section, frozen=True):
    root: Path = Path("/var/mail/vhosts")
    layout: str = "{domain}/{local}/Maildir"
    format: Literal["maildir", "mbox", "auto"] = "auto"
    # A mailbox directory that is not a Maildir itself but holds one in this subdirectory is
    # measured there (PostfixAdmin's maildir column names the user's home, Dovecot keeps the
    # Maildir in ~/Maildir), in format "auto" and "maildir"; "" turns it off.
    maildir_subdir: DirectoryName = DirectoryName("Maildir")
    # How Maildir folders are laid out: Maildir++ dot folders (".Sent", ".Archive.2024"), or
    # Dovecot's LAYOUT=fs sub-directories ("Sent", "Archive/2024": folder rules match those names).
    maildir_layout: Literal["maildir++", "fs"] = "maildir++"
    # Other directories mailboxes (or the targets of symlinked mailboxes) may live beneath.
    # A mailbox path outside root and these is unknown, never followed.
    extra_roots: list[Path] = []
    # Refuse to scan unless the root is a mount point: an unmounted spool is an empty directory.
    require_mount: bool = False
    # Count as this delivery agent does (see quotagate.accounting and the README's "Accounting
    # profiles"); "files" is quotagate's own rules.
    accounting: Literal["files", "dovecot", "dovecot-count", "courier", "exim"] = "files"
    accounting_options: AccountingOptions = AccountingOptions()

    def __post_init__(self) -> None:
        relative = [str(p) for p in (self.root, *self.extra_roots) if not p.is_absolute()]
        if relative:
            raise ValueError(f"spool roots must be absolute paths: {', '.join(relative)}")
        if "%" in self.layout:
            raise ValueError(
                f"layout {self.layout!r}: quotagate's placeholders are {{domain}}, {{local}} and {{address}}"
                " (Dovecot's %d/%n is {domain}/{local}, %1n is {local[0]})"
            )
        try:
            self.layout.format(domain="domain", local="localpart", address="localpart@domain")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(f"layout may use only {{domain}}, {{local}} and {{address}}: {exc}") from exc
        if "{local" not in self.layout and "{address" not in self.layout:
            raise ValueError(f"layout {self.layout!r} names no mailbox: it needs {{local}} or {{address}}")
        options, defaults = self.accounting_options, AccountingOptions()
        changed = {name for name in options.__struct_fields__ if getattr(options, name) != getattr(defaults, name)}
        foreign = changed - _PROFILE_OPTIONS[self.accounting]
        if foreign:
            raise ValueError(f"accounting = {self.accounting!r} takes no option {', '.join(sorted(foreign))}")


class FolderRule(_Section, frozen=True):
    """A rule for folders whose name matches the glob ``match``: names as the IMAP server shows
    them, ``Archive.2024`` in Maildir++, ``Archive/2024`` under ``maildir_layout = "fs"``, without
    a namespace prefix (``Trash``, even where clients see ``INBOX.Trash``)."""

    match: str
    exclude: bool = False
    quota: Size = Size(0)
    messages: Annotated[int, Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        if self.match[:6].upper() == "INBOX.":  # Courier's and Dovecot's namespace prefix
            raise ValueError(
                f"match {self.match!r} would match nothing: folder names carry no IMAP namespace"
                f" prefix (match {self.match[6:]!r})"
            )


class ScanConfig(_Section, frozen=True):
    workers: Annotated[int, Meta(ge=0, description="0 = one per CPU")] = 0
    threshold: Percent = Percent(1)
    # A folder modified less than this many seconds before it was read is read again next time:
    # file systems keep coarse mtimes, so a change in the same tick would otherwise go unseen.
    racy_seconds: Annotated[float, Meta(ge=0)] = 2.0
    # flock'd by every scan (one-shot or --every) so that two never overlap; holds the holder's pid.
    # Unset: beside quotagate's SQLite file (the store's, or an LDAP store's state), else
    # /run/quotagate/scan.lock. See Config.scan_lock_file.
    lock_file: Path | None = None
    # A scan finding more than this share of the mailboxes it measured before gone (from the disk
    # or from the directory) is refused as an outage (see quotagate.outage); "100%" turns it off.
    max_vanished: Percent = Percent("0.1")
    # Seconds one mailbox may take to measure; past it (a hung mount, a FIFO) it is unknown.
    mailbox_timeout: Annotated[float, Meta(gt=0)] = 300
    # A Prometheus textfile (node_exporter's textfile collector: name it *.prom) that each
    # successful scan rewrites with its finish time and duration; unset: none.
    metrics_file: Path | None = None

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError("threshold must be above 0%: at 0% every mailbox is over quota")


class PublishConfig(_Section, frozen=True):
    file: Path | None = None


class PolicyConfig(_Section, frozen=True):
    """The live policy daemon (``quotagate serve``)."""

    # "HOST:PORT" (IPv6 as "[::1]:PORT") or "unix:/path/to/socket".
    listen: list[ListenAddress] = field(default_factory=lambda: [ListenAddress("127.0.0.1:10032")])
    # One client (an IPv4 address, an IPv6 /48) holds at most this much room in one mailbox
    # before DATA (bytes, or a share of the mailbox's limit), and never less than one message.
    client_hold: Allowance = Allowance(fraction=Decimal("0.1"))
    # Reservations kept at most; past it the oldest are let go (and counted).
    max_reservations: Annotated[int, Meta(ge=1)] = 1_000_000
    # Reservations survive restarts here; unset: beside quotagate's SQLite file (see
    # config.reservations_file).
    state_file: Path | None = None
    # Where `quotagate reservations` (and `check`) ask the running daemon; root only.
    control_socket: Path = Path("/run/quotagate/control.sock")
    socket_mode: OctalMode = OctalMode("0660")
    socket_group: str = ""  # e.g. Debian-exim, so Exim may connect to the unix socket
    # Unset: the accounting profile's own (Dovecot's 10%, or accounting_options.grace; else none).
    grace: Allowance | None = None
    on_full: Literal["reject", "defer"] = "reject"
    reject_reply: Reply = Reply("552 5.2.2 Mailbox is full")
    # A message that does not fit in a mailbox that is not full ({size}: its declared size).
    # 5.2.2, not 5.3.4: RFC 3463's X.3.4 is a limit of the whole system, not of one mailbox.
    fit_reply: FitReply = FitReply("552 5.2.2 Message of {size} bytes does not fit in this mailbox")
    # A mailbox at its message count limit ({limit}: that limit).
    messages_reply: MessagesReply = MessagesReply("552 5.2.2 Mailbox has reached its limit of {limit} messages")
    # With on_full = "defer", for a full mailbox; the other refusals keep their text with a 4xx code.
    defer_reply: TemporaryReply = TemporaryReply("452 4.2.2 Mailbox is full")
    # For a client that already holds its share of a mailbox (client_hold) before DATA.
    busy_reply: TemporaryReply = TemporaryReply(
        "452 4.2.2 Too many messages in progress for this mailbox, try again later"
    )
    # An accepted check with a known size holds that room for this long (or until fresher usage).
    reservation_seconds: Annotated[float, Meta(ge=0)] = 600
    # "local+folder@domain" is checked against that folder's rule, or as "local@domain" (what
    # Exim's local_part_suffix = +* delivers it to); "" turns it off. Each character is a
    # delimiter, as in Postfix's recipient_delimiter and Dovecot's: "+-" takes both.
    folder_delimiter: str = "+"
    # The delivery agent saves "local+folder@domain", as Postfix passes it, into that folder,
    # making it if need be (Dovecot's LMTP with lmtp_save_to_detail_mailbox = yes and
    # lda_mailbox_autocreate = yes): mail for a folder it saves into with no quota check
    # (Courier's Trash; under the dovecot profiles, one an exclude rule leaves out, as
    # quota_rule = Trash:ignore) is then not checked. Exim's checks are not concerned. Off, such
    # mail lands in INBOX and is checked.
    detail_folders: bool = False
    # Limits and stored usage are reloaded from the store this often.
    refresh_seconds: Annotated[float, Meta(gt=0)] = 30
    # Read a Maildir++ maildirsize at request time when the last scan found it agreeing.
    use_maildirsize: bool = True
    max_connections: Annotated[int, Meta(ge=1)] = 1000
    # Users whose processes on this host may ask over TCP (root and the users MTAs run as): another
    # local user could otherwise name any client_address and hold every mailbox's room. Names this
    # host does not have are ignored; [] serves every local user. Other hosts are not concerned.
    local_users: list[str] = field(
        default_factory=lambda: ["root", "Debian-exim", "exim", "mail", "mailnull", "postfix", "_postfix"]
    )
    # Seconds a connection may sit between requests. Postfix keeps a policy connection up to
    # the max_idle of the postfix-config item (300s): closing it sooner only
    # makes Postfix log an error and reconnect.
    idle_timeout: Annotated[float, Meta(gt=0)] = 310
    # Seconds from the first byte of a request to its end, whatever the byte rate: a client
    # sending a byte a second must not hold a connection slot forever.
    request_timeout: Annotated[float, Meta(gt=0)] = 10
    # Usage older than this (seconds since the last scan, watch cycle or maildirsize read that
    # covered the mailbox) is not believed: the store is down, watch dead or scans failing. DUNNO.
    max_usage_age: Annotated[float, Meta(gt=0)] = 900
    # Seconds a maildirsize read (in the reader process) may take before the mailbox's last
    # reading decides: a FIFO or a dead NFS mount must not hold an answer.
    file_timeout: Annotated[float, Meta(gt=0)] = 0.5
    drain_seconds: Annotated[float, Meta(ge=0)] = 5
    # Prometheus metrics on "HOST:PORT"; "" turns them off.
    metrics: MetricsAddress = MetricsAddress("127.0.0.1:9762")
    # Processes answering on the same sockets (serve --workers); more than one needs [shared] url,
    # where they keep the reservations they all weigh.
    workers: Annotated[int, Meta(ge=1, le=64)] = 1

    def __post_init__(self) -> None:
        if odd := set(self.folder_delimiter) - set(_DELIMITERS):
            raise ValueError(
                f"folder_delimiter: {''.join(sorted(odd))!r} cannot part a local part from its detail"
                f" (each character must be one of {_DELIMITERS})"
            )


# What may part a local part from its detail: the punctuation a local part may hold unquoted,
# less what Exim's expansion takes ($, braces) and the backslash.
_DELIMITERS = "+-_=.!#%&'*/?^`|~"


class WatchConfig(_Section, frozen=True):
    """Freshness between scans: ``quotagate watch``, or inside ``quotagate serve`` when enabled."""

    enabled: bool = False  # inside quotagate serve
    # auto: inotify when the watches fit under fs.inotify.max_user_watches, else polling.
    mode: Literal["auto", "inotify", "poll"] = "auto"
    # Events are gathered this long, then published in one batch.
    flush_seconds: Annotated[float, Meta(gt=0)] = 0.2
    poll_seconds: Annotated[float, Meta(gt=0)] = 1.0
    # A light incremental scan corrects any drift this often.
    rescan_seconds: Annotated[float, Meta(gt=0)] = 3600
    # How often ``quotagate watch`` looks for mailboxes added to or removed from the directory
    # (inside serve, [policy] refresh_seconds does it).
    directory_seconds: Annotated[float, Meta(gt=0)] = 30


class SharedConfig(_Section, frozen=True):
    """State shared between daemons and hosts (reservations, live usage), in Redis. Unset: each
    ``quotagate serve`` keeps its own, in-process, and Redis is never needed."""

    # "redis://HOST:PORT/DB", "rediss://..." (TLS) or "redis+sentinel://HOST:PORT,HOST:PORT/SERVICE".
    url: SharedUrlText | None = None
    # This host's name in the keys of its SMTP transactions: Postfix's instance is unique per
    # host only. "" = the host name.
    node: str = ""
    # Seconds one Redis call may take before the daemon decides alone (fail open to its own state).
    timeout: Annotated[float, Meta(gt=0)] = 0.5
    # While Redis cannot be reached, it is tried again this often.
    retry_seconds: Annotated[float, Meta(gt=0)] = 1.0
    # Prefix of every key quotagate writes (several sites may share one Redis).
    prefix: KeyPrefix = KeyPrefix("quotagate")

    @property
    def parsed(self) -> SharedUrl | None:
        return None if self.url is None else parse_shared_url(self.url)


class HistoryConfig(_Section, frozen=True):
    """Usage over time, for forecasts, warnings and the HTML report's charts."""

    # Every scan and watch batch records the usage of the mailboxes that changed.
    enabled: bool = True
    # Every sample is kept this many days, then the last of each hour ...
    raw_days: Annotated[float, Meta(gt=0)] = 2
    # ... up to this many days, then the last of each day ...
    hourly_days: Annotated[float, Meta(gt=0)] = 30
    # ... up to this many days, then none.
    daily_days: Annotated[float, Meta(gt=0)] = 730
    # The watch records a changing mailbox at most once in this many seconds.
    interval: Annotated[float, Meta(ge=0)] = 300
    # A forecast reads the history of this many days.
    forecast_days: Annotated[float, Meta(gt=0)] = 14

    def __post_init__(self) -> None:
        if not self.raw_days <= self.hourly_days <= self.daily_days:
            raise ValueError("raw_days <= hourly_days <= daily_days, please")

    @property
    def retention(self) -> Retention:
        return Retention(self.raw_days, self.hourly_days, self.daily_days)


class WarnConfig(_Section, frozen=True):
    """``quotagate warn``: mail to users past a threshold or forecast to fill soon."""

    # Each is sent once when usage (bytes or messages, whichever is fuller) rises past it.
    thresholds: list[Percent] = field(default_factory=lambda: [Percent("0.8"), Percent("0.9"), Percent("0.95")])
    # A threshold is re-armed once usage drops this far below it.
    rearm: Percent = Percent("0.05")
    # "Will be full within N days" is sent when the forecast says so; 0 turns it off.
    full_within_days: Annotated[float, Meta(ge=0)] = 7
    # The SMTP server the warnings go through, "HOST:PORT": one that delivers to full mailboxes
    # (see the README: a port without the quota check).
    smtp: HostPort = HostPort("localhost:25")
    # The From: and envelope sender of the warnings.
    sender: PlainAddress = PlainAddress("postmaster@localhost")
    # Seconds the SMTP conversation may take.
    timeout: Annotated[float, Meta(gt=0)] = 30
    # A directory with threshold.txt and filling.txt overriding the built-in templates.
    template_dir: Path | None = None
    # A Prometheus textfile (name it *.prom) that each warn run (not --dry-run) rewrites with the
    # mailboxes past each threshold and those forecast full within 1, 7 and 30 days; unset: none.
    metrics_file: Path | None = None

    def __post_init__(self) -> None:
        if any(threshold <= 0 for threshold in self.thresholds):
            raise ValueError("thresholds must be above 0%: at 0% every mailbox would be warned")


class Config(_Section, frozen=True):
    store: StoreConfig = StoreConfig()
    spool: SpoolConfig = SpoolConfig()
    scan: ScanConfig = ScanConfig()
    folders: list[FolderRule] = []
    publish: PublishConfig = PublishConfig()
    policy: PolicyConfig = PolicyConfig()
    watch: WatchConfig = WatchConfig()
    shared: SharedConfig = SharedConfig()
    history: HistoryConfig = HistoryConfig()
    warn: WarnConfig = WarnConfig()

    def __post_init__(self) -> None:
        """Every file quotagate reads or writes is named absolutely: a relative one would be
        another file for each directory a command runs in (the timer's /, cron's and the
        admin's home), so scans would publish where Exim does not look and take locks that do
        not exclude each other. (So is a spool root: see SpoolConfig.)"""
        paths = {
            "store.ldap.password_file": self.store.ldap.password_file,
            "scan.lock_file": self.scan.lock_file,
            "scan.metrics_file": self.scan.metrics_file,
            "publish.file": self.publish.file,
            "policy.state_file": self.policy.state_file,
            "policy.control_socket": self.policy.control_socket,
            "warn.template_dir": self.warn.template_dir,
            "warn.metrics_file": self.warn.metrics_file,
        }
        for key, path in paths.items():
            if path is not None and not path.is_absolute():
                raise ValueError(f"{key} must be an absolute path: {path}")
        urls = [("store.url", self.store.url)]
        if self.store.url.startswith("ldap"):  # only an LDAP store keeps its state there
            urls.append(("store.state", self.store.state))
        for key, url in urls:
            db = _sqlite_path(url)
            if db is not None and not db.is_absolute():
                raise ValueError(
                    f"{key}: the SQLite file {db} is relative; an absolute path takes four slashes: sqlite:////{db}"
                )


def as_toml(value: Any) -> Any:
    """A config value (or a whole section) as quotagate.toml writes it: percentages as ``"99%"``,
    sizes or shares of a limit and paths as strings, a section as a table under its keys."""
    if isinstance(value, Percent):
        return format_percent(value)
    if isinstance(value, Struct):
        return {f.encode_name: as_toml(getattr(value, f.name)) for f in msgspec.structs.fields(value)}
    if isinstance(value, list):
        return [as_toml(item) for item in value]
    if isinstance(value, Path | Allowance):
        return str(value)
    return value


def _sqlite_path(url: str) -> Path | None:
    """The file an SQLite URL of either driver names, SQLite's own URI form (``file:/abs/q.db``)
    included; None for another store or a database in memory."""
    prefix = "sqlite:///"
    url = url.replace("sqlite+pysqlite:", "sqlite:", 1)
    if not url.startswith(prefix):
        return None
    db = url[len(prefix) :].partition("?")[0]
    if not db or db.startswith(":memory:"):
        return None
    return Path(db.removeprefix("file:"))


def scan_lock_file(config: Config) -> Path:
    """Where scans take their lock: the configured file, or one beside the store that scans share.

    Two scans of the same store must exclude each other whoever runs them (a timer, a loop, an
    admin, ``quotagate demo``), and a lock beside the SQLite file needs no privileges.
    """
    if config.scan.lock_file is not None:
        return config.scan.lock_file
    url = config.store.state if config.store.url.startswith("ldap") else config.store.url
    db = _sqlite_path(url)
    return db.with_name(db.name + ".scan-lock") if db is not None else Path("/run/quotagate/scan.lock")


def reservations_file(config: Config) -> Path:
    """Where the daemon keeps its reservations across restarts: the configured file, or one
    beside quotagate's SQLite file, else /var/lib/quotagate/reservations.json."""
    if config.policy.state_file is not None:
        return config.policy.state_file
    url = config.store.state if config.store.url.startswith("ldap") else config.store.url
    db = _sqlite_path(url)
    return db.with_name(db.name + ".reservations.json") if db is not None else Path(_STATE_DIR, "reservations.json")


def parse_config(data: dict[str, Any], origin: str = "config") -> Config:
    """Validate a config mapping; an error names the key (``spool.format``) and the reason."""
    try:
        return msgspec.convert(data, Config, strict=False, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_problem(str(exc))}") from None


def _problem(message: str) -> str:
    """msgspec's "reason - at `$.policy.listen[1]`" as "policy.listen.1: reason"."""
    reason, _, where = message.rpartition(" - at `")
    if not reason:
        reason, where = message, "$`"
    parts = re.findall(r"\.(\w+)|\[(\d+)\]", where.removesuffix("`").removeprefix("$"))
    key = [name or index for name, index in parts]
    if unknown := re.fullmatch(r"Object contains unknown field `(.*)`", reason):
        key, reason = [*key, unknown[1]], "not a known key"
    elif missing := re.fullmatch(r"Object missing required field `(.*)`", reason):
        key, reason = [*key, missing[1]], "required"
    elif reason.startswith("Invalid enum value") and (choices := _choices(key)):
        reason += f" (one of: {', '.join(map(repr, choices))})"
    return f"{'.'.join(key) or '(top level)'}: {reason}"


def _choices(key: list[str]) -> tuple[Any, ...]:
    """The values the setting at ``key`` may take, when it is one of a few; else ()."""
    info: Any = msgspec.inspect.type_info(Config)
    for part in key:
        if isinstance(info, msgspec.inspect.ListType) and part.isdigit():
            info = info.item_type
        elif isinstance(info, msgspec.inspect.StructType):
            info = next((f.type for f in info.fields if f.encode_name == part), None)
        else:
            return ()
    return tuple(info.values) if isinstance(info, msgspec.inspect.LiteralType) else ()


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config, else $QUOTAGATE_CONFIG, else /etc/quotagate/quotagate.toml."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config file; a missing named one is an error, a missing default one means all defaults.

    The latter with a warning: an admin who put the file elsewhere would otherwise get a scan of
    the default spool into an empty store, and exit 0.
    """
    file = config_path(path)
    named = bool(path or os.environ.get(ENV_VAR))
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        if named:
            raise ConfigError(f"{file}: no such config file") from None
        config = Config()
        log.warning(
            "no config file: %s does not exist, and neither --config nor $%s names one: "
            "running with the defaults (store %s, spool %s)",
            file,
            ENV_VAR,
            config.store.url,
            config.spool.root,
        )
        return config
    except OSError as exc:
        raise ConfigError(f"{file}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return parse_config(data, str(file))
