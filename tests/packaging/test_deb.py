"""The .deb as an admin meets it: built by scripts/build-deb, installed with dpkg -i on this
machine (no systemd as PID 1, as in a container), used, then purged without a trace.

Marked ``deb`` (``-m 'not deb'`` skips it locally); under CI=true anything missing fails it.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.packaging.units import UNITS, verify
from tests.servers.install import require_command, unavailable

pytestmark = pytest.mark.deb

ROOT = Path(__file__).resolve().parents[2]
# What the package installs or its scripts create, and where dpkg keeps its own records of it.
TRACES = [
    "/opt/quotagate",
    "/etc/quotagate",
    "/usr/bin/quotagate",
    "/lib/systemd/system/quotagate*",
    "/usr/share/man/man*/quotagate*",
    "/usr/share/doc/quotagate",
    "/var/lib/dpkg/info/quotagate.*",
    "/etc/systemd/system/*/quotagate*",
]
ADMIN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}


def _listing() -> set[str]:
    found = set()
    for pattern in TRACES:
        for top in glob.glob(pattern):
            found.add(top)
            for folder, dirs, files in os.walk(top):
                found.update(os.path.join(folder, name) for name in dirs + files)
    return found


def _account(name: str) -> tuple[bool, bool]:
    def exists(lookup: Callable[[str], object]) -> bool:
        try:
            lookup(name)
        except KeyError:
            return False
        return True

    return exists(pwd.getpwnam), exists(grp.getgrnam)


def _run(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(args, env=ADMIN_ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


def test_build_install_use_and_purge(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("dpkg") is None:
        unavailable("installing a .deb needs root and dpkg")
    if subprocess.run(["dpkg", "-s", "quotagate"], capture_output=True).returncode == 0:
        unavailable("quotagate is installed as a package here: this test will not replace it")
    require_command("man", "man-db")
    require_command("adduser", "adduser")
    before, account = _listing(), _account("quotagate")
    assert account == (False, False), "a quotagate user exists without the package"

    deb = Path(_run(str(ROOT / "scripts" / "build-deb"), "--out", str(tmp_path), timeout=900).strip())
    assert deb.parent == tmp_path and deb.name.endswith(".deb")
    try:
        _run("dpkg", "-i", str(deb), timeout=300)

        assert _run("quotagate", "--version") == f"quotagate {version('quotagate')}\n"
        assert os.path.realpath("/usr/bin/quotagate") == "/opt/quotagate/bin/quotagate"
        assert Path("/opt/quotagate/bin/quotagate").read_text().startswith("#!/opt/quotagate/bin/python\n")
        assert os.path.realpath("/opt/quotagate/bin/python3").startswith("/usr/bin/python3")
        assert glob.glob("/opt/quotagate/lib/python3*/site-packages/quotagate/__pycache__/*.pyc")
        demo = _run("quotagate", "demo", "--dir", str(tmp_path / "demo"))
        assert "over-quota set for Exim's lsearch" in demo

        assert _run("man", "-w", "quotagate") == "/usr/share/man/man1/quotagate.1.gz\n"
        assert _run("man", "-w", "5", "quotagate.toml") == "/usr/share/man/man5/quotagate.toml.5.gz\n"
        verify([Path("/lib/systemd/system") / name for name in UNITS])

        conf = os.stat("/etc/quotagate/quotagate.toml")
        assert (conf.st_mode & 0o777, grp.getgrgid(conf.st_gid).gr_name) == (0o640, "quotagate")
        assert "/etc/quotagate/quotagate.toml" in _run("dpkg-query", "--showformat=${Conffiles}", "-W", "quotagate")
        assert _account("quotagate") == (True, True)
    finally:
        purge = subprocess.run(
            ["dpkg", "--purge", "quotagate"], env=ADMIN_ENV, capture_output=True, text=True, timeout=300
        )

    # dpkg warns of a directory of ours it cannot remove (a shared one, such as /opt, is fine).
    assert purge.returncode == 0, purge.stderr
    assert [path for path in re.findall(r"'([^']*)'", purge.stderr) if "quotagate" in path] == []
    assert _listing() == before
    assert _account("quotagate") == (False, False)
