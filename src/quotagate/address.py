"""Recipient addresses as the directory keys them."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_DOMAIN = re.compile(r"[\s/]")


class BadAddress(ValueError):
    pass


def normalize(address: str) -> str:
    """``Local@Example.ORG`` -> ``local@example.org``.

    Exim lowercases local parts unless ``caseful_local_part`` is set, and domains are
    case-insensitive, so the directory keys addresses in lower case. The split is at the last
    ``@``: a quoted local part may hold one.
    """
    text = address.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise BadAddress(f"not an address: {address!r} (expected local@domain)")
    if _CONTROL.search(text):
        raise BadAddress(f"not an address: {address!r} (control characters)")
    if _BAD_DOMAIN.search(domain):
        raise BadAddress(f"not an address: {address!r} (bad domain)")
    return text.lower()


def without_detail(address: str, delimiters: str) -> tuple[str, str] | None:
    """``user+tag@domain`` -> ``("user@domain", "tag")``; None when the local part holds none of
    ``delimiters`` (each character is one, as Postfix's ``recipient_delimiter`` and Dovecot's
    take them) or nothing before it. Split at the first, as Exim's ``local_part_suffix = +*``,
    Postfix and Dovecot split."""
    local, at, domain = address.strip().rpartition("@")
    cut = next((i for i, c in enumerate(local) if c in delimiters), -1) if delimiters else -1
    if not at or cut <= 0:
        return None
    return f"{local[:cut]}@{domain}", local[cut + 1 :]


def shadowed(addresses: Iterable[str], over: Collection[str], delimiters: str) -> list[str]:
    """The mailboxes (not over quota) whose own name a lookup would split at a delimiter and
    take for a full one's detail: ``john-doe@`` when ``john@`` is over quota and ``-`` parts a
    detail. The published file marks them as mailboxes of their own."""
    if not delimiters or not over:
        return []
    holds = re.compile(f"[{re.escape(delimiters)}]").search  # in C: a million addresses in a blink
    found = []
    for a in addresses:
        if holds(a) and a not in over and (split := without_detail(a, delimiters)) and split[0] in over:
            found.append(a)
    return sorted(found)
