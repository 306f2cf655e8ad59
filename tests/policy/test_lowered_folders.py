"""Folder details whose A-Z Exim lowered: its ACLs ask about ``$local_part`` in lower case
(``roomy+archive`` for ``roomy+Archive@``, ``roomy+Ärger`` for ``roomy+ÄRGER@``) while its routers
deliver as sent. The folder is the one spelling on disk the detail may be, else any; its room is
held under one key whatever the spelling; its rules are those of that spelling, else the
strictest any spelling meets.

roomy@ has 1,000,000 bytes (plenty); folders get limits of their own through ``[[folders]]``
rules. Exim-style requests are what the generated Exim ACLs send: no ``protocol_name``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from quotagate.cli import main
from quotagate.config import parse_config
from quotagate.model import Limits, Mailbox
from quotagate.policy import state
from quotagate.policy.daemon import Daemon
from quotagate.policy.live import load_snapshot
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService, Session
from quotagate.scan import run_scan
from quotagate.store import open_store
from tests.policy.conftest import DOMAIN, ROOMY, Site, _toml_value, request, restarted
from tests.policy.test_data_stage import ask, exim_data
from tests.spoolgen import add_message, maildir_folder

MAILBOX = 1_000_000
FOLDER_QUOTA = 10_000


def exim_rcpt(local: str, size: int, instance: str = "A", client: str = "192.0.2.1") -> bytes:
    """The generated Exim RCPT ACL's request (``recipient=$local_part@$domain``: lower case)."""
    return (
        f"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient={local}@{DOMAIN}\nsize={size}\n"
        f"instance={instance}\nclient_address={client}\n\n"
    ).encode()


def maildir(site: Site) -> Path:
    return site.spool / DOMAIN / "roomy" / "Maildir"


def scanned(site: Site, rules: list[dict[str, Any]]) -> PolicyService:
    """Roomy (1 MB) scanned with ``rules`` as its [[folders]], and a service over the result."""
    data = site.data()
    data["folders"] = rules
    config = parse_config(data)
    store = open_store(site.db_url)
    try:
        store.upsert_mailboxes([Mailbox(ROOMY, Limits(MAILBOX))])
        run_scan(config, store)
    finally:
        store.close()
    return site.service(config, Metrics())


def rescan(site: Site, service: PolicyService) -> None:
    """A new scan, and the daemon's snapshot reloaded (its reservations kept)."""
    store = open_store(site.db_url)
    try:
        run_scan(service.config, store)
        service.snapshot = load_snapshot(store)
    finally:
        store.close()


ARCHIVE_RULE = {"match": "Archive", "quota": str(FOLDER_QUOTA)}


def test_room_held_for_a_folder_before_it_exists_counts_once_it_is_created(site: Site) -> None:
    """Rule ``Archive`` (10,000 bytes); roomy has no ``.Archive`` yet. Through Exim two
    clients each hold 4,000 bytes for ``roomy+Archive@`` (asked as ``roomy+archive``: no spelling
    on disk, so held under the folder key ``archive``). Then ``.Archive`` is created (the owner
    makes it over IMAP, or the first delivery does), empty, and the daemon's snapshot is
    refreshed. A third client asks for 4,000 bytes.

    Expected: 8,000 bytes are still held for that folder: 8,000 + 4,000 > 10,000, deferred (452)."""
    service = scanned(site, [ARCHIVE_RULE])
    session = Session()
    assert ask(service, exim_rcpt("roomy+archive", 4_000, "t1", "192.0.2.1"), session) == "DUNNO"
    assert ask(service, exim_rcpt("roomy+archive", 4_000, "t2", "192.0.2.2"), Session()) == "DUNNO"
    maildir_folder(maildir(site), "Archive")
    rescan(site, service)
    third = ask(service, exim_rcpt("roomy+archive", 4_000, "t3", "192.0.2.3"), Session())
    held = [(r.copy, r.folder, r.bytes) for r in service.reservations]
    assert third.startswith("452"), f"third 4,000 bytes into a 10,000-byte folder holding 8,000: {third!r}; {held}"


