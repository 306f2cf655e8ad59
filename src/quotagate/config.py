"""The one validated config schema. Every default lives here; a bad value names its key."""

from __future__ import annotations

import logging
import os
import re
import string
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from quotagate.errors import QuotagateError
from quotagate.history import Retention
from quotagate.listen import listen_spec, metrics_spec
from quotagate.sharedurl import SharedUrl, parse_shared_url
from quotagate.sizes import Allowance, parse_allowance, parse_percent, parse_size

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("/etc/quotagate/quotagate.toml")
_STATE_DIR = "/var/lib/quotagate"
ENV_VAR = "QUOTAGATE_CONFIG"

Size = Annotated[int, BeforeValidator(parse_size)]
Percent = Annotated[Decimal, BeforeValidator(parse_percent), PlainSerializer(lambda d: f"{d * 100:g}%")]
Grace = Annotated[Allowance, BeforeValidator(parse_allowance), PlainSerializer(str)]
Listen = Annotated[str, AfterValidator(listen_spec)]
MetricsListen = Annotated[str, AfterValidator(metrics_spec)]


class ConfigError(QuotagateError):
    """A config file that cannot be read or does not validate."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnsConfig(_Section):
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


class LdapConfig(_Section):
    """Where mailboxes live in an LDAP tree, and how quotagate binds to publish into it."""

    bind_dn: str = ""
    password: str = ""
    password_file: Path | None = None
    base: str = ""
    scope: Literal["base", "one", "sub"] = "sub"
    filter: str = "(mail=*)"
    address_attribute: str = "mail"
    quota_attribute: str = "quotagateQuota"
    quota_unit: Size = 1
    messages_attribute: str = ""
    path_attribute: str = ""
    # An entry is enabled unless this attribute holds one of disabled_values (e.g. accountStatus).
    enabled_attribute: str = ""
    disabled_values: list[str] = ["disabled", "inactive", "FALSE", "0", "no"]
    timeout: int = Field(default=10, gt=0, description="seconds")

    def model_post_init(self, __context: Any) -> None:
        if self.password and self.password_file:
            raise ValueError("set password or password_file, not both")


class StoreConfig(_Section):
    url: str = "sqlite:////var/lib/quotagate/quotagate.db"
    # Where mailboxes and their limits live: quotagate's own table, or the admin's schema.
    schema_: Literal["quotagate", "postfixadmin", "classic"] = Field(default="quotagate", alias="schema")
    columns: ColumnsConfig = ColumnsConfig()
    ldap: LdapConfig = LdapConfig()
    # Where an LDAP store keeps quotagate's own readings (per-folder usage, scan history).
    state: str = "sqlite:////var/lib/quotagate/state.db"

    def model_post_init(self, __context: Any) -> None:
        if self.schema_ == "quotagate" and self.columns.model_fields_set:
            raise ValueError("columns apply to an admin's schema: set schema = 'postfixadmin' or 'classic'")


class AccountingOptions(_Section):
    """The real program's build- or config-time switches an accounting profile follows."""

    # courier: Courier built with TRASHQUOTA counts Trash and T-flagged mail (Debian's does not).
    trash_quota: bool = False
    # exim: appendfile's quota_is_inclusive; false = full only when usage is past the limit.
    quota_is_inclusive: bool = True
    # exim: appendfile's quota_size_regex (e.g. ",S=(\d+)"); "" = every file is stat'ed.
    quota_size_regex: str = ""
    # The grace a decision allows when [policy] grace is not set: the profile's own by default
    # (Dovecot's quota_grace, 10%; none for the others).
    grace: Grace | None = None

    @field_validator("quota_size_regex")
    @classmethod
    def _regex(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if pattern and compiled.groups < 1:
            raise ValueError("needs a capture group for the size, as Exim's does")
        return pattern


# Which options each profile takes (see quotagate.accounting); grace applies to every profile.
_PROFILE_OPTIONS = {
    "files": {"grace"},
    "dovecot": {"grace"},
    "dovecot-count": {"grace"},
    "courier": {"trash_quota", "grace"},
    "exim": {"quota_is_inclusive", "quota_size_regex", "grace"},
}


class SpoolConfig(_Section):
    root: Path = Path("/var/mail/vhosts")
    layout: str = "{domain}/{local}/Maildir"
    format: Literal["maildir", "mbox", "auto"] = "auto"
    # A mailbox directory that is not a Maildir itself but holds one in this subdirectory is
    # measured there (PostfixAdmin's maildir column names the user's home, Dovecot keeps the
    # Maildir in ~/Maildir), in format "auto" and "maildir"; "" turns it off.
    maildir_subdir: str = "Maildir"
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

    def model_post_init(self, __context: Any) -> None:
        relative = [str(p) for p in (self.root, *self.extra_roots) if not p.is_absolute()]
        if relative:
            raise ValueError(f"spool roots must be absolute paths: {', '.join(relative)}")
        try:
            self.layout.format(domain="d", local="l", address="l@d")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"layout may use only {{domain}}, {{local}} and {{address}}: {exc}") from exc
        options = self.accounting_options
        changed = {k for k in options.model_fields_set if getattr(options, k) != getattr(AccountingOptions(), k)}
        foreign = changed - _PROFILE_OPTIONS[self.accounting]
        if foreign:
            raise ValueError(f"accounting = {self.accounting!r} takes no option {', '.join(sorted(foreign))}")

    @field_validator("maildir_subdir")
    @classmethod
    def _subdir(cls, name: str) -> str:
        if name in (".", "..") or "/" in name or re.search(r"[\x00-\x1f\x7f]", name):
            raise ValueError(f"must be one directory name (or empty), not {name!r}")
        return name


