"""Counting mbox messages, checked against Python's own ``mailbox.mbox`` parser."""

from __future__ import annotations

import mailbox
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotagate.usage import mbox, safefs
from quotagate.usage.mbox import count_messages
from tests.spoolgen import write_mbox
from tests.usagefs import dir_fd

MIB = 1 << 20
FROM_LINE = b"From sender@example.net Thu Nov 26 02:20:14 2026"


def count_at(path: str | Path) -> tuple[int, int, mbox.MboxStamp]:
    """``count_messages`` of the file at ``path``, opened as the scan opens mbox files."""
    fd = os.open(path, safefs.FILE)
    try:
        return count_messages(fd)
    finally:
        os.close(fd)


def mbox_files(root: str | Path) -> list[str]:
    with dir_fd(root) as fd:
        return mbox.mbox_files(fd).files


def python_count(path: Path) -> int:
    box = mailbox.mbox(str(path), create=False)
    try:
        return len(box)
    finally:
        box.close()


def test_messages_written_by_mailbox_module(tmp_path: Path) -> None:
    path = tmp_path / "inbox"
    bodies = [
        "hello\n",
        "From the start of a line: mailbox escapes it\nFrom again\n",
        "a paragraph\n\nFrom here on, after an empty line\n",
        "no trailing newline",
        "",
    ]
    write_mbox(path, bodies)
    data = path.read_bytes()
    assert b"\n>From " in data  # the module did escape body lines
    size, messages, stamp = count_at(path)
    assert messages == python_count(path) == len(bodies)
    assert size == len(data) == os.path.getsize(path)
    st_ = os.stat(path)
    assert stamp == (st_.st_ctime_ns, st_.st_size, st_.st_ino)


def test_crlf_file(tmp_path: Path) -> None:
    path = tmp_path / "inbox"
    write_mbox(path, ["one\n", "two\n\nFrom x\n", "three\n"])
    data = path.read_bytes().replace(b"\n", b"\r\n")
    path.write_bytes(data)
    size, messages, _ = count_at(path)
    assert messages == python_count(path) == 3
    assert size == len(data)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "inbox"
    path.write_bytes(b"")
    assert count_at(path)[:2] == (0, 0)
    assert python_count(path) == 0


def test_file_not_starting_with_from(tmp_path: Path) -> None:
    path = tmp_path / "inbox"
    path.write_bytes(b"garbage at the top\n\n" + FROM_LINE + b"\nSubject: a\n\nbody\n\n" + FROM_LINE + b"\n\nb\n")
    assert count_at(path)[1] == python_count(path) == 2


def test_from_line_without_empty_line_before_is_not_a_separator(tmp_path: Path) -> None:
    # By the README's rule a separator follows an empty line; Python's parser is looser here.
    path = tmp_path / "inbox"
    path.write_bytes(FROM_LINE + b"\nSubject: a\n\nbody\nFrom not a separator\nmore\n")
    assert count_at(path)[1] == 1


def test_no_from_line_at_all(tmp_path: Path) -> None:
    path = tmp_path / "inbox"
    path.write_bytes(b"just text\n\nmore text\n")
    assert count_at(path)[:2] == (len(b"just text\n\nmore text\n"), 0)


def test_refuses_directories_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError, match="not a regular file"):
        count_at(tmp_path / "dir")
    real = tmp_path / "real"
    real.write_bytes(FROM_LINE + b"\n\nx\n")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OSError):
        count_at(tmp_path / "link")


def test_fifo_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        count_at(fifo)


