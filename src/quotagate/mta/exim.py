"""Exim configuration for the daemon-less check: a router or an ACL statement per published copy.

Every value Exim interpolates into a query passes through the quote operator of its lookup type;
names and paths that come from quotagate's config are checked instead, since Exim cannot quote them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import quote, urlsplit

from sqlalchemy.engine import make_url

from quotagate.config import Config
from quotagate.listen import parse_place
from quotagate.store.presets import MailboxTable, mailbox_table
from quotagate.store.schema import mailbox, usage

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


def exim_text(text: str) -> str:
    """Text Exim expands (a ``message =``, a router's ``:fail:``) that must come out as written:
    a reply from the config may hold ``$``, ``\\`` or braces."""
    return re.sub(r"([$\\{}])", r"\\\1", text)


def full_reply(config: Config) -> str:
    """The refusal of a full mailbox, [policy] reject_reply, ready for Exim."""
    return exim_text(config.policy.reject_reply)


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


def _sql_where(table: MailboxTable, lookup: str, local: str) -> tuple[str, str, str]:
    """The table, its over-quota flag column and the condition that picks the recipient whose
    local part Exim expands from ``local``, with every interpolated value quoted."""

    def q(value: str) -> str:
        return _literal(lookup, value)

    if table.own:
        return usage.name, "over_quota", f"{_ident('address')} = {q(f'${{lc:{local}@$domain}}')}"
    if not table.overquota:
        raise EximConfigError(f"schema has no over-quota flag column for table {table.table!r}")
    if table.address:
        where = f"{_ident(table.address)} = {q(f'${{lc:{local}@$domain}}')}"
    else:
        own_local = f"{_ident(table.local_part)} = {q(f'${{lc:{local}}}')}"
        where = f"{own_local} AND {_ident(table.domain)} = {q('${lc:$domain}')}"
    return table.table, table.overquota, where


def _sql_condition(table: MailboxTable, lookup: str, local: str) -> str:
    """``SELECT 1 ... WHERE <recipient> AND <flag> = '1'``: found when that mailbox is flagged."""
    name, flag, where = _sql_where(table, lookup, local)
    # '1' rather than 1 or TRUE: it compares equal to an integer, a tinyint and a boolean column alike.
    return f"SELECT 1 FROM {_ident(name)} WHERE {where} AND {_ident(flag)} = '1'"


def _sql_verdict(table: MailboxTable, lookup: str, local: str) -> str:
    """``yes`` or ``no`` for the mailbox, found whenever it is an enabled one (flagged or not):
    its own answer, which a detail's fall-back to another mailbox must not override. quotagate's
    own table says so from the mailbox list (a mailbox not measured yet is one). A disabled one
    is none: the admin's routers pass it over (``john-doe`` then reaches ``john``)."""
    if table.own:
        m, u = mailbox.name, usage.name
        recipient = _literal(lookup, f"${{lc:{local}@$domain}}")
        return (
            f"SELECT CASE WHEN {u}.over_quota = '1' THEN 'yes' ELSE 'no' END FROM {m}"
            f" LEFT JOIN {u} ON {u}.address = {m}.address WHERE {m}.address = {recipient} AND {m}.enabled = '1'"
        )
    name, flag, where = _sql_where(table, lookup, local)
    # NULL counts as enabled, as the store reads the admin's table.
    column = _ident(table.enabled) if table.enabled else ""
    enabled = f" AND ({column} = '1' OR {column} IS NULL)" if column else ""
    verdict = f"CASE WHEN {_ident(flag)} = '1' THEN 'yes' ELSE 'no' END"
    return f"SELECT {verdict} FROM {_ident(name)} WHERE {where}{enabled}"


def _either(flagged: Callable[[str], str], whole: Callable[[str], str], delimiter: str) -> str:
    """A condition that yields ``yes`` when the recipient's mailbox is flagged.

    ``flagged(local)`` looks up the local part Exim expands from ``local``: ``yes`` when that
    mailbox is flagged, else ``no``. With a folder delimiter, ``user+tag`` that is no mailbox of
    its own is looked up as ``user`` (the mailbox the admin's ``local_part_suffix = +*`` router
    delivers it to, and the daemon checks), split at the first delimiter as Exim, Postfix and
    Dovecot split it: a sender must not get past a full mailbox by adding ``+anything``.
    ``whole(otherwise)`` looks up the recipient itself: ``yes`` or ``no`` when it is a mailbox
    (``john-doe`` is not ``john``), ``otherwise`` when it is none.
    """
    if not delimiter:
        return flagged("$local_part")
    split = rf"\N^([^{_class(delimiter)}]+)[{_class(delimiter)}]\N"  # never at the first character
    return whole(f"${{if match{{$local_part}}{{{split}}}{{{flagged('$1')}}}{{no}}}}")


def _class(delimiter: str) -> str:
    """The delimiter's characters inside a PCRE character class (each escaped: all are punctuation)."""
    return "".join(f"\\{c}" for c in delimiter)


def _server(url: str, lookup: Lookup) -> str:
    """Where Exim finds the server, in its ``*_servers`` syntax: ``host[::port]``, or the unix
    socket the store's URL names (libpq's ``?host=/dir``, PyMySQL's ``?unix_socket=``), which
    Debian's PostgreSQL authenticates by peer: a TCP line would ask another server, or be refused,
    and every lookup would defer."""
    u = make_url(url)
    query = {k: v if isinstance(v, str) else v[-1] for k, v in u.query.items()}
    if lookup == "pgsql" and query.get("host", "").startswith("/"):
        socket = f"{query['host'].rstrip('/')}/.s.PGSQL.{u.port or query.get('port') or 5432}"
        return f"({_path(socket, 'PostgreSQL socket', forbidden='()')})"
    if lookup == "mysql" and query.get("unix_socket"):
        socket = _path(query["unix_socket"], "MySQL socket", forbidden="()")
        return f"{u.host or 'localhost'}({socket})"
    return (u.host or "localhost") + (f"::{u.port}" if u.port else "")


def _servers(url: str, lookup: Lookup) -> str:
    u = make_url(url)
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
        "# Exim's SQL lookups have no timeout: a server that hangs holds every RCPT (see the README;\n"
        "# the lsearch lookup of [publish] file, or --method policy, never waits on it).\n"
        f"hide {lookup}_servers = {_server(url, lookup)}/{u.database or ''}/{u.username or ''}/{password}\n"
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

    # An entry the store reads as disabled is no mailbox (the admin's routers pass it over).
    enabled = "".join(
        f"(!({_ident(c.enabled_attribute)}={quote(_ldap_value(v), safe=_URL_SAFE)}))"
        for v in (c.disabled_values if c.enabled_attribute else ())
    )

    def url(local: str, flagged: bool) -> str:
        recipient = f"({attr}=${{quote_ldap:${{lc:{local}@$domain}}}})"
        wanted = "(quotagateOverQuota=TRUE)" if flagged else enabled
        ldap_filter = f"(&{quote(c.filter, safe=_URL_SAFE)}{recipient}{wanted})"
        return f"{scheme}:///{quote(c.base, safe=_URL_SAFE)}?{attr}?{c.scope}?{ldap_filter}"

    def flagged(local: str) -> str:
        return f"${{lookup ldap{{{url(local, True)}}}{{yes}}{{no}}}}"

    def whole(otherwise: str) -> str:
        # Any entry with the address (one not scanned yet has no quotagateOverQuota) is a mailbox,
        # which answers for itself; ldapm: two entries with one address are still found.
        return f"${{lookup ldapm{{{url('$local_part', False)}}}{{{flagged('$local_part')}}}{{{otherwise}}}}}"

    return main, _either(flagged, whole, config.policy.folder_delimiter)


def _ldap_value(value: str) -> str:
    """An assertion value as an LDAP filter holds it (RFC 4515: ``*``, parentheses, backslash and
    NUL escaped)."""
    return "".join(f"\\{ord(ch):02x}" if ch in "*()\\\0" else ch for ch in value)


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
POLICY_ROUTER = "quotagate_policy"
POLICY_ASK_ACL = "quotagate_policy_ask"
# What readsocket yields when the daemon cannot be reached or does not answer in time: a DUNNO
# (Exim accepts) that the ACL recognises, to log it (and, at DATA, to ask no more).
UNREACHABLE_MARK = "quotagate-unreachable"
UNREACHABLE = f"action=DUNNO {UNREACHABLE_MARK}"
LOG_UNREACHABLE = "quotagate: the policy daemon could not be asked about $local_part@$domain: accepted"
END_REQUEST = "quotagate_end"
DATA_REQUEST = "quotagate_data"
PRDR_CHECKED = "acl_m_quotagate_prdr"
PRDR_INDEX = "acl_m_quotagate_prdr_n"  # which recipient of $recipients the PRDR ACL runs for
# The local part as the client wrote it: $local_part is lowered and unquoted, but Exim delivers
# Roomy@, "roomy"@ and roomy@ apart, each a copy the daemon holds room for. From the RCPT
# command ($smtp_command, as received): the address up to the first '>' outside quotes, or, as
# Exim also takes it without brackets, up to the first space outside quotes.
RCPT_ADDRESS = (
    r'${sg{$smtp_command}{\N^(?i)rcpt\s+to:\s*(?:<((?:"(?:[^"\\]|\\.)*"|[^>"])*)>'
    r'|((?:"(?:[^"\\]|\\.)*"|[^\s"<])+)).*$\N}{\$1\$2}}'
)


def _spelling(address: str) -> str:
    """The request's ``spelling`` attribute: the local part of ``address`` (an expansion) as
    written, with no line break."""
    return rf"spelling=${{sg{{${{local_part:{address}}}}}{{\N[\r\n]\N}}{{}}}}\n"


PRDR_ATTRIBUTE = r"prdr=yes\n"  # in the check at DATA of one recipient of a PRDR message
# At DATA: the size of the headers Exim will write that the message did not bring (its Received).
SIZE_ADDED = r"${eval:${strlen:$message_headers_raw}+1+$message_body_size-$message_size}"
DATA_ANSWERS = "acl_m_quotagate_data"


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
        rf"recipient={recipient}\n{_spelling(RCPT_ADDRESS)}size=$message_size\n{transaction}\n"
    )
    ask = f"${{readsocket{{{socket}}}{{{request}}}{{2s}}{{ }}{{{UNREACHABLE}}}}}"

    def tell(what: str) -> str:
        return f"  set acl_c_quotagate_told = ${{readsocket{{{socket}}}{{{what}{transaction}\\n}}{{2s}}{{ }}{{}}}}\n"

    ended = tell(rf"request={END_REQUEST}\n")
    # The message accepted: its real size (as the DATA check sends it) goes in flight in place
    # of the declared one, for every mailbox the transaction holds room in (an alias's too).
    accepted = tell(
        r"request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\nsize=$message_size\n"
        rf"size_added={SIZE_ADDED}\nmessage_linecount=$message_linecount\n"
    )
    defined = f"  condition = ${{if def:{TRANSACTION}}}\n"
    main = (
        "# The ACLs that tell the daemon when an SMTP transaction ends. If your configuration\n"
        "# already sets one of these, do not set it twice (that is a fatal error): call ours from\n"
        "# yours instead, with 'warn acl = quotagate_mail' first in your MAIL ACL, 'require acl =\n"
        "# quotagate_data' as the last statement before the accept of your DATA ACL (it refuses a\n"
        "# message no recipient has room for), and 'warn acl = quotagate_end' in your QUIT and\n"
        "# not-QUIT ACLs.\n"
        "acl_smtp_mail = quotagate_mail\n"
        "acl_smtp_data = quotagate_data\n"
        "acl_smtp_quit = quotagate_end\n"
        "acl_smtp_notquit = quotagate_end\n"
        f"{data_main()}"
    )
    acls = (
        "# In the acl section (after 'begin acl'): the transaction quotagate's room belongs to.\n"
        "quotagate_mail:\n"
        f"  warn\n  {defined}  {ended}"
        f"  warn\n    set {TRANSACTION} = $pid.$tod_epoch_l\n"
        "  accept\n"
        "quotagate_data:\n"
        "  require acl = quotagate_data_check\n"
        f"  warn\n  {accepted}"
        "  accept\n"
        f"{data_acls(socket, transaction)}"
        "quotagate_end:\n"
        f"  warn\n  {defined}  {ended}"
        "  accept\n"
    )
    acl = (
        "# In acl_smtp_rcpt, after the statements that accept or deny relaying and after\n"
        "# 'require verify = recipient' (a recipient Exim refuses after this check would keep the\n"
        "# room held for it, in flight with the message), before the one that accepts mail for\n"
        "# local domains. Use this or the router below, not both: each check that accepts holds\n"
        "# room for the message in the daemon.\n"
        f"warn\n  set acl_m_quotagate = {ask}\n"
        "deny\n"
        r"  condition = ${if match{$acl_m_quotagate}{\N^action=5\d\d\s\N}}" + "\n"
        r"  message = ${sg{$acl_m_quotagate}{\N^action=|\s+$\N}{}}" + "\n"
        "defer\n"
        r"  condition = ${if match{$acl_m_quotagate}{\N^action=4\d\d\s\N}}" + "\n"
        r"  message = ${sg{$acl_m_quotagate}{\N^action=|\s+$\N}{}}" + "\n"
        f"warn\n  condition = ${{if eq{{$acl_m_quotagate}}{{{UNREACHABLE}}}}}\n  log_message = {LOG_UNREACHABLE}\n"
    )
    # The router asks through an ACL, which keeps the answer in a variable: its data then defers
    # a 4xx answer (a client at its share, held room) and fails a 5xx, each with the daemon's text.
    answer = r"${sg{$acl_m_quotagate}{\N^action=|\s+$\N}{}}"
    acls += (
        f"# For the router {POLICY_ROUTER}: asks the daemon and keeps its answer.\n"
        f"{POLICY_ASK_ACL}:\n"
        f"  warn\n    set acl_m_quotagate = {ask}\n"
        f"  warn\n    condition = ${{if eq{{$acl_m_quotagate}}{{{UNREACHABLE}}}}}\n"
        f"    log_message = {LOG_UNREACHABLE}\n"
        "  accept\n"
        r"    message = ${if match{$acl_m_quotagate}{\N^action=[45]\d\d\s\N}{yes}{no}}" + "\n"
    )
    router = (
        "# The router variant: placed after the alias routers and before the mailbox router, it\n"
        "# asks the daemon about the mailbox an alias resolves to, while Exim verifies the\n"
        "# recipient (verify = recipient in acl_smtp_rcpt); never while it verifies a sender.\n"
        f"{POLICY_ROUTER}:\n"
        "  driver = redirect\n"
        "  verify_only\n"
        "  no_verify_sender\n"
        f"  condition = ${{acl{{{POLICY_ASK_ACL}}}}}\n"
        "  allow_fail\n"
        "  allow_defer\n"
        rf"  data = ${{if match{{$acl_m_quotagate}}{{\N^action=4\N}}{{:defer: {answer}}}{{:fail: {answer}}}}}" + "\n"
    )
    # With the message's size, as counted when it was accepted: a delivery releases only room
    # held for a message it could be (mail the daemon never let in is delivered here too).
    delivery = (
        rf"request=quotagate_delivery\nrecipient={recipient}\n"
        r"size=$message_size\nmessage_linecount=$message_linecount\n"
    )
    told = f"${{readsocket{{{socket}}}{{{delivery}\\n}}{{1s}}{{ }}{{}}}}"
    hint = (
        "# Optional, in the transport that delivers to mailboxes: tells the daemon of each local\n"
        "# delivery at once, for spools it cannot watch (NFS), and releases the room held for it.\n"
        f"event_action = ${{if eq{{$event_name}}{{msg:delivery}}{{{told}}}}}\n"
    )
    return Parts(main, router, acl, hint, acls)


