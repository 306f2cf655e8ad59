"""Commands load on first use, without the cyclic garbage collector running meanwhile, and what
they load is frozen: never walked by the collector again."""

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
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


@pytest.mark.parametrize("enabled", [True, False])
def test_a_command_is_imported_with_the_collector_paused_and_what_it_loaded_frozen(
    monkeypatch: pytest.MonkeyPatch, gc_state: None, enabled: bool
) -> None:
    # Importing a command (the config schema, the store) allocates ~100,000 objects, no garbage:
    # a collection pass meanwhile, or any later one, would only walk them again.
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
    assert gc.get_freeze_count() > 0
