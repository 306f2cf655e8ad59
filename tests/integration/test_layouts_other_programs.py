"""Spools as other admins lay them out and other programs write them: a Maildir in a dot
directory of the home, a ``LAYOUT=fs`` Maildir below the home, a user's folder named "Inbox", an
MMDF folder in an mbox home. Each is measured as its delivery agent sees it, or is unknown with
the reason: never known with less mail than it holds."""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path

import pytest

from quotagate.model import Limits, State
from tests.integration.scanenv import Env
from tests.spoolgen import add_message, fs_folder, maildir_folder, write_mbox


def test_a_maildir_subdir_in_a_dot_directory_is_the_maildir_with_its_folders(env: Env) -> None:
    """Scenario: the Maildir is ``~/.maildir`` (Postfix ``home_mailbox = .maildir/``; layout
    ``{local}``, ``maildir_subdir = ".maildir"``): INBOX 1,000 bytes, ``.Sent`` 5,000, limit 4,000.
    ``.maildir`` holds cur/ and new/ as a Maildir++ folder would.

    Expected: the home is not a Maildir++ root with a folder "maildir": the Maildir below it is
    measured, 6,000 bytes with its own folders, over quota, at ``~/.maildir``."""
    env.configure(spool={"layout": "{local}", "maildir_subdir": ".maildir"})
    home = env.spool / "alice"
    md = home / ".maildir"
    add_message(maildir_folder(md), 1000)
    add_message(maildir_folder(md, "Sent"), 5000)
    (home / ".profile").write_text("# ~/.profile\n")
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan().readings[address]

    assert reading.usage.known, reading.reason
    assert (reading.bytes, reading.state, reading.path) == (6000, State.OVER, str(md))


def test_a_layout_fs_maildir_below_the_home_is_the_maildir(env: Env) -> None:
    """Scenario: Dovecot ``maildir:~/Maildir:LAYOUT=fs``, the home named by PostfixAdmin's
    ``maildir`` column holding ``Maildir/`` (INBOX 1,000 bytes, ``Sent`` 300, ``Trash`` 5,000)
    and ``sieve/``; the rule ``Trash`` excluded (Dovecot's ``quota_rule2 = Trash:ignore``); limit
    4,000. Under LAYOUT=fs a plain directory holding cur/ is a folder, and ``Maildir/`` holds one.

    Expected: ``Maildir/`` is the Maildir below the home, not its folder: folders INBOX, Sent and
    Trash, Trash left out, 1,300 bytes, under quota, at ``~/Maildir`` (where the live
    maildirsize read, ``watch`` and ``--fix-maildirsize`` look)."""
    env.configure(
        spool={"layout": "{domain}/{local}", "maildir_layout": "fs"},
        folders=[{"match": "Trash", "exclude": True}],
    )
    home = env.spool / "example.org" / "alice"
    md = home / "Maildir"
    add_message(fs_folder(md, b""), 1000)
    add_message(fs_folder(md, "Sent"), 300)
    add_message(fs_folder(md, "Trash"), 5000)
    (home / "sieve").mkdir()
    (home / "sieve" / "roundcube.sieve").write_text("keep;\n")
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan().readings[address]

    assert reading.usage.known, reading.reason
    assert (reading.bytes, reading.state, reading.path) == (1300, State.OK, str(md))
    assert sorted(f.name for f in reading.usage.folders) == ["INBOX", "Sent", "Trash"]


def test_a_users_folder_named_inbox_is_an_ordinary_folder(env: Env) -> None:
    """Scenario: with Courier's namespace (``prefix = INBOX.``), kept by every Courier-IMAP
    migration, a user makes the folder ``INBOX.Inbox``: real Dovecot 2.3 and Courier keep it as
    ``~/Maildir/.Inbox/`` with cur/, new/, tmp/ and the ``maildirfolder`` file they write in
    every folder they make (Dovecot's ``INBOX=`` directory has none). INBOX 1,500 bytes, Inbox
    1,000, limit 2,000.

    Expected: ``.Inbox`` is counted as a folder (2,500 bytes, over quota), not taken for
    ``INBOX=`` (which would make the mailbox unknown for good, and never refused)."""
    md = env.maildir("alice")
    add_message(maildir_folder(md), 1500)
    inbox_folder = maildir_folder(md, "Inbox")
    open(inbox_folder + b"/maildirfolder", "wb").close()
    add_message(inbox_folder, 1000, where="new")
    address = env.add("alice", Limits(2000, 0))

    reading = env.scan().readings[address]

    assert reading.usage.known, reading.reason
    assert (reading.bytes, reading.state) == (2500, State.OVER)


