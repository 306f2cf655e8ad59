"""The classic design against real Exim: the published over-quota set refuses at RCPT time.

Every backend Exim can read (lsearch file, SQLite, MariaDB, PostgreSQL) and every schema preset
(quotagate's tables, PostfixAdmin, the classic recipe), each with the router and the ACL method.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from quotagate.config import load_config
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN, HOSTILE, QUOTA, Site, make_site, safe
from tests.servers import schemas
from tests.servers.exim import Exim
from tests.servers.mariadb import PASSWORD
from tests.servers.postgres import private_postgres_process

# (Exim lookup, schema preset, database)
BACKENDS = [
    ("lsearch", "quotagate", "sqlite"),
    ("sqlite", "quotagate", "sqlite"),
    ("sqlite", "classic", "sqlite"),
    ("mysql", "quotagate", "mariadb"),
    ("mysql", "postfixadmin", "mariadb"),
    ("mysql", "classic", "mariadb"),
    ("pgsql", "quotagate", "postgresql"),
    ("pgsql", "postfixadmin", "postgresql"),
    ("pgsql", "classic", "postgresql"),
    ("ldap", "ldap", "slapd"),
]
IDS = [f"{lookup}-{preset}" for lookup, preset, _ in BACKENDS]


def smtp_quote(local: str) -> str:
    if all(c.isalnum() or c in "!#$%&'*+-/=?^_`{|}~." for c in local) and ".." not in local:
        return local
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rcpt(local: str) -> str:
    return f"{smtp_quote(local)}@{DOMAIN}"


def database_url(request: pytest.FixtureRequest, work: Path, database: str) -> str:
    if database == "sqlite":
        (work / "db").mkdir()
        (work / "db").chmod(0o755)
        return f"sqlite:///{work}/db/q.db"
    server = request.getfixturevalue("postgres" if database == "postgresql" else "mariadb")
    return str(server.create_database(f"qg_{uuid.uuid4().hex[:12]}"))


def prepare(request: pytest.FixtureRequest, work: Path, exim: Exim, backend: tuple[str, str, str], method: str) -> Site:
    lookup, preset, database = backend
    locals_ = ["full", "roomy", *HOSTILE]
    if database == "slapd":
        slapd = request.getfixturevalue("slapd")
        tree = slapd.new_tree()
        site = make_site(work, slapd.toml(tree, work))
        for i, local in enumerate(locals_):
            slapd.add_mailbox(tree, f"m{i}", f"{local}@{DOMAIN}", QUOTA)
        return finish(site, exim, lookup, method, locals_)
    url = database_url(request, work, database)
    site = make_site(work, f'[store]\nurl = "{url}"\nschema = "{preset}"')
    if preset != "quotagate":
        schemas.create(url, preset)
    assert site.quotagate("db", "migrate") == 0
    for local in locals_:
        address = f"{local}@{DOMAIN}"
        if preset == "quotagate":
            assert site.quotagate("mailbox", "add", address, "--quota", str(QUOTA)) == 0
        else:
            schemas.add_mailbox(url, preset, address, QUOTA, maildir=f"{DOMAIN}/{local}/Maildir")
    return finish(site, exim, lookup, method, locals_)


def finish(site: Site, exim: Exim, lookup: str, method: str, locals_: list[str]) -> Site:
    """Fill the mailboxes, scan, and configure Exim from quotagate's own exim-config output."""
    assert site.quotagate("db", "migrate") == 0
    site.fill("full", QUOTA + 1)
    site.fill("roomy", 10)
    # Half the hostile ones are over quota, so a lookup whose meaning changed would show.
    for i, local in enumerate(HOSTILE):
        site.fill(local, QUOTA * 2 if i % 2 else 5)
    assert site.quotagate("scan") == 0
    parts = exim_config.parts(load_config(site.config), method, lookup)  # type: ignore[arg-type]
    assert "PASSWORD" not in parts.routers + parts.acl
    users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{safe(u)}" for u in locals_}
    main = parts.main.replace("/PASSWORD", f"/{PASSWORD}")
    exim.configure(users=users, main=main, acl=parts.acl, routers=parts.routers, acls=parts.acls)
    return site


def refused_full(reply: str) -> bool:
    return reply[0] == "5" and "Mailbox is full" in reply


