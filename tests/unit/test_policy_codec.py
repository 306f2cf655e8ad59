"""The policy codec: decoding must not depend on how the bytes were cut, and bad input never stops it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotagate.policy.codec import (
    MAX_ACTION,
    PolicyDecoder,
    PolicyItem,
    PolicyRequest,
    ProtocolError,
    encode_action,
)
from tests.policywire import count_requests, cut, noise

# From Postfix's SMTPD_POLICY_README, with a value containing "=".
POSTFIX_ATTRIBUTES = {
    "request": "smtpd_access_policy",
    "protocol_state": "RCPT",
    "protocol_name": "ESMTP",
    "helo_name": "some.domain.tld",
    "queue_id": "8045F2AB23",
    "sender": "foo@bar.tld",
    "recipient": "bar@foo.tld",
    "recipient_count": "0",
    "client_address": "1.2.3.4",
    "client_name": "another.domain.tld",
    "reverse_client_name": "another.domain.tld",
    "instance": "123.456.7",
    "sasl_method": "plain",
    "sasl_username": "you",
    "sasl_sender": "",
    "size": "12345",
    "ccert_subject": "CN=mail.example.org,O=Example",
    "ccert_issuer": "Wietse+20Venema",
    "ccert_fingerprint": "C2:9D:F4:87:71:73:73:D9:18:E7:C2:F3:C1:DA:6E:04",
    "encryption_protocol": "TLSv1.3",
    "encryption_cipher": "TLS_AES_256_GCM_SHA384",
    "encryption_keysize": "256",
    "etrn_domain": "",
    "stress": "",
    "client_port": "1234",
    "policy_context": "",
    "server_address": "10.3.2.1",
    "server_port": "25",
    "compatibility_level": "3.6",
    "mail_version": "3.8.0",
}


def serialize(attributes: dict[str, str], newline: bytes = b"\n") -> bytes:
    lines = [f"{name}={value}".encode() for name, value in attributes.items()]
    return b"".join(line + newline for line in lines) + newline


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def decode(chunks: Iterable[bytes], decoder: PolicyDecoder | None = None) -> list[PolicyItem]:
    decoder = decoder or PolicyDecoder()
    items: list[PolicyItem] = []
    for chunk in chunks:
        items.extend(decoder.feed(chunk))
        assert decoder.buffered <= decoder.buffer_limit
    return items + decoder.end()


VALID = b"request=smtpd_access_policy\nrecipient=next@example.org\nsize=10\n\n"
VALID_REQUEST = PolicyRequest({"request": "smtpd_access_policy", "recipient": "next@example.org", "size": "10"})


# --- valid requests ------------------------------------------------------------------------------


def test_a_postfix_request_decodes_with_every_attribute() -> None:
    [request] = PolicyDecoder().feed(serialize(POSTFIX_ATTRIBUTES))
    assert isinstance(request, PolicyRequest)
    assert dict(request.attributes) == POSTFIX_ATTRIBUTES
    assert request.request == "smtpd_access_policy"
    assert request.protocol_state == "RCPT"
    assert request.recipient == "bar@foo.tld"
    assert request.size == 12345
    assert request.attributes["ccert_subject"] == "CN=mail.example.org,O=Example"
    assert request.attributes["sasl_sender"] == ""


def test_crlf_lines_decode_like_lf_lines() -> None:
    assert PolicyDecoder().feed(serialize(POSTFIX_ATTRIBUTES, b"\r\n")) == [PolicyRequest(POSTFIX_ATTRIBUTES)]


def test_only_one_trailing_cr_is_stripped() -> None:
    [request] = PolicyDecoder().feed(b"a=b\r\r\n\n")
    assert isinstance(request, PolicyRequest)
    assert request.attributes["a"] == "b\r"


def test_values_split_at_the_first_equals_sign() -> None:
    [request] = PolicyDecoder().feed(b"a==b=c\nempty=\n\n")
    assert request == PolicyRequest({"a": "=b=c", "empty": ""})


def test_a_repeated_name_keeps_its_last_value_and_names_stay_as_sent() -> None:
    [request] = PolicyDecoder().feed(b"recipient=a@x\nRecipient=B@X\nrecipient=c@x\n\n")
    assert isinstance(request, PolicyRequest)
    assert request.recipient == "c@x"
    assert request.attributes["Recipient"] == "B@X"
    assert len(request.attributes) == 2


@pytest.mark.parametrize("size", [4096, 16, 1])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_the_cut_does_not_matter(size: int, newline: bytes) -> None:
    data = serialize(POSTFIX_ATTRIBUTES, newline) + VALID + serialize({"recipient": "x@y"}, newline)
    expected = decode([data])
    assert expected == [PolicyRequest(POSTFIX_ATTRIBUTES), VALID_REQUEST, PolicyRequest({"recipient": "x@y"})]
    assert decode(pieces(data, size)) == expected


def test_several_requests_in_one_feed_come_out_in_order() -> None:
    decoder = PolicyDecoder()
    items = decoder.feed(b"recipient=a@x\n\nrecipient=b@x\n\nrecipient=c@x\n\nrecipient=d")
    assert [item.recipient for item in items if isinstance(item, PolicyRequest)] == ["a@x", "b@x", "c@x"]
    assert decoder.pending
    assert decoder.feed(b"@x\n\n") == [PolicyRequest({"recipient": "d@x"})]
    assert not decoder.pending


def test_a_request_is_held_until_its_empty_line() -> None:
    decoder = PolicyDecoder()
    assert decoder.feed(b"recipient=a@x\n") == []
    assert decoder.feed(b"size=1\n") == []
    assert decoder.feed(b"\n") == [PolicyRequest({"recipient": "a@x", "size": "1"})]


def test_empty_lines_without_attributes_are_ignored() -> None:
    decoder = PolicyDecoder()
    assert decoder.feed(b"\n\r\n\n") == []
    assert decoder.feed(b"recipient=a@x\n\n\n\n") == [PolicyRequest({"recipient": "a@x"})]
    assert decoder.end() == []


# --- end of input --------------------------------------------------------------------------------


@pytest.mark.parametrize("tail", [b"\n", b"", b"\r\n", b"\r"])
def test_end_delivers_an_unterminated_request_like_exim_sends(tail: bytes) -> None:
    decoder = PolicyDecoder()
    assert decoder.feed(b"request=smtpd_access_policy\nrecipient=a@x\nsize=-1" + tail) == []
    [request] = decoder.end()
    assert request == PolicyRequest({"request": "smtpd_access_policy", "recipient": "a@x", "size": "-1"})
    assert isinstance(request, PolicyRequest)
    assert request.size is None


def test_end_with_nothing_pending_delivers_nothing() -> None:
    assert PolicyDecoder().end() == []
    decoder = PolicyDecoder()
    assert decoder.feed(VALID) == [VALID_REQUEST]
    assert decoder.end() == []
    assert decoder.feed(b"\n") == []
    assert decoder.end() == []


def test_end_without_deliver_partial_drops_the_unfinished_request() -> None:
    decoder = PolicyDecoder()
    decoder.feed(b"recipient=a@x\nsize=1")
    assert decoder.end(deliver_partial=False) == []
    decoder.feed(b"no equals sign\n")
    assert decoder.end(deliver_partial=False) == []


def test_end_delivers_an_unterminated_bad_request_as_an_error() -> None:
    decoder = PolicyDecoder()
    decoder.feed(b"recipient=a@x\ngarbage")
    [error] = decoder.end()
    assert isinstance(error, ProtocolError)
    assert "'='" in error.reason


def test_the_decoder_is_reusable_after_end() -> None:
    decoder = PolicyDecoder()
    decoder.feed(b"x" * 10_000)
    assert len(decoder.end()) == 1
    assert not decoder.pending
    assert decoder.buffered == 0
    assert decoder.feed(VALID) == [VALID_REQUEST]


# --- bad input -----------------------------------------------------------------------------------


def assert_one_error_then_recovers(
    bad: bytes, reason: str, make: Callable[[], PolicyDecoder] = PolicyDecoder, valid: bytes = VALID
) -> None:
    """``bad`` is one request (ending with its empty line): between two valid ones, it gives one error."""
    [expected] = make().feed(valid)
    assert isinstance(expected, PolicyRequest)
    data = valid + bad + valid
    for size in (len(data), 16, 1):
        items = decode(pieces(data, size), make())
        assert len(items) == 3, items
        assert items[0] == expected
        assert isinstance(items[1], ProtocolError)
        assert reason in items[1].reason
        assert items[2] == expected


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"recipient=a@x\nno equals sign\nsize=1\n\n", "without '='"),
        (b"=value\n\n", "empty attribute name"),
        (b"recipient=a\x00b@x\n\n", "NUL"),
        (b"\x00\x01\x02\xff\xfe binary \x00=\x00\r\n\x80\x81\n\n", "NUL"),
        (b"recipient=" + b"a" * 5000 + b"\n\n", "line longer than 4096"),
        (b"recipient=a@x\n" + b"x=" + b"y" * 5000 + b"\nsize=1\n\n", "line longer than 4096"),
        (b"".join(b"a%d=1\n" % i for i in range(65)) + b"\n", "more than 64 attributes"),
        (b"".join(b"a%d=" % i + b"v" * 2000 + b"\n" for i in range(9)) + b"\n", "request longer than 16384"),
    ],
)
def test_a_bad_request_gives_one_error_and_the_next_request_decodes(bad: bytes, reason: str) -> None:
    assert_one_error_then_recovers(bad, reason)


@pytest.mark.parametrize("cut", [None, 1])
def test_bytes_that_are_not_utf8_do_not_void_a_request(cut: int | None) -> None:
    """Scenario: a client's HELO and sender as it sent them, not UTF-8 (Postfix passes them on
    unless strict_smtputf8 is set), in a request for a mailbox; and two details that differ
    only in such a byte.
    Expected: the request is decoded, each such byte as \\xNN: it is decided like any other,
    and ``roomy+\\xfe`` and ``roomy+\\xff`` stay two copies. An error instead was DUNNO (one
    such byte let any client skip the check); U+FFFD for each made the two copies one."""
    data = b"helo_name=\xffmx\nsender=\xe4rger@x\nrecipient=a+\xfe@x\n\xc3=1\n\nrecipient=a+\xff@x\n\n"
    first, second = decode(pieces(data, cut or len(data)), PolicyDecoder())
    assert first == PolicyRequest(
        {"helo_name": "\\xffmx", "sender": "\\xe4rger@x", "recipient": "a+\\xfe@x", "\\xc3": "1"}
    )
    assert second == PolicyRequest({"recipient": "a+\\xff@x"})


def test_the_first_problem_is_the_reason() -> None:
    [error] = PolicyDecoder().feed(b"first problem\n" + b"x" * 5000 + b"\n\n")
    assert error == ProtocolError("line without '=': b'first problem'")


def test_a_long_reason_shows_only_an_excerpt() -> None:
    [error] = PolicyDecoder().feed(b"z" * 4000 + b"\n\n")
    assert isinstance(error, ProtocolError)
    assert len(error.reason) < 100


def test_the_limits_are_inclusive() -> None:
    line = b"x=" + b"y" * 4094
    assert len(line) == 4096
    for newline in (b"\n", b"\r\n"):
        [request] = PolicyDecoder().feed(line + newline + newline)
        assert isinstance(request, PolicyRequest)
    [error] = PolicyDecoder().feed(line + b"y\n\n")
    assert isinstance(error, ProtocolError)
    sixty_four = b"".join(b"a%d=1\n" % i for i in range(64)) + b"\n"
    [request] = PolicyDecoder().feed(sixty_four)
    assert isinstance(request, PolicyRequest)
    assert len(request.attributes) == 64
    exact = b"a=" + b"v" * 98 + b"\n"  # 101 bytes
    decoder = PolicyDecoder(max_request=2 * len(exact))
    assert isinstance(decoder.feed(exact * 2 + b"\n")[0], PolicyRequest)
    assert isinstance(decoder.feed(exact * 3 + b"\n")[0], ProtocolError)


def test_custom_limits_are_enforced() -> None:
    valid = b"a=1\nb=2\n\n"
    assert_one_error_then_recovers(b"a=123456789\n\n", "line longer than 10", lambda: PolicyDecoder(max_line=10), valid)
    assert_one_error_then_recovers(b"a=1\nb=2\nc=3\n\n", "more than 2", lambda: PolicyDecoder(max_attributes=2), valid)
    assert_one_error_then_recovers(b"a=12\nb=2\n\n", "longer than 8", lambda: PolicyDecoder(max_request=8), valid)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_line"):
        PolicyDecoder(max_line=0)


def test_a_megabyte_line_is_never_buffered_whole() -> None:
    decoder = PolicyDecoder()
    assert decoder.feed(b"recipient=a@x\n") == []
    held = decoder.buffered
    assert held > 0
    for chunk in pieces(b"x" * 2**20, 64 * 1024):
        assert decoder.feed(chunk) == []
        assert decoder.buffered <= decoder.buffer_limit
        assert decoder.buffered <= 4097  # the request's attributes were let go, the line is dropped
    assert decoder.buffer_limit == 4097 + 16384
    assert decoder.feed(b"\nmore=junk\n") == []
    [error] = decoder.feed(b"\n")
    assert isinstance(error, ProtocolError)
    assert "line longer" in error.reason
    assert decoder.feed(VALID) == [VALID_REQUEST]
    assert decoder.buffered == 0


class _Examined(bytes):
    """A piece of input that counts the bytes the decoder's searches and copies of it go over."""

    examined = 0

    def find(self, sub: bytes, *bounds: int | None) -> int:  # type: ignore[override]
        found = super().find(sub, *bounds)
        start = bounds[0] if bounds and bounds[0] is not None else 0
        self.examined += (len(self) if found < 0 else found + len(sub)) - start
        return found

    def __getitem__(self, key: slice) -> bytes:  # type: ignore[override]
        part = super().__getitem__(key)
        self.examined += len(part)
        return part


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"])
def test_a_read_of_many_requests_is_decoded_in_one_pass(ending: bytes) -> None:
    """Scenario: one read brings thousands of small pipelined requests, their lines ending in CRLF
    (which the fast path declines) or LF.
    Expected: the decoder goes over the read a few times at most, not once per request: a client
    sending a megabyte of them would otherwise hold the event loop, and every other check, for
    seconds (the square of the read's size)."""
    one = b"a=b" + ending + ending
    data = _Examined(one * 4000)
    items = PolicyDecoder().feed(data)
    assert len(items) == 4000
    assert all(isinstance(item, PolicyRequest) for item in items)
    assert data.examined <= 4 * len(data)