def data_main(prdr_enable: bool = True) -> str:
    """The main options the checks at DATA need. Debian's configuration sets ``prdr_enable``
    already (twice is fatal): ``prdr_enable=False`` leaves it out."""
    text = (
        "# Checks at DATA, with the message's real size: per recipient when the client speaks PRDR\n"
        "# (Exim then runs acl_smtp_data_prdr for each recipient of a message that has more than\n"
        "# one), else for the whole message in quotagate_data.\n"
        "acl_smtp_data_prdr = quotagate_data_prdr\n"
    )
    if prdr_enable:
        text += (
            "# Needed for PRDR. Debian's configuration sets it already: leave it out there (a main\n"
            "# option set twice is a fatal error).\n"
            "prdr_enable = true\n"
        )
    return text


def data_acls(socket: str, transaction: str) -> str:
    """The named ACLs that ask the daemon at DATA, one request per recipient, with the size the
    message will have: ``$message_size`` (LF line ends, without the Received header Exim adds),
    the size of the headers Exim adds (all headers it holds now, less those the message
    brought), and ``$message_linecount`` for a delivery agent that counts CRLF line ends.

    - ``quotagate_data_prdr`` (``acl_smtp_data_prdr``): one recipient of a PRDR message; a
      refusal refuses that recipient only, the others get the message.
    - ``quotagate_data_check`` (called by ``quotagate_data``): without PRDR, Exim has one reply
      for the message; it refuses the message when every recipient is refused (permanently:
      552; some only for now: 452), and otherwise accepts it: a full recipient's delivery agent
      then applies its own quota (a bounce from it, or a delivery within its grace).

    The daemon answers ``action=DUNNO`` when it cannot tell; when it cannot be asked (down,
    slow), readsocket's fifth argument makes the answer DUNNO too, and a line is logged.
    """

    def ask(recipient: str, written: str, prdr: bool = False) -> str:
        """The check of ``recipient`` (unquoted, as the RCPT check asked), ``written`` the
        address as the client wrote it."""
        clean = rf"${{sg{{{recipient}}}{{\N[\r\n]\N}}{{}}}}"
        # With PRDR a recipient refused gets no copy: the daemon lets go of its room then.
        marked = PRDR_ATTRIBUTE if prdr else ""
        request = (
            rf"request={DATA_REQUEST}\nprotocol_state=END-OF-MESSAGE\nrecipient={clean}\n{_spelling(written)}{marked}"
            rf"size=$message_size\nsize_added={SIZE_ADDED}\nmessage_linecount=$message_linecount\n{transaction}\n"
        )
        return f"${{readsocket{{{socket}}}{{{request}}}{{2s}}{{ }}{{{UNREACHABLE}}}}}"

    answer = "$acl_m_quotagate"
    text = r"\N^action=|\s+$\N"
    listed = "${addresses:>| $recipients}"
    # The PRDR ACL runs for the recipients in the order $recipients lists them, and knows only
    # $local_part (lowered): which one it runs for is counted. A recipient it refuses leaves
    # $recipients at once: the count is of those it accepted.
    accepted = f"${{if def:{PRDR_INDEX}{{${PRDR_INDEX}}}{{0}}}}"
    written = f"${{listextract{{${{eval:{accepted}+1}}}}{{<| {listed}}}}}"
    prdr = (
        "quotagate_data_prdr:\n"
        f"  warn\n    set {PRDR_CHECKED} = yes\n"
        f"    set acl_m_quotagate = {ask('$local_part@$domain', written, prdr=True)}\n"
        f"  warn\n    condition = ${{if eq{{{answer}}}{{{UNREACHABLE}}}}}\n"
        "    log_message = quotagate: cannot ask the daemon about $local_part@$domain at DATA: accepted\n"
        f"  deny\n    condition = ${{if match{{{answer}}}{{\\N^action=5\\d\\d\\s\\N}}}}\n"
        f"    message = ${{sg{{{answer}}}{{{text}}}{{}}}}\n"
        f"  defer\n    condition = ${{if match{{{answer}}}{{\\N^action=4\\d\\d\\s\\N}}}}\n"
        f"    message = ${{sg{{{answer}}}{{{text}}}{{}}}}\n"
        f"  accept\n    set {PRDR_INDEX} = ${{eval:{accepted}+1}}\n"
    )
    answers = f"${DATA_ANSWERS}"
    known = f"!eq{{{answers}}}{{}}"
    # Every quoted segment ("john".doe is john.doe too), then the backslash escapes inside them.
    unquoted = r'${sg{${sg{${local_part:$item}}{\N"((?:[^"\\]|\\.)*)"\N}{\$1}}}{\N\\(.)\N}{\$1}}@${domain:$item}'

    answer = f"${{listquote{{|}}{{${{sg{{{ask(unquoted, '$item')}}}{{{text}}}{{}}}}}}}}"
    ask_unless_unreachable = (
        f"${{if match{{$value}}{{{UNREACHABLE_MARK}}}{{$value}}{{${{if eq{{$value}}{{}}{{}}{{$value|}}}}{answer}}}}}"
    )

    def every(pattern: str) -> str:
        return f"${{if and{{{{{known}}}{{forall{{<| {answers}}}{{match{{$item}}{{\\N{pattern}\\N}}}}}}}}}}"

    refused, refused_now = every(r"^5\d\d\s"), every(r"^[45]\d\d\s")
    # The first temporary refusal in the list: its text goes with the 4xx for the message.
    pick = r"${if and{{eq{$value}{}}{match{$item}{\N^4\N}}}{$item}{$value}}"
    first_temporary = f"${{reduce{{<| {answers}}}{{}}{{{pick}}}}}"
    check = (
        "quotagate_data_check:\n"
        f"  accept\n    condition = ${{if eq{{${PRDR_CHECKED}}}{{yes}}}}\n"
        # Every recipient of the message, once each, as the RCPT check saw it: $recipients split
        # by ${addresses} (a comma inside a quoted local part separates nothing), each local
        # part unquoted as $local_part is ("full"@ is full@). Should the split find another
        # count, a recipient would go unasked: the message is not checked, and that is logged.
        f"  accept\n    condition = ${{if !eq{{${{listcount:<| {listed}}}}}{{$recipients_count}}}}\n"
        "    logwrite = quotagate: the recipients at DATA could not be split ($recipients): not checked\n"
        # Asked one by one, each within readsocket's 2 s; once the daemon did not answer one, the
        # rest are not asked (the message can no longer be refused, a recipient being unchecked,
        # and 2 s a recipient would outlast the client's wait for the end of data).
        f"  warn\n    set {DATA_ANSWERS} = ${{reduce{{<| {listed}}}{{}}{{{ask_unless_unreachable}}}}}\n"
        f"  warn\n    condition = ${{if match{{{answers}}}{{{UNREACHABLE_MARK}}}}}\n"
        "    log_message = quotagate: cannot ask the daemon at DATA: accepted\n"
        f"  deny\n    condition = {refused}\n"
        f"    message = ${{listextract{{1}}{{<| {answers}}}}}\n"
        f"  defer\n    condition = {refused_now}\n"
        f"    message = {first_temporary}\n"
        "  accept\n"
    )
    return prdr + check