@pytest.mark.parametrize("method", ["router", "acl"])
@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_fake_session_refuses_full_mailbox_until_mail_is_deleted(
    request: pytest.FixtureRequest, work: Path, exim: Exim, backend: tuple[str, str, str], method: str
) -> None:
    site = prepare(request, work, exim, backend, method)
    full, roomy, stranger, tagged, roomy_tagged = exim.fake_session(
        f"full@{DOMAIN}", f"roomy@{DOMAIN}", f"stranger@{DOMAIN}", f"full+news@{DOMAIN}", f"roomy+news@{DOMAIN}"
    )
    assert refused_full(full), exim.last_session
    assert roomy.startswith("250"), roomy
    assert stranger.startswith("550") and "Mailbox is full" not in stranger, stranger
    # full+news@ is delivered to full@ wherever the mailbox router takes local_part_suffix = +*:
    # a sender must not get past the check by adding +anything ([policy] folder_delimiter).
    assert refused_full(tagged), tagged
    assert "Mailbox is full" not in roomy_tagged, roomy_tagged

    site.empty("full")
    assert site.quotagate("scan") == 0
    full, tagged = exim.fake_session(f"full@{DOMAIN}", f"full+news@{DOMAIN}")
    assert full.startswith("250"), full
    assert "Mailbox is full" not in tagged, tagged


@pytest.mark.parametrize("method", ["router", "acl"])
@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_hostile_local_parts_neither_break_nor_change_the_lookup(
    request: pytest.FixtureRequest, work: Path, exim: Exim, backend: tuple[str, str, str], method: str
) -> None:
    prepare(request, work, exim, backend, method)
    check_hostile(exim)
    if backend[0] == "mysql":
        # A server in NO_BACKSLASH_ESCAPES mode reads backslashes literally: still no way out.
        with request.getfixturevalue("mariadb").sql_mode("NO_BACKSLASH_ESCAPES"):
            check_hostile(exim)


def check_hostile(exim: Exim) -> None:
    replies = exim.fake_session(*(rcpt(local) for local in HOSTILE))
    for i, (local, reply) in enumerate(zip(HOSTILE, replies, strict=True)):
        if i % 2:
            assert refused_full(reply), (local, reply)
        else:
            assert reply.startswith("250"), (local, reply)
    # Not in the directory: an injection would make these match an over-quota row.
    tricks = ["x' OR '1'='1", "x' OR over_quota = '1' --", "x\\' OR 1=1 #", "*", "%", "full@example.org' --"]
    # ... nor when the part before a folder delimiter is looked up on its own.
    tricks += ["x' OR '1'='1+y", "x' OR over_quota = '1' --+y", "*+y", "%+y", "x\\'+' OR 1=1 #"]
    for local, reply in zip(tricks, exim.fake_session(*(rcpt(t) for t in tricks)), strict=True):
        assert "Mailbox is full" not in reply, (local, reply)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_real_smtp_refuses_at_rcpt_and_nothing_reaches_the_queue(
    request: pytest.FixtureRequest, work: Path, exim: Exim, backend: tuple[str, str, str]
) -> None:
    site = prepare(request, work, exim, backend, "router")
    exim.start()
    assert exim.smtp(f"full@{DOMAIN}") // 100 == 5
    assert exim.smtp(f"roomy@{DOMAIN}") == 250
    assert exim.smtp(f"stranger@{DOMAIN}") == 550
    assert exim.queue_count() == 0, exim.log("main") + exim.log("panic")
    received = [line for line in exim.log("main").splitlines() if " <= " in line]
    assert len(received) == 1, received  # roomy's message only: nothing for full was ever accepted
    assert len(list((site.maildir("roomy") / "new").iterdir())) == 1

    site.empty("full")
    assert site.quotagate("scan") == 0
    assert exim.smtp(f"full@{DOMAIN}") == 250


def unreachable(main: str) -> str:
    """The main section with every server moved to a port where nothing listens: for Exim, the
    store is down (connection refused), as when the database server is stopped."""
    return re.sub(r"(_servers = [^/\n]*?)::\d+", r"\1::1", main).replace("/PASSWORD", f"/{PASSWORD}")


def break_store(site: Site, exim: Exim, lookup: str, method: str, on_store_error: str = "accept") -> None:
    config = load_config(site.config)
    parts = exim_config.parts(config, method, lookup, on_store_error)  # type: ignore[arg-type]
    if lookup == "lsearch":
        assert config.publish.file is not None
        config.publish.file.unlink()
    if lookup == "sqlite":
        db = Path(config.store.url.removeprefix("sqlite:///"))
        db.rename(db.with_name("moved.db"))
    users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{safe(u)}" for u in ["full", "roomy"]}
    exim.configure(users=users, main=unreachable(parts.main), acl=parts.acl, routers=parts.routers, acls=parts.acls)


@pytest.mark.parametrize("method", ["router", "acl"])
@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_a_store_exim_cannot_ask_accepts_and_logs(
    request: pytest.FixtureRequest, work: Path, exim: Exim, backend: tuple[str, str, str], method: str
) -> None:
    site = prepare(request, work, exim, backend, method)
    break_store(site, exim, backend[0], method)
    full, roomy = exim.fake_session(f"full@{DOMAIN}", f"roomy@{DOMAIN}")
    assert full.startswith("250"), exim.last_session
    assert roomy.startswith("250"), exim.last_session
    assert exim_config.LOG_FAILED.replace("$local_part@$domain", f"full@{DOMAIN}") in exim.last_session