def test_a_lower_case_folder_without_a_rule_is_not_judged_by_a_capitalised_rule(site: Site) -> None:
    """Rule ``Archive`` (10,000 bytes); on disk roomy has only ``.archive`` (lower
    case, no rule matches it: no limit of its own), holding 10,001 bytes. Through Exim,
    ``RCPT TO:<roomy+archive@>`` (or ``roomy+Archive@``: Exim asks ``roomy+archive`` either way)
    with SIZE=1000. The router delivers as sent: into ``.archive`` (no limit) or into a new,
    empty ``.Archive``; either takes it, and the mailbox has plenty of room.

    Expected: DUNNO, as Postfix's request for ``roomy+archive@`` gets."""
    add_message(maildir_folder(maildir(site), "archive"), 10_001)
    service = scanned(site, [ARCHIVE_RULE])
    answer = ask(service, exim_rcpt("roomy+archive", 1_000))
    assert answer == "DUNNO", f"a folder with no limit of its own refused: {answer!r}"


def test_the_rule_of_the_spelling_on_disk_wins_over_a_rule_that_matches_only_caselessly(site: Site) -> None:
    """Rules, in this order: ``archive`` (1,000,000 bytes) and ``Archive`` (10,000
    bytes). On disk roomy has only ``.Archive``, holding 10,001 bytes (over its own limit).
    Through Exim, ``roomy+Archive@`` is asked as ``roomy+archive``: the folder is ``Archive``,
    the one spelling on disk.

    Expected: the folder so resolved is judged by its own rule (``Archive``, matched exactly):
    552."""
    add_message(maildir_folder(maildir(site), "Archive"), 10_001)
    service = scanned(site, [{"match": "archive", "quota": "1000000"}, ARCHIVE_RULE])
    answer = ask(service, exim_rcpt("roomy+archive", 1_000))
    assert answer.startswith("552"), f"the full .Archive judged by the rule of 'archive': {answer!r}"


def test_two_spellings_on_disk_leave_which_folder_unknown_whatever_the_rule_order(site: Site) -> None:
    """On disk ``.Archive`` (5,000 bytes, rule ``Archive``: 1,000,000) and ``.archive`` (10,001
    bytes, rule ``archive``: 10,000: full). Exim asks ``roomy+archive``: the client sent either
    spelling, and the router delivers into that one; which, the daemon cannot tell. Judged by
    either folder's rule, the other's mail would be refused wrongly, or let into a full folder.

    Expected: no folder check (the mailbox's own, with room to spare: DUNNO), whichever order
    the rules are written in; Postfix, which keeps the case, gets 552 for ``roomy+archive@``."""
    md = maildir(site)
    add_message(maildir_folder(md, "Archive"), 5_000)
    add_message(maildir_folder(md, "archive"), 10_001)
    rules = [{"match": "Archive", "quota": "1000000"}, {"match": "archive", "quota": str(FOLDER_QUOTA)}]
    answers = {}
    for order in ("Archive first", "archive first"):
        service = scanned(site, rules if order == "Archive first" else rules[::-1])
        answers[order] = ask(service, exim_rcpt("roomy+archive", 1_000))
        assert ask(service, request(f"roomy+archive@{DOMAIN}", 1_000)).startswith("552")
    assert all(a == "DUNNO" for a in answers.values()), answers


