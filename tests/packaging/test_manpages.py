"""The man pages hold every command, option and config key, as the code defines them now."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import msgspec
from msgspec import Struct

from quotagate.cli import cli
from quotagate.config import Config, as_toml
from quotagate.manpages import MORE, config_keys, section_description, sections
from tests.packaging.conftest import rendered


def _commands(command: click.Command, path: str) -> list[tuple[str, click.Command]]:
    """Through list_commands/get_command: the root group loads its commands only when asked."""
    found = [(path, command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            found += _commands(sub, f"{path} {name}")
    return found


def _keys(model: type[Struct], section: str) -> list[tuple[str, str, msgspec.structs.FieldInfo]]:
    """(section, key, field) for every leaf key of the schema."""
    found = []
    for field in msgspec.structs.fields(model):
        key = field.encode_name
        element = getattr(field.type, "__args__", (None,))[0]
        if isinstance(field.type, type) and issubclass(field.type, Struct):
            found += _keys(field.type, f"{section}.{key}".lstrip("."))
        elif isinstance(element, type) and issubclass(element, Struct):
            found += _keys(element, f"{section}.{key}".lstrip("."))
        else:
            found.append((section, key, field))
    return found


def test_quotagate_1_has_every_command_and_option(manpath: Path) -> None:
    text = rendered(manpath / "man1" / "quotagate.1")
    for path, command in _commands(cli, "quotagate"):
        assert path in text
        assert " ".join((command.help or "").split()).split(".")[0] in text, path
        for param in command.params:
            if isinstance(param, click.Option) and param.hidden:
                continue  # between quotagate's own processes (serve --worker), not for admins
            for opt in getattr(param, "opts", []) if isinstance(param, click.Option) else []:
                assert f"{opt}" in text, (path, opt)
            if isinstance(param, click.Option) and param.help:
                assert " ".join(param.help.split()) in text, (path, param.name)
    assert "--version" in text
    assert "/etc/quotagate/quotagate.toml" in text
    assert "QUOTAGATE_CONFIG" in text
    assert "quotagate.toml(5)" in text


def test_quotagate_toml_5_has_every_key_with_type_and_default(manpath: Path) -> None:
    text = rendered(manpath / "man5" / "quotagate.toml.5")
    defaults = as_toml(Config())
    keys = _keys(Config, "")
    assert len(keys) > 50
    titles = dict(sections())
    for section, key, field in keys:
        header = f"[[{section}]]" if section == "folders" else f"[{section}]"
        # The section's title, not a mention of it in another section's text ("[policy] grace").
        intro = section_description(section, titles[section]).replace("`", "").split()[:2]
        start = text.index(" ".join([header, *intro]))
        entry = text[text.index(f" {key} — ", start) :][:300]
        if field.required:
            expected = "required"
        elif field.default is None:
            expected = "unset"
        elif section == "folders":
            expected = json.dumps(as_toml(field.default))
        else:
            value: Any = defaults
            for part in [*section.split("."), key]:
                value = value[part]
            expected = json.dumps(value, ensure_ascii=False)
        assert f", default {expected} " in entry, (section, key, entry)


def test_every_key_has_a_description() -> None:
    described = {(k.section, k.name): k.description for k in config_keys()}
    assert sorted(described) == sorted((section, key) for section, key, _ in _keys(Config, ""))
    assert [k for k, text in described.items() if len(text.split()) < 2] == []
    named = {section for section, _ in sections()} | {f"{section}.{key}" for section, key in described}
    assert set(MORE) - named == set()  # no description of a key the schema no longer has


def test_types_name_what_toml_takes(manpath: Path) -> None:
    text = rendered(manpath / "man5" / "quotagate.toml.5")
    assert 'format — one of "maildir", "mbox", "auto"' in text
    assert "threshold — percentage" in text
    assert "quota_unit — size" in text
    assert "grace — size or percentage" in text
    assert "extra_roots — list of paths" in text
