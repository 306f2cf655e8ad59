"""A private OpenLDAP slapd: its own cn=config (with quotagate's shipped schema), loopback port."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from tests.servers.install import require_command, unavailable
from tests.servers.process import free_port, private_dir, spawn_as, stop, wait_for_port

if TYPE_CHECKING:
    import ldap3

SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PW = "test-secret"
PEOPLE = f"ou=people,{SUFFIX}"

CONFIG = """\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {work}/slapd.pid

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif
include: file:///etc/ldap/schema/cosine.ldif
include: file:///etc/ldap/schema/inetorgperson.ldif
include: file://{schema}

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcSizeLimit: unlimited

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcDbDirectory: {work}/data
olcSuffix: {suffix}
olcRootDN: {admin}
olcRootPW: {password}
olcDbIndex: objectClass eq
olcDbIndex: mail eq
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to * by * read
olcLimits: * size=unlimited
"""

BASE = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: example
dc: example

dn: {PEOPLE}
objectClass: organizationalUnit
ou: people
"""


@dataclass(frozen=True)
class Slapd:
    port: int

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def connection(self) -> ldap3.Connection:
        import ldap3  # only for the tests that start slapd

        return ldap3.Connection(ldap3.Server(self.url), ADMIN_DN, ADMIN_PW, auto_bind=True, raise_exceptions=True)

    def new_tree(self) -> str:
        """A fresh organizational unit for one test's mailboxes; returns its DN."""
        name = f"t{uuid.uuid4().hex[:12]}"
        dn = f"ou={name},{PEOPLE}"
        conn = self.connection()
        try:
            conn.add(dn, ["organizationalUnit"], {"ou": name})  # type: ignore[no-untyped-call]  # ldap3 stubs
        finally:
            conn.unbind()
        return dn

    def add_mailbox(self, tree: str, uid: str, address: str, quota: int, **extra: object) -> str:
        dn = f"uid={uid},{tree}"
        conn = self.connection()
        try:
            conn.add(  # type: ignore[no-untyped-call]  # ldap3 stubs
                dn,
                ["inetOrgPerson", "quotagateMailbox"],
                {"cn": uid, "sn": uid, "mail": address, "quotagateQuota": quota, **extra},
            )
        finally:
            conn.unbind()
        return dn

    def toml(self, tree: str, work: Path) -> str:
        """quotagate's [store] section for a tree of this server."""
        return (
            f'[store]\nurl = "{self.url}"\nstate = "sqlite:///{work}/state.db"\n'
            f'[store.ldap]\nbind_dn = "{ADMIN_DN}"\npassword = "{ADMIN_PW}"\nbase = "{tree}"\n'
            'filter = "(objectClass=inetOrgPerson)"\n'
        )


@contextmanager
def private_slapd() -> Iterator[Slapd]:
    slapd = require_command("slapd", "slapd", "ldap-utils")
    slapadd = require_command("slapadd", "slapd")
    work = private_dir("slapd")
    (work / "data").mkdir()
    (work / "slapd.d").mkdir()
    port = free_port()
    log = work / "slapd.log"
    schema = Path(str(files("quotagate") / "data" / "quotagate.ldif"))
    config = work / "config.ldif"
    config.write_text(CONFIG.format(work=work, schema=schema, suffix=SUFFIX, admin=ADMIN_DN, password=ADMIN_PW))
    (work / "base.ldif").write_text(BASE)
    try:
        for args in (
            [slapadd, "-n0", "-F", str(work / "slapd.d"), "-l", str(config)],
            [slapadd, "-n1", "-F", str(work / "slapd.d"), "-l", str(work / "base.ldif")],
        ):
            done = subprocess.run(args, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(args)}: {done.stdout}{done.stderr}")
        proc = spawn_as(None, [slapd, "-d", "0", "-F", str(work / "slapd.d"), "-h", f"ldap://127.0.0.1:{port}/"], log)
        try:
            wait_for_port(port, proc, log)
            yield Slapd(port)
        finally:
            stop(proc)
    except RuntimeError as exc:
        unavailable(f"cannot start a private slapd: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
