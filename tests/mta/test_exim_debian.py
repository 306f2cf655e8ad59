"""Debian's own Exim configuration with the files ``exim-config --debian --write`` leaves.

A copy of the machine's /etc/exim4 (exim4-config as Debian ships it), split and non-split, built
by update-exim4.conf and checked by Exim, then fake SMTP sessions (``exim -bh``) from the three
kinds of client Debian's acl_check_rcpt treats differently: one relayed (127.0.0.1, which Debian
always puts in relay_from_hosts), one authenticated, one from outside. The first two are accepted
by Debian's ACL before any local check: quotagate's wrapper must still refuse a full mailbox for
them, and a store or daemon that cannot be asked must still let the mail in, with a log line.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from quotagate.mta import debian
from quotagate.mta import exim as exim_config
from tests.mta.conftest import DOMAIN, Site, make_site
from tests.servers.daemon import PolicyDaemon, policy_daemon
from tests.servers.debian_exim import CLIENTS, DebianExim
from tests.servers.mariadb import PASSWORD
from tests.servers.process import free_port

pytestmark = [pytest.mark.servers, pytest.mark.mta]

MAILBOX_ROUTER = f"""\
test_mailboxes:
  driver = accept
  domains = {DOMAIN}
  local_parts = full : roomy
  transport = LOCAL_DELIVERY
"""
# (method, lookup): both lookup methods on SQLite and on a MariaDB server, and the daemon.
CASES = [("router", "sqlite"), ("acl", "sqlite"), ("router", "mysql"), ("acl", "mysql"), ("policy", "")]
IDS = [f"{method}-{lookup}" if lookup else method for method, lookup in CASES]
FULL, ROOMY, STRANGER = (f"{local}@{DOMAIN}" for local in ("full", "roomy", "stranger"))


def store_toml(request: pytest.FixtureRequest, work: Path, lookup: str, port: int) -> str:
    if lookup == "mysql":
        url = str(request.getfixturevalue("mariadb").create_database(f"qg_{uuid.uuid4().hex[:12]}"))
    else:
        (work / "db").mkdir()
        (work / "db").chmod(0o755)
        url = f"sqlite:///{work}/db/q.db"
    return f'[store]\nurl = "{url}"\n[policy]\nlisten = ["127.0.0.1:{port}"]\nmetrics = ""\n'


@pytest.fixture(params=["split", "non-split"])
def layout(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def set_up(
    request: pytest.FixtureRequest, work: Path, layout: str, method: str, lookup: str
) -> tuple[Site, DebianExim, int]:
    port = free_port()
    site = make_site(work, store_toml(request, work, lookup, port))
    assert site.quotagate("db", "migrate") == 0
    site.full_and_roomy()

    server = DebianExim(work, DOMAIN, split=layout == "split")
    args = ["exim-config", "--debian", f"--{layout}", "--method", method, "--confdir", str(server.confdir)]
    args += ["--lookup", lookup] if lookup else []
    assert site.quotagate(*args, "--write", str(server.confdir)) == 0
    main = server.confdir / (debian.MACROS if layout == "split" else debian.LOCALMACROS)
    if lookup == "mysql":
        assert "PASSWORD" in main.read_text() and not main.stat().st_mode & 0o007
        main.write_text(main.read_text().replace("/PASSWORD", f"/{PASSWORD}"))  # as the admin does
    snippet = server.confdir / debian.ROUTER_SNIPPET
    server.add_mailbox_router(MAILBOX_ROUTER, snippet.read_text() if snippet.exists() else "")
    server.build()
    return site, server, port


def refused_full(reply: str) -> bool:
    return reply.startswith("552 5.2.2") and "Mailbox is full" in reply


def check_every_client(server: DebianExim) -> None:
    for name, client in CLIENTS.items():
        full, again, roomy, stranger = server.session(client, FULL, FULL, ROOMY, STRANGER)
        assert refused_full(full) and refused_full(again), (name, full, again, server.last_session[-6000:])
        assert roomy.startswith("250"), (name, roomy, server.last_session)
        # Debian's ACL accepts relayed and authenticated clients before it verifies recipients:
        # proof that these sessions took that path, where a check in CHECK_RCPT_LOCAL_ACL_FILE
        # would never run.
        if name == "outside":
            assert stranger.startswith("550"), (name, stranger)
        else:
            assert stranger.startswith("250"), (name, stranger)


def check_accepts_and_logs(server: DebianExim, log_line: str) -> None:
    for name, client in CLIENTS.items():
        full, roomy = server.session(client, FULL, ROOMY)
        assert full.startswith("250") and roomy.startswith("250"), (name, server.last_session)
        assert log_line.replace("$local_part@$domain", FULL) in server.last_session, (name, server.last_session)


@pytest.mark.parametrize(("method", "lookup"), [c for c in CASES if c[0] != "policy"], ids=IDS[:-1])
def test_lookup_methods_refuse_for_every_client_and_fail_open(
    request: pytest.FixtureRequest, work: Path, layout: str, method: str, lookup: str
) -> None:
    site, server, _ = set_up(request, work, layout, method, lookup)
    check_every_client(server)
    if lookup == "mysql":
        assert server.output_is_private(), oct(server.output.stat().st_mode)

    # The store cannot be asked: the file is gone, or the server does not answer.
    if lookup == "sqlite":
        db = site.work / "db" / "q.db"
        db.rename(db.with_name("moved.db"))
    else:
        main = server.confdir / (debian.MACROS if layout == "split" else debian.LOCALMACROS)
        main.write_text(re.sub(r"(_servers = [^/\n]*?)::\d+", r"\1::1", main.read_text()))
        server.build()
    check_accepts_and_logs(server, exim_config.LOG_FAILED)


@pytest.fixture
def daemon_site(request: pytest.FixtureRequest, work: Path, layout: str) -> Iterator[tuple[DebianExim, PolicyDaemon]]:
    site, server, port = set_up(request, work, layout, "policy", "")
    with policy_daemon(site.config, port) as daemon:
        yield server, daemon


def test_policy_method_refuses_for_every_client_and_fails_open(daemon_site: tuple[DebianExim, PolicyDaemon]) -> None:
    server, daemon = daemon_site
    check_every_client(server)
    assert daemon.stop() == 0
    check_accepts_and_logs(server, exim_config.LOG_UNREACHABLE)