def test_garbage_without_any_newline_stays_bounded() -> None:
    decoder = PolicyDecoder(max_line=100, max_request=1000)
    for _ in range(100):
        assert decoder.feed(bytes(range(256)) * 40) == []
        assert decoder.buffered <= 101
    [error] = decoder.end()
    assert isinstance(error, ProtocolError)


# --- properties ----------------------------------------------------------------------------------

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20)
values = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n\x00"),
    max_size=40,
)
requests = st.dictionaries(names, values, min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(requests, max_size=5),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=10**6)),
    st.sampled_from([b"\n\n", b"\n", b""]),
)
def test_valid_requests_survive_any_cut(
    originals: list[dict[str, str]], crlf: bool, positions: list[int], exim_tail: bytes
) -> None:
    newline = b"\r\n" if crlf else b"\n"
    data = b"".join(serialize(r, newline) for r in originals)
    if originals and exim_tail != b"\n\n":  # Exim may leave out the last empty line, or both line ends
        data = data.removesuffix(newline + newline) + exim_tail.replace(b"\n", newline)
    expected = [PolicyRequest(r) for r in originals]
    assert decode(cut(data, positions)) == expected
    assert decode(pieces(data, 1)) == expected


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), noise), st.lists(st.integers(min_value=0, max_value=10**6)))
def test_any_bytes_give_one_item_per_request_and_never_raise(data: bytes, positions: list[int]) -> None:
    ended, pending = count_requests(data)

    def run(chunks: list[bytes]) -> tuple[list[PolicyItem], list[PolicyItem]]:
        decoder = PolicyDecoder(max_line=12, max_attributes=3, max_request=30)
        fed: list[PolicyItem] = []
        for chunk in chunks:
            fed.extend(decoder.feed(chunk))
            assert decoder.buffered <= decoder.buffer_limit == 43
        return fed, decoder.end()

    fed, at_end = run(cut(data, positions))
    assert len(fed) == ended
    assert len(at_end) == (1 if pending else 0)
    assert (fed, at_end) == run([data])  # whole requests in one piece take the fast path
    assert (fed, at_end) == run(pieces(data, 1))  # byte by byte never does
    assert all(isinstance(item, PolicyRequest | ProtocolError) for item in fed + at_end)


