"""The profile tables: options, grace and boundary as the daemon and the scan take them."""

from __future__ import annotations

from quotagate.accounting import grace_for, profile_for
from quotagate.config import parse_config
from quotagate.model import Boundary


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