class FolderRule(_Section):
    """A rule for folders whose name matches the glob ``match``: names as the IMAP server shows
    them, ``Archive.2024`` in Maildir++, ``Archive/2024`` under ``maildir_layout = "fs"``."""

    match: str
    exclude: bool = False
    quota: Size = 0
    messages: int = Field(default=0, ge=0)


class ScanConfig(_Section):
    workers: int = Field(default=0, ge=0, description="0 = one per CPU")
    threshold: Percent = Decimal(1)
    # A folder modified less than this many seconds before it was read is read again next time:
    # file systems keep coarse mtimes, so a change in the same tick would otherwise go unseen.
    racy_seconds: float = Field(default=2.0, ge=0)
    # flock'd by every scan (one-shot or --every) so that two never overlap; holds the holder's pid.
    # Unset: beside quotagate's SQLite file (the store's, or an LDAP store's state), else
    # /run/quotagate/scan.lock. See Config.scan_lock_file.
    lock_file: Path | None = None
    # A scan finding more than this share of the mailboxes it measured before gone (from the disk
    # or from the directory) is refused as an outage (see quotagate.outage); "100%" turns it off.
    max_vanished: Percent = Decimal("0.1")
    # Seconds one mailbox may take to measure; past it (a hung mount, a FIFO) it is unknown.
    mailbox_timeout: float = Field(default=300, gt=0)
    # A Prometheus textfile (node_exporter's textfile collector: name it *.prom) that each
    # successful scan rewrites with its finish time and duration; unset: none.
    metrics_file: Path | None = None


class PublishConfig(_Section):
    file: Path | None = None


# The placeholders each reply may hold (str.format fields), filled in by policy/replies.py.
REPLY_FIELDS = {"fit_reply": frozenset({"size", "limit"}), "messages_reply": frozenset({"limit"})}