# --- fields and answers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1024", 1024),
        ("0", 0),
        ("007", 7),
        (str(2**53 - 1), 2**53 - 1),
        ("0" * 30 + "5", 5),
        ("", None),
        ("-1", None),
        ("-5", None),
        ("abc", None),
        ("12k", None),
        (" 12", None),
        ("+12", None),
        ("1_000", None),
        ("١٢", None),  # Arabic-Indic digits: isdigit() but not a size
        ("99999999999999999999999", 2**53 - 1),
        (str(2**53), 2**53 - 1),
        (str(10**17), 2**53 - 1),  # a hostile SIZE=: counted as the most the shared ledger counts exactly
        ("9" * 5000, 2**53 - 1),
    ],
)
def test_size_is_a_plain_non_negative_number_or_none(value: str, size: int | None) -> None:
    assert PolicyRequest({"size": value}).size == size


def test_missing_fields_have_neutral_values() -> None:
    request = PolicyRequest({"sender": "a@x"})
    assert request.size is None
    assert request.recipient == ""
    assert request.protocol_state == ""
    assert request.request == ""
    assert PolicyRequest({"protocol_state": "rcpt"}).protocol_state == "RCPT"
    assert PolicyRequest({"SIZE": "5", "Recipient": "a@x"}).size is None


