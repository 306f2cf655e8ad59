"""The profile tables: options, grace and boundary as the daemon and the scan take them."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from quotagate.accounting import PROFILES, enforced, grace_for, profile_for
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


@pytest.mark.parametrize(
    ("profile", "files", "claims", "limits", "counted"),
    [
        ("dovecot", (4000, 1), (8000, 2), Limits(10_000), (8000, 2)),  # believed under the limit
        ("courier", (4000, 1), (8000, 2), Limits(10_000), (8000, 2)),
        ("exim", (4000, 1), (8000, 2), Limits(10_000), (8000, 2)),
        ("dovecot", (4000, 1), (10_000, 2), Limits(10_000), (10_000, 2)),  # at it: still believed
        ("dovecot", (4000, 1), (10_001, 2), Limits(10_000), (4000, 1)),  # over it: recounted
        ("dovecot", (4000, 1), (8000, 6), Limits(10_000, 5), (4000, 1)),  # over the message limit
        ("dovecot", (4000, 3), (8000, 2), Limits(10_000), (8000, 3)),  # each figure at least the files'
        ("dovecot", (4000, 1), (100, 0), Limits(10_000), (4000, 1)),  # claiming less never lowers it
        ("dovecot", (4000, 1), (-5, -1), Limits(10_000), (4000, 1)),
        ("dovecot", (4000, 1), (8000, 2), Limits(0), (8000, 2)),  # no limit: never recounted
        ("files", (4000, 1), (8000, 2), Limits(10_000), (4000, 1)),  # quotagate's own rules: the files
        ("dovecot-count", (4000, 1), (8000, 2), Limits(10_000), (4000, 1)),  # no maildirsize in play
    ],
)
def test_a_maildirsize_counts_where_the_agent_believes_it(
    profile: str, files: tuple[int, int], claims: tuple[int, int], limits: Limits, counted: tuple[int, int]
) -> None:
    info = MaildirsizeInfo(*claims, definition=definition_for(limits))
    assert enforced(files, info, limits, PROFILES[profile]) == counted
    assert enforced(files, None, limits, PROFILES[profile]) == files
    assert enforced(files, replace(info, rewritten=True), limits, PROFILES[profile]) == files


@pytest.mark.parametrize("definition", ["10000S", "20000S,5C", "", "5C", "junk"])
def test_claims_under_another_limit_line_are_recounted(definition: str) -> None:
    """The admin changed the limit since the file was written: Dovecot recounts the files."""
    info = MaildirsizeInfo(8000, 2, definition=definition)
    assert enforced((4000, 1), info, Limits(20_000), PROFILES["dovecot"]) == (4000, 1)
    assert enforced((4000, 1), replace(info, definition="20000S"), Limits(20_000), PROFILES["dovecot"]) == (8000, 2)