@pytest.mark.parametrize(
    ("on_disk", "rule", "asked"),
    [("Stra&AN8-e", "Straße", "roomy+strasse"), ("Kasse", "Kasse", "roomy+\u212aasse")],
    ids=["sharp-s-folds-to-ss", "kelvin-sign-folds-to-k"],
)
def test_casefold_does_not_make_another_folder_the_full_one(site: Site, on_disk: str, rule: str, asked: str) -> None:
    """Rule ``Straße`` (10,000 bytes); on disk Dovecot's ``.Stra&AN8-e`` (Straße),
    holding 10,001 bytes: full. Through Exim a client sends ``RCPT TO:<roomy+Strasse@>``
    (plain ASCII), asked as ``roomy+strasse``; the router delivers it as sent, into a new
    ``.Strasse`` (no rule, the mailbox has plenty of room). Exim lowers ASCII letters only
    (``exim -be '${lc:ÄRGER}'`` gives ``Ärger``). Likewise ``roomy+\u212aasse@`` (KELVIN SIGN, over
    SMTPUTF8, which Exim leaves as it is) is delivered into a new folder, not into the full
    ``.Kasse``.

    Expected: DUNNO (no case Exim produces makes ``strasse`` ``Straße``, or K ``K``)."""
    add_message(maildir_folder(maildir(site), on_disk), 10_001)
    service = scanned(site, [{"match": rule, "quota": str(FOLDER_QUOTA)}])
    answer = ask(service, exim_rcpt(asked, 1_000))
    assert answer == "DUNNO", f"{asked}@ (a new folder) refused as the full {rule}: {answer!r}"


def test_a_modified_utf7_detail_lowered_by_exim_finds_its_full_folder(site: Site) -> None:
    """Rule ``Gelöscht`` (10,000 bytes); on disk Dovecot's ``.Gel&APY-scht``, full
    (10,001 bytes). A client with no SMTPUTF8 addresses the folder by its name on disk:
    ``RCPT TO:<roomy+Gel&APY-scht@>``, which Postfix's request gets 552 for (see
    tests/policy/test_folder_share.py). Exim asks ``roomy+gel&apy-scht``; its router delivers as
    sent, into ``.Gel&APY-scht``.

    Expected: 552, the folder found in any case."""
    add_message(maildir_folder(maildir(site), "Gel&APY-scht"), 10_001)
    service = scanned(site, [{"match": "Gelöscht", "quota": str(FOLDER_QUOTA)}])
    answer = ask(service, exim_rcpt("roomy+gel&apy-scht", 1_000))
    assert answer.startswith("552"), f"the full .Gel&APY-scht took mail through Exim: {answer!r}"


def test_quotagate_check_at_data_answers_as_the_daemons_exim_data_check(site: Site) -> None:
    """Rule ``Archive`` (10,000 bytes); ``.Archive`` holds 10,001 bytes (full). The
    daemon's DATA check (``request=quotagate_data``, only Exim sends it) for
    ``roomy+archive@`` refuses (552). The admin asks ``quotagate check roomy+archive@example.org
    --stage data --size 1000`` ("the decision the daemon would give").

    Expected: exit 1 (refused), as the daemon."""
    add_message(maildir_folder(maildir(site), "Archive"), 10_001)
    service = scanned(site, [ARCHIVE_RULE])
    daemon = ask(service, exim_data(f"roomy+archive@{DOMAIN}", 1_000))
    assert daemon.startswith("552"), daemon
    config = site.base / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "{site.db_url}"\n[spool]\nroot = "{site.spool}"\n[scan]\nworkers = 1\n'
        f'[policy]\nmetrics = ""\ncontrol_socket = {_toml_value(str(site.control))}\n'
        f'[[folders]]\nmatch = "Archive"\nquota = "{FOLDER_QUOTA}"\n'
    )
    code = main(["--config", str(config), "check", f"roomy+archive@{DOMAIN}", "--stage", "data", "--size", "1000"])
    assert code == 1, f"quotagate check answered exit {code}; the daemon answered {daemon!r}"