def test_an_mmdf_folder_in_an_mbox_home_makes_it_unknown(env: Env) -> None:
    """Scenario: an mbox home (``{local}/mail``) holds the mbox ``inbox`` and ``archive``, a
    folder mutt saved with ``mbox_type=MMDF`` (messages between ``^A^A^A^A`` lines; Exim's
    appendfile writes them so with ``message_prefix``), about 6 kB; limit 4,000.

    Expected: the MMDF folder is mail: the mailbox is not known with the inbox's 189 bytes
    alone, but unknown, with the reason naming the folder."""
    env.configure(spool={"layout": "{local}/mail"})
    home = env.spool / "alice" / "mail"
    write_mbox(home / "inbox", ["hello"])
    separator = b"\x01\x01\x01\x01\n"
    message = b"From: bob@example.net\nSubject: saved\n\n" + b"body line\n" * 2
    (home / "archive").write_bytes((separator + message + separator) * 100)
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan().readings[address]

    reason = reading.reason or ""
    assert not reading.usage.known
    assert "MMDF" in reason and "archive" in reason


@pytest.mark.parametrize("layout", ["maildir++", "fs"])
def test_a_directory_named_inbox_exactly_is_never_counted_as_the_root(env: Env, layout: str) -> None:
    """Attack: under Dovecot's ``INBOX=~/Maildir/.INBOX`` (``LAYOUT=fs``: ``INBOX``) the user
    adds a ``maildirfolder`` file to that directory, which then looks like a user's folder. A
    folder named INBOX exactly would be the root by its name: the root counted twice, INBOX's
    mail (6,000 bytes) never.

    Expected: known with all 6,500 bytes, or unknown (the INBOX= case): never known with less."""
    if layout == "fs":
        env.configure(spool={"maildir_layout": "fs"})
    md = env.maildir("alice")
    add_message(maildir_folder(md), 500)
    real = os.path.join(os.fsencode(md), b".INBOX" if layout != "fs" else b"INBOX")
    for sub in (b"cur", b"new", b"tmp"):
        os.makedirs(os.path.join(real, sub))
    open(real + b"/maildirfolder", "wb").close()
    add_message(real, 6000, where="new")
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan().readings[address]

    if reading.usage.known:
        assert (reading.bytes, reading.state) == (6500, State.OVER), [(f.name, f.bytes) for f in reading.usage.folders]


def test_a_stray_dot_directory_does_not_hide_the_maildir_below_the_home(env: Env) -> None:
    """Attack: with ``maildir_subdir = ".maildir"``, the user makes ``~/.x/cur`` (empty): the
    home then looks like a Maildir++ root by its folders, ``.maildir`` one of them, and the
    Maildir's own folders (``~/.maildir/.Archive``) would never be listed.

    Expected: the Maildir below the home wins over a home that is a Maildir by its folders
    alone: 6,000 bytes, over quota, or unknown; never known with less."""
    env.configure(spool={"layout": "{local}", "maildir_subdir": ".maildir"})
    home = env.spool / "alice"
    md = home / ".maildir"
    add_message(maildir_folder(md), 1000)
    add_message(maildir_folder(md, "Archive"), 5000)
    (home / ".x" / "cur").mkdir(parents=True)
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan().readings[address]

    if reading.usage.known:
        assert (reading.bytes, reading.state, reading.path) == (6000, State.OVER, str(md))


