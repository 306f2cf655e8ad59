"""The [policy] defaults that must agree with the MTAs in front, and the new keys' validation."""

from __future__ import annotations

import re

import pytest

from quotagate.config import ConfigError, PolicyConfig, parse_config
from quotagate.mta.postfix import main_cf


def test_idle_timeout_outlasts_the_idle_time_postfix_config_prints() -> None:
    """Postfix keeps a policy connection up to the item's max_idle: a daemon that closes it
    sooner makes Postfix log a lost connection and reconnect."""
    config = parse_config({})
    found = re.search(r"max_idle=(\d+)s", main_cf(config))
    assert found, main_cf(config)
    assert config.policy.idle_timeout > int(found.group(1))


def test_new_policy_defaults() -> None:
    policy = PolicyConfig()
    assert policy.request_timeout == 10
    assert policy.max_usage_age == 15 * 60
    assert policy.file_timeout == 0.5


@pytest.mark.parametrize("key", ["request_timeout", "max_usage_age", "file_timeout"])
@pytest.mark.parametrize("value", [0, -1])
def test_timeouts_must_be_positive(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"policy.{key}"):
        parse_config({"policy": {key: value}})


def test_a_reload_names_every_setting_only_a_restart_applies() -> None:
    """Settings a running daemon set up at start (sockets, metrics, workers, live tracking, its
    Redis). Expected: each change is named, and a change a reload takes is not."""
    from quotagate.policy.daemon import restart_needed

    old = parse_config({})
    new = parse_config(
        {
            "policy": {"listen": ["127.0.0.1:10099"], "metrics": "", "reservation_seconds": 30},
            "watch": {"enabled": True},
            "shared": {"url": "redis://127.0.0.1:6379/0"},
        }
    )
    assert restart_needed(old, new) == ["policy.listen", "policy.metrics", "watch", "shared"]
    assert restart_needed(old, parse_config({"policy": {"reservation_seconds": 30}})) == []
