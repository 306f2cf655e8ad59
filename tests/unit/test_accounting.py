"""The profile tables: options, grace and boundary as the daemon and the scan take them."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from quotagate.accounting import PROFILES, STALE_SECONDS, enforced, grace_for, profile_for
from quotagate.config import parse_config
from quotagate.model import Boundary, Limits, MaildirsizeInfo
from quotagate.usage.maildirsize import definition_for


def test_grace_is_the_policy_setting_else_the_profile_default() -> None:
    assert grace_for(parse_config({})).of(1000) == 0
    assert grace_for(parse_config({"spool": {"accounting": "dovecot"}})).of(1000) == 100
    options = {"accounting": "dovecot", "accounting_options": {"grace": "5%"}}
    assert grace_for(parse_config({"spool": options})).of(1000) == 50
    explicit = parse_config({"spool": {"accounting": "dovecot"}, "policy": {"grace": "0"}})
    assert grace_for(explicit).of(1000) == 0


def test_boundary_and_description() -> None:
    assert profile_for(parse_config({}).spool).boundary is Boundary.INCLUSIVE
    exim = parse_config({"spool": {"accounting": "exim", "accounting_options": {"quota_is_inclusive": False}}})
    profile = profile_for(exim.spool)
    assert profile.boundary is Boundary.EXCLUSIVE
    assert profile.describe == "exim (Exim appendfile; full over the limit)"


NOW = 1_000_000.0
FRESH, STALE = NOW - 60, NOW - STALE_SECONDS - 1


@pytest.mark.parametrize(
    ("profile", "files", "claims", "lines", "changed", "limits", "counted"),
    [
        # Dovecot believes the claims under the limit, whatever the file's lines and age.
        ("dovecot", (4000, 1), (8000, 2), 3, STALE, Limits(10_000), (8000, 2)),
        ("dovecot", (4000, 1), (10_000, 2), 3, STALE, Limits(10_000), (10_000, 2)),  # at it: still
        # Over the limit: recounted unless the file is one fresh size line.
        ("dovecot", (4000, 1), (10_001, 2), 3, FRESH, Limits(10_000), (4000, 1)),
        ("dovecot", (4000, 1), (10_001, 2), 1, STALE, Limits(10_000), (4000, 1)),
        ("dovecot", (4000, 1), (10_001, 2), 1, FRESH, Limits(10_000), (10_001, 2)),
        ("dovecot", (4000, 1), (8000, 6), 2, FRESH, Limits(10_000, 5), (4000, 1)),  # the message limit
        ("dovecot", (4000, 3), (8000, 2), 2, STALE, Limits(10_000), (8000, 3)),  # each at least the files'
        ("dovecot", (4000, 1), (100, 0), 1, FRESH, Limits(10_000), (4000, 1)),  # claiming less never lowers it
        ("dovecot", (4000, 1), (-5, -1), 1, FRESH, Limits(10_000), (4000, 1)),
        ("dovecot", (4000, 1), (8000, 2), 3, STALE, Limits(0), (8000, 2)),  # no limit: never recounted
        # Courier and Exim recount whenever a message does not fit by the claims, unless the file
        # is one fresh size line: then only the files can refuse.
        ("courier", (4000, 1), (8000, 2), 3, FRESH, Limits(10_000), (4000, 1)),
        ("exim", (4000, 1), (8000, 2), 3, FRESH, Limits(10_000), (4000, 1)),
        ("courier", (4000, 1), (8000, 2), 1, STALE, Limits(10_000), (4000, 1)),
        ("courier", (4000, 1), (8000, 2), 1, FRESH, Limits(10_000), (8000, 2)),
        ("exim", (4000, 1), (10_500, 2), 1, FRESH, Limits(10_000), (10_500, 2)),  # believed over it too
        ("files", (4000, 1), (8000, 2), 1, FRESH, Limits(10_000), (4000, 1)),  # quotagate's own rules: the files
        ("dovecot-count", (4000, 1), (8000, 2), 1, FRESH, Limits(10_000), (4000, 1)),  # no maildirsize in play
    ],
)
def test_a_maildirsize_counts_where_the_agent_believes_it(
    profile: str,
    files: tuple[int, int],
    claims: tuple[int, int],
    lines: int,
    changed: float,
    limits: Limits,
    counted: tuple[int, int],
) -> None:
    info = MaildirsizeInfo(*claims, definition=definition_for(limits), size_lines=lines, changed_at=changed)
    assert enforced(files, info, limits, PROFILES[profile], NOW) == counted
    assert enforced(files, None, limits, PROFILES[profile], NOW) == files
    assert enforced(files, replace(info, rewritten=True), limits, PROFILES[profile], NOW) == files


@pytest.mark.parametrize("profile", ["dovecot", "courier", "exim"])
def test_a_maildirsize_of_5120_bytes_or_more_is_recounted_by_every_agent(profile: str) -> None:
    info = MaildirsizeInfo(8000, 2, definition="10000S", size_lines=1, changed_at=FRESH)
    assert enforced((4000, 1), replace(info, file_bytes=5119), Limits(10_000), PROFILES[profile], NOW) == (8000, 2)
    assert enforced((4000, 1), replace(info, file_bytes=5120), Limits(10_000), PROFILES[profile], NOW) == (4000, 1)


@pytest.mark.parametrize("definition", ["10000S", "20000S,5C", "", "5C", "junk"])
def test_claims_under_another_limit_line_are_recounted(definition: str) -> None:
    """The admin changed the limit since the file was written: Dovecot recounts the files."""
    info = MaildirsizeInfo(8000, 2, definition=definition, changed_at=FRESH)
    assert enforced((4000, 1), info, Limits(20_000), PROFILES["dovecot"], NOW) == (4000, 1)
    dovecots = replace(info, definition="20000S")
    assert enforced((4000, 1), dovecots, Limits(20_000), PROFILES["dovecot"], NOW) == (8000, 2)


@pytest.mark.parametrize(
    ("profile", "name", "left_out"),
    [
        ("courier", "1.M1.h,S=9:2,ST", True),
        ("courier", "1.M1.h,S=9:2,aT", False),  # Courier stops at the first character not A-Z
        ("courier", "1.M1.h,S=9:2,,T", False),
        ("courier", "1.M1.h,S=9:1,a:2,T", True),  # the first ":2," anywhere in the name
        ("courier", ".hidden", True),
        ("dovecot", ".hidden:2,S", False),  # Dovecot counts dot files...
        ("dovecot", "..hidden:2,S", True),  # ...but not one whose name starts with two dots
        ("exim", "..hidden", False),  # Exim skips only "." and ".."
    ],
)
def test_a_message_file_is_left_out_as_the_program_leaves_it_out(profile: str, name: str, left_out: bool) -> None:
    """Message file names each program reads its own way (from Courier's docount, Dovecot's
    maildir_sum_dir and Exim's check_dir_size). Expected: left out exactly where it does."""
    assert PROFILES[profile].left_out(name) is left_out