LOOPBACK = "<; 127.0.0.1 ; ::1"


def with_warn_port(p: Parts, port: int) -> Parts:
    """``p`` letting ``quotagate warn``'s mail through on ``port``, from the host itself only.

    A warning must reach a mailbox that is already full, which the check refuses at RCPT: on
    this port and from loopback, the ACL statement accepts any recipient that verifies, the
    routers' ACLs do not look (their answer would fail the verification), and neither do the
    checks at DATA. The port and the
    address, never a header anyone can write, are what let the warning through.
    """
    if not 0 < port < 65536:
        raise EximConfigError(f"--warn-port {port} is not a port")
    warn_port = f"${{if eq{{$received_port}}{{{port}}}}}"
    accept = (
        f'# quotagate warn\'s own way in ([warn] smtp = "127.0.0.1:{port}"; add the port to\n'
        "# daemon_smtp_ports, on 127.0.0.1 only): no quota check, so a full mailbox still gets its warning.\n"
        f"accept\n  condition = {warn_port}\n  hosts = {LOOPBACK}\n  verify = recipient\n"
    )
    passed = f"  accept\n    condition = {warn_port}\n    hosts = {LOOPBACK}\n"
    skip = {name: passed + "    message = no\n" for name in (CHECK_ACL, POLICY_ASK_ACL)}
    skip |= {name: passed for name in ("quotagate_data_check", "quotagate_data_prdr")}  # the checks at DATA
    acls = p.acls
    for name, statement in skip.items():
        head = f"{name}:\n"
        acls = re.sub(rf"^{re.escape(head)}", (head + statement).replace("\\", "\\\\"), acls, count=1, flags=re.M)
    return replace(p, acl=accept + p.acl if p.acl else "", acls=acls)


