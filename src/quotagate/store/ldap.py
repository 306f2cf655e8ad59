"""The LDAP store: mailboxes from the admin's tree, the over-quota flag and usage published into it.

The directory and the published set live in LDAP; quotagate's own readings (per-folder usage,
stamps for incremental scans, scan history) live in a small SQL ``state`` database beside it,
since LDAP is no place for them. An entry is modified only where a value changed.

LDAP has no transaction across entries: a scan that fails half-way leaves some entries updated.
The SQL state is saved only after LDAP took every change, so the next scan rewrites the rest.

The directory is read whole or not at all: a search the server ends early (its size or time limit
for quotagate's account, which ldap3 reports as a result, not an error), or one that refers part
of the tree to another server (a continuation reference), raises :class:`StoreError`, since a scan
of part of the tree would clear the flags of the mailboxes it did not see.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import ldap3
import msgspec
from ldap3.core.exceptions import LDAPException, LDAPNoSuchObjectResult
from ldap3.core.results import RESULT_REFERRAL as _REFERRAL
from ldap3.core.results import RESULT_SIZE_LIMIT_EXCEEDED as _SIZE_LIMIT_EXCEEDED
from ldap3.core.results import RESULT_SUCCESS as _SUCCESS
from ldap3.core.results import RESULT_TIME_LIMIT_EXCEEDED as _TIME_LIMIT_EXCEEDED
from ldap3.utils.conv import escape_filter_chars

from quotagate.address import BadAddress, normalize
from quotagate.config import LdapConfig, StoreConfig
from quotagate.history import Retention, Sample
from quotagate.model import AliasDomains, Limits, Mailbox, Reading, ScanSummary, State
from quotagate.store import redacted
from quotagate.store.base import Changes, ClosedOnExit, Folders, StoreError
from quotagate.store.sql import SqlStore

log = logging.getLogger(__name__)

OBJECT_CLASS = "quotagateMailbox"
OVER = "quotagateOverQuota"
USED_BYTES = "quotagateUsedBytes"
USED_MESSAGES = "quotagateUsedMessages"
MEASURED_AT = "quotagateMeasuredAt"
_PUBLISHED = (OVER, USED_BYTES, USED_MESSAGES, MEASURED_AT)
_SCOPES: dict[str, Literal["BASE", "LEVEL", "SUBTREE"]] = {"base": "BASE", "one": "LEVEL", "sub": "SUBTREE"}
_PAGE_SIZE = 500  # entries a page: the simple paged results control (RFC 2696)
_PAGED_RESULTS = "1.2.840.113556.1.4.319"  # that control's OID, the key of its value in a result


@dataclass
class _Entry:
    """What the last search saw of a mailbox entry: enough to skip modifications that change nothing."""

    dn: str
    object_classes: set[str]
    published: dict[str, str] = field(default_factory=dict)


def bind_password(config: LdapConfig) -> str:
    """The password to bind with: ``password_file``'s content, or ``password``. A file that
    cannot be read is a StoreError naming the key."""
    if config.password_file is not None:
        try:
            return config.password_file.read_text().strip()
        except OSError as exc:
            raise StoreError(f"store.ldap.password_file: {exc.strerror}") from None
    return config.password


def _first(values: Any) -> str | None:
    if isinstance(values, list):
        return str(values[0]) if values else None
    return None if values is None else str(values)


class LdapStore(ClosedOnExit):
    def __init__(self, url: str, config: LdapConfig, state: SqlStore) -> None:
        self.url = url
        self.shown_url = redacted(url)  # for messages: a password in the URL is never shown
        self.config = config
        self.state = state
        self._conn: ldap3.Connection | None = None
        self._entries: dict[str, _Entry] = {}
        self._said_other_addresses: set[str] = set()  # entries whose other addresses were named once

    # -- connection --------------------------------------------------------------------------

    def _connection(self) -> ldap3.Connection:
        if self._conn is None:
            who = f"{self.shown_url} as {self.config.bind_dn or 'anonymous'}"
            try:
                server = ldap3.Server(self.url, connect_timeout=self.config.timeout)
            except LDAPException as exc:  # ldap3 takes no user or password in the URL
                raise StoreError(
                    f"cannot bind to {who}: {type(exc).__name__} (give ldap://host[:port] only; "
                    "the account goes in [store.ldap] bind_dn and password)"
                ) from exc
            conn = ldap3.Connection(
                server,
                self.config.bind_dn or None,
                bind_password(self.config) or None,
                receive_timeout=self.config.timeout,
                raise_exceptions=True,
                # A referral is refused, never followed: that would bind to another server with
                # this account's password, and act on a tree the admin did not name.
                auto_referrals=False,
            )
            try:
                conn.open()
                conn.bind()
            except LDAPException as exc:
                conn.unbind()  # closes the socket a failed bind leaves open
                raise StoreError(f"cannot bind to {who}: {exc}") from exc
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.unbind()
            self._conn = None
        self.state.close()

    # -- schema ------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        return self.state.migrate()

    def migration_sql(self) -> list[str]:
        return [
            "-- quotagate's LDAP attributes come from its schema: load it into slapd once with",
            "--   ldapadd -Y EXTERNAL -H ldapi:/// -f $(python3 -c 'import quotagate, os; "
            'print(os.path.join(os.path.dirname(quotagate.__file__), "data", "quotagate.ldif"))\')',
            *self.state.migration_sql(),
        ]

    # -- the directory -----------------------------------------------------------------------
    def upsert_mailboxes(self, mailboxes: Sequence[Mailbox]) -> None:
        raise StoreError("the directory is your LDAP tree: manage mailboxes there")

    def _attributes(self) -> list[str]:
        c = self.config
        names = [c.address_attribute, c.quota_attribute, c.messages_attribute, c.path_attribute]
        names += [c.enabled_attribute, "objectClass", *_PUBLISHED]
        return [n for n in names if n]

    def _entries_found(self, query: str) -> list[dict[str, Any]]:
        """Every entry the search finds, page by page, or a :class:`StoreError`: never part of them.

        A server ends a search early with a result code, not an exception: ldap3 raises none for
        sizeLimitExceeded or timeLimitExceeded, even with ``raise_exceptions``. OpenLDAP's defaults
        (500 entries for every account but the rootdn) cap a paged search too (``size.prtotal``
        defaults to the hard size limit), so a big directory comes back cut short unless the
        server lets quotagate's account read it all. A scan that believed such a listing would
        clear the flags of the mailboxes it never saw, so each page's result is checked."""
        c = self.config
        conn = self._connection()
        entries: list[dict[str, Any]] = []
        cookie: str | bytes | None = None
        while True:
            try:
                conn.search(
                    c.base,
                    query,
                    _SCOPES[c.scope],
                    attributes=self._attributes(),
                    paged_size=_PAGE_SIZE,
                    paged_cookie=cookie,
                )
            except LDAPException as exc:
                raise StoreError(f"LDAP search under {c.base!r} failed: {exc}") from exc
            result = conn.result
            response = conn.response or []
            entries += [item for item in response if item.get("type") == "searchResEntry"]
            if result.get("result") != _SUCCESS:
                raise StoreError(self._cut_short(result, len(entries)))
            referred = [str(uri) for item in response if item.get("type") == "searchResRef" for uri in item["uri"]]
            if referred:
                raise StoreError(
                    f"LDAP search under {c.base!r} refers part of the tree to another server "
                    f"({', '.join(referred[:3])}): quotagate reads the whole directory from the server "
                    "[store] url names and does not act on part of it; point base (or the filter) at "
                    "the entries that server holds, or the url at one that holds them all"
                )
            paged = (result.get("controls") or {}).get(_PAGED_RESULTS) or {}
            cookie = paged.get("value", {}).get("cookie") or None
            if cookie is None:
                return entries

    def _cut_short(self, result: Mapping[str, Any], seen: int) -> str:
        """Why a search came back incomplete, and what the admin can do about it."""
        account = self.config.bind_dn or "the anonymous account"
        code = result.get("result")
        if code == _SIZE_LIMIT_EXCEEDED:
            hint = (
                f"the server's size limit for {account} cut the listing short: let that account read "
                "every entry (OpenLDAP: an olcLimits rule for its DN with size=unlimited, or at least "
                "size.prtotal=unlimited for paged searches)"
            )
        elif code == _TIME_LIMIT_EXCEEDED:
            hint = (
                f"the server's time limit for {account} cut the listing short: raise it for that account "
                "(OpenLDAP: an olcLimits rule for its DN with time=unlimited) or index the filter's attributes"
            )
        elif code == _REFERRAL:
            where = ", ".join(str(uri) for uri in result.get("referrals") or []) or "another server"
            hint = f"base is held by {where}: point url at that server, or base at entries this one holds"
        else:
            hint = "the server did not complete the search"
        message = f": {result['message']}" if result.get("message") else ""
        return (
            f"LDAP search under {self.config.base!r} came back incomplete after {seen} entries "
            f"({result.get('description') or 'no result'}{message}); {hint}. "
            "quotagate does not act on part of the directory"
        )

    def _search(self, extra: str) -> list[Mailbox]:
        """The mailboxes the filter (and ``extra``) finds; a search of the whole directory (no
        ``extra``) also forgets the entries it no longer finds, whose flags are then no one's to
        write."""
        c = self.config
        query = f"(&{c.filter}{extra})" if extra else c.filter
        results = self._entries_found(query)
        if not extra:
            self._entries = {}
        found = []
        disabled = {v.lower() for v in c.disabled_values}
        for item in results:
            attrs = item["attributes"]
            listed = _first(attrs.get(c.address_attribute))
            if listed is None:
                continue
            self._other_addresses(item["dn"], attrs.get(c.address_attribute))
            try:
                address = normalize(listed)
            except BadAddress as exc:
                log.warning("skipping %s: %s", item["dn"], exc)
                continue
            quota = self._number(attrs, c.quota_attribute, item["dn"]) * c.quota_unit
            messages = self._number(attrs, c.messages_attribute, item["dn"])
            status = _first(attrs.get(c.enabled_attribute)) if c.enabled_attribute else None
            enabled = status is None or status.lower() not in disabled
            path = _first(attrs.get(c.path_attribute)) if c.path_attribute else None
            found.append(Mailbox(address, Limits(quota, messages), enabled, path or None))
            raw_values = item.get("raw_attributes", {})
            published = {a: raw_values[a][0].decode("utf-8", "replace") for a in _PUBLISHED if raw_values.get(a)}
            classes = {str(o).lower() for o in attrs.get("objectClass", [])}
            self._entries[address] = _Entry(item["dn"], classes, published)
        return found

    def _other_addresses(self, dn: str, values: Any) -> None:
        """An entry whose address attribute holds several values is the mailbox of the first:
        the others are not looked up by the daemon (DUNNO: the MTA carries on as without it),
        though Exim's generated LDAP lookup, matching any value, refuses them too. Said once
        an entry, not at every refresh."""
        if not isinstance(values, list) or len(values) < 2 or dn in self._said_other_addresses:
            return
        self._said_other_addresses.add(dn)
        others = ", ".join(str(v) for v in values[1:4]) + (", ..." if len(values) > 4 else "")
        log.warning(
            "%s: %s has %d values: the mailbox is %s; the daemon answers nothing for %s (give each"
            " address its own entry, or make them aliases in the MTA)",
            dn,
            self.config.address_attribute,
            len(values),
            values[0],
            others,
        )

    @staticmethod
    def _number(attrs: Mapping[str, Any], name: str, dn: str) -> int:
        if not name:
            return 0
        value = _first(attrs.get(name))
        if value is None:
            return 0
        try:
            return max(int(value), 0)
        except ValueError:
            log.warning("%s: %s is not a number: %r (taken as unlimited)", dn, name, value)
            return 0

    def mailboxes(self) -> list[Mailbox]:
        return sorted(self._search(""), key=lambda m: m.address)

    def mailbox(self, address: str) -> Mailbox | None:
        found = self._search(f"({self.config.address_attribute}={escape_filter_chars(address)})")
        return next((m for m in found if m.address == address), None)

    def domain_aliases(self) -> AliasDomains:
        return AliasDomains()  # quotagate's own schema has none: list each address

    # -- readings ----------------------------------------------------------------------------
    def readings(self, with_folders: bool = True) -> dict[str, Reading]:
        return self.state.readings(with_folders)

    def reading(self, address: str) -> Reading | None:
        return self.state.reading(address)

    def changes(self, since: int | None, with_readings: bool = True, with_folders: Folders = True) -> Changes:
        """The directory in full (LDAP has no change stamp quotagate could rely on); the readings,
        kept in the state store, as they changed."""
        mailboxes = self.mailboxes()
        state = self.state.changes(since, with_readings, with_folders)
        return msgspec.structs.replace(
            state, mailboxes_full=True, mailboxes=mailboxes, removed_mailboxes=[], mailbox_count=len(mailboxes)
        )

    def save_readings(
        self, changed: Sequence[Reading], removed: Collection[str], flags: Mapping[str, bool] | None = None
    ) -> None:
        self._publish(changed, flags or {})
        self.state.save_readings(changed, removed)

    def _publish(self, changed: Sequence[Reading], flags: Mapping[str, bool]) -> None:
        if not self._entries and (changed or flags):
            self._search("")
        wanted: dict[str, dict[str, str]] = {}
        for r in changed:
            if r.state is not State.UNKNOWN:
                stamp = time.strftime("%Y%m%d%H%M%SZ", time.gmtime(r.measured_at))
                wanted.setdefault(r.address, {}).update(
                    {USED_BYTES: str(r.bytes), USED_MESSAGES: str(r.messages), MEASURED_AT: stamp}
                )
        for address, over in flags.items():
            wanted.setdefault(address, {})[OVER] = "TRUE" if over else "FALSE"
        conn = self._connection()
        for address, values in sorted(wanted.items()):
            entry = self._entries.get(address)
            if entry is None:
                continue  # gone from the tree since it was listed
            changes: dict[str, Any] = {
                name: [(ldap3.MODIFY_REPLACE, [value])]
                for name, value in values.items()
                if entry.published.get(name) != value
            }
            if not changes:
                continue
            if OBJECT_CLASS.lower() not in entry.object_classes:
                changes["objectClass"] = [(ldap3.MODIFY_ADD, [OBJECT_CLASS])]
            try:
                conn.modify(entry.dn, changes)  # type: ignore[no-untyped-call]
            except LDAPNoSuchObjectResult:
                # Deleted since the listing: nothing to flag, and no reason to fail the others.
                log.info("%s is gone from the tree: nothing published for %s", entry.dn, address)
                del self._entries[address]
                continue
            except LDAPException as exc:
                raise StoreError(f"cannot publish to {entry.dn}: {exc}") from exc
            entry.object_classes.add(OBJECT_CLASS.lower())
            entry.published.update(values)

    def record_scan(self, summary: ScanSummary) -> None:
        self.state.record_scan(summary)

    def last_scan(self) -> ScanSummary | None:
        return self.state.last_scan()

    # History and the warnings ledger are quotagate's own state: in the SQL state database.
    def record_history(self, samples: Sequence[Sample]) -> None:
        self.state.record_history(samples)

    def history(self, since: float, addresses: Collection[str] | None = None) -> dict[str, list[Sample]]:
        return self.state.history(since, addresses)

    def prune_history(self, now: float, retention: Retention) -> int:
        return self.state.prune_history(now, retention)

    def sent_warnings(self) -> dict[str, set[str]]:
        return self.state.sent_warnings()

    def claim_warning(self, address: str, notice: str, at: float) -> bool:
        return self.state.claim_warning(address, notice, at)

    def release_warnings(self, address: str, notices: Collection[str]) -> None:
        self.state.release_warnings(address, notices)


def from_config(config: StoreConfig) -> LdapStore:
    if not config.ldap.base:
        raise StoreError("store.ldap.base: an LDAP store needs the base of the mailbox entries")
    return LdapStore(config.url, config.ldap, SqlStore(config.state))