def test_mbox_files_beside_imap_folders_named_cur_and_new_are_counted(env: Env) -> None:
    """Attack: an mbox user creates the IMAP folders ``Lists/cur/a`` and ``Lists/new/b`` (Dovecot
    keeps them as mbox files), so ``Lists/`` holds directories ``cur/`` and ``new/`` beside the
    mbox ``Lists/debian`` (6 kB). Taken for a Maildir, all of ``Lists/`` would be passed over.

    Expected: a directory holding an mbox file is a folder directory, walked: over quota."""
    env.configure(spool={"layout": "{local}/mail"})
    home = env.spool / "alice" / "mail"
    write_mbox(home / "inbox", ["hello"])
    write_mbox(home / "Lists" / "debian", ["x" * 2000, "y" * 2000, "z" * 2000])
    write_mbox(home / "Lists" / "cur" / "a", ["a"])
    write_mbox(home / "Lists" / "new" / "b", ["b"])
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan().readings[address]

    assert reading.usage.known, reading.reason
    assert reading.state is State.OVER and reading.bytes > 6000, [(f.name, f.bytes) for f in reading.usage.folders]


def _stash_inbox(env: Env, layout: str) -> tuple[str, Path]:
    env.configure(spool={"maildir_layout": layout}, scan={"racy_seconds": 0})
    md = env.maildir("alice")  # the mailbox's path is the Maildir itself (maildir_subdir "Maildir" is the default)
    add_message(maildir_folder(md), 3000)  # INBOX
    add_message(fs_folder(md, "Archive") if layout == "fs" else maildir_folder(md, "Archive"), 3000)
    address = env.add("alice", Limits(4000, 0))
    assert env.scan().readings[address].state is State.OVER
    # The owner: an empty "Maildir" (IMAP CREATE "Maildir" under LAYOUT=fs; a plain mkdir under
    # Maildir++), then the INBOX moved into a folder of its own.
    fs_folder(md, "Maildir")
    stash = md / ("Stash" if layout == "fs" else ".Stash")
    stash.mkdir()
    for sub in ("cur", "new", "tmp"):
        os.rename(md / sub, stash / sub)
    return address, md


@pytest.mark.parametrize("layout", ["fs", "maildir++"])
def test_a_directory_named_maildir_does_not_hide_the_maildir_tree(env: Env, layout: str) -> None:
    """Attack: in a Maildir that is the mailbox's path, the owner makes an empty ``Maildir``
    (``[spool] maildir_subdir``'s default) and moves the INBOX into a folder of its own: the root
    is then a Maildir by its folders alone. Expected: never the empty ``Maildir`` alone (0
    bytes): all of the tree, or unknown (two Maildirs: which is delivered to?), kept over."""
    address, _ = _stash_inbox(env, layout)

    reading = env.scan(full=True).readings[address]

    if reading.usage.known:
        folders = [(f.name, f.bytes) for f in reading.usage.folders]
        assert (reading.bytes, reading.state) == (6000, State.OVER), (reading.path, folders)
    else:
        assert reading.state is State.OVER  # unknown, kept over


@pytest.mark.parametrize("layout", ["fs", "maildir++"])
def test_an_incremental_scan_agrees_with_a_full_one_once_the_inbox_is_made_again(env: Env, layout: str) -> None:
    """The same, then the next delivery makes the INBOX again: an incremental scan answers what
    a full one does."""
    address, md = _stash_inbox(env, layout)
    env.scan()
    time.sleep(0.05)
    add_message(maildir_folder(md), 100)  # the next delivery: Dovecot makes the INBOX again

    incremental = env.scan().readings[address]
    full = env.scan(full=True).readings[address]

    # 6,100 bytes over (LAYOUT=fs), or unknown (Maildir++: a plain Maildir/ with cur/ beside the INBOX)
    assert full.state is not State.OK and (full.bytes >= 6100 or not full.usage.known)
    assert (incremental.bytes, incremental.state) == (full.bytes, full.state), (
        f"an incremental scan says {incremental.bytes} ({incremental.state}) at {incremental.path}, "
        f"a full scan {full.bytes} ({full.state}) at {full.path}"
    )


def test_an_empty_cur_in_the_home_does_not_hide_the_maildir_below_it(env: Env) -> None:
    """Attack: with ``maildir_subdir = ".maildir"``, the owner makes ``~/cur``: the home then
    looks like a Maildir++ root, ``.maildir`` a folder of it whose own folders are never listed.
    Expected: 6,000 bytes, or unknown (two Maildirs); never known with less."""
    env.configure(spool={"layout": "{local}", "maildir_subdir": ".maildir"})
    home = env.spool / "alice"
    md = home / ".maildir"
    add_message(maildir_folder(md), 1000)
    add_message(maildir_folder(md, "Archive"), 5000)
    (home / "cur").mkdir()  # the attack: one empty directory
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan().readings[address]

    if reading.usage.known:
        folders = [(f.name, f.bytes) for f in reading.usage.folders]
        assert (reading.bytes, reading.state) == (6000, State.OVER), (reading.path, folders)