def test_a_restored_exim_row_of_the_version_before_folders_were_kept_holds_room_in_its_folder(site: Site) -> None:
    """As tests/policy/test_folder_share.py's restored-row test, but the row is an
    Exim transaction's: the daemon restarts with a reservations file of the version before
    folders were kept, 9,500 bytes in flight for the copy ``roomy+archive`` (Exim's
    ``$local_part`` for ``roomy+Archive@``; rule ``Archive``: 10,000). Another client then asks,
    through Exim, for 1,000 bytes for ``roomy+Archive@``.

    Expected: the restored room is the folder's, as it is for Postfix's copy ``roomy+Archive``:
    452."""
    maildir_folder(maildir(site), "Archive")
    scanned(site, [ARCHIVE_RULE])
    now = time.time()
    row = ["203.0.113.5", "t1", ROOMY, 9_500, now, now + 500, "flight", None, "roomy+archive"]
    service = restarted(site, [ARCHIVE_RULE], [row])
    answer = ask(service, exim_rcpt("roomy+archive", 1_000, "o", "198.51.100.1"))
    restored = [(r.copy, r.folder, r.bytes) for r in service.reservations]
    assert answer.startswith("452"), f"{answer!r}; restored {restored}"


def test_exims_data_check_of_a_non_ascii_capital_replaces_its_rcpt_hold_in_the_folder(site: Site) -> None:
    """Rule ``Ärger`` (10,000 bytes); ``.Ärger`` holds 1,000. Over SMTPUTF8 a client
    sends one message of 6,000 bytes to ``roomy+ÄRGER@``. Exim lowers ASCII letters only
    (``exim -be '${lc:ÄRGER}'`` gives ``Ärger``): its RCPT ACL asks about ``roomy+Ärger``, which
    holds 6,000 in the folder; its DATA ACL sends the address as the client gave it
    (``roomy+ÄRGER``), which the daemon lowers with ``str.lower`` to ``roomy+ärger``.

    Expected: the DATA check weighs the real 6,000 in place of the transaction's own hold
    (1,000 + 6,000 <= 10,000): DUNNO."""
    add_message(maildir_folder(maildir(site), "Ärger"), 1_000)
    service = scanned(site, [{"match": "Ärger", "quota": str(FOLDER_QUOTA)}])
    session = Session()
    assert ask(service, exim_rcpt("roomy+Ärger", 6_000), session) == "DUNNO"
    at_data = ask(service, exim_data(f"roomy+ÄRGER@{DOMAIN}", 6_000), session)
    held = [(r.copy, r.folder, r.bytes, r.state) for r in service.reservations]
    assert at_data == "DUNNO", f"one 6,000-byte message into a folder with 9,000 free: {at_data!r}; {held}"


def test_a_rule_no_spelling_reaches_first_does_not_refuse_mail(site: Site) -> None:
    """Rules, in this order: ``A*`` (1,000,000 bytes) and ``Archive`` (10,000 bytes). The first
    matching rule wins, so ``Archive`` is never any folder's rule: ``.Archive`` meets ``A*``
    first, ``.archive`` (or ``.aRCHIVE``) meets no rule. roomy (1,000,000 bytes, empty) has no
    such folder yet. Through Exim ``RCPT TO:<roomy+Archive@> SIZE=20000``, asked as
    ``roomy+archive``: whichever spelling it lands in, 20,000 bytes fit.

    Expected: DUNNO."""
    service = scanned(site, [{"match": "A*", "quota": "1000000"}, {"match": "Archive", "quota": "10000"}])
    answer = ask(service, exim_rcpt("roomy+archive", 20_000), Session())
    assert answer == "DUNNO", f"refused by a rule no spelling of the folder reaches: {answer!r}"


def test_a_negated_class_a_capitalised_spelling_meets_is_weighed(site: Site) -> None:
    """Rule ``[!a-z]*`` (10,000 bytes: folders not starting with a lower-case letter, e.g.
    ``Archive``). roomy (1,000,000 bytes) has no ``.Archive`` yet. Through Exim
    ``RCPT TO:<roomy+Archive@> SIZE=20000``, asked as ``roomy+archive``; the router delivers into
    a new ``.Archive``, whose rule (10,000) the message does not fit; Postfix's request for that
    address is refused (552).

    Expected: 552 (the spelling ``Archive`` meets the rule)."""
    service = scanned(site, [{"match": "[!a-z]*", "quota": "10000"}])
    postfix = ask(service, request(f"roomy+Archive@{DOMAIN}", 20_000), Session())
    assert postfix.startswith("552"), postfix
    answer = ask(service, exim_rcpt("roomy+archive", 20_000), Session())
    assert answer.startswith("552"), f"a message bigger than the rule of .Archive taken: {answer!r}"


