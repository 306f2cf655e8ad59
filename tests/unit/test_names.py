"""Sizes from Maildir file names, and names made safe to show."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotagate.config import FolderRule
from quotagate.usage.folders import rule_for
from quotagate.usage.names import (
    disk_name,
    display_name,
    imap_canonical,
    imap_encoded,
    imap_name,
    size_from_name,
    unique_part,
)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("1700000000.M1P2.host,S=1234,W=1260:2,S", 1234),
        ("1700000000.M1P2.host,S=1234:2,S", 1234),  # value ends at ":"
        ("1700000000.M1P2.host,S=1234", 1234),  # value ends at the end of the name
        ("1700000000.M1P2.host,S=1234,W=1260", 1234),  # value ends at ","
        ("1700000000.M1P2.host,W=1260,S=99:2,", 99),  # S= need not come first
        ("1700000000.M1P2.host,S=0:2,S", 0),
        ("1700000000.M1P2.host,S=007:2,S", 7),
        ("1700000000.M1P2.host,S=" + "9" * 18, 10**18 - 1),  # the longest value still taken
    ],
)
def test_size_from_name_reads_s_value(name: str, size: int) -> None:
    assert size_from_name(name) == size


@pytest.mark.parametrize(
    "name",
    [
        "1700000000.M1P2.host",  # no S= at all
        "1700000000.M1P2.host:2,S",  # the S flag is not a size
        "1700000000.M1P2.host:2,FRS",
        "1700000000.M1P2.host,S=abc:2,S",
        "1700000000.M1P2.host,S=12a4:2,S",
        "1700000000.M1P2.host,S=:2,S",  # empty value ending at ":"
        "1700000000.M1P2.host,S=,W=12",  # empty value ending at ","
        "1700000000.M1P2.host,S=",  # empty value at the end
        "1700000000.M1P2.host,S=" + "1" * 25 + ":2,S",  # 25 digits: garbage, not a size
        "1700000000.M1P2.host,S=" + "1" * 19,  # one digit too many
        "1700000000.M1P2.host,S=\u00b2:2,S",  # superscript two: isdigit() but not a size
        "1700000000.M1P2.host,S=\u0663\u0664:2,S",  # Arabic-Indic digits
        "1700000000.M1P2.host,S=\uff11\uff12:2,S",  # fullwidth digits
        "1700000000.M1P2.host,S=-5:2,S",
        "1700000000.M1P2.host,S= 5:2,S",
        "1700000000.M1P2.host:2,S=1234",  # S= after the colon is part of the info
        "1700000000.M1P2.host:2,a,S=1234",
        "1700000000.M1P2.host,s=1234:2,S",  # lower case s is not the size field
        "1700000000.M1P2.host S=1234:2,S",  # not introduced by a comma
    ],
)
def test_size_from_name_rejects_unusable_values(name: str) -> None:
    assert size_from_name(name) is None


def test_flags_containing_s_after_colon_never_give_a_size() -> None:
    # The unique part has a genuine size; flags and junk after ":" must not change it.
    for info in (":2,S", ":2,S=5", ":2,,S=77,S=88", ":1,S=3"):
        assert size_from_name("1.M2.h,S=42" + info) == 42
        assert size_from_name("1.M2.h" + info) is None


_junk = st.text(
    alphabet=st.characters(exclude_characters=":,", exclude_categories=["Cs"]),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=10**18 - 1),
    zeros=st.integers(min_value=0, max_value=3),
    before=_junk,
    fields_after=st.lists(_junk, max_size=3),
    info=st.none() | _junk,
)
def test_size_round_trips_through_any_surrounding_junk(
    size: int, zeros: int, before: str, fields_after: list[str], info: str | None
) -> None:
    digits = "0" * zeros + str(size)
    name = before + ",S=" + digits + "".join("," + f for f in fields_after)
    if info is not None:
        name += ":2," + info
    expected = size if len(digits) <= 18 else None
    assert size_from_name(name) == expected


@settings(max_examples=100, deadline=None)
@given(before=_junk, size=st.integers(min_value=0, max_value=10**6), flags=_junk)
def test_size_after_the_colon_is_never_taken(before: str, size: int, flags: str) -> None:
    assert size_from_name(f"{before}:2,{flags},S={size}") is None


def test_unique_part_survives_the_move_to_cur() -> None:
    assert unique_part("1.M2.h,S=42") == unique_part("1.M2.h,S=42:2,S") == "1.M2.h,S=42"
    assert unique_part("1.M2.h,S=42:2,RS") == "1.M2.h,S=42"


def test_display_name_keeps_valid_names() -> None:
    assert display_name("Entw&APw-rfe") == "Entw&APw-rfe"
    assert display_name("Entwürfe") == "Entwürfe"
    assert display_name("My Folder") == "My Folder"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"\xff", "\\xff"),
        (b"Entw\xfcrfe", "Entw\\xfcrfe"),
        (b"caf\xc3\xa9-\xe9", "café-\\xe9"),  # valid UTF-8 kept, the stray byte escaped
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),  # an encoded surrogate is not valid UTF-8
    ],
)
def test_display_name_escapes_undecodable_bytes(raw: bytes, shown: str) -> None:
    name = os.fsdecode(raw)
    result = display_name(name)
    assert result == shown
    result.encode("utf-8")  # safe to store and print: no lone surrogates left


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=30))
def test_display_name_of_any_bytes_is_printable_utf8(raw: bytes) -> None:
    result = display_name(os.fsdecode(raw))
    result.encode("utf-8")  # never raises
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        assert "\\x" in result
    else:
        assert result == decoded.replace("\\", "\\\\")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"\\xff", "\\\\xff"),  # the four characters: shown apart from the byte 0xff
        (b"a\\b", "a\\\\b"),
        (b"\\\xff", "\\\\\\xff"),  # a backslash, then the byte
    ],
)
def test_display_name_doubles_backslashes(raw: bytes, shown: str) -> None:
    assert display_name(os.fsdecode(raw)) == shown


@settings(max_examples=300, deadline=None)
@given(raw=st.lists(st.sampled_from([b"\\", b"x", b"f", b"\xff", b"\xc3\xa9", b"a"]), max_size=12).map(b"".join))
def test_display_name_is_one_to_one_and_disk_name_undoes_it(raw: bytes) -> None:
    # Folders are stored, and their readings reused, by display name: two names on disk sharing
    # one would let an empty folder's reading stand for a full one's.
    name = os.fsdecode(raw)
    assert disk_name(display_name(name)) == name


def test_folder_names_as_an_imap_server_shows_them() -> None:
    """Modified UTF-7 (RFC 3501), in which Dovecot and Courier keep folder names on disk."""
    assert imap_name("Gel&APY-scht") == "Gelöscht"
    assert imap_name("Archiv/Entw&APw-rfe") == "Archiv/Entwürfe"
    assert imap_name("&ZeVnLIqe-") == "日本語"
    assert imap_name("Tom &- Jerry") == "Tom & Jerry"
    assert imap_name("plain") == "plain"
    assert imap_name("bad&AP-x") == "bad&AP-x"  # not UTF-16: left as it is
    assert imap_name("half&APY") == "half&APY"  # never shifted back: not an encoded run


def test_a_folder_rule_matches_the_name_dovecot_shows() -> None:
    rules = [FolderRule(match="Gelöscht", exclude=True)]
    assert rule_for("Gel&APY-scht", rules) is rules[0]
    assert rule_for("Gelöscht", rules) is rules[0]
    assert rule_for("Gel&APY-schtx", rules) is None


def test_a_name_is_written_in_modified_utf7_as_dovecot_writes_it() -> None:
    """Names an IMAP client shows, written as on disk.
    Expected: as Dovecot writes them (RFC 3501's examples and tests/agents' folders)."""
    assert imap_encoded("Gelöscht") == "Gel&APY-scht"
    assert imap_encoded("Archiv/Entwürfe") == "Archiv/Entw&APw-rfe"
    assert imap_encoded("Q&A") == "Q&-A"
    assert imap_encoded("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert imap_encoded("Trash") == "Trash"


@settings(max_examples=300)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=20))
def test_a_written_name_reads_back_as_itself(shown: str) -> None:
    """Any name an IMAP client shows (no lone surrogates), written in modified UTF-7.
    Expected: read back as itself, and written in printable ASCII only."""
    written = imap_encoded(shown)
    assert imap_name(written) == shown
    assert all(" " <= ch <= "~" for ch in written)


@settings(max_examples=300)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=20))
def test_a_name_dovecot_wrote_is_one_its_quota_counts(shown: str) -> None:
    """Any name an IMAP client shows, as Dovecot writes it on disk.
    Expected: a name Dovecot's quota finds again (imap_canonical)."""
    assert imap_canonical(display_name(imap_encoded(shown)))


def test_a_name_a_mail_client_wrote_itself_is_not_one_dovecot_counts() -> None:
    """Folder names mutt, pine or a migration script leave on disk: UTF-8, a bare ``&``, an
    undecodable byte, base64 of plain ASCII. Expected: none is modified UTF-7 as Dovecot writes
    it (Dovecot's quota never counts them); Dovecot's own spellings are."""
    for name in ("Entwürfe", "R&D", "Archiv.Entwürfe", display_name("Entw\udcfcrfe"), "&AEEAQgBD-"):
        assert not imap_canonical(name), name
    for name in ("Entw&APw-rfe", "R&-D", "INBOX", "Archive.2024", "Archiv/Entw&APw-rfe", "a\\\\b"):
        assert imap_canonical(name), name
