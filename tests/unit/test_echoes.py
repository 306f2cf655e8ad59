"""A delivery told by both Exim's hint and the watch counts once."""

from __future__ import annotations

from quotagate.policy.echoes import ECHO_SECONDS, MAX_WORDS, Echoes


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


def test_a_flood_of_words_for_one_mailbox_keeps_only_the_latest() -> None:
    """Scenario: a client that may speak to the daemon sends 10,000 delivery hints for one mailbox
    within ten seconds. Expected: only the latest MAX_WORDS are kept, so each word is weighed
    against at most that many (all 10,000 were kept and scanned for every word: quadratic
    work on the event loop); an echo of a recent one is still found."""
    echoes = Echoes()
    for n in range(10_000):
        echoes.first("a@x", 100_000 + 10_000 * n, "hint", now=n / 1000)
    assert len(echoes._by_mailbox["a@x"]) == MAX_WORDS
    assert not echoes.first("a@x", 100_000 + 10_000 * 9_999, "watch", now=10)
    for n in range(20_000):  # forgetting stays in step with the words trimmed
        echoes.first(f"b{n % 3}@x", n, "watch", now=20 + n / 1000)
    assert all(len(words) <= MAX_WORDS for words in echoes._by_mailbox.values())
