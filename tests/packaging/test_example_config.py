"""The example config the package installs as /etc/quotagate/quotagate.toml, read by the real parser.

Its convention (sshd's, Dovecot's): every key appears, commented out as ``#key = value``, showing its
default; where the default is "unset" or there is none, a value that shows the form. Prose comments
start with ``# ``.
"""

from __future__ import annotations

import re
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any

from quotagate.config import Config, as_toml, load_config, parse_config
from quotagate.manpages import config_keys, sections

EXAMPLE = Path(str(files("quotagate") / "data" / "quotagate.toml"))
HEADER = re.compile(r"^#?\[\[?([\w.]+)\]\]?$")
KEY = re.compile(r"^#(\w+) = (.+)$")


def _commented() -> list[tuple[str, str, Any]]:
    """(section, key, value) for every ``#key = value`` line, under the header above it."""
    found, section = [], ""
    for line in EXAMPLE.read_text().splitlines():
        if header := HEADER.match(line):
            section = header[1]
        elif key := KEY.match(line):
            found.append((section, key[1], tomllib.loads(f"v = {key[2]}")["v"]))
    return found


def _nested(section: str, table: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = table
    for part in reversed(section.split(".")):
        data = {part: data}
    return data


def test_loads_through_the_real_parser_and_changes_no_default() -> None:
    """Installing the package sets nothing: a default changed in a later release applies."""
    assert load_config(EXAMPLE) == Config()


def test_every_section_and_key_is_there() -> None:
    headers = {m[1] for line in EXAMPLE.read_text().splitlines() if (m := HEADER.match(line))}
    assert headers == {name for name, _ in sections()}
    shown = {(section, key) for section, key, _ in _commented()}
    assert {(k.section, k.name) for k in config_keys()} - shown == set()


def test_every_value_shown_is_the_default_or_a_valid_example() -> None:
    defaults = {(k.section, k.name): k for k in config_keys()}
    folder: dict[str, Any] = {}
    for section, key, value in _commented():
        assert (section, key) in defaults, f"{section}.{key} is not in the schema"
        if section == "folders":
            folder[key] = value
            continue
        table = {"schema": "classic", "columns": {key: value}} if section == "store.columns" else None
        parse_config(_nested("store", table) if table else _nested(section, {key: value}), f"{section}.{key}")
        if defaults[section, key].default not in ("unset", "required"):
            dumped = as_toml(Config())
            for part in [*section.split("."), key]:
                dumped = dumped[part]
            shown = as_toml(parse_config(_nested(section, {key: value})))
            for part in [*section.split("."), key]:
                shown = shown[part]
            assert shown == dumped, f"{section}.{key} shows {value!r}, the default is {dumped!r}"
    assert parse_config({"folders": [folder]}).folders[0].match
