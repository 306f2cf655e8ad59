"""Recipient addresses: the detail after a folder delimiter, and the mailboxes a lookup could take
for another's detail."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotagate.address import dequoted, normalize, shadowed, without_detail
from quotagate.publish import render


@pytest.mark.parametrize(
    ("address", "delimiters", "split"),
    [
        ("user+tag@example.org", "+", ("user@example.org", "tag")),
        ("user+a+b@example.org", "+", ("user@example.org", "a+b")),  # at the first, as Exim and Postfix
        ("user-a+b@example.org", "+-", ("user@example.org", "a+b")),  # each character is one
        ("user+@example.org", "+", ("user@example.org", "")),
        ("+tag@example.org", "+", None),  # nothing before it: no mailbox
        ("user@example.org", "+", None),
        ("user+tag@example.org", "", None),  # turned off
        ("us+er@ex+ample.org", "+", ("us@ex+ample.org", "er")),  # the domain is never split
    ],
)
def test_without_detail(address: str, delimiters: str, split: tuple[str, str] | None) -> None:
    assert without_detail(address, delimiters) == split


@given(st.text("ab+-@.", max_size=12), st.text("+-", max_size=2))
def test_a_split_address_is_its_base_the_delimiter_and_the_detail(address: str, delimiters: str) -> None:
    split = without_detail(address, delimiters)
    if split is None:
        return
    (base, detail), (local, _, domain) = split, address.strip().rpartition("@")
    base_local = base.rpartition("@")[0]
    assert base == f"{base_local}@{domain}" and base_local
    assert local[len(base_local)] in delimiters and local[len(base_local) + 1 :] == detail
    assert not any(c in delimiters for c in base_local)


def test_mailboxes_a_lookup_would_take_for_a_full_ones_detail() -> None:
    addresses = ["john@x", "john-doe@x", "john+a@x", "jane-doe@x", "sales+eu@x", "sales@x"]
    over = {"john@x", "sales+eu@x"}
    # john-doe and john+a would fall back to the full john; sales+eu is over itself; jane's base is no mailbox
    assert shadowed(addresses, over, "+-") == ["john+a@x", "john-doe@x"]
    assert shadowed(addresses, over, "+") == ["john+a@x"]
    assert shadowed(addresses, over, "") == []


def test_the_published_file_marks_them_with_a_key_no_address_has() -> None:
    text = render(["john@x"], ["john-doe@x"])
    assert text.splitlines()[-2:] == ["john@x", "john-doe@x@"]
    assert render(["john@x"]).splitlines()[-1] == "john@x"


def test_only_a_to_z_of_a_local_part_are_lowered_as_the_mtas_lower_them() -> None:
    """A local part with a character Python's lower() maps onto A-Z (KELVIN SIGN lowers to
    "k") or onto another letter (``Ä``). Expected: only A-Z are lowered, as Exim and Postfix
    lower them: ``\\u212aate@`` is not kate's address (a client took kate's room with it, for an
    address the MTA then refused); the domain is lowered whole."""
    assert normalize("\u212aate@Example.ORG") == "\u212aate@example.org"
    assert normalize("ÄRGER@example.org") == "Ärger@example.org"
    assert normalize("Roomy+Archive@EXAMPLE.org.") == "roomy+archive@example.org"


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ('"room\\y"', "roomy"),
        ('"Ro, my"', "Ro, my"),
        ('"john".doe', "john.doe"),
        ("roomy", "roomy"),
        ('"a\\"b"', 'a"b'),
    ],
)
def test_a_local_part_written_quoted_means_what_exim_takes_it_for(written: str, meant: str) -> None:
    """Local parts a client wrote quoted or escaped. Expected: what Exim's $local_part holds
    (before lowering): the quotes gone, each escaped character kept."""
    assert dequoted(written) == meant
