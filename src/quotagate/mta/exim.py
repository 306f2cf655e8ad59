"""Exim configuration for the daemon-less check: a router or an ACL statement per published copy.

Every value Exim interpolates into a query passes through the quote operator of its lookup type;
names and paths that come from quotagate's config are checked instead, since Exim cannot quote them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit

from sqlalchemy.engine import make_url

from quotagate.config import Config
from quotagate.listen import parse_place
from quotagate.store.presets import MailboxTable, mailbox_table
from quotagate.store.schema import usage

Method = Literal["router", "acl", "policy"]
Lookup = Literal["sqlite", "mysql", "pgsql", "ldap", "lsearch"]
Section = Literal["main", "routers", "acl", "transports"]
OnStoreError = Literal["accept", "defer"]

ACL_MESSAGE = "552 5.2.2 Mailbox is full"
STORE_ERROR_MESSAGE = "451 4.3.0 Mailbox quota cannot be checked, try again later"
# Set by a warn statement from the lookup: "yes", "no", or "unknown" when the lookup deferred.
VARIABLE = "acl_m_quotagate"
CHECK_ACL = "quotagate_overquota"
LOG_FAILED = "quotagate: cannot tell whether $local_part@$domain is over quota (lookup failed)"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCHEME_LOOKUP: dict[str, Lookup] = {"sqlite": "sqlite", "mysql": "mysql", "mariadb": "mysql", "postgresql": "pgsql"}
_SAFE_PATH = re.compile(r"/[^\s{}$\\:\"']+")


class EximConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Parts:
    main: str
    routers: str
    acl: str  # statements for acl_smtp_rcpt
    transports: str = ""
    acls: str = ""  # ACLs of their own, defined in the acl section


def default_lookup(config: Config) -> Lookup:
    scheme = config.store.url.partition(":")[0].partition("+")[0].lower()
    if scheme in _SCHEME_LOOKUP:
        return _SCHEME_LOOKUP[scheme]
    if scheme in ("ldap", "ldaps"):
        return "ldap"
    raise EximConfigError(f"no Exim lookup for store {scheme!r}: choose one with --lookup")


def _ident(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise EximConfigError(f"table or column name {name!r} is not a plain SQL identifier")
    return name


def _path(path: str, what: str, forbidden: str = "") -> str:
    """A path Exim reads verbatim: no character that its expansion or option syntax would take."""
    if not _SAFE_PATH.fullmatch(path) or any(c in path for c in forbidden):
        also = f" or any of {forbidden!r}" if forbidden else ""
        raise EximConfigError(f"{what} {path!r} must be absolute, without spaces, braces, quotes, colons{also}")
    return path


def _literal(lookup: str, value: str) -> str:
    """An SQL string literal holding an expanded Exim value, whatever the server's string mode.

    - sqlite: ``quote_sqlite`` doubles single quotes, which is all SQLite needs.
    - pgsql: ``quote_pgsql`` escapes ``"`` and ``\\`` with backslashes, which PostgreSQL reads as
      escapes only in an ``E'...'`` literal (standard_conforming_strings is on by default).
    - mysql: ``quote_mysql`` relies on backslash escapes, which a server in NO_BACKSLASH_ESCAPES
      (or ANSI) mode reads literally: a quote could then end the literal. The value travels as
      base64 instead, which no quoting mode can misread (still passed through ``quote_mysql``,
      which leaves base64 as it is, so Exim knows the tainted value was quoted).
    The comparison is byte-exact: MySQL's default collations would take ``fúll`` for ``full``
    and refuse to compare a ``utf8mb4_unicode_ci`` column with a ``utf8mb4_general_ci`` value
    ("Illegal mix of collations"), so the literal carries ``COLLATE utf8mb4_bin``.
    """
    if lookup == "sqlite":
        return f"'${{quote_sqlite:{value}}}'"
    if lookup == "pgsql":
        return f"E'${{quote_pgsql:{value}}}'"
    return f"CONVERT(FROM_BASE64('${{quote_mysql:${{str2b64:{value}}}}}') USING utf8mb4) COLLATE utf8mb4_bin"


def _sql_condition(table: MailboxTable, lookup: str) -> str:
    """``SELECT 1 ... WHERE <recipient> AND <flag> = '1'`` with every interpolated value quoted."""

    def q(value: str) -> str:
        return _literal(lookup, value)

    if table.own:
        where = f"{_ident('address')} = {q('${lc:$local_part@$domain}')}"
        name, flag = usage.name, "over_quota"
    else:
        if not table.overquota:
            raise EximConfigError(f"schema has no over-quota flag column for table {table.table!r}")
        if table.address:
            where = f"{_ident(table.address)} = {q('${lc:$local_part@$domain}')}"
        else:
            local = f"{_ident(table.local_part)} = {q('${lc:$local_part}')}"
            where = f"{local} AND {_ident(table.domain)} = {q('${lc:$domain}')}"
        name, flag = table.table, table.overquota
    # '1' rather than 1 or TRUE: it compares equal to an integer, a tinyint and a boolean column alike.
    return f"SELECT 1 FROM {_ident(name)} WHERE {where} AND {_ident(flag)} = '1'"


def _servers(url: str, lookup: Lookup) -> str:
    u = make_url(url)
    host = u.host or "localhost"
    port = f"::{u.port}" if u.port else ""
    password = "PASSWORD" if u.password else ""
    grant = (
        f"GRANT SELECT ON {u.database}.* TO 'exim'@'localhost'"
        if lookup == "mysql"
        else f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO exim  -- in database {u.database}"
    )
    return (
        f"# The {lookup} server quotagate's store lives on. Better: a read-only user for Exim\n"
        f"# ({grant}) in place of quotagate's own, and its real password in place of PASSWORD. The\n"
        "# line is hidden from exim -bP; keep the file unreadable to others (Debian: CFILEMODE=640).\n"
        f"hide {lookup}_servers = {host}{port}/{u.database or ''}/{u.username or ''}/{password}\n"
    )


def _sqlite_file(url: str) -> str:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database:
        raise EximConfigError("--lookup sqlite needs an SQLite store file")
    # "sqlite,file=PATH": Exim splits lookup options at commas.
    return _path(u.database, "SQLite file", forbidden=",")


# Characters left as they are in the admin's base DN and filter when they go into an LDAP URL;
# everything else is percent-encoded, which also keeps Exim's expansion characters out.
_URL_SAFE = "=,()&|!*:@-._~"


def _ldap(config: Config) -> tuple[str, str]:
    """``ldap_default_servers`` and a condition that finds the recipient's entry with the flag set."""
    scheme = config.store.url.partition(":")[0].lower()
    if scheme not in ("ldap", "ldaps"):
        raise EximConfigError(f"--lookup ldap needs an LDAP store, not {scheme}")
    c = config.store.ldap
    where = urlsplit(config.store.url)
    port = where.port or (636 if scheme == "ldaps" else 389)
    main = (
        "# The LDAP server quotagate publishes to. Exim binds anonymously: the entries' mail and\n"
        "# quotagateOverQuota attributes must be readable so (or add user=... pass=... to the lookup).\n"
        f"ldap_default_servers = {where.hostname or 'localhost'}::{port}\n"
    )
    attr = _ident(c.address_attribute)
    recipient = f"({attr}=${{quote_ldap:${{lc:$local_part@$domain}}}})"
    ldap_filter = f"(&{quote(c.filter, safe=_URL_SAFE)}{recipient}(quotagateOverQuota=TRUE))"
    url = f"{scheme}:///{quote(c.base, safe=_URL_SAFE)}?{attr}?{c.scope}?{ldap_filter}"
    return main, f"${{lookup ldap{{{url}}}{{yes}}{{no}}}}"


