"""The daemon decides as the delivery agent enforces: the profile's grace and boundary reach it."""

from __future__ import annotations

from typing import Any

from quotagate.config import parse_config
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService
from tests.policy.conftest import QUOTA, ROOMY, ROOMY_USED, Site


def service(site: Site, accounting: str, **policy: Any) -> PolicyService:
    data = site.data(**policy)
    data["spool"]["accounting"] = accounting
    config = parse_config(data)
    s = PolicyService(config, Metrics())
    s.snapshot = site.service(config, Metrics()).snapshot
    return s


def test_dovecots_default_grace_lets_in_a_message_that_overflows_by_less_than_ten_percent(site: Site) -> None:
    size = QUOTA - ROOMY_USED + QUOTA // 20  # 5% over the limit
    assert service(site, "files").check(ROOMY, size).decision.action.value == "reject"
    assert service(site, "dovecot").check(ROOMY, size).decision.action.value == "accept"
    # An explicit [policy] grace wins over the profile's default.
    assert service(site, "dovecot", grace="0").check(ROOMY, size).decision.action.value == "reject"