def _separator_at(offset: int, sep: bytes, eol: bytes = b"\n") -> bytes:
    """An mbox of two messages whose separator ``sep`` starts exactly at ``offset``."""
    head = FROM_LINE + eol + b"Subject: big" + eol + eol
    line = b"x" * 99 + eol
    need = offset - len(head)
    body = line * (need // len(line))
    rest = need - len(body)
    if rest == 0:  # keep a partial last line: the separator's line break must end it
        body, rest = body[: -len(line)], len(line)
    body += b"y" * rest
    data = head + body
    assert len(data) == offset
    return data + sep + b"second@example.net Thu Nov 26 02:20:14 2026" + eol + eol + b"body" + eol


# k = how many bytes of the separator lie before the 1 MiB chunk boundary.
_LF = b"\n\nFrom "
_CRLF = b"\n\r\nFrom "


def _boundary_cases() -> list[object]:
    cases: list[object] = []
    for sep, eol, label in ((_LF, b"\n", "lf"), (_CRLF, b"\r\n", "crlf")):
        for k in range(len(sep) + 2):
            cases.append(pytest.param(sep, eol, k, id=f"{label}-{k}-before-boundary"))
    return cases


@pytest.mark.parametrize(("sep", "eol", "k"), _boundary_cases())
def test_separator_straddling_the_chunk_boundary(tmp_path: Path, sep: bytes, eol: bytes, k: int) -> None:
    path = tmp_path / "inbox"
    data = _separator_at(MIB - k, sep, eol)
    path.write_bytes(data)
    assert data[MIB - k : MIB - k + len(sep)] == sep
    assert python_count(path) == 2
    size, messages, _ = count_at(path)
    assert (size, messages) == (len(data), 2)


def test_separators_at_several_boundaries(tmp_path: Path) -> None:
    # Three chunk boundaries, each cut through a separator at a different place.
    data = bytearray(FROM_LINE + b"\n\n")
    for n, k in enumerate((3, 5, 1), start=1):
        start = n * MIB - k
        data += b"z" * (start - len(data))
        data += b"\n\n" + FROM_LINE + b"\n\nbody "
        assert data[start : start + 7] == _LF
    path = tmp_path / "inbox"
    path.write_bytes(bytes(data))
    assert python_count(path) == 4
    assert count_at(path)[:2] == (len(data), 4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(
        st.sampled_from([b"From a b\n", b"\n", b"x\n", b"From ", b"\r\n", b"text line\n", b">From y\n"]),
        max_size=60,
    ),
    chunk=st.integers(min_value=8, max_value=40),  # at least one separator long, as 1 MiB is
)
def test_chunk_size_never_changes_the_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pieces: list[bytes], chunk: int
) -> None:
    path = tmp_path / "inbox"
    data = b"".join(pieces)
    path.write_bytes(data)
    expected = count_at(path)  # one chunk holds the whole file
    with monkeypatch.context() as m:
        m.setattr(mbox, "_CHUNK", chunk)
        assert count_at(path) == expected


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bodies=st.lists(
        st.lists(
            st.sampled_from(["From me", "From: x", "", ">From y", "hello", "From  two spaces", "line"]),
            max_size=8,
        ).map("\n".join),
        max_size=8,
    )
)
def test_random_mailboxes_match_python(tmp_path: Path, bodies: list[str]) -> None:
    path = tmp_path / "random.mbox"
    path.unlink(missing_ok=True)
    write_mbox(path, bodies)
    size, messages, _ = count_at(path)
    assert messages == python_count(path) == len(bodies)
    assert size == path.stat().st_size


def test_mbox_directory_listing(tmp_path: Path) -> None:
    root = tmp_path / "mail"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".imap" / "INBOX").mkdir(parents=True)
    for name in ("inbox", "Sent", "sub/Drafts", "sub/deeper/Old", "Caf\u00e9"):
        (root / name).write_bytes(FROM_LINE + b"\n\nx\n")
    for junk in (".subscriptions", ".imap/INBOX/dovecot.index", "inbox.lock", "Sent.lck", "sub/Drafts.lock"):
        (root / junk).write_bytes(b"junk")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret").write_bytes(FROM_LINE + b"\n\nx\n")
    (root / "link-to-file").symlink_to(root / "inbox")
    (root / "link-to-dir").symlink_to(elsewhere)
    (root / "loop").symlink_to(root / "loop")
    os.mkfifo(root / "fifo")

    found = mbox_files(str(root))
    assert found == sorted(["Caf\u00e9", "Sent", "inbox", "sub/Drafts", "sub/deeper/Old"])


def test_mbox_directory_listing_of_non_utf8_names(tmp_path: Path) -> None:
    root = os.path.join(os.fsencode(tmp_path), b"mail")
    os.mkdir(root)
    with open(os.path.join(root, b"Entw\xfcrfe"), "wb") as f:
        f.write(FROM_LINE + b"\n\nx\n")
    found = mbox_files(os.fsdecode(root))
    assert found == [os.fsdecode(b"Entw\xfcrfe")]


def test_file_stamp(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "inbox"
    path.parent.mkdir()
    with dir_fd(tmp_path) as root:
        assert mbox.file_stamp(root, "sub/inbox") is None
        path.write_bytes(b"From x\n")
        st_ = os.lstat(path)
        assert mbox.file_stamp(root, "sub/inbox") == (st_.st_ctime_ns, 7, st_.st_ino)
        path.unlink()
        path.symlink_to(tmp_path / "elsewhere")
        (tmp_path / "elsewhere").write_bytes(b"From x\n")
        with pytest.raises(OSError):  # a symlink is never followed to a stamp
            mbox.file_stamp(root, "sub/inbox")


def test_read_file_folder_racy_stamp(tmp_path: Path) -> None:
    path = tmp_path / "inbox"
    path.write_bytes(FROM_LINE + b"\n\nx\n")
    mtime = os.stat(path).st_mtime_ns
    fd = os.open(path, safefs.FILE)
    try:
        kept, _ = mbox.read_file_folder(fd, "INBOX", racy_cutoff_ns=mtime + 1)
        assert kept.stamp == (mtime, path.stat().st_size, path.stat().st_ino)
        assert (kept.name, kept.messages, kept.bytes) == ("INBOX", 1, path.stat().st_size)
        racy, _ = mbox.read_file_folder(fd, "INBOX", racy_cutoff_ns=mtime)
        assert racy.stamp is None
    finally:
        os.close(fd)