def test_through_the_daemons_snapshot_an_unlimited_lower_case_folder_is_not_judged_by_Archive(site: Site) -> None:
    """Rule ``Archive`` (10,000 bytes); on disk roomy (1,000,000 bytes) has only ``.archive``
    (no rule matches it: no limit of its own), holding 10,001 bytes. Through Exim,
    ``RCPT TO:<roomy+archive@> SIZE=20000`` (asked as ``roomy+archive``): as in
    ``test_a_lower_case_folder_without_a_rule_is_not_judged_by_a_capitalised_rule``, the folder
    is its one spelling on disk, ``.archive``, with no limit of its own; the mailbox has plenty
    of room. Postfix's request for ``roomy+archive@`` gets DUNNO. The daemon's snapshot keeps, of
    each reading, the folders a rule limits and those Exim's lowering may take for one.

    Expected: DUNNO with the snapshot the daemon really serves from."""
    add_message(maildir_folder(maildir(site), "archive"), 10_001)
    scanned(site, [ARCHIVE_RULE])  # the scan into the store
    data = site.data()
    data["folders"] = [ARCHIVE_RULE]
    config = parse_config(data)
    daemon = Daemon(lambda: config)
    service = daemon.service
    service.snapshot = daemon._load()
    kept = [f.name for f in service.snapshot.readings[f"roomy@{DOMAIN}"].usage.folders]
    postfix = ask(service, request(f"roomy+archive@{DOMAIN}", 20_000), Session())
    assert postfix == "DUNNO", postfix
    exim = ask(service, exim_rcpt("roomy+archive", 20_000), Session())
    assert exim == "DUNNO", f"Exim: {exim!r} (folders in the daemon's snapshot: {kept})"


# An IMAP folder "R&Dev-Team": Dovecot keeps it on disk as ".R&-Dev-Team" (modified UTF-7).
AMPERSAND_RULE = {"match": "R&Dev-Team", "quota": "10000"}
DETAIL = "R&-Dev-Team"


def test_room_held_for_a_folder_with_an_ampersand_in_its_name_survives_a_restart(site: Site) -> None:
    """Rule ``R&Dev-Team`` (10,000 bytes), the IMAP folder ``R&Dev-Team`` on disk as
    ``.R&-Dev-Team``, empty; roomy has 1,000,000 bytes. Through Postfix a client holds 9,500
    bytes for ``roomy+R&-Dev-Team@`` (before the restart a second client gets 452 for 1,000
    more). The daemon restarts and restores its state file;
    the second client asks again.

    Expected: 452 still (9,500 held + 1,000 > 10,000)."""
    maildir_folder(maildir(site), DETAIL)
    service = scanned(site, [AMPERSAND_RULE])
    recipient = f"roomy+{DETAIL}@{DOMAIN}"
    assert ask(service, request(recipient, 9_500, client="203.0.113.5", instance="t1"), Session()) == "DUNNO"
    before = ask(service, request(recipient, 1_000, client="198.51.100.1", instance="o1"), Session())
    assert before.startswith("452"), before

    state.save(site.base / "reservations.json", list(service.reservations))
    again = restarted(site, [AMPERSAND_RULE])
    after = ask(again, request(recipient, 1_000, client="198.51.100.1", instance="o2"), Session())
    restored = [(r.copy, r.folder, r.bytes) for r in again.reservations]
    assert after.startswith("452"), f"after a restart: {after!r}; restored {restored}"


def _daemon_snapshot_service(site: Site, rules: list[dict[str, Any]]) -> PolicyService:
    data = site.data()
    data["folders"] = rules
    config = parse_config(data)
    daemon = Daemon(lambda: config)
    daemon.service.snapshot = daemon._load()
    return daemon.service


