"""Mail for ``user+Trash@`` when Trash is left out of the quota: quotagate beside the real agents.

Dovecot 2.3 with ``quota_rule2 = Trash:ignore`` (``dovecot-lda -m Trash``) and Courier's
``deliverquota`` into ``Maildir/.Trash`` (which Courier leaves out of its quota) save such mail
with no quota check at all, however full the mailbox is. quotagate, with Trash excluded (a
``[[folders]] exclude = true`` rule, or the courier profile's own exclusion), should then not
refuse ``user+Trash@`` (it answers DUNNO: the MTA carries on, the agent saves it); the mailbox
itself stays refused by both. Each test asks quotagate (``scan``, then ``check --size``) first,
then lets the agent deliver, and compares the two.
"""

from __future__ import annotations

import pytest

from quotagate.model import Limits
from tests.agents.conftest import DOMAIN, Gate
from tests.servers.courier import Courier
from tests.servers.dovecot import Dovecot
from tests.servers.exim import Exim
from tests.servers.mailuser import message, own

pytestmark = [pytest.mark.servers, pytest.mark.mta]

IGNORE = "  quota_rule2 = Trash:ignore\n"
EXCLUDE = '[[folders]]\nmatch = "Trash"\nexclude = true\n'
PROFILE = {"maildir": "dovecot", "count": "dovecot-count"}

# name: (INBOX filled with these sizes, the limits set afterwards, the new message's size)
SCENARIOS = {
    "over-bytes": ([4000, 4000, 4000], Limits(10_000, 0), 500),  # 12000 of 10000 bytes
    "over-bytes-big": ([4000, 4000, 4000], Limits(10_000, 0), 50_000),
    "no-room": ([4000], Limits(10_000, 0), 8000),  # not full; 6000 left, 8000 sent
    "message-limit": ([1000, 1000], Limits(1_000_000, 2), 1000),  # 2 of 2 messages
}


def _answers(agent_saved: bool, gate_refused: bool) -> dict[str, bool]:
    return {"agent saved it": agent_saved, "quotagate refused it": gate_refused}


def _gate(gate: Gate, profile: str, limits: Limits, rules: str = EXCLUDE, detail_folders: bool = True) -> None:
    """quotagate with ``profile`` and ``rules``; ``detail_folders``: local+folder@ is saved into
    the folder, as dovecot-lda -m and deliverquota into the folder's directory save it here."""
    gate.configure(profile)
    policy = "detail_folders = true\n" if detail_folders else ""  # configure() ends in [policy]
    gate.config.write_text(gate.config.read_text() + policy + rules)
    gate.add("u", limits)
    gate.scan()


def _dovecot_filled(dovecot: Dovecot, backend: str, scenario: str, extra: str) -> tuple[Limits, int]:
    """INBOX filled under a large limit, then the scenario's limits set and Dovecot recounting."""
    sizes, limits, size = SCENARIOS[scenario]
    dovecot.configure(backend=backend, limit_bytes=10**9, extra=extra)
    for each in sizes:
        assert dovecot.deliver("u", message(each))
    dovecot.configure(backend=backend, limit_bytes=limits.bytes, limit_messages=limits.messages, extra=extra)
    dovecot.recalc("u")
    return limits, size


def _courier_filled(gate: Gate, courier: Courier, scenario: str) -> tuple[Limits, int]:
    """Maildir with an (empty) .Trash, INBOX filled, then the quota set: Courier recounts."""
    sizes, limits, size = SCENARIOS[scenario]
    maildir = gate.spool / "u" / "Maildir"
    own(maildir.parent)
    courier.make(maildir, folders=("Trash",))
    for each in sizes:
        assert courier.deliver(maildir, message(each))
    courier.set_quota(maildir, f"{limits.bytes}S" + (f",{limits.messages}C" if limits.messages else ""))
    return limits, size


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("backend", ["maildir", "count"])
def test_dovecot_ignored_trash_takes_it_so_quotagate_lets_it_in(
    gate: Gate, dovecot: Dovecot, backend: str, scenario: str
) -> None:
    """Dovecot (quota backend maildir or count) with quota_rule2 = Trash:ignore; quotagate with the
    matching profile and [[folders]] match = "Trash" exclude = true. The mailbox is over its byte
    limit, or has too little room for the message, or is at its message limit; a message comes
    for u+Trash@ (dovecot-lda -m Trash).
    Expected: dovecot-lda saves it (exit 0, "saved mail to Trash"), so quotagate does not refuse it (DUNNO)."""
    limits, size = _dovecot_filled(dovecot, backend, scenario, IGNORE)
    _gate(gate, PROFILE[backend], limits)
    refused = gate.refuses("u+Trash", size)
    assert _answers(dovecot.deliver("u", message(size), "Trash"), refused) == _answers(True, False)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("backend", ["maildir", "count"])