def parts(
    config: Config,
    method: Method,
    lookup: Lookup | None = None,
    on_store_error: OnStoreError = "accept",
    warn_port: int | None = None,
) -> Parts:
    """The main-section settings, the router and the ACL statement for one method and lookup;
    with ``warn_port``, the way in for ``quotagate warn`` (:func:`with_warn_port`)."""
    made = _parts(config, method, lookup, on_store_error)
    return made if warn_port is None else with_warn_port(made, warn_port)


def _parts(config: Config, method: Method, lookup: Lookup | None, on_store_error: OnStoreError) -> Parts:
    if method == "policy":
        return policy_parts(config)
    lookup = lookup or default_lookup(config)
    table = mailbox_table(config.store.schema_, config.store.columns.overrides())
    main = ""
    guard = ""
    delimiter = config.policy.folder_delimiter
    if lookup == "lsearch":
        if config.publish.file is None:
            raise EximConfigError("--lookup lsearch needs [publish] file in the config")
        file = _path(str(config.publish.file), "[publish] file")

        def in_file(local: str) -> str:
            return f"${{lookup{{${{lc:{local}@$domain}}}}lsearch{{{file}}}{{yes}}{{no}}}}"

        def file_says(otherwise: str) -> str:
            # "address@" (no address ends so) marks a mailbox of its own, never flagged, whose
            # name would otherwise fall back to a full one's (see quotagate.publish).
            key = "${lc:$local_part@$domain}"
            own = f"${{lookup{{{key}@}}lsearch{{{file}}}{{no}}{{{otherwise}}}}}"
            return f"${{lookup{{{key}}}lsearch{{{file}}}{{yes}}{{{own}}}}}"

        condition = _either(in_file, file_says, delimiter)
        guard = file
    elif lookup in ("sqlite", "mysql", "pgsql"):
        if lookup == "sqlite":
            guard = _sqlite_file(config.store.url)
            head = f"sqlite,file={guard} "
        else:
            scheme = make_url(config.store.url).get_backend_name()
            if _SCHEME_LOOKUP.get(scheme) != lookup:
                raise EximConfigError(f"--lookup {lookup} needs a {lookup} store, not {scheme}")
            main = _servers(config.store.url, lookup)
            head = lookup

        def in_table(local: str) -> str:
            return f"${{lookup {head}{{{_sql_condition(table, lookup, local)}}}{{yes}}{{no}}}}"

        def table_says(otherwise: str) -> str:
            return f"${{lookup {head}{{{_sql_verdict(table, lookup, '$local_part')}}}{{$value}}{{{otherwise}}}}}"

        condition = _either(in_table, table_says, delimiter)
    elif lookup == "ldap":
        main, condition = _ldap(config)
    else:  # pragma: no cover - the CLI offers only the lookups above
        raise EximConfigError(f"unknown lookup {lookup!r}")

    return _lookup_parts(main, condition, method, on_store_error, guard, full_reply(config))


