"""A delivery told by both Exim's hint and the watch counts once."""

from __future__ import annotations

from quotagate.policy.echoes import ECHO_SECONDS, Echoes


def test_the_watchs_word_of_a_delivery_the_hint_told_of_is_an_echo() -> None:
    echoes = Echoes()
    assert echoes.first("a@x", 4000, "hint", now=0)
    assert not echoes.first("a@x", 4180, "watch", now=0.2)  # S= counts the transport's headers
    assert echoes.first("a@x", 4180, "watch", now=0.3)  # a third word: another delivery


def test_either_source_may_tell_first() -> None:
    echoes = Echoes()
    assert echoes.first("a@x", 4180, "watch", now=0)
    assert not echoes.first("a@x", 4000, "hint", now=1)


def test_words_of_one_source_are_each_a_delivery() -> None:
    echoes = Echoes()
    assert all(echoes.first("a@x", 4000, "watch", now=n) for n in range(3))


def test_other_sizes_mailboxes_and_late_words_are_not_echoes() -> None:
    echoes = Echoes()
    assert echoes.first("a@x", 4000, "hint", now=0)
    assert echoes.first("a@x", 40_000, "watch", now=0)  # another message
    assert echoes.first("b@x", 4000, "watch", now=0)  # another mailbox
    assert echoes.first("a@x", 4000, "watch", now=ECHO_SECONDS + 1)  # the hint's word is forgotten


def test_words_are_forgotten() -> None:
    echoes = Echoes()
    for n in range(1000):
        echoes.first(f"u{n}@x", 100, "watch", now=n / 100)
    echoes.first("a@x", 100, "watch", now=10_000)
    assert len(echoes._order) == 1 and list(echoes._by_mailbox) == ["a@x"]