def test_dovecot_refuses_the_mailbox_itself_as_quotagate_does(
    gate: Gate, dovecot: Dovecot, backend: str, scenario: str
) -> None:
    """As above (Trash:ignore, Trash excluded in quotagate), but the message comes for u@ (INBOX).
    Expected: dovecot-lda refuses it (exit 77, "Quota exceeded"), and so does quotagate."""
    limits, size = _dovecot_filled(dovecot, backend, scenario, IGNORE)
    _gate(gate, PROFILE[backend], limits)
    refused = gate.refuses("u", size)
    assert _answers(dovecot.deliver("u", message(size)), refused) == _answers(False, True)


@pytest.mark.parametrize("backend", ["maildir", "count"])
def test_without_an_ignore_rule_dovecot_refuses_trash_as_quotagate_does(
    gate: Gate, dovecot: Dovecot, backend: str
) -> None:
    """Dovecot with no Trash rule, quotagate with no folder rule: Trash counts like any folder. The
    mailbox is over its byte limit; a message comes for u+Trash@.
    Expected: dovecot-lda refuses it (exit 77, "Quota exceeded"), and so does quotagate."""
    limits, size = _dovecot_filled(dovecot, backend, "over-bytes", "")
    _gate(gate, PROFILE[backend], limits, rules="")
    refused = gate.refuses("u+Trash", size)
    assert _answers(dovecot.deliver("u", message(size), "Trash"), refused) == _answers(False, True)


