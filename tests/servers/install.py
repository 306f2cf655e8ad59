"""Installing what a real-server test needs, without starting or touching system services."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def unavailable(reason: str) -> None:
    """Skip the test, except under CI, where a missing server fails the run and says why."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"needs a real server: {reason}", pytrace=False)
    pytest.skip(reason)


def apt_install(*packages: str) -> None:
    """``apt-get install`` with a policy-rc.d that keeps the packages' services from starting.

    An existing policy-rc.d is left alone; one we create is removed afterwards.
    """
    if os.geteuid() != 0:
        unavailable(f"installing {' '.join(packages)} needs root")
    created = False
    if not POLICY_RC_D.exists():
        POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
        created = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        # Other test runs on the machine may hold dpkg's lock: wait for it rather than fail.
        wait = ["-o", "DPkg::Lock::Timeout=600"]
        for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *wait, *packages]):
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0 and args[1] == "install":
                unavailable(f"apt-get install {' '.join(packages)} failed: {done.stderr[-2000:]}")
    finally:
        if created:
            POLICY_RC_D.unlink(missing_ok=True)


def installed(package: str) -> bool:
    """Whether dpkg has ``package`` installed."""
    query = ["dpkg-query", "-W", "-f=${Status}", package]
    done = subprocess.run(query, capture_output=True, text=True, check=False)
    return done.returncode == 0 and done.stdout.strip() == "install ok installed"


def require_package_command(command: str, package: str) -> str:
    """The path of ``command`` from ``package``, installing the package when dpkg does not have
    it, even if another package gives the command: maildrop pulls in exim4-daemon-light as its
    MTA, whose ``exim4`` lacks the lookups the heavy daemon has."""
    if not installed(package):
        apt_install(package)
        if not installed(package):
            unavailable(f"{package} is still not installed after apt-get install")
    return require_command(command, package)


def require_command(command: str, *packages: str) -> str:
    """The path of ``command``, installing ``packages`` first when it is missing."""
    found = shutil.which(command) or (f"/usr/sbin/{command}" if Path(f"/usr/sbin/{command}").exists() else None)
    if found:
        return found
    apt_install(*packages)
    found = shutil.which(command) or (f"/usr/sbin/{command}" if Path(f"/usr/sbin/{command}").exists() else None)
    if not found:
        unavailable(f"{command} is still missing after installing {' '.join(packages)}")
    assert found is not None
    return found
