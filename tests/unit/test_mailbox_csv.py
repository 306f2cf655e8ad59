import pytest

from quotagate.mailbox_csv import CsvError, parse_mailboxes
from quotagate.model import Limits, Mailbox
from quotagate.text import control_character


def test_parses_rows_with_optional_columns() -> None:
    text = b"address,quota,messages,path,enabled\nA@Example.ORG,500M,100,a/Maildir,yes\nb@example.org,0,,,no\n"
    assert parse_mailboxes(text).mailboxes == [
        Mailbox("a@example.org", Limits(500 * 1024**2, 100), True, "a/Maildir"),
        Mailbox("b@example.org", Limits(0, 0), False, None),
    ]


def test_columns_the_file_lacks_keep_what_is_stored() -> None:
    """Scenario: a mailbox stored with a message limit, a path of its own and disabled; a file
    of quotas alone (header ``address,quota``) updates it, and adds another.
    Expected: the quota changes and the rest stays, as ``mailbox add`` changes only what is
    given; the new mailbox takes the defaults. (Before, the file reset them: the disabled
    mailbox was enabled, its path and message limit dropped.)"""
    stored = {"a@example.org": Mailbox("a@example.org", Limits(1024, 5), False, "a/M")}
    rows = parse_mailboxes(b"address,quota\na@example.org,2K\nb@example.org,1K\n")
    assert rows.columns == frozenset()
    assert rows.over(stored) == [
        Mailbox("a@example.org", Limits(2048, 5), False, "a/M"),
        Mailbox("b@example.org", Limits(1024)),
    ]
    given = parse_mailboxes(b"address,quota,messages,path\na@example.org,2K,,\n")
    assert given.columns == frozenset({"messages", "path"})
    assert given.over(stored) == [Mailbox("a@example.org", Limits(2048, 0), False, None)]


def test_an_address_given_twice_is_refused_naming_both_lines() -> None:
    """Scenario: one mailbox on two lines with different limits (two exports merged).
    Expected: refused, naming the line and the one before (the last row used to win)."""
    message = refused(b"address,quota\na@example.org,1M\nb@example.org,1M\nA@Example.org,5G\n")
    assert message == "f.csv:4: a@example.org is on line 2 already"


def test_an_empty_quota_is_refused() -> None:
    """Scenario: a row whose quota cell is empty. Expected: refused (it used to import the
    mailbox as unlimited without a word); 0 says unlimited."""
    assert refused(b"address,quota\na@example.org,\n") == "f.csv:2: quota is empty (0 is unlimited)"


def test_every_bad_row_is_reported_with_its_line() -> None:
    text = b"address,quota\nok@example.org,1M\nnot-an-address,1M\nx@example.org,lots\n"
    with pytest.raises(CsvError) as err:
        parse_mailboxes(text, "f.csv")
    assert "f.csv:3" in str(err.value)
    assert "f.csv:4" in str(err.value)


@pytest.mark.parametrize("header", ["address", "quota,address,colour", ""])
def test_bad_header(header: str) -> None:
    with pytest.raises(CsvError, match="header"):
        parse_mailboxes(header.encode() + b"\n")


def refused(data: bytes) -> str:
    """The error for ``data``, checked to be safe to print: no control character but the line breaks."""
    with pytest.raises(CsvError) as err:
        parse_mailboxes(data, "f.csv")
    message = str(err.value)
    assert control_character(message.replace("\n", "")) is None, message
    return message


def test_a_utf8_bom_is_accepted() -> None:
    data = "\ufeffaddress,quota,path\nb@example.org,1M,Bücher/Maildir\n".encode()
    assert parse_mailboxes(data).mailboxes == [Mailbox("b@example.org", Limits(1024**2), True, "Bücher/Maildir")]


def test_non_utf8_lines_are_refused_with_their_numbers() -> None:
    data = b"address,quota\na@example.org,1M\nb@example.org,1M,\xff\nc@example.org,1M\nd@example.org,\xe9\n"
    message = refused(data)
    assert message.splitlines() == ["f.csv:3: not UTF-8", "f.csv:5: not UTF-8"]


@pytest.mark.parametrize(
    ("row", "why"),
    [
        ("a\x9b@example.org,1M,,,", "f.csv:3: control character U+009B"),
        ("a@example.org,1M\x1b[2J,,,", "f.csv:3: control character U+001B"),
        ("a@example.org,1M,\x07,,", "f.csv:3: control character U+0007"),
        ("a@example.org,1M,,a\x00b/Maildir,", "f.csv:3: control character U+0000"),
        ("a@example.org,1M,,a\rb,", "f.csv:3: control character U+000D"),  # a lone CR ends no line
        ("a@example.org,1M,,a/Maildir,yes\x7f", "f.csv:3: control character U+007F"),
        ('a@example.org,1M,,"a\r\nb/Maildir",', "f.csv:4: path holds a control character (U+000D)"),
        ('a@example.org,1M,,"a\nb/Maildir",', "f.csv:4: path holds a control character (U+000A)"),
    ],
)
def test_control_characters_in_any_field_are_refused(row: str, why: str) -> None:
    data = f"address,quota,messages,path,enabled\r\nok@example.org,1M,,,\r\n{row}\r\nz@example.org,1M,,,\r\n".encode()
    assert refused(data) == why


def test_the_header_is_checked_like_a_row() -> None:
    assert refused(b"address,quota,\x1b]0;pwned\x07\n") == "f.csv:1: control character U+001B"


def test_an_unknown_column_is_named_escaped() -> None:
    message = refused(b'address,quota,"x\nquotagate: ERROR: forged"\n')
    assert message.endswith("; unknown x\\x0aquotagate: error: forged")


def test_a_huge_field_is_a_row_error_not_a_crash() -> None:
    message = refused(b"address,quota\na@example.org,1M\nb@example.org," + b"9" * 200_000 + b"\n")
    assert message.startswith("f.csv:3: ")