def test_a_request_cannot_be_changed_and_is_hashable() -> None:
    source = {"recipient": "a@x"}
    request = PolicyRequest(source)
    source["recipient"] = "b@x"
    assert request.recipient == "a@x"
    with pytest.raises(TypeError):
        request.attributes["recipient"] = "c@x"  # type: ignore[index]
    assert hash(request) == hash(PolicyRequest({"recipient": "a@x"}))
    assert len({request, PolicyRequest({"recipient": "a@x"})}) == 1


def test_encode_action() -> None:
    assert encode_action("DUNNO") == b"action=DUNNO\n\n"
    assert encode_action("552 5.2.2 Mailbox full") == b"action=552 5.2.2 Mailbox full\n\n"
    assert encode_action("REJECT a\r\nb\nc\rd\x00e") == b"action=REJECT a  b c d e\n\n"
    assert encode_action("DUNNO é") == "action=DUNNO é\n\n".encode()


def test_encode_action_limits_length_without_splitting_a_character() -> None:
    assert encode_action("a" * 1000) == b"action=" + b"a" * MAX_ACTION + b"\n\n"
    encoded = encode_action("a" + "é" * 600)
    text = encoded.removeprefix(b"action=").removesuffix(b"\n\n")
    assert len(text) == MAX_ACTION - 1
    assert text.decode("utf-8") == "a" + "é" * 255


@given(st.text())
def test_encode_action_is_always_exactly_one_answer(action: str) -> None:
    encoded = encode_action(action)
    assert encoded.startswith(b"action=")
    assert encoded.endswith(b"\n\n")
    assert encoded.count(b"\n") == 2
    assert b"\r" not in encoded
    assert len(encoded) <= len(b"action=\n\n") + MAX_ACTION
    encoded.decode("utf-8")
