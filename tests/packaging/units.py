"""Reading and verifying the systemd units, shared by the source-tree test and the .deb test."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.servers.install import require_command

SOURCE = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
UNITS = [
    "quotagate.service",
    "quotagate-watch.service",
    "quotagate-scan.service",
    "quotagate-scan.timer",
    "quotagate-scan-loop.service",
    "quotagate-warn.service",
    "quotagate-warn.timer",
]


def settings(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, a key's values in order (systemd allows repeats)."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def verify(units: list[Path], manpath: Path | None = None) -> None:
    """``systemd-analyze verify``: it runs without systemd as PID 1, and checks the ExecStart=
    binaries and the man: links in Documentation= (through ``man``, so MANPATH counts)."""
    analyze = require_command("systemd-analyze", "systemd")
    env = {**os.environ, **({"MANPATH": str(manpath)} if manpath else {})}
    done = subprocess.run([analyze, "verify", *map(str, units)], env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
