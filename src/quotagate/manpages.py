"""The man pages, generated from the code: quotagate(1) from the click command tree, quotagate.toml(5)
from the config schema (:mod:`quotagate.config`).

Built with the package (``scripts/build-deb`` runs ``python -m quotagate.manpages DIR``), so a command,
an option or a key can never be missing from them, nor shown with a stale type or default. Descriptions
come from the code as well: click's help texts, and for config keys ``Meta(description=...)`` and the
comments beside each field in :mod:`quotagate.config`; :data:`MORE` describes what has neither.
"""

from __future__ import annotations

import ast
import gzip
import inspect
import io
import json
import re
import sys
import tokenize
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import click
import msgspec
from msgspec import Meta, Struct

from quotagate import __version__
from quotagate.cli import cli  # the whole command tree: importing it registers every command
from quotagate.config import DEFAULT_PATH, ENV_VAR, Checked, Config, Percent, Size, as_toml
from quotagate.sizes import Allowance

# Keys and sections the schema has no comment or description for, by dotted name. A test fails
# when a key has no description at all, or when a name here is no longer in the schema.
MORE = {
    "store": "Where mailboxes and their limits are read from, and where usage and the over-quota flags go.",
    "store.url": "The store: sqlite:////absolute/path.db, postgresql+psycopg://user:pass@host/db, "
    "mysql+pymysql://user:pass@host/db (MariaDB too), ldap://host or ldaps://host.",
    "store.columns.table": "The table holding the mailboxes.",
    "store.columns.address": "The column with the whole address (or set local_part and domain).",
    "store.columns.local_part": "The column with the local part, with domain, instead of address.",
    "store.columns.domain": "The column with the domain, with local_part, instead of address.",
    "store.columns.quota": "The column with the size limit, in quota_unit.",
    "store.columns.quota_unit": "Bytes per unit of the quota column (e.g. 1M for a column in megabytes).",
    "store.columns.messages": "The column with the message limit.",
    "store.columns.enabled": "The column saying whether the mailbox is active.",
    "store.columns.path": "The column with the mailbox's path, relative to [spool] root.",
    "store.columns.overquota": "The column quotagate sets to 1 for an over-quota mailbox (Exim reads it).",
    "store.columns.usage_table": "The table quotagate keeps measured usage in (PostfixAdmin: quota2).",
    "store.ldap.bind_dn": "The DN quotagate binds as; it needs write access to the published attributes.",
    "store.ldap.password": "The bind password (or password_file, not both).",
    "store.ldap.password_file": "A file holding the bind password (or password, not both).",
    "store.ldap.base": "The search base of the mailbox entries (required for an LDAP store).",
    "store.ldap.scope": "The search scope under base.",
    "store.ldap.filter": "The filter an entry must match to be a mailbox.",
    "store.ldap.address_attribute": "The attribute holding the address.",
    "store.ldap.quota_attribute": "The attribute holding the size limit, in quota_unit.",
    "store.ldap.quota_unit": "Bytes per unit of quota_attribute.",
    "store.ldap.messages_attribute": 'The attribute holding the message limit; "" for none.',
    "store.ldap.path_attribute": 'The attribute holding the mailbox path; "" to use [spool] layout.',
    "store.ldap.timeout": "How long one LDAP operation may take",
    "store.ldap.disabled_values": "Values of enabled_attribute that mean the mailbox is disabled.",
    "spool": "Where the mail lives, and in which format.",
    "spool.root": "The spool's top directory; every mailbox path is taken relative to it.",
    "spool.layout": "Where a mailbox lives below root when the store gives no path; "
    "may use {domain}, {local} and {address}.",
    "spool.format": "The mailbox format; auto tells Maildir and mbox apart per mailbox.",
    "scan": "How quotagate scan measures the spool.",
    "scan.workers": "Processes measuring mailboxes in parallel.",
    "scan.threshold": 'A mailbox is over quota at this share of its limit (e.g. "99%").',
    "folders": "Folder rules, first match wins, on the Maildir++ folder name.",
    "folders.match": "A glob on the folder name (e.g. Trash, or Archive*).",
    "folders.exclude": "Leave the folder out of the mailbox's total.",
    "folders.quota": "A size limit of the folder's own, for local+folder@domain checks; 0 = none.",
    "folders.messages": "A message limit of the folder's own; 0 = none.",
    "publish": "The over-quota set as a file, for Exim's lsearch.",
    "publish.file": "The file every scan (and watch) rewrites with one over-quota address per line; unset: no file.",
    "policy.socket_mode": "The mode of a unix listen socket, in octal.",
    "policy.grace": 'Room beyond the limit for a mailbox still under it: bytes ("5M") or a share ("10%").',
    "policy.on_full": "What a full mailbox gets: reject (5xx) or defer (4xx).",
    "policy.reject_reply": "The reply for a full mailbox with on_full = reject; a 5xx code, one line.",
    "policy.fit_reply": "The reply for a message that does not fit in a mailbox that is not full; {size}, {limit}.",
    "policy.messages_reply": "The reply for a mailbox at its message count limit; {limit}.",
    "policy.defer_reply": "The reply for a full mailbox with on_full = defer; a 4xx code, one line.",
    "policy.max_connections": "Connections served at once; more wait to be accepted.",
    "policy.drain_seconds": "Seconds requests in progress may take to finish after SIGTERM.",
    "policy.workers": "Processes answering on the same sockets (serve --workers); more than one needs [shared] url.",
    "watch.poll_seconds": "How often folder mtimes are compared in poll mode.",
}