def _policy_socket(config: Config) -> str:
    """Where Exim's readsocket finds the daemon: its first [policy] listen address."""
    if not config.policy.listen:
        raise EximConfigError("--method policy needs a [policy] listen address")
    where = parse_place(config.policy.listen[0])
    if isinstance(where, str):
        return _path(where, "policy socket")
    host = f"[{where[0]}]" if ":" in where[0] else where[0]
    return f"inet:{host}:{where[1]}"


TRANSACTION = "acl_c_quotagate_tx"
END_REQUEST = "quotagate_end"


def policy_parts(config: Config) -> Parts:
    """The ACLs (and a router variant) asking ``quotagate serve`` at RCPT time, and telling it
    when an SMTP transaction ends, so that the room it holds belongs to that transaction.

    The RCPT request carries ``$message_size`` (the SIZE= the client declared, -1 when none) so
    the check is inclusive, and the transaction: ``acl_m`` variables are reset at MAIL, RSET,
    HELO and after each message, so the id lives in an ``acl_c`` variable set at each MAIL. The
    DATA ACL's last statement says the message was accepted (its room stays held, now in flight,
    until the delivery is seen); the next MAIL, QUIT or a lost connection end a transaction
    without data (its room is released at once). A daemon that is down or slow yields
    ``action=DUNNO`` (readsocket's fifth argument): Exim then accepts as it would without
    quotagate, and the transport's own quota still guards delivery.
    """
    socket = _policy_socket(config)
    # No line break may reach the request: it would add attributes of the sender's choosing.
    recipient = r"${sg{$local_part@$domain}{\N[\r\n]\N}{}}"
    transaction = rf"instance=${TRANSACTION}\nclient_address=$sender_host_address\n"
    request = (
        r"request=smtpd_access_policy\nprotocol_state=RCPT\n"
        rf"recipient={recipient}\nsize=$message_size\n{transaction}\n"
    )
    ask = f"${{readsocket{{{socket}}}{{{request}}}{{2s}}{{ }}{{action=DUNNO}}}}"

    def tell(what: str) -> str:
        return f"  set acl_c_quotagate_told = ${{readsocket{{{socket}}}{{{what}{transaction}\\n}}{{2s}}{{ }}{{}}}}\n"

    ended = tell(rf"request={END_REQUEST}\n")
    accepted = tell(r"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nsize=$message_size\n")
    defined = f"  condition = ${{if def:{TRANSACTION}}}\n"
    main = (
        "# The ACLs that tell the daemon when an SMTP transaction ends. If your configuration\n"
        "# already sets one of these, do not set it twice (that is a fatal error): call ours from\n"
        "# yours instead, with 'warn acl = quotagate_mail' first in your MAIL ACL, 'warn acl =\n"
        "# quotagate_data' as the last statement before the accept of your DATA ACL, and 'warn acl\n"
        "# = quotagate_end' in your QUIT and not-QUIT ACLs.\n"
        "acl_smtp_mail = quotagate_mail\n"
        "acl_smtp_data = quotagate_data\n"
        "acl_smtp_quit = quotagate_end\n"
        "acl_smtp_notquit = quotagate_end\n"
    )
    acls = (
        "# In the acl section (after 'begin acl'): the transaction quotagate's room belongs to.\n"
        "quotagate_mail:\n"
        f"  warn\n  {defined}  {ended}"
        f"  warn\n    set {TRANSACTION} = $pid.$tod_epoch_l\n"
        "  accept\n"
        "quotagate_data:\n"
        f"  warn\n  {accepted}"
        "  accept\n"
        "quotagate_end:\n"
        f"  warn\n  {defined}  {ended}"
        "  accept\n"
    )
    acl = (
        "# In acl_smtp_rcpt, after the statements that accept or deny relaying and before the\n"
        "# one that accepts mail for local domains. Use this or the router below, not both: each\n"
        "# check that accepts holds room for the message in the daemon.\n"
        f"warn\n  set acl_m_quotagate = {ask}\n"
        "deny\n"
        r"  condition = ${if match{$acl_m_quotagate}{\N^action=5\d\d\s\N}}" + "\n"
        r"  message = ${sg{$acl_m_quotagate}{\N^action=|\s+$\N}{}}" + "\n"
        "defer\n"
        r"  condition = ${if match{$acl_m_quotagate}{\N^action=4\d\d\s\N}}" + "\n"
        r"  message = ${sg{$acl_m_quotagate}{\N^action=|\s+$\N}{}}" + "\n"
    )
    full = (
        f":defer: {config.policy.defer_reply}"
        if config.policy.on_full == "defer"
        else f":fail: {config.policy.reject_reply}"
    )
    router = (
        "# The router variant: placed after the alias routers and before the mailbox router, it\n"
        "# asks the daemon about the mailbox an alias resolves to, while Exim verifies the\n"
        "# recipient (verify = recipient in acl_smtp_rcpt).\n"
        "quotagate_policy:\n"
        "  driver = redirect\n"
        "  verify_only\n"
        rf"  condition = ${{if match{{{ask}}}{{\N^action=[45]\d\d\s\N}}}}" + "\n"
        "  allow_fail\n"
        "  allow_defer\n"
        f"  data = {full}\n"
    )
    told = f"${{readsocket{{{socket}}}{{request=quotagate_delivery\\nrecipient={recipient}\\n\\n}}{{1s}}{{ }}{{}}}}"
    hint = (
        "# Optional, in the transport that delivers to mailboxes: tells the daemon of each local\n"
        "# delivery at once, for spools it cannot watch (NFS), and releases the room held for it.\n"
        f"event_action = ${{if eq{{$event_name}}{{msg:delivery}}{{{told}}}}}\n"
    )
    return Parts(main, router, acl, hint, acls)