def _lookup_parts(
    main: str, lookup: str, method: Method, on_store_error: OnStoreError, guard: str, reply: str = ACL_MESSAGE
) -> Parts:
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
            + f"deny\n  condition = ${{if eq{{${VARIABLE}}}{{yes}}}}\n  message = {reply}\n"
            + logged
        )
        return Parts(main, "", acl)
    # The router: an ACL called by its condition runs the lookup; a deferral in the ACL itself
    # would only make the condition false, so the router's data defers when asked to.
    if on_store_error == "defer":
        logged = f"warn\n  condition = {unknown}\n  log_message = {LOG_FAILED}\n"
        verdict = f"${{if eq{{${VARIABLE}}}{{no}}{{no}}{{yes}}}}"
        data = f"${{if eq{{${VARIABLE}}}{{unknown}}{{:defer: {STORE_ERROR_MESSAGE}}}{{:fail: {reply}}}}}"
        extra = "  allow_defer\n"
    else:
        verdict = f"${{if eq{{${VARIABLE}}}{{yes}}{{yes}}{{no}}}}"
        data = f":fail: {reply}"
        extra = ""
    named = "".join(f"  {line}\n" for line in (ask + logged).splitlines())
    acls = (
        f"# In the acl section (after 'begin acl'), for the router {CHECK_ACL}: it runs the lookup\n"
        "# so that a store that cannot be asked does not make the router defer every recipient.\n"
        f"{CHECK_ACL}:\n{named}  accept\n    message = {verdict}\n"
    )
    router = (
        "# Before the router that delivers to mailboxes. It runs only while Exim verifies a\n"
        "# recipient (verify = recipient in acl_smtp_rcpt), so a full mailbox is refused at RCPT;\n"
        "# never for a sender (verify = sender): the owner of a full mailbox can still send mail.\n"
        "# The mailbox transport should say quota_is_inclusive = false (or the scan a threshold\n"
        "# below 100%): this check is exclusive, so a message that takes a mailbox just over its\n"
        "# limit is accepted here and must not then be deferred at delivery.\n"
        f"{CHECK_ACL}:\n"
        "  driver = redirect\n"
        "  verify_only\n"
        "  no_verify_sender\n"
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