def test_mbox_files_below_a_folder_directory_holding_cur_and_new_are_counted(env: Env) -> None:
    """Attack: an mbox user makes the empty IMAP folders ``Projects/cur/`` and ``Projects/new/``
    beside ``Projects/2024/jan`` (6 kB): ``Projects/`` holds cur/ and new/. Expected: a directory
    holding other directories than a Maildir's is a folder directory, walked: over quota."""
    env.configure(spool={"layout": "{local}/mail"})
    home = env.spool / "alice" / "mail"
    write_mbox(home / "inbox", ["hello"])
    (home / "Projects" / "cur").mkdir(parents=True)  # IMAP CREATE "Projects/cur/" (no mail)
    (home / "Projects" / "new").mkdir(parents=True)  # IMAP CREATE "Projects/new/"
    write_mbox(home / "Projects" / "2024" / "jan", ["x" * 3000, "y" * 3000])
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan().readings[address]

    if reading.usage.known:
        folders = [(f.name, f.bytes) for f in reading.usage.folders]
        assert reading.state is State.OVER and reading.bytes > 6000, folders


def test_mbox_files_in_a_folder_directory_holding_only_cur_and_new_are_counted(env: Env) -> None:
    """Attack: an mbox user keeps the mbox folders ``Projects/cur/jan`` and ``Projects/new/feb``
    (6 kB): ``Projects/`` holds cur/ and new/ and nothing else. Expected: files named as no
    delivery agent names a Maildir message (its time, then a dot) and starting with a From line
    are mbox folders: counted, over quota, or the mailbox unknown."""
    env.configure(spool={"layout": "{local}/mail"})
    home = env.spool / "alice" / "mail"
    write_mbox(home / "inbox", ["hello"])
    write_mbox(home / "Projects" / "cur" / "jan", ["x" * 3000])
    write_mbox(home / "Projects" / "new" / "feb", ["y" * 3000])
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan(full=True).readings[address]

    folders = [(f.name, f.bytes) for f in reading.usage.folders]
    assert not reading.usage.known or (reading.state is State.OVER and reading.bytes > 6000), folders


def test_nested_layout_fs_folders_beside_an_empty_maildir_subdir_are_not_left_out(env: Env) -> None:
    """Attack: under LAYOUT=fs, in a Maildir that is the mailbox's path, the owner moves the INBOX
    into ``Archive/old`` (``Archive/`` itself no folder) and makes an empty ``Maildir`` folder.
    Expected: the folders at any depth beside it count: 6,000 bytes, or unknown, kept over."""
    env.configure(spool={"maildir_layout": "fs"}, scan={"racy_seconds": 0})
    md = env.maildir("alice")
    add_message(maildir_folder(md), 1000)
    add_message(fs_folder(md, "Archive/2024"), 5000)
    address = env.add("alice", Limits(4000, 0))
    assert env.scan().readings[address].state is State.OVER
    old = md / "Archive" / "old"
    old.mkdir()
    for sub in ("cur", "new", "tmp"):
        os.rename(md / sub, old / sub)
    fs_folder(md, "Maildir")

    reading = env.scan(full=True).readings[address]

    assert reading.state is State.OVER and (reading.bytes == 6000 or not reading.usage.known), reading.path


def test_mbox_folders_named_like_maildir_messages_below_cur_are_not_left_out(env: Env) -> None:
    """Attack: an mbox user names IMAP folders ``Archive/cur/2024.q1`` and ``Archive/cur/2024.q2``
    (8 kB): ``Archive/`` holds only cur/, its files named as a Maildir's messages are (time-first).
    Expected: counted, over quota, or the mailbox unknown: never passed over as a Maildir."""
    env.configure(spool={"layout": "{local}/mail"})
    home = env.spool / "alice" / "mail"
    write_mbox(home / "inbox", ["hello"])
    write_mbox(home / "Archive" / "cur" / "2024.q1", ["x" * 2000, "y" * 2000])
    write_mbox(home / "Archive" / "cur" / "2024.q2", ["z" * 2000, "w" * 2000])
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan(full=True).readings[address]

    folders = [(f.name, f.bytes) for f in reading.usage.folders]
    assert not reading.usage.known or (reading.state is State.OVER and reading.bytes > 8000), folders