def parts(
    config: Config, method: Method, lookup: Lookup | None = None, on_store_error: OnStoreError = "accept"
) -> Parts:
    """The main-section settings, the router and the ACL statement for one method and lookup."""
    if method == "policy":
        return policy_parts(config)
    lookup = lookup or default_lookup(config)
    table = mailbox_table(config.store.schema_, config.store.columns.model_dump(exclude_none=True))
    main = ""
    guard = ""
    if lookup == "lsearch":
        if config.publish.file is None:
            raise EximConfigError("--lookup lsearch needs [publish] file in the config")
        file = _path(str(config.publish.file), "[publish] file")
        condition = f"${{lookup{{${{lc:$local_part@$domain}}}}lsearch{{{file}}}{{yes}}{{no}}}}"
        guard = file
    elif lookup == "sqlite":
        file = _sqlite_file(config.store.url)
        query = _sql_condition(table, "sqlite")
        condition = f"${{lookup sqlite,file={file} {{{query}}}{{yes}}{{no}}}}"
        guard = file
    elif lookup in ("mysql", "pgsql"):
        scheme = make_url(config.store.url).get_backend_name()
        if _SCHEME_LOOKUP.get(scheme) != lookup:
            raise EximConfigError(f"--lookup {lookup} needs a {lookup} store, not {scheme}")
        main = _servers(config.store.url, lookup)
        query = _sql_condition(table, lookup)
        condition = f"${{lookup {lookup}{{{query}}}{{yes}}{{no}}}}"
    elif lookup == "ldap":
        main, condition = _ldap(config)
    else:  # pragma: no cover - the CLI offers only the lookups above
        raise EximConfigError(f"unknown lookup {lookup!r}")

    return _lookup_parts(main, condition, method, on_store_error, guard)


