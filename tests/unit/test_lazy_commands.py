"""Commands load on first use, without the cyclic garbage collector running meanwhile."""

from __future__ import annotations

import gc
import importlib
from collections.abc import Iterator
from types import ModuleType

import click
import pytest

from quotagate.cli import app


@pytest.fixture
def gc_state() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    (gc.enable if enabled else gc.disable)()


@pytest.mark.parametrize("enabled", [True, False])
def test_a_command_is_imported_with_the_collector_paused_and_its_state_restored(
    monkeypatch: pytest.MonkeyPatch, gc_state: None, enabled: bool
) -> None:
    # Importing a command (the config schema, the store) allocates ~100,000 objects, no garbage:
    # a collection pass meanwhile only walks them, ~15 ms of every cron scan.
    (gc.enable if enabled else gc.disable)()
    seen: list[bool] = []

    def recording(name: str) -> ModuleType:
        seen.append(gc.isenabled())
        return importlib.import_module(name)

    monkeypatch.setattr(app, "import_module", recording)
    group = app.LazyGroup()
    command = group.get_command(click.Context(group), "scan")
    assert command is not None and command.name == "scan"
    assert seen == [False]
    assert gc.isenabled() is enabled
