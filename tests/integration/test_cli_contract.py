"""The CLI against DESIGN.md's contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.cli import main
from tests.policy.conftest import FULL, make_site


def test_check_names_the_decision_the_daemon_gives_with_on_full_defer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: `[policy] on_full = "defer"` (the README: a full mailbox then gets `452 4.2.2
    Mailbox is full` from the daemon, a temporary refusal). The admin asks
    `quotagate check full@example.org` to see what the daemon answers.
    Expected (DESIGN.md: "`quotagate check ADDRESS` — the decision the daemon would give", one
    of accept, reject, defer, dunno): `defer`. (It printed "reject: mailbox is at or over its
    size limit", the rule's action before on_full turns it into a deferral, telling the admin
    senders get a permanent 552 when they get a 452.)"""
    site = make_site(tmp_path)
    config = tmp_path / "quotagate.toml"
    config.write_text(site.toml(on_full="defer"))
    code = main(["--config", str(config), "check", FULL])
    first = capsys.readouterr().out.splitlines()[0]
    assert code == 1
    assert first.startswith("defer"), first


TOO_BIG = "99999999999999999999"  # bytes: a few zeros too many, past what a BIGINT column holds


@pytest.mark.parametrize(
    ("args", "csv"),
    [
        (["mailbox", "add", "big@example.org", "--quota", TOO_BIG], None),
        (["mailbox", "add", "big@example.org", "--quota", "1M", "--messages", TOO_BIG], None),
        (["mailbox", "import"], f"address,quota\nbig@example.org,{TOO_BIG}\n"),
    ],
    ids=["add-quota", "add-messages", "import"],
)
def test_a_limit_too_large_to_store_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], csv: str | None
) -> None:
    """Scenario: the admin types a limit with a few zeros too many (`--quota
    99999999999999999999`, `--messages ...`, or such a quota in a CSV for `mailbox import`).
    Expected (DESIGN.md: "Sizes accept 500M, 2G, 1.5GiB, plain bytes; bad values are a clear
    error naming the key"; README: all rows or none, every bad line named): exit 2 with one
    line naming the option or the CSV line (not "OverflowError: Python int too large to convert
    to SQLite INTEGER", a traceback and exit 1)."""
    site = make_site(tmp_path)
    config = tmp_path / "quotagate.toml"
    config.write_text(site.toml())
    if csv is not None:
        (tmp_path / "big.csv").write_text(csv)
        args = [*args, str(tmp_path / "big.csv")]
    try:
        code = main(["--config", str(config), *args])
    except OverflowError as exc:
        pytest.fail(f"a traceback: {exc!r}")
    err = capsys.readouterr().err
    assert code == 2, err
