import pytest

from quotagate.mailbox_csv import CsvError, parse_mailboxes
from quotagate.model import Limits, Mailbox


def test_parses_rows_with_optional_columns() -> None:
    text = "address,quota,messages,path,enabled\nA@Example.ORG,500M,100,a/Maildir,yes\nb@example.org,0,,,no\n"
    assert parse_mailboxes(text) == [
        Mailbox("a@example.org", Limits(500 * 1024**2, 100), True, "a/Maildir"),
        Mailbox("b@example.org", Limits(0, 0), False, None),
    ]


def test_every_bad_row_is_reported_with_its_line() -> None:
    text = "address,quota\nok@example.org,1M\nnot-an-address,1M\nx@example.org,lots\n"
    with pytest.raises(CsvError) as err:
        parse_mailboxes(text, "f.csv")
    assert "f.csv:3" in str(err.value)
    assert "f.csv:4" in str(err.value)


@pytest.mark.parametrize("header", ["address", "quota,address,colour", ""])
def test_bad_header(header: str) -> None:
    with pytest.raises(CsvError, match="header"):
        parse_mailboxes(header + "\n")