def test_mbox_folders_in_maildir_cur_under_format_mbox_are_not_left_out(env: Env) -> None:
    """Attack: with ``format = "mbox"`` (no Maildir is measured beside the mbox files) and the
    default ``maildir_subdir``, the owner keeps 8 kB as IMAP folders ``Maildir/cur/2024.q1`` and
    ``Maildir/cur/2024.q2``, which Dovecot counts. Expected: the directory named like
    maildir_subdir is looked into as any other: over quota, or unknown."""
    env.configure(spool={"layout": "{local}/mail", "format": "mbox", "maildir_subdir": "Maildir"})
    home = env.spool / "alice" / "mail"
    write_mbox(home / "inbox", ["hello"])
    write_mbox(home / "Maildir" / "cur" / "2024.q1", ["x" * 2000, "y" * 2000])
    write_mbox(home / "Maildir" / "cur" / "2024.q2", ["z" * 2000, "w" * 2000])
    (home / "Maildir" / "new").mkdir()
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan(full=True).readings[address]

    folders = [(f.name, f.bytes) for f in reading.usage.folders]
    assert not reading.usage.known or (reading.state is State.OVER and reading.bytes > 8000), folders


def test_an_mbox_folder_below_cur_under_a_lease_is_not_passed_over(env: Env) -> None:
    """Attack: the owner of ``Archive/cur/2024.q1`` (8 kB of mbox, which makes the mailbox
    unknown) holds a write lease on it (``F_SETLEASE``, any file's owner may): the scan's
    non-blocking open fails. Expected: a file that cannot be opened is not taken for a Maildir
    message: the mailbox stays unknown (or counts it), never known with less."""
    env.configure(spool={"layout": "{local}/mail", "format": "mbox", "maildir_subdir": ""}, scan={"workers": 1})
    home = env.spool / "alice" / "mail"
    write_mbox(home / "inbox", ["hello"])
    hidden = home / "Archive" / "cur" / "2024.q1"
    write_mbox(hidden, ["x" * 4000, "y" * 4000])
    (home / "Archive" / "new").mkdir()
    address = env.add("alice", Limits(4000, 0))
    assert not env.scan(full=True).readings[address].usage.known

    old = signal.signal(signal.SIGIO, signal.SIG_IGN)  # the lease break's signal, to the holder
    fd = os.open(hidden, os.O_RDWR)
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETLEASE", 1024), fcntl.F_WRLCK)
        reading = env.scan(full=True).readings[address]
    finally:
        os.close(fd)
        signal.signal(signal.SIGIO, old)

    folders = [(f.name, f.bytes) for f in reading.usage.folders]
    assert not reading.usage.known or (reading.state is State.OVER and reading.bytes > 8000), folders


@pytest.mark.parametrize("folder", [".stash", "Work/.old", "Archive.lck", "Projects/.old"])
def test_mbox_folders_named_as_dot_or_lock_files_are_counted(env: Env, folder: str) -> None:
    """Scenario: Dovecot lists and counts mbox folders named ``.stash``, ``Work/.old`` or
    ``Archive.lck`` (only ``*.lock`` is its own); a user's client makes them. Expected: a dot file
    or ``*.lck`` file starting with a From line is an mbox folder, counted: over quota. Dot files
    that are no mbox (``.subscriptions``) are not passed over, nor said."""
    env.configure(spool={"layout": "{local}/mail"})
    home = env.spool / "alice" / "mail"
    write_mbox(home / "inbox", ["hello"])
    write_mbox(home / folder, ["x" * 3000, "y" * 3000])
    (home / "Projects" / "cur").mkdir(parents=True)  # beside Projects/.old: no Maildir for it
    (home / "Projects" / "new").mkdir()
    (home / ".subscriptions").write_text("INBOX\n")
    (home / "inbox.lock").write_text("")
    address = env.add("alice", Limits(4000, 0))

    reading = env.scan(full=True).readings[address]

    assert reading.usage.known, reading.reason
    assert reading.state is State.OVER and folder in [f.name for f in reading.usage.folders]