_BY_TYPE: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    Path: "path",
    Size: "size",
    Percent: "percentage",
    Allowance: "size or percentage",
}
_PLURAL = {
    "string": "strings",
    "path": "paths",
    "integer": "integers",
    "number": "numbers",
    "percentage": "percentages",
}


@dataclass(frozen=True)
class Key:
    """One config key as quotagate.toml(5) shows it."""

    section: str  # dotted: "store.ldap"; "folders" is an array of tables
    name: str
    type: str
    default: str  # as TOML writes it, or "required" / "unset"
    description: str


def _type_name(annotation: Any) -> str:
    """What TOML value a key takes, in words; bounds from Meta(gt=, ge=) appended."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        metas = [m for m in args[1:] if isinstance(m, Meta)]
        bounds = [f"> {m.gt}" for m in metas if m.gt is not None] + [f">= {m.ge}" for m in metas if m.ge is not None]
        name = _type_name(args[0])
        return f"{name} ({', '.join(bounds)})" if bounds else name
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is list:
        inner = _type_name(args[0])
        return "list of " + _PLURAL.get(inner, inner)
    if isinstance(annotation, type) and issubclass(annotation, Checked):
        return "string"
    return _BY_TYPE[annotation]


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.required:
        return "required"
    default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
    if default is None:
        return "unset"
    return json.dumps(as_toml(default), ensure_ascii=False)


def _description(annotation: Any) -> str:
    """The ``Meta(description=...)`` of an annotated field, or ""."""
    if get_origin(annotation) is not Annotated:
        return ""
    return " ".join(m.description for m in get_args(annotation)[1:] if isinstance(m, Meta) and m.description)


def _comments(model: type[Struct]) -> dict[str, str]:
    """The comments beside each field in the model's source: the lines above it and its line's end."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):  # no source installed: Field descriptions and MORE remain
        return {}
    lines = source.expandtabs().splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip())
    source = "\n".join(line[indent:] for line in lines) + "\n"
    own_line: dict[int, str] = {}  # comments alone on their line, by line number
    trailing: dict[int, str] = {}  # comments after code
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            (own_line if token.line.lstrip().startswith("#") else trailing)[token.start[0]] = text
    found = {}
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.ClassDef)
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above: list[str] = []
        line = stmt.lineno - 1
        while line in own_line:
            above.insert(0, own_line[line])
            line -= 1
        end = trailing.get(stmt.end_lineno or stmt.lineno)
        found[stmt.target.id] = " ".join([*above, *([end] if end else [])])
    return found


def _field_model(annotation: Any) -> type[Struct] | None:
    """The section a field holds (a table, or the tables of a list), else None for a key."""
    inner = get_args(annotation)[0] if get_origin(annotation) is list else annotation
    return inner if isinstance(inner, type) and issubclass(inner, Struct) else None


def sections(model: type[Struct] = Config, prefix: str = "") -> Iterator[tuple[str, type[Struct]]]:
    """Every section of the schema, as (dotted name, model), parents before their children."""
    for field in msgspec.structs.fields(model):
        sub = _field_model(field.type)
        if sub is not None:
            dotted = f"{prefix}{field.encode_name}"
            yield dotted, sub
            yield from sections(sub, dotted + ".")


def section_description(section: str, model: type[Struct]) -> str:
    return MORE.get(section) or " ".join(inspect.cleandoc(model.__doc__ or "").split())


def config_keys() -> list[Key]:
    """Every key of quotagate.toml, in the schema's order, with its type, default and description."""
    keys = []
    for section, model in sections():
        comments = _comments(model)
        for field in msgspec.structs.fields(model):
            if _field_model(field.type) is not None:
                continue
            key = field.encode_name
            said = [comments.get(field.name, ""), MORE.get(f"{section}.{key}", ""), _description(field.type)]
            text = ". ".join(s[0].upper() + s[1:].rstrip(".") for s in said if s)
            keys.append(Key(section, key, _type_name(field.type), _default(field), text + "." if text else ""))
    return keys


def _roff(text: str) -> str:
    """Text that roff prints as it is: backslashes, hyphens and leading dots or quotes escaped.

    The reST literal quotes of docstrings (````name````) are dropped.
    """
    text = text.replace("``", "").replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def _help(text: str) -> str:
    """click help as roff paragraphs; a paragraph marked ``\\b`` keeps its lines, as in --help."""
    paragraphs = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(text)):
        if para.startswith("\b\n"):
            paragraphs.append(".nf\n" + _roff(para[2:]) + "\n.fi")
        else:
            paragraphs.append(_roff(" ".join(para.split())))
    return "\n.PP\n".join(paragraphs)


