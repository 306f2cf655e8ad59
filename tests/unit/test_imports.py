"""What a command costs before it does anything: each heavy library loads only where it is needed.

Run in a fresh interpreter: the test process has long imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sqlalchemy", "rich", "pydantic", "ldap3", "prometheus_client", "quotagate.policy", "quotagate.watch")


def loaded_after(code: str) -> list[str]:
    """The heavy modules (and their submodules) loaded once ``code`` ran in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    names = json.loads(out.splitlines()[-1])
    return sorted({h for h in HEAVY for n in names if n == h or n.startswith(h + ".")})


def test_importing_the_cli_loads_no_store_terminal_or_daemon_library() -> None:
    assert loaded_after("import quotagate.cli") == []


def test_version_loads_nothing_heavy() -> None:
    assert loaded_after("from quotagate.cli import main\nmain(['--version'])") == []


def test_a_scan_loads_no_terminal_or_daemon_library() -> None:
    """scan needs the config and the store, never rich (off a terminal) nor the daemon."""
    assert loaded_after("import quotagate.cli.scan") == ["pydantic"]
