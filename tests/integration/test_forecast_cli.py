"""Forecasts in ``report`` (JSON, table, filters) and ``check``, from a synthetic history."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from quotagate.cli import main
from quotagate.history import DAY, Sample
from quotagate.store import open_store
from tests.spoolgen import add_message, maildir_folder


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    """grow@example.org at 900 of 1000 bytes, 50 bytes a day for 13 days: full in about 2 days;
    flat@other.org at 100 of 1000, the same for 13 days; new@example.org has no history."""
    spool = tmp_path / "spool"
    for domain, local, size in (("example.org", "grow", 900), ("other.org", "flat", 100), ("example.org", "new", 10)):
        add_message(maildir_folder(spool / domain / local / "Maildir"), size)
    config = tmp_path / "q.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/q.db"\n[spool]\nroot = "{spool}"\n')
    for address in ("grow@example.org", "flat@other.org", "new@example.org"):
        assert run(config, "mailbox", "add", address, "--quota", "1000") == 0
    assert run(config, "scan") == 0
    now = time.time()
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    try:
        store.record_history([Sample("grow@example.org", now - d * DAY, 900 - 50 * d, 1) for d in range(1, 14)])
        store.record_history([Sample("flat@other.org", now - d * DAY, 100, 1) for d in range(1, 14)])
    finally:
        store.close()
    return config


def run(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


def _json(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, dict[str, object]]:
    assert run(config, "report", "--format", "json", *args) == 0
    return {r["address"]: r for r in json.loads(capsys.readouterr().out)}


def test_report_json_has_forecast_full_at(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    before = time.time()
    report = _json(setup, capsys)
    full_at = report["grow@example.org"]["forecast_full_at"]
    assert isinstance(full_at, float) and 1.5 * DAY < full_at - before < 2.5 * DAY
    assert report["grow@example.org"]["forecast"] == "full in about 2 days"
    assert report["flat@other.org"]["forecast_full_at"] is None
    assert report["flat@other.org"]["forecast"] == "not filling"
    assert report["new@example.org"]["forecast_full_at"] is None


def test_report_filters(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert set(_json(setup, capsys, "--domain", "other.org")) == {"flat@other.org"}
    assert set(_json(setup, capsys, "--domain", "Example.ORG")) == {"grow@example.org", "new@example.org"}
    assert set(_json(setup, capsys, "--above", "90%")) == {"grow@example.org"}
    assert set(_json(setup, capsys, "--above", "5")) == {"grow@example.org", "flat@other.org"}
    assert set(_json(setup, capsys, "--filling")) == {"grow@example.org"}
    assert set(_json(setup, capsys, "--filling", "1")) == set()
    assert set(_json(setup, capsys, "--filling", "--domain", "other.org")) == set()
    assert run(setup, "report", "--above", "lots") == 2


def test_report_table_and_check_show_the_forecast(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(setup, "report") == 0
    out = capsys.readouterr().out
    assert "full in about 2 days" in out and "not filling" in out
    assert run(setup, "check", "grow@example.org") == 0
    assert "  forecast  full in about 2 days (+50B a day)" in capsys.readouterr().out.splitlines()
    assert run(setup, "check", "flat@other.org") == 0
    assert "  forecast  not filling" in capsys.readouterr().out.splitlines()