class PolicyConfig(_Section):
    """The live policy daemon (``quotagate serve``)."""

    # "HOST:PORT" (IPv6 as "[::1]:PORT") or "unix:/path/to/socket".
    listen: list[Listen] = ["127.0.0.1:10032"]
    # One client (an IPv4 address, an IPv6 /64) holds at most this much room in one mailbox
    # before DATA (bytes, or a share of the mailbox's limit), and never less than one message.
    client_hold: Grace = Allowance(fraction=Decimal("0.1"))
    # Reservations kept at most; past it the oldest are let go (and counted).
    max_reservations: int = Field(default=1_000_000, ge=1)
    # Reservations survive restarts here; unset: beside quotagate's SQLite file (see
    # config.reservations_file).
    state_file: Path | None = None
    # Where `quotagate reservations` (and `check`) ask the running daemon; root only.
    control_socket: Path = Path("/run/quotagate/control.sock")
    socket_mode: str = "0660"
    socket_group: str = ""  # e.g. Debian-exim, so Exim may connect to the unix socket
    grace: Grace = Allowance()
    on_full: Literal["reject", "defer"] = "reject"
    reject_reply: str = "552 5.2.2 Mailbox is full"
    # A message that does not fit in a mailbox that is not full ({size}: its declared size).
    # 5.2.2, not 5.3.4: RFC 3463's X.3.4 is a limit of the whole system, not of one mailbox.
    fit_reply: str = "552 5.2.2 Message of {size} bytes does not fit in this mailbox"
    # A mailbox at its message count limit ({limit}: that limit).
    messages_reply: str = "552 5.2.2 Mailbox has reached its limit of {limit} messages"
    # With on_full = "defer", for a full mailbox; the other refusals keep their text with a 4xx code.
    defer_reply: str = "452 4.2.2 Mailbox is full"
    # For a client that already holds its share of a mailbox (client_hold) before DATA.
    busy_reply: str = "452 4.2.2 Too many messages in progress for this mailbox, try again later"
    # An accepted check with a known size holds that room for this long (or until fresher usage).
    reservation_seconds: float = Field(default=600, ge=0)
    # "local+folder@domain" is checked against that folder's rule; "" turns it off.
    folder_delimiter: str = "+"
    # Limits and stored usage are reloaded from the store this often.
    refresh_seconds: float = Field(default=30, gt=0)
    # Read a Maildir++ maildirsize at request time when the last scan found it agreeing.
    use_maildirsize: bool = True
    max_connections: int = Field(default=1000, ge=1)
    # Users whose processes on this host may ask over TCP (root and the users MTAs run as): another
    # local user could otherwise name any client_address and hold every mailbox's room. Names this
    # host does not have are ignored; [] serves every local user. Other hosts are not concerned.
    local_users: list[str] = ["root", "Debian-exim", "exim", "mail", "mailnull", "postfix", "_postfix"]
    # Seconds a connection may sit between requests. Postfix keeps a policy connection up to
    # smtpd_policy_service_max_idle (300s, as postfix-config prints it): closing it sooner only
    # makes Postfix log an error and reconnect.
    idle_timeout: float = Field(default=310, gt=0)
    # Seconds from the first byte of a request to its end, whatever the byte rate: a client
    # sending a byte a second must not hold a connection slot forever.
    request_timeout: float = Field(default=10, gt=0)
    # Usage older than this (seconds since the last scan, watch cycle or maildirsize read that
    # covered the mailbox) is not believed: the store is down, watch dead or scans failing. DUNNO.
    max_usage_age: float = Field(default=900, gt=0)
    # Seconds a maildirsize read (in the reader process) may take before the request gets DUNNO:
    # a FIFO or a dead NFS mount must not hold an answer.
    file_timeout: float = Field(default=0.5, gt=0)
    drain_seconds: float = Field(default=5, ge=0)
    # Prometheus metrics on "HOST:PORT"; "" turns them off.
    metrics: MetricsListen = "127.0.0.1:9762"
    # Processes answering on the same sockets (serve --workers); more than one needs [shared] url,
    # where they keep the reservations they all weigh.
    workers: int = Field(default=1, ge=1, le=64)

    @field_validator("reject_reply", "fit_reply", "messages_reply", "defer_reply", "busy_reply")
    @classmethod
    def _reply(cls, reply: str, info: ValidationInfo) -> str:
        code = "4" if info.field_name in ("defer_reply", "busy_reply") else "5"
        if not re.fullmatch(rf"{code}\d\d [^\r\n]*", reply):
            raise ValueError(f"{reply!r} must start with a {code}xx code and be one line")
        allowed = REPLY_FIELDS.get(str(info.field_name))
        if allowed is None:
            return reply  # used as it is
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(reply) if name is not None}
        except ValueError as exc:
            raise ValueError(f"{reply!r}: {exc} (write {{{{ and }}}} for a brace)") from None
        if fields - allowed:
            known = ", ".join(f"{{{name}}}" for name in sorted(allowed))
            raise ValueError(
                f"{reply!r} has {', '.join(sorted(fields - allowed))!r}: the placeholders here are {known}"
            )
        return reply

    @field_validator("socket_mode")
    @classmethod
    def _mode(cls, mode: str) -> str:
        try:
            int(mode, 8)
        except ValueError:
            raise ValueError(f"{mode!r} is not an octal mode such as 0660") from None
        return mode