def test_an_unlimited_spelling_s_usage_is_not_judged_by_another_spelling_s_rule(site: Site) -> None:
    """Rule ``Archive`` (10,000 bytes). On disk roomy has ``.Archive`` (1,000 bytes: 9,000 free)
    and ``.archive`` (no rule matches it: no limit of its own) holding 50,000 bytes. Through Exim
    ``RCPT TO:<roomy+Archive@>`` or ``<roomy+archive@>`` SIZE=1000, asked as ``roomy+archive``.
    Whichever spelling the client sent, the router's delivery fits: into ``.Archive`` (1,000 +
    1,000 <= 10,000) or into the unlimited ``.archive``; the mailbox has plenty of room. Postfix's
    requests for both spellings get DUNNO.

    Expected: DUNNO."""
    md = maildir(site)
    add_message(maildir_folder(md, "Archive"), 1_000)
    add_message(maildir_folder(md, "archive"), 50_000)
    service = scanned(site, [ARCHIVE_RULE])
    for n, sent in enumerate(("Archive", "archive")):
        postfix = ask(service, request(f"roomy+{sent}@{DOMAIN}", 1_000, client=f"192.0.2.{10 + n}"), Session())
        assert postfix == "DUNNO", (sent, postfix)
    answers = {"load_snapshot": ask(service, exim_rcpt("roomy+archive", 1_000, "x", "192.0.2.30"), Session())}
    daemon_service = _daemon_snapshot_service(site, [ARCHIVE_RULE])
    answers["daemon snapshot"] = ask(daemon_service, exim_rcpt("roomy+archive", 1_000), Session())
    assert all(a == "DUNNO" for a in answers.values()), f"no spelling is full, yet: {answers}"


def test_a_bytes_only_and_a_messages_only_rule_are_not_combined_across_two_folders(site: Site) -> None:
    """Rules: ``Archive`` messages = 5 (no byte limit) and ``archive`` quota = 10,000 (no message
    limit). On disk ``.Archive`` holds 3 messages of 20,000 bytes each (3 of 5 messages: room) and
    ``.archive`` holds 8 messages of 100 bytes (800 of 10,000 bytes: room). Exim asks
    ``roomy+archive`` SIZE=1000 (the client sent either spelling). Into ``.Archive`` a 4th
    message fits its message rule; into ``.archive`` 1,800 bytes fit its byte rule. Postfix's
    requests for both spellings get DUNNO.

    Expected: DUNNO."""
    md = maildir(site)
    big = maildir_folder(md, "Archive")
    for _ in range(3):
        add_message(big, 20_000)
    small = maildir_folder(md, "archive")
    for _ in range(8):
        add_message(small, 100)
    rules: list[dict[str, Any]] = [{"match": "Archive", "messages": 5}, {"match": "archive", "quota": "10000"}]
    service = scanned(site, rules)
    for n, sent in enumerate(("Archive", "archive")):
        postfix = ask(service, request(f"roomy+{sent}@{DOMAIN}", 1_000, client=f"192.0.2.{10 + n}"), Session())
        assert postfix == "DUNNO", (sent, postfix)
    exim = ask(service, exim_rcpt("roomy+archive", 1_000, "x", "192.0.2.30"), Session())
    assert exim == "DUNNO", f"neither folder is full, yet: {exim!r}"


def test_a_state_file_of_the_release_before_keeps_room_held_in_a_folder_with_an_ampersand(site: Site) -> None:
    """The release before kept a reservation's folder by the name an IMAP server shows:
    ``R&Dev-Team`` for the folder on disk as ``.R&-Dev-Team`` (rule ``R&Dev-Team``: 10,000 bytes).
    Its state file holds 9,500 bytes in flight for the copy ``roomy+R&-Dev-Team``, folder
    ``R&Dev-Team``. The upgraded daemon restores it, and another client asks, through Postfix,
    1,000 bytes for ``roomy+R&-Dev-Team@``.

    Expected: 452 (9,500 held + 1,000 > 10,000)."""
    rule = {"match": "R&Dev-Team", "quota": "10000"}
    maildir_folder(maildir(site), "R&-Dev-Team")
    scanned(site, [rule])
    now = time.time()
    row = ["203.0.113.5", "t1", ROOMY, 9_500, now, now + 500, "flight", None, "roomy+R&-Dev-Team", "R&Dev-Team"]
    service = restarted(site, [rule], [row])
    answer = ask(service, request(f"roomy+R&-Dev-Team@{DOMAIN}", 1_000, client="198.51.100.1", instance="o"), Session())
    restored = [(r.copy, r.folder, r.bytes) for r in service.reservations]
    assert answer.startswith("452"), f"{answer!r}; restored {restored}"


