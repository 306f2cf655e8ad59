"""``exim-config --debian --write`` run again on a configuration the admin already finished, as
README's "Debian in ten minutes" says to after a change, and into a file the admin keeps private.

The same copy of Debian's /etc/exim4 as tests/mta/test_exim_debian.py, built by update-exim4.conf
and asked by ``exim -bh``: what is written must leave a configuration that still refuses the full
mailbox, and files that are no more readable than the admin left them.
"""

from __future__ import annotations

import grp
import os
import re
import stat
import uuid
from pathlib import Path

import pytest

from quotagate.mta import debian
from tests.mta.test_exim_debian import FULL, check_every_client, refused_full, set_up
from tests.servers.debian_exim import OUTSIDE, DebianExim
from tests.servers.mariadb import PASSWORD

pytestmark = [pytest.mark.servers, pytest.mark.mta]


def write_args(layout: str, method: str, lookup: str, server: DebianExim) -> list[str]:
    args = ["exim-config", "--debian", f"--{layout}", "--method", method, "--lookup", lookup]
    return [*args, "--confdir", str(server.confdir), "--write", str(server.confdir)]


def macros_file(server: DebianExim) -> Path:
    return server.confdir / (debian.MACROS if server.split else debian.LOCALMACROS)


@pytest.mark.parametrize("layout", ["split", "non-split"])
def test_writing_again_keeps_the_database_password_the_admin_put_in(
    request: pytest.FixtureRequest, work: Path, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: Debian's Exim with the ACL method on a MariaDB store. The admin runs
    `exim-config --debian --write /etc/exim4`, puts the password in place of PASSWORD (step 4)
    and runs update-exim4.conf: the full mailbox is refused. Later they change something (here:
    nothing) and run `--write` again, as step 3 says, then update-exim4.conf.
    Expected: the password stays (and --write says it kept it), the file stays private, and the
    full mailbox is still refused for every client; a lookup never fails for a lost password."""
    site, server, _ = set_up(request, work, layout, "acl", "mysql")
    main = macros_file(server)
    capsys.readouterr()

    assert site.quotagate(*write_args(layout, "acl", "mysql", server)) == 0
    server.build()
    check_every_client(server)
    assert f"/{PASSWORD}\n" in main.read_text() and "/PASSWORD" not in main.read_text()
    assert not main.stat().st_mode & 0o007, oct(main.stat().st_mode)
    assert f"kept the mysql server's user and password already in {main}" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["split", "non-split"])
def test_writing_for_a_moved_store_refuses_rather_than_lose_the_password(
    request: pytest.FixtureRequest, work: Path, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: as above, with the password in place; then the store moves to another database
    (`[store] url` changed, migrated, scanned) and the admin runs `--write` again.
    Expected: nothing is written and the error names the file and the line to edit, since the
    admin's user and password may not be the ones for the new database: Exim keeps refusing with
    the configuration it has. Once the admin points that line at the new database, `--write`
    keeps it, and the rebuilt configuration refuses the full mailbox from the new database."""
    site, server, _ = set_up(request, work, layout, "acl", "mysql")
    main = macros_file(server)
    before = {path: path.read_text() for path in server.confdir.rglob("*quotagate*") if path.is_file()}
    database = f"qg_{uuid.uuid4().hex[:12]}"
    moved = request.getfixturevalue("mariadb").create_database(database)
    site.config.write_text(re.sub(r'^url = ".*"$', f'url = "{moved}"', site.config.read_text(), flags=re.M))
    assert site.quotagate("db", "migrate") == 0
    site.full_and_roomy()
    capsys.readouterr()

    assert site.quotagate(*write_args(layout, "acl", "mysql", server)) == 2
    error = capsys.readouterr().err
    assert str(main) in error and "mysql_servers" in error and database in error, error
    assert PASSWORD not in error  # the old line is not shown: it holds the password
    assert {path: path.read_text() for path in before} == before
    server.build()
    assert refused_full(server.session(OUTSIDE, FULL)[0]), server.last_session

    # What the error says to do: the line names the new database, with the admin's credentials.
    line = re.compile(r"(_servers = .*/)[^/\n]+(/[^/\n]+/[^/\n]+)$", re.M)
    main.write_text(line.sub(rf"\g<1>{database}\2", main.read_text()))
    assert site.quotagate(*write_args(layout, "acl", "mysql", server)) == 0
    assert f"/{database}/" in main.read_text() and f"/{PASSWORD}\n" in main.read_text()
    server.build()
    check_every_client(server)


def test_writing_into_the_admins_private_localmacros_keeps_it_private(
    request: pytest.FixtureRequest, work: Path
) -> None:
    """Scenario: a non-split Debian configuration whose exim4.conf.localmacros the admin keeps
    root:Debian-exim 0640, because it holds a secret of theirs (a macro with a password, as
    quotagate's own note recommends for such files). They run `quotagate exim-config --debian
    --non-split --method acl --write /etc/exim4` with an SQLite store (no password of quotagate's
    in the block).
    Expected: quotagate's block is merged in, the admin's lines stay, the file keeps its owner,
    group and mode (never world-readable), and the configuration built from it refuses the full
    mailbox for every client."""
    site, server, _ = set_up(request, work, "non-split", "acl", "sqlite")
    macros = server.confdir / debian.LOCALMACROS
    admin = server.admin_macros() + "MY_DB_PASSWORD = hunter2\n"
    exim_gid = grp.getgrnam("Debian-exim").gr_gid
    macros.write_text(admin)  # as if quotagate had never written there
    os.chown(macros, 0, exim_gid)
    macros.chmod(0o640)

    assert site.quotagate(*write_args("non-split", "acl", "sqlite", server)) == 0
    text = macros.read_text()
    assert text.startswith(admin) and debian.BEGIN in text and debian.END in text, text
    st = macros.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, exim_gid, 0o640), (st, oct(st.st_mode))
    server.build()
    check_every_client(server)