class WatchConfig(_Section):
    """Freshness between scans: ``quotagate watch``, or inside ``quotagate serve`` when enabled."""

    enabled: bool = False  # inside quotagate serve
    # auto: inotify when the watches fit under fs.inotify.max_user_watches, else polling.
    mode: Literal["auto", "inotify", "poll"] = "auto"
    # Events are gathered this long, then published in one batch.
    flush_seconds: float = Field(default=0.2, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    # A light incremental scan corrects any drift this often.
    rescan_seconds: float = Field(default=3600, gt=0)
    # How often ``quotagate watch`` looks for mailboxes added to or removed from the directory
    # (inside serve, [policy] refresh_seconds does it).
    directory_seconds: float = Field(default=30, gt=0)


class SharedConfig(_Section):
    """State shared between daemons and hosts (reservations, live usage), in Redis. Unset: each
    ``quotagate serve`` keeps its own, in-process, and Redis is never needed."""

    # "redis://HOST:PORT/DB", "rediss://..." (TLS) or "redis+sentinel://HOST:PORT,HOST:PORT/SERVICE".
    url: str | None = None
    # This host's name in the keys of its SMTP transactions: Postfix's instance is unique per
    # host only. "" = the host name.
    node: str = ""
    # Seconds one Redis call may take before the daemon decides alone (fail open to its own state).
    timeout: float = Field(default=0.5, gt=0)
    # While Redis cannot be reached, it is tried again this often.
    retry_seconds: float = Field(default=1.0, gt=0)
    # Prefix of every key quotagate writes (several sites may share one Redis).
    prefix: str = "quotagate"

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None:
            parse_shared_url(url)
        return url

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", prefix):
            raise ValueError(f"{prefix!r}: letters, digits and _ . : - only")
        return prefix

    @property
    def parsed(self) -> SharedUrl | None:
        return None if self.url is None else parse_shared_url(self.url)


class HistoryConfig(_Section):
    """Usage over time, for forecasts, warnings and the HTML report's charts."""

    # Every scan and watch batch records the usage of the mailboxes that changed.
    enabled: bool = True
    # Every sample is kept this many days, then the last of each hour ...
    raw_days: float = Field(default=2, gt=0)
    # ... up to this many days, then the last of each day ...
    hourly_days: float = Field(default=30, gt=0)
    # ... up to this many days, then none.
    daily_days: float = Field(default=730, gt=0)
    # The watch records a changing mailbox at most once in this many seconds.
    interval: float = Field(default=300, ge=0)
    # A forecast reads the history of this many days.
    forecast_days: float = Field(default=14, gt=0)

    def model_post_init(self, __context: Any) -> None:
        if not self.raw_days <= self.hourly_days <= self.daily_days:
            raise ValueError("raw_days <= hourly_days <= daily_days, please")

    @property
    def retention(self) -> Retention:
        return Retention(self.raw_days, self.hourly_days, self.daily_days)


class WarnConfig(_Section):
    """``quotagate warn``: mail to users past a threshold or forecast to fill soon."""

    # Each is sent once when usage (bytes or messages, whichever is fuller) rises past it.
    thresholds: list[Percent] = [Decimal("0.8"), Decimal("0.9"), Decimal("0.95")]
    # A threshold is re-armed once usage drops this far below it.
    rearm: Percent = Decimal("0.05")
    # "Will be full within N days" is sent when the forecast says so; 0 turns it off.
    full_within_days: float = Field(default=7, ge=0)
    # The SMTP server the warnings go through, "HOST:PORT": one that delivers to full mailboxes
    # (see the README: a port without the quota check).
    smtp: str = "localhost:25"
    # The From: and envelope sender of the warnings.
    sender: str = "postmaster@localhost"
    # Seconds the SMTP conversation may take.
    timeout: float = Field(default=30, gt=0)
    # A directory with threshold.txt and filling.txt overriding the built-in templates.
    template_dir: Path | None = None
    # A Prometheus textfile (name it *.prom) that each warn run (not --dry-run) rewrites with the
    # mailboxes past each threshold and those forecast full within 1, 7 and 30 days; unset: none.
    metrics_file: Path | None = None

    @field_validator("smtp")
    @classmethod
    def _smtp(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not HOST:PORT")
        return value

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if "@" not in value or re.search(r"[\x00-\x20<>,;\x7f]", value):
            raise ValueError(f"{value!r} is not one plain address")
        return value


class Config(_Section):
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


def _sqlite_file(url: str) -> Path | None:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url in (prefix, prefix + ":memory:"):
        return None
    return Path(url[len(prefix) :].partition("?")[0])


def scan_lock_file(config: Config) -> Path:
    """Where scans take their lock: the configured file, or one beside the store that scans share.

    Two scans of the same store must exclude each other whoever runs them (a timer, a loop, an
    admin, ``quotagate demo``), and a lock beside the SQLite file needs no privileges.
    """
    if config.scan.lock_file is not None:
        return config.scan.lock_file
    url = config.store.state if config.store.url.startswith("ldap") else config.store.url
    db = _sqlite_file(url)
    return db.with_name(db.name + ".scan-lock") if db is not None else Path("/run/quotagate/scan.lock")


def reservations_file(config: Config) -> Path:
    """Where the daemon keeps its reservations across restarts: the configured file, or one
    beside quotagate's SQLite file, else /var/lib/quotagate/reservations.json."""
    if config.policy.state_file is not None:
        return config.policy.state_file
    url = config.store.state if config.store.url.startswith("ldap") else config.store.url
    db = _sqlite_file(url)
    return db.with_name(db.name + ".reservations.json") if db is not None else Path(_STATE_DIR, "reservations.json")


def parse_config(data: dict[str, Any], origin: str = "config") -> Config:
    """Validate a config mapping; errors name the key (``spool.format``) and the reason."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            reason = err["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {reason}")
        raise ConfigError(f"{origin}: " + "; ".join(problems)) from None


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