def test_imap_twins_of_a_full_folder_are_one_folder_to_exim_too(site: Site) -> None:
    """Rule ``Gelöscht`` (10,000 bytes). On disk roomy has ``.Gelöscht`` (raw UTF-8, as a
    router delivering ``roomy+Gelöscht@`` as sent makes it) holding 10,001 bytes: full, and its
    IMAP twin ``.Gel&APY-scht`` (Dovecot's spelling of the same IMAP name) holding 1,000. They
    differ in encoding, not in case. Postfix's request for ``roomy+Gelöscht@`` weighs the twins
    by the most of each (``_folder_named``): 552. Over SMTPUTF8 Exim asks ``roomy+gelöscht``
    for the same RCPT; its router delivers into the full ``.Gelöscht``.

    Expected: 552, as Postfix; the twins are one folder to the IMAP server, not two folders that
    differ in case, so "which one" is not unknown."""
    md = maildir(site)
    add_message(maildir_folder(md, "Gelöscht"), 10_001)
    add_message(maildir_folder(md, "Gel&APY-scht"), 1_000)
    rules = [{"match": "Gelöscht", "quota": "10000"}]
    service = scanned(site, rules)
    postfix = ask(service, request(f"roomy+Gelöscht@{DOMAIN}", 1_000), Session())
    assert postfix.startswith("552"), postfix
    exim = ask(service, exim_rcpt("roomy+gelöscht", 1_000, "x", "192.0.2.30"), Session())
    assert exim.startswith("552"), f"the full .Gelöscht took mail through Exim: {exim!r} (Postfix: {postfix!r})"


def test_the_daemons_snapshot_keeps_a_camel_case_rules_lower_case_twin(site: Site) -> None:
    """Rule ``MyArchive`` (10,000 bytes). On disk roomy has ``.MyArchive`` holding 10,001 bytes
    (full) and ``.myarchive`` (no rule: no limit of its own) holding 1,000. Through Exim,
    ``RCPT TO:<roomy+myarchive@> SIZE=1000`` is asked as ``roomy+myarchive``: two folders on
    disk may be meant, so no folder check: the mailbox has plenty of room. The daemon's own
    snapshot (``Daemon._load``), which keeps the folders that may matter to a rule, keeps
    ``.myarchive`` too (none of the usual spellings of ``myarchive`` is ``MyArchive``): dropped,
    ``.MyArchive`` would be the one spelling, and mail the router delivers into the unlimited
    ``.myarchive`` refused.

    Expected: DUNNO from the daemon's snapshot too (Postfix's ``roomy+myarchive@`` gets DUNNO)."""
    md = maildir(site)
    add_message(maildir_folder(md, "MyArchive"), 10_001)
    add_message(maildir_folder(md, "myarchive"), 1_000)
    rules = [{"match": "MyArchive", "quota": "10000"}]
    service = scanned(site, rules)
    assert ask(service, request(f"roomy+myarchive@{DOMAIN}", 1_000), Session()) == "DUNNO"
    assert ask(service, exim_rcpt("roomy+myarchive", 1_000), Session()) == "DUNNO"
    daemon = _daemon_snapshot_service(site, rules)
    kept = [f.name for f in daemon.snapshot.readings[ROOMY].usage.folders]
    exim = ask(daemon, exim_rcpt("roomy+myarchive", 1_000), Session())
    assert exim == "DUNNO", f"daemon snapshot: {exim!r} (folders kept: {kept})"