def _lookup_parts(main: str, lookup: str, method: Method, on_store_error: OnStoreError, guard: str) -> Parts:
    """The router or ACL statements around one lookup that yields ``yes`` or ``no``.

    A lookup that defers (the server is down, a query error) makes a router ``condition`` defer
    and a ``deny`` answer 451: every recipient would be refused for as long as quotagate's store
    cannot be asked. Only a ``warn`` statement skips a deferred ``set`` (and Exim logs why), so
    the lookup runs in one, after setting the variable to ``unknown`` (``acl_m`` variables keep
    their value from one RCPT to the next), and the decision is taken on the variable: accept
    and log when it stayed ``unknown``, or defer when the admin asks for that. A file lookup
    whose file is missing is an expansion error, not a deferral, so ``guard`` (the file) is
    checked first: the variable then stays ``unknown`` too.
    """
    unknown = f"${{if eq{{${VARIABLE}}}{{unknown}}}}"
    exists = f"  condition = ${{if exists{{{guard}}}}}\n" if guard else ""
    ask = f"warn\n  set {VARIABLE} = unknown\n{exists}  set {VARIABLE} = {lookup}\n"
    logged = f"warn\n  condition = {unknown}\n  log_message = {LOG_FAILED}: accepted\n"
    if method == "acl":
        if on_store_error == "defer":
            logged = (
                f"defer\n  condition = {unknown}\n  message = {STORE_ERROR_MESSAGE}\n  log_message = {LOG_FAILED}\n"
            )
        acl = (
            "# In acl_smtp_rcpt, before the statement that accepts mail for local domains.\n"
            + ask
            + f"deny\n  condition = ${{if eq{{${VARIABLE}}}{{yes}}}}\n  message = {ACL_MESSAGE}\n"
            + logged
        )
        return Parts(main, "", acl)
    # The router: an ACL called by its condition runs the lookup; a deferral in the ACL itself
    # would only make the condition false, so the router's data defers when asked to.
    if on_store_error == "defer":
        logged = f"warn\n  condition = {unknown}\n  log_message = {LOG_FAILED}\n"
        verdict = f"${{if eq{{${VARIABLE}}}{{no}}{{no}}{{yes}}}}"
        data = f"${{if eq{{${VARIABLE}}}{{unknown}}{{:defer: {STORE_ERROR_MESSAGE}}}{{:fail: {ACL_MESSAGE}}}}}"
        extra = "  allow_defer\n"
    else:
        verdict = f"${{if eq{{${VARIABLE}}}{{yes}}{{yes}}{{no}}}}"
        data = f":fail: {ACL_MESSAGE}"
        extra = ""
    named = "".join(f"  {line}\n" for line in (ask + logged).splitlines())
    acls = (
        f"# In the acl section (after 'begin acl'), for the router {CHECK_ACL}: it runs the lookup\n"
        "# so that a store that cannot be asked does not make the router defer every recipient.\n"
        f"{CHECK_ACL}:\n{named}  accept\n    message = {verdict}\n"
    )
    router = (
        "# Before the router that delivers to mailboxes. It runs only while Exim verifies a\n"
        "# recipient (verify = recipient in acl_smtp_rcpt), so a full mailbox is refused at RCPT.\n"
        "# The mailbox transport should say quota_is_inclusive = false (or the scan a threshold\n"
        "# below 100%): this check is exclusive, so a message that takes a mailbox just over its\n"
        "# limit is accepted here and must not then be deferred at delivery.\n"
        f"{CHECK_ACL}:\n"
        "  driver = redirect\n"
        "  verify_only\n"
        f"  condition = ${{acl{{{CHECK_ACL}}}}}\n"
        "  allow_fail\n"
        f"{extra}"
        f"  data = {data}\n"
    )
    return Parts(main, router, "", acls=acls)


def render(p: Parts, section: Section | None = None) -> str:
    """One section's text, or all of them, each under a comment naming its section."""
    header = "# Generated by quotagate exim-config.\n"
    acl = "\n".join(part for part in (p.acls, p.acl) if part)
    chosen = {"main": p.main, "routers": p.routers, "acl": acl, "transports": p.transports}
    if section is not None:
        return header + (chosen[section] or f"# nothing for the {section} section\n")
    blocks = [f"# ---- {name} section ----\n{text}" for name, text in chosen.items() if text]
    return header + "\n".join(blocks)