def _header(title: str, section: int, name: str, summary: str) -> list[str]:
    return [
        f'.TH "{title}" {section} "" "quotagate {__version__}" "quotagate manual"',
        ".nh",  # no hyphenation, left-adjusted: option names and keys stay whole and searchable
        ".ad l",
        ".SH NAME",
        f"{_roff(name)} \\- {_roff(summary)}",
    ]


def _options(command: click.Command, ctx: click.Context) -> list[str]:
    out = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or not record[1] or (ctx.parent is not None and param is command.get_help_option(ctx)):
            continue  # arguments are in the usage line; --help once, at the top
        flags = ", ".join(
            " ".join(f"\\fB{_roff(w)}\\fR" if w.startswith("-") else f"\\fI{_roff(w)}\\fR" for w in part.split())
            for part in record[0].split(", ")
        )
        out += [".TP", flags, _roff(" ".join(record[1].split()))]
    return out


def _commands(command: click.Command, ctx: click.Context) -> Iterator[list[str]]:
    """A subsection per command, groups before their subcommands."""
    if not isinstance(command, click.Group):
        return
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        sub_ctx = click.Context(sub, info_name=name, parent=ctx)
        usage = " ".join([sub_ctx.command_path, *sub.collect_usage_pieces(sub_ctx)])
        yield [f'.SS "{_roff(usage)}"', _help(sub.help or ""), *_options(sub, sub_ctx)]
        yield from _commands(sub, sub_ctx)


def command_page(root: click.Group) -> str:
    """quotagate(1): the synopsis, the global options, then every command with its options."""
    ctx = click.Context(root, info_name="quotagate", **root.context_settings)
    summary = (root.help or "").split(".")[0]
    lines = _header("QUOTAGATE", 1, "quotagate", summary[:1].lower() + summary[1:])
    lines += [".SH SYNOPSIS", "\\fBquotagate\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]..."]
    lines += [".SH DESCRIPTION", _help(root.help or "")]
    lines += [".SH OPTIONS", *_options(root, ctx)]
    lines += [".SH COMMANDS"]
    for part in _commands(root, ctx):
        lines += part
    lines += [
        ".SH FILES",
        ".TP",
        _roff(str(DEFAULT_PATH)),
        "The configuration, see \\fBquotagate.toml\\fR(5).",
        ".SH ENVIRONMENT",
        ".TP",
        ENV_VAR.replace("_", "\\_"),
        "The config file to read when \\fB\\-\\-config\\fR is not given.",
        ".SH SEE ALSO",
        "\\fBquotagate.toml\\fR(5), \\fBsystemd.service\\fR(5), \\fBexim4\\fR(8), \\fBpostconf\\fR(5)",
    ]
    return "\n".join(lines) + "\n"


def config_page() -> str:
    """quotagate.toml(5): every section and key of the schema, with type, default and description."""
    lines = _header("QUOTAGATE.TOML", 5, "quotagate.toml", "configuration of quotagate")
    lines += [
        ".SH SYNOPSIS",
        _roff(str(DEFAULT_PATH)),
        ".SH DESCRIPTION",
        _roff(
            f"quotagate reads its configuration from {DEFAULT_PATH}, or the file named by --config or "
            f"${ENV_VAR}. It is TOML. Every key has a default; an unknown key or a bad value is an "
            "error naming the key. Sizes are bytes or a number with a binary unit (1K = 1024; "
            '500M, 2G, 1.5GiB); percentages are strings such as "99%" (a bare number of 1 or less is '
            "refused: 0.99 is 99% or 0.99%?). The file the package installs "
            "holds every section, with the defaults commented out."
        ),
        ".SH SECTIONS",
    ]
    keys = config_keys()
    for section, model in sections():
        title = f"[[{section}]]" if section == "folders" else f"[{section}]"
        lines += [f'.SS "{title}"', _roff(section_description(section, model))]
        for key in (k for k in keys if k.section == section):
            lines += [
                ".TP",
                f"\\fB{_roff(key.name)}\\fR \\(em {_roff(key.type)}, default \\fB{_roff(key.default)}\\fR",
                _roff(key.description),
            ]
    lines += [".SH SEE ALSO", "\\fBquotagate\\fR(1)"]
    return "\n".join(lines) + "\n"


def write_pages(directory: Path, compress: bool = False) -> list[Path]:
    """Write man1/quotagate.1 and man5/quotagate.toml.5 under ``directory`` (gzipped: Debian's way)."""
    written = []
    for relative, text in (("man1/quotagate.1", command_page(cli)), ("man5/quotagate.toml.5", config_page())):
        path = directory / (relative + (".gz" if compress else ""))
        path.parent.mkdir(parents=True, exist_ok=True)
        data = text.encode()
        path.write_bytes(gzip.compress(data, 9, mtime=0) if compress else data)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """``python -m quotagate.manpages [--gzip] DIR``."""
    compress = "--gzip" in argv
    targets = [a for a in argv if a != "--gzip"]
    if len(targets) != 1:
        print("usage: python -m quotagate.manpages [--gzip] DIR", file=sys.stderr)
        return 2
    for path in write_pages(Path(targets[0]), compress):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
