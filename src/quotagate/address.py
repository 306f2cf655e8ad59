"""Recipient addresses as the directory keys them."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping

from quotagate.usage.names import ascii_lower

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_DOMAIN = re.compile(r"[\s/]")


class BadAddress(ValueError):
    pass


def normalize(address: str) -> str:
    """``Local@Example.ORG`` -> ``local@example.org``.

    Exim lowercases local parts unless ``caseful_local_part`` is set, and domains are
    case-insensitive, so the directory keys addresses in lower case. Only A-Z of the local part
    are lowered, as Exim and Postfix lower it: ``\u212aate`` (a Kelvin sign) is not ``kate``,
    which Python's lower() would make of it. The split is at the last
    ``@``: a quoted local part may hold one. One trailing dot of the domain goes, as Postfix's
    trivial-rewrite drops it (``user@example.org.`` is delivered to ``user@example.org``).
    """
    text = address.strip()
    local, at, domain = text.rpartition("@")
    if domain.endswith("."):
        domain = domain[:-1]
        text = f"{local}@{domain}"
    if not at or not local or not domain:
        raise BadAddress(f"not an address: {address!r} (expected local@domain)")
    if _CONTROL.search(text):
        raise BadAddress(f"not an address: {address!r} (control characters)")
    if _BAD_DOMAIN.search(domain):
        raise BadAddress(f"not an address: {address!r} (bad domain)")
    return f"{ascii_lower(local)}@{domain.lower()}"


def unrouted(address: str) -> str | None:
    """The address a routing spelling of the local part leads to, as Postfix's trivial-rewrite
    reads it with its defaults once it has stripped a domain of its own (``allow_percent_hack``
    and ``swap_bangpath``, on by default): ``user%domain@here`` and ``domain!user@here`` are
    delivered to ``user@domain``. None when the local part holds neither (a quoted one is not
    rewritten)."""
    local = address.strip().rpartition("@")[0]
    if local.startswith('"'):
        return None
    if "!" in local:
        site, _, user = local.partition("!")
        return f"{user}@{site}" if site and user else None
    if "%" in local:
        user, _, domain = local.rpartition("%")
        return f"{user}@{domain}" if user and domain else None
    return None


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


def details_by_base(addresses: Iterable[str], delimiters: str) -> dict[str, set[str]]:
    """Each mailbox whose name splits at a delimiter (``john-doe@``), under the mailbox it would
    be taken for (``john@``)."""
    if not delimiters:
        return {}
    # A delimiter with an "@" after it is in the local part: a search in C, before any Python.
    holds = re.compile(f"[{re.escape(delimiters)}][^@]*@").search
    found: dict[str, set[str]] = {}
    for a in addresses:
        if holds(a) and (split := without_detail(a, delimiters)):
            found.setdefault(split[0], set()).add(a)
    return found


def marked(details: Mapping[str, Collection[str]], over: Collection[str]) -> list[str]:
    """The mailboxes (not over quota) that a lookup would take for a full one's detail:
    ``john-doe@`` when ``john@`` is over quota. The published file marks them as mailboxes of
    their own. As long as the over-quota set, not the site."""
    return sorted(d for base in over for d in details.get(base, ()) if d not in over)


def shadowed(addresses: Iterable[str], over: Collection[str], delimiters: str) -> list[str]:
    """:func:`marked` of every mailbox in ``addresses``."""
    return marked(details_by_base(addresses, delimiters), over) if over else []


def dequoted(local: str) -> str:
    """A local part as its meaning has it (RFC 5321): quotes gone, a backslash's character
    kept. Exim's ``$local_part`` holds ``roomy`` for ``"room\\y"`` (lowered too), while its
    ``$recipients`` and the RCPT command keep what the client wrote."""
    if '"' not in local and "\\" not in local:
        return local
    out, escaped = [], False
    for ch in local:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch != '"':
            out.append(ch)
    return "".join(out)