@pytest.mark.parametrize("method", ["router", "acl"])
def test_a_store_exim_cannot_ask_defers_when_the_admin_says_so(
    request: pytest.FixtureRequest, work: Path, exim: Exim, method: str
) -> None:
    site = prepare(request, work, exim, BACKENDS[1], method)
    break_store(site, exim, "sqlite", method, on_store_error="defer")
    (full,) = exim.fake_session(f"full@{DOMAIN}")
    assert full.startswith("451"), exim.last_session


@pytest.mark.parametrize("method", ["router", "acl"])
def test_a_postgresql_store_on_its_unix_socket_is_asked_there(work: Path, exim: Exim, method: str) -> None:
    """Debian's PostgreSQL authenticates by peer on its socket, a URL names it with ?host=/dir:
    the server line said localhost over TCP, Exim asked another server (or was refused), every
    lookup deferred and every full mailbox was accepted."""
    with private_postgres_process() as (postgres, process):
        name = f"qg_{uuid.uuid4().hex[:12]}"
        postgres.create_database(name)
        url = f"postgresql+psycopg://postgres@/{name}?host={process.data}&port={postgres.port}"
        site = make_site(work, f'[store]\nurl = "{url}"')
        assert site.quotagate("db", "migrate") == 0
        site.full_and_roomy()
        parts = exim_config.parts(load_config(site.config), method, "pgsql")  # type: ignore[arg-type]
        assert f"hide pgsql_servers = ({process.data}/.s.PGSQL.{postgres.port})/{name}/postgres/" in parts.main
        users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{safe(u)}" for u in ("full", "roomy")}
        exim.configure(users=users, main=parts.main, acl=parts.acl, routers=parts.routers, acls=parts.acls)
        full, roomy = exim.fake_session(f"full@{DOMAIN}", f"roomy@{DOMAIN}")
        assert roomy.startswith("250"), exim.last_session
        assert refused_full(full), exim.last_session


def _detail_site(
    work: Path,
    exim: Exim,
    locals_: list[str],
    full: set[str],
    delimiter: str,
    lookup: str,
    method: str,
    extra: str = "",
) -> Site:
    (work / "db").mkdir()
    (work / "db").chmod(0o755)
    policy = f'[policy]\nfolder_delimiter = "{delimiter}"\n{extra}'
    site = make_site(work, f'[store]\nurl = "sqlite:///{work}/db/q.db"\n\n{policy}')
    assert site.quotagate("db", "migrate") == 0
    for local in locals_:
        assert site.quotagate("mailbox", "add", f"{local}@{DOMAIN}", "--quota", str(QUOTA)) == 0
        site.fill(local, QUOTA + 1 if local in full else 10)
    assert site.quotagate("scan") == 0
    parts = exim_config.parts(load_config(site.config), method, lookup)  # type: ignore[arg-type]
    users = {f"{u}@{DOMAIN}": f"{DOMAIN}/{safe(u)}" for u in locals_}
    exim.configure(users=users, main=parts.main, acl=parts.acl, routers=parts.routers, acls=parts.acls)
    return site


@pytest.mark.parametrize("method", ["router", "acl"])
@pytest.mark.parametrize("lookup", ["lsearch", "sqlite"])
def test_a_roomy_mailbox_whose_name_holds_a_delimiter_is_not_refused_for_another_full_one(
    work: Path, exim: Exim, lookup: str, method: str
) -> None:
    """john-doe@ is a mailbox of its own (Exim's router delivers it there), with room; john@ is
    full. With folder_delimiter = "+-" (the example the config gives), the lookup of the whole
    local part finds no *flagged* row for john-doe, so it falls through to the lookup of "john"
    and refuses john-doe's mail as "Mailbox is full". The daemon takes the mailbox john-doe@
    itself (service._mailbox looks the whole address up first) and accepts."""
    site = _detail_site(work, exim, ["john", "john-doe", "sales+eu", "sales"], {"john", "sales"}, "+-", lookup, method)
    john, john_doe, sales_eu = exim.fake_session(f"john@{DOMAIN}", f"john-doe@{DOMAIN}", f"sales+eu@{DOMAIN}")
    assert john[0] == "5" and "Mailbox is full" in john, exim.last_session
    # The daemon's answer for the same recipients: john-doe and sales+eu are their own, not full.
    assert site.quotagate("check", f"john-doe@{DOMAIN}") == 0
    assert site.quotagate("check", f"sales+eu@{DOMAIN}") == 0
    assert [john_doe[:3], sales_eu[:3]] == ["250", "250"], exim.last_session
