"""What a command costs before it does anything: each heavy library loads only where it is needed.

Run in a fresh interpreter: the test process has long imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from quotagate.model import Limits, Mailbox
from quotagate.store import open_store

HEAVY = (
    "sqlalchemy",
    "rich",
    "ldap3",
    "prometheus_client",
    "quotagate.policy",
    "quotagate.watch",
    "multiprocessing",  # the scan's worker processes: only when enough mailboxes need reading
)


def loaded_after(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """The ``heavy`` modules (and their submodules) loaded once ``code`` ran in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    # Without coverage's measuring of every process (scripts/test): it loads multiprocessing itself.
    env = {k: v for k, v in os.environ.items() if k != "COVERAGE_PROCESS_START"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout
    names = json.loads(out.splitlines()[-1])
    return sorted({h for h in heavy for n in names if n == h or n.startswith(h + ".")})


def test_importing_the_cli_loads_no_store_terminal_or_daemon_library() -> None:
    assert loaded_after("import quotagate.cli") == []


def test_version_loads_nothing_heavy() -> None:
    assert loaded_after("from quotagate.cli import main\nmain(['--version'])") == []


def test_a_scan_loads_no_terminal_or_daemon_library() -> None:
    """scan needs the config and the store, never rich (off a terminal) nor the daemon."""
    assert loaded_after("import quotagate.cli.scan") == []


def test_scans_of_quotagates_sqlite_file_load_no_sqlalchemy(tmp_path: Path) -> None:
    """The default store, as cron scans it (first, then unchanged; usage history on): the standard
    library's sqlite3 serves it, SQLAlchemy loads only to create or migrate it."""
    for sub in ("cur", "new", "tmp"):
        (tmp_path / "spool" / "example.org" / "a" / "Maildir" / sub).mkdir(parents=True)
    url = f"sqlite:///{tmp_path}/q.db"
    config = tmp_path / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "{url}"\n[spool]\nroot = "{tmp_path}/spool"\n[publish]\nfile = "{tmp_path}/over"\n'
    )
    with open_store(url, migrate=True) as store:
        store.upsert_mailboxes([Mailbox("a@example.org", Limits(10))])
    scans = "\n".join(f"assert main(['-q', '-c', {str(config)!r}, 'scan']) == 0" for _ in range(2))
    assert loaded_after(f"from quotagate.cli import main\n{scans}") == []
    with open_store(url) as store:
        last = store.last_scan()
        assert last is not None and last.mailboxes == 1


def test_the_maildirsize_reader_process_loads_only_what_a_read_needs() -> None:
    """The daemon waits for its reader at start (and after the reader dies): no store, config,
    metrics, event loop or daemon module in it."""
    daemon = (
        "quotagate.policy.live",
        "quotagate.policy.files",
        "quotagate.policy.filereader",
        "quotagate.policy.service",
    )
    unwanted = (
        "asyncio",
        "quotagate.store",
        "quotagate.config",
        *daemon,
        *(h for h in HEAVY if h != "quotagate.policy"),
    )
    assert loaded_after("import quotagate.policy.reader", unwanted) == []