@pytest.mark.parametrize("rules", ["", EXCLUDE], ids=["profile-only", "exclude-rule"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_courier_trash_takes_it_so_quotagate_lets_it_in(
    gate: Gate, courier: Courier, scenario: str, rules: str
) -> None:
    """Courier's deliverquota into Maildir/.Trash; quotagate with the courier profile (which leaves
    Trash out by itself), with or without [[folders]] match = "Trash" exclude = true. The mailbox
    is over its byte limit, or has too little room, or is at its message limit (maildirsize
    written by maildirmake -q); a message comes for u+Trash@.
    Expected: deliverquota delivers it (exit 0), so quotagate does not refuse it (DUNNO)."""
    limits, size = _courier_filled(gate, courier, scenario)
    _gate(gate, "courier", limits, rules)
    refused = gate.refuses("u+Trash", size)
    maildir = gate.spool / "u" / "Maildir"
    assert _answers(courier.deliver(maildir / ".Trash", message(size)), refused) == _answers(True, False)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_courier_refuses_the_mailbox_itself_as_quotagate_does(gate: Gate, courier: Courier, scenario: str) -> None:
    """As above (courier profile), but the message comes for u@ (deliverquota into Maildir).
    Expected: deliverquota refuses it (exit 77, "Mail quota exceeded."), and so does quotagate."""
    limits, size = _courier_filled(gate, courier, scenario)
    _gate(gate, "courier", limits, rules="")
    refused = gate.refuses("u", size)
    maildir = gate.spool / "u" / "Maildir"
    assert _answers(courier.deliver(maildir, message(size)), refused) == _answers(False, True)


@pytest.mark.parametrize("backend", ["maildir", "count"])
def test_where_details_are_not_folders_dovecot_refuses_inbox_as_quotagate_does(
    gate: Gate, dovecot: Dovecot, backend: str
) -> None:
    """Dovecot with quota_rule2 = Trash:ignore, quotagate with Trash excluded but detail_folders
    off (the default): Dovecot's LMTP saves u+Trash@ into INBOX (lmtp_save_to_detail_mailbox = no,
    here dovecot-lda without -m). The mailbox is over its byte limit; a message comes for u+Trash@.
    Expected: dovecot-lda refuses it (exit 77), and so does quotagate."""
    limits, size = _dovecot_filled(dovecot, backend, "over-bytes", IGNORE)
    _gate(gate, PROFILE[backend], limits, detail_folders=False)
    refused = gate.refuses("u+Trash", size)
    assert _answers(dovecot.deliver("u", message(size)), refused) == _answers(False, True)


def _excluding(glob: str) -> str:
    return f'[[folders]]\nmatch = "{glob}"\nexclude = true\n'


def test_a_modified_utf7_detail_is_saved_by_dovecot_as_a_folder_of_that_literal_name(
    gate: Gate, dovecot: Dovecot
) -> None:
    """Dovecot with quota_rule2 = Gelöscht:ignore (its IMAP name; on disk .Gel&APY-scht, created
    by the user's client), quotagate with [[folders]] match = "Gelöscht" exclude = true and
    detail_folders = true. u@ is over its byte limit. Postfix asks about u+Gel&APY-scht@ (the
    on-disk spelling), which Dovecot's LMTP / dovecot-lda -m takes as a UTF-8 name: it saves
    into a folder literally named "Gel&APY-scht" (on disk .Gel&-APY-scht), which counts.
    Expected: Dovecot refuses it, so quotagate refuses it too (the rule is matched against the
    detail as sent, never its modified-UTF-7 decoding)."""
    limits, size = _dovecot_filled(dovecot, "maildir", "over-bytes", "  quota_rule2 = Gelöscht:ignore\n")
    dovecot.doveadm("u", "mailbox", "create", "Gelöscht")
    _gate(gate, "dovecot", limits, rules=_excluding("Gelöscht"))
    refused = gate.refuses("u+Gel&APY-scht", size)
    saved = dovecot.deliver("u", message(size), "Gel&APY-scht")
    assert (gate.spool / "u" / "Maildir" / ".Gel&-APY-scht").is_dir()  # another folder than Gelöscht
    assert {"agent saved it": saved, "quotagate refused it": refused} == {
        "agent saved it": False,
        "quotagate refused it": True,
    }


def test_courier_checks_the_quota_of_a_folder_an_exclude_rule_leaves_out(gate: Gate, courier: Courier) -> None:
    """The courier profile with [[folders]] match = "Spam" exclude = true and detail_folders =
    true. u@ is over its byte limit (maildirsize by maildirmake
    -q); a message comes for u+Spam@ (deliverquota into Maildir/.Spam).
    Expected: deliverquota refuses it (exit 77: only .Trash is outside Courier's quota), so
    quotagate refuses it too."""
    _, limits, size = SCENARIOS["over-bytes"]
    maildir = gate.spool / "u" / "Maildir"
    own(maildir.parent)
    courier.make(maildir, folders=("Spam", "Trash"))
    for each in SCENARIOS["over-bytes"][0]:
        assert courier.deliver(maildir, message(each))
    courier.set_quota(maildir, f"{limits.bytes}S")
    _gate(gate, "courier", limits, rules=_excluding("Spam"))
    refused = gate.refuses("u+Spam", size)
    saved = courier.deliver(maildir / ".Spam", message(size))
    assert {"agent saved it": saved, "quotagate refused it": refused} == {
        "agent saved it": False,
        "quotagate refused it": True,
    }


def test_exims_detail_keeps_its_delimiter_so_exims_checks_are_not_concerned(
    gate: Gate, dovecot: Dovecot, exim: Exim
) -> None:
    """Real Exim, with a local_part_suffix = +* router, gives its transport $local_part_suffix
    = "+trash" for x+Trash@ (lowered, the delimiter kept). Dovecot with quota_rule2 =
    trash:ignore, quotagate with rule "trash" exclude = true and detail_folders = true; u@ is
    over its byte limit; dovecot-lda -m is given what Exim gave the transport, and quotagate is
    asked as Exim asks (u+trash@, at DATA).
    Expected: Dovecot saves into a folder "+trash", which counts, and refuses it; quotagate
    refuses it too (Exim's checks are never let through for a left-out folder)."""
    exim.configure(
        users={f"x@{DOMAIN}": "x"},
        routers=exim.folder_router("+*"),
        transports=exim.folder_transport(".delivered", "headers_add = X-Detail: $local_part_suffix\n"),
    )
    exim.submit("sender@example.net", f"x+Trash@{DOMAIN}", message=b"Subject: t\n\nhello\n")
    (saved_by_exim,) = (gate.spool / "x" / "Maildir" / ".delivered" / "new").iterdir()
    given = next(line for line in saved_by_exim.read_text().splitlines() if line.startswith("X-Detail:"))
    folder = given.removeprefix("X-Detail:").strip()  # what dovecot-lda -m $local_part_suffix gets

    limits, size = _dovecot_filled(dovecot, "maildir", "over-bytes", "  quota_rule2 = trash:ignore\n")
    _gate(gate, "dovecot", limits, rules=_excluding("trash"))
    code = gate.run("check", f"u+trash@{DOMAIN}", "--size", str(size), "--stage", "data")
    assert (folder, dovecot.deliver("u", message(size), folder), code) == ("+trash", False, 1), gate.output


# Trash and the folders named after it left out; or every folder but INBOX: quotagate's rules,
# and Dovecot's.
TRASH_AND_BELOW = '[[folders]]\nmatch = "Trash*"\nexclude = true\n'
TRASH_STAR_DOVECOT = "  quota_rule2 = Trash*:ignore\n"
ONLY_INBOX = '[[folders]]\nmatch = "INBOX"\n[[folders]]\nmatch = "*"\nexclude = true\n'
ONLY_INBOX_DOVECOT = "  quota_rule2 = INBOX:storage=+0\n  quota_rule3 = ?*:ignore\n"


@pytest.mark.parametrize("detail", ["Trash/x", "Trash.", "Trash..x"])
@pytest.mark.parametrize("backend", ["maildir", "count"])
def test_dovecot_saves_a_detail_it_cannot_name_into_inbox_and_refuses_it(
    gate: Gate, dovecot: Dovecot, backend: str, detail: str
) -> None:
    """Dovecot with quota_rule2 = Trash*:ignore, quotagate with rule "Trash*" exclude = true and
    detail_folders = true; u@ is over its byte limit. A message comes for u+<detail>@.
    Expected: Dovecot cannot open the mailbox (invalid name), falls back to INBOX and refuses it
    (exit 77, "Quota exceeded"), so quotagate refuses it too."""
    limits, size = _dovecot_filled(dovecot, backend, "over-bytes", TRASH_STAR_DOVECOT)
    _gate(gate, PROFILE[backend], limits, rules=TRASH_AND_BELOW)
    refused = gate.refuses(f"u+{detail}", size)
    assert _answers(dovecot.deliver("u", message(size), detail), refused) == _answers(False, True), gate.output


@pytest.mark.parametrize("detail", ["inbox", "Inbox", ""])
def test_dovecot_saves_inbox_spelled_otherwise_or_no_detail_into_inbox_and_refuses_it(
    gate: Gate, dovecot: Dovecot, detail: str
) -> None:
    """Dovecot counting INBOX only (quota_rule2 = INBOX:storage=+0, quota_rule3 = ?*:ignore),
    quotagate with rules "INBOX" then "*" exclude = true and detail_folders = true; u@ is over
    its byte limit. A message comes for u+inbox@, u+Inbox@ or u+@.
    Expected: Dovecot saves it into INBOX and refuses it (exit 77), so quotagate refuses it too."""
    limits, size = _dovecot_filled(dovecot, "maildir", "over-bytes", ONLY_INBOX_DOVECOT)
    _gate(gate, "dovecot", limits, rules=ONLY_INBOX)
    assert dovecot.deliver("u", message(size), "Sent")  # the rules agree: other folders are left out
    refused = gate.refuses(f"u+{detail}", size)
    assert _answers(dovecot.deliver("u", message(size), detail or "INBOX"), refused) == _answers(False, True), (
        gate.output
    )


TILDE = ["~x", "~Trash", "~"]
LONG = {
    "Trash+250x": "Trash" + "x" * 250,  # directory .Trashxxx… of 256 bytes
    "Trash.+249x": "Trash." + "x" * 249,  # a child of Trash, 256 bytes on disk
    "Trash+95ö": "Trash" + "\u00f6" * 95,  # 195 bytes of UTF-8, 262 on disk (modified UTF-7)
}


@pytest.mark.parametrize("scenario", ["over-bytes", "message-limit"])
@pytest.mark.parametrize("detail", TILDE)
@pytest.mark.parametrize("backend", ["maildir", "count"])
def test_dovecot_saves_a_tilde_detail_into_inbox_and_refuses_it(
    gate: Gate, dovecot: Dovecot, backend: str, detail: str, scenario: str
) -> None:
    """Dovecot counting INBOX only (INBOX:storage=+0, ?*:ignore); quotagate with rules INBOX then
    * exclude = true and detail_folders = true; u@ is full. A message comes for u+~x@.
    Expected: Dovecot cannot make a mailbox "~x", saves into INBOX and refuses it (exit 77), so
    quotagate refuses it too."""
    limits, size = _dovecot_filled(dovecot, backend, scenario, ONLY_INBOX_DOVECOT)
    _gate(gate, PROFILE[backend], limits, rules=ONLY_INBOX)
    refused = gate.refuses(f"u+{detail}", size)
    saved = dovecot.deliver("u", message(size), detail)
    assert not any(p.name.startswith(".~") for p in (gate.spool / "u" / "Maildir").iterdir())
    assert _answers(saved, refused) == _answers(False, True), gate.output


@pytest.mark.parametrize("detail", LONG.values(), ids=LONG.keys())
@pytest.mark.parametrize("backend", ["maildir", "count"])
def test_dovecot_saves_a_detail_too_long_for_a_directory_into_inbox_and_refuses_it(
    gate: Gate, dovecot: Dovecot, backend: str, detail: str
) -> None:
    """Dovecot with Trash*:ignore; quotagate with rule Trash* exclude = true and detail_folders =
    true; u@ is over its byte limit. A message comes for u+Trash<long>@, whose Maildir++
    directory name would exceed 255 bytes.
    Expected: Dovecot cannot make the mailbox, saves into INBOX and refuses it (exit 77), so
    quotagate refuses it too."""
    limits, size = _dovecot_filled(dovecot, backend, "over-bytes", TRASH_STAR_DOVECOT)
    _gate(gate, PROFILE[backend], limits, rules=TRASH_AND_BELOW)
    refused = gate.refuses(f"u+{detail}", size)
    assert _answers(dovecot.deliver("u", message(size), detail), refused) == _answers(False, True), gate.output


def test_a_name_just_short_enough_is_saved_unchecked_as_quotagate_says(gate: Gate, dovecot: Dovecot) -> None:
    """As above, Trash + 249 x: a directory of 255 bytes.
    Expected: Dovecot makes it and saves into it with no quota check, and quotagate lets it in:
    the boundary above is Dovecot's."""
    limits, size = _dovecot_filled(dovecot, "maildir", "over-bytes", TRASH_STAR_DOVECOT)
    _gate(gate, "dovecot", limits, rules=TRASH_AND_BELOW)
    refused = gate.refuses("u+Trash" + "x" * 249, size)
    assert _answers(dovecot.deliver("u", message(size), "Trash" + "x" * 249), refused) == _answers(True, False)


def test_without_detail_folders_quotagate_refuses_the_same_long_detail(gate: Gate, dovecot: Dovecot) -> None:
    """The long detail of the tests above, with detail_folders off.
    Expected: refused (a long address is no reason to fail open)."""
    limits, size = _dovecot_filled(dovecot, "maildir", "over-bytes", TRASH_STAR_DOVECOT)
    _gate(gate, "dovecot", limits, rules=TRASH_AND_BELOW, detail_folders=False)
    assert gate.refuses("u+" + LONG["Trash+250x"], size), gate.output


def test_check_answers_as_the_mta_it_is_told_asks(gate: Gate, dovecot: Dovecot) -> None:
    """Dovecot with Trash:ignore, quotagate with Trash excluded and detail_folders = true; u@ is
    over its byte limit. The admin runs ``quotagate check u+Trash@ --size N``, as Postfix asks
    (the default) and with ``--mta exim``.
    Expected: as Postfix asks, dunno (exit 3: the agent saves it into Trash); as Exim asks,
    refused (exit 1: Exim's checks are not concerned, its daemon refuses), as the daemon
    answers each."""
    limits, size = _dovecot_filled(dovecot, "maildir", "over-bytes", IGNORE)
    _gate(gate, "dovecot", limits)
    as_postfix = gate.run("check", f"u+Trash@{DOMAIN}", "--size", str(size))
    as_exim = gate.run("check", f"u+Trash@{DOMAIN}", "--size", str(size), "--mta", "exim")
    assert (as_postfix, as_exim) == (3, 1), gate.output
