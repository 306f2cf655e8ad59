"""Each kind of refusal has its own reply (issue 10): full, does not fit, message limit."""

from __future__ import annotations

import pytest

from quotagate.config import ConfigError, parse_config
from quotagate.decide import decide
from quotagate.model import Limits, Mailbox, Usage
from quotagate.policy.replies import reply_for

BOX = Mailbox("a@example.org", Limits(2_000_000, messages=10))


def reply(used: int, size: int | None, messages: int = 0, **policy: str) -> str:
    return reply_for(decide(BOX, Usage(used, messages, 0.0), size), parse_config({"policy": policy}).policy)


def test_a_message_bigger_than_an_empty_mailbox_is_not_told_the_mailbox_is_full() -> None:
    assert reply(0, 3_000_000) == "552 5.2.2 Message of 3000000 bytes does not fit in this mailbox"


def test_a_full_mailbox_says_so_with_or_without_a_size() -> None:
    assert reply(2_000_000, None) == reply(2_000_000, 10) == "552 5.2.2 Mailbox is full"


def test_the_message_limit_has_its_own_reply() -> None:
    assert reply(10, 10, messages=10) == "552 5.2.2 Mailbox has reached its limit of 10 messages"


def test_on_full_defer_keeps_each_text_with_a_temporary_code() -> None:
    assert reply(2_000_000, None, on_full="defer") == "452 4.2.2 Mailbox is full"
    assert reply(0, 3_000_000, on_full="defer") == "452 4.2.2 Message of 3000000 bytes does not fit in this mailbox"


def test_replies_are_configurable() -> None:
    assert reply(0, 3_000_000, fit_reply="552 5.2.2 {size} > {limit}") == "552 5.2.2 3000000 > 2000000"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("fit_reply", "552 5.2.2 {bytes}"),
        ("fit_reply", "452 4.2.2 no"),
        ("messages_reply", "552 {size}"),
        ("fit_reply", "552 {"),
    ],
)
def test_a_bad_reply_is_a_clear_config_error(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"policy.{key}: "):
        parse_config({"policy": {key: value}})
