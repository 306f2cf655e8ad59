"""Where the directory lives in SQL: quotagate's own table or the admin's schema (PostfixAdmin, classic)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from quotagate.store import schema


@dataclass(frozen=True)
class MailboxTable:
    """Names of the admin's mailbox table and columns; empty means "the schema has none"."""

    table: str
    address: str = ""  # the full address, or:
    local_part: str = ""
    domain: str = ""
    quota: str = ""
    quota_unit: int = 1  # bytes per unit of the quota column (1048576 when it holds MB)
    messages: str = ""
    enabled: str = ""
    path: str = ""
    overquota: str = ""  # the over-quota flag quotagate writes and Exim reads
    usage_table: str = ""  # Dovecot dict-quota style table (username, bytes, messages) quotagate fills
    # PostfixAdmin's alias domains (alias_domain -> target_domain, active): user@alias is user@target,
    # unless the alias table (address, goto, domain, active) has a row of its own for it.
    alias_domain_table: str = ""
    alias_table: str = ""

    @property
    def own(self) -> bool:
        return self.table == schema.mailbox.name


PRESETS: dict[str, MailboxTable] = {
    "quotagate": MailboxTable(
        table=schema.mailbox.name,
        address="address",
        quota="quota_bytes",
        messages="quota_messages",
        enabled="enabled",
        path="path",
    ),
    # PostfixAdmin's `mailbox`; usage goes to `quota2` as Dovecot's dict quota keeps it.
    "postfixadmin": MailboxTable(
        table="mailbox",
        address="username",
        local_part="local_part",
        domain="domain",
        quota="quota",
        enabled="active",
        path="maildir",
        overquota="quotagate_overquota",
        usage_table="quota2",
        alias_domain_table="alias_domain",
        alias_table="alias",
    ),
    # The classic recipe: username is the local part, with domainname beside it.
    "classic": MailboxTable(
        table="mailbox",
        local_part="username",
        domain="domainname",
        quota="quota",
        enabled="enabled",
        overquota="overquota",
    ),
}


def mailbox_table(preset: str, overrides: dict[str, Any]) -> MailboxTable:
    return replace(PRESETS[preset], **overrides)
