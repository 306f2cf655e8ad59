"""Checks at DATA through the real service over a real store: the message's real size replaces
the room its transaction held at RCPT (never adds to it), Exim asks per recipient, Postfix's
END-OF-MESSAGE refuses a message only when every recipient it had is refused."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from quotagate.cli import main
from quotagate.config import parse_config
from quotagate.policy.codec import PolicyDecoder, PolicyRequest
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import PolicyService, Session
from tests.policy.conftest import (
    BUSY,
    DUNNO,
    FULL,
    QUOTA,
    ROOMY,
    ROOMY_USED,
    Site,
    connected,
    request,
    run,
    serving_site,
    too_big,
)
from tests.policy.test_file_reads import with_maildirsize

ROOM = QUOTA - ROOMY_USED  # 9,000 bytes


def ask(service: PolicyService, data: bytes, session: Session | None = None) -> str:
    (item,) = PolicyDecoder().feed(data)
    assert isinstance(item, PolicyRequest)
    return service.answer(item, session)


def exim_data(
    recipient: str, size: int, instance: str = "A", added: int = 0, lines: int = 0, prdr: bool = False
) -> bytes:
    """What the generated Exim DATA ACLs send for one recipient (``prdr``: of a PRDR message)."""
    return (
        f"request=quotagate_data\nprotocol_state=END-OF-MESSAGE\nrecipient={recipient}\n"
        f"{'prdr=yes' + chr(10) if prdr else ''}size={size}\n"
        f"size_added={added}\nmessage_linecount={lines}\ninstance={instance}\nclient_address=192.0.2.1\n\n"
    ).encode()


def end_of_message(size: int, count: int, instance: str = "A", recipient: str = "") -> bytes:
    """Postfix's END-OF-MESSAGE: the real size, the count, the recipient only when there is one."""
    return request(recipient, size, "END-OF-MESSAGE", instance=instance)[:-1] + f"recipient_count={count}\n\n".encode()


def held(service: PolicyService) -> int:
    return service.reservations.held(ROOMY, time.time(), 0).bytes


@pytest.fixture
def service(site: Site) -> PolicyService:
    return site.service(site.config(client_hold="100%"), Metrics())


def test_exim_refuses_at_data_what_a_client_without_size_let_through_rcpt(service: PolicyService) -> None:
    assert ask(service, request(ROOMY, instance="A")) == "DUNNO"  # no SIZE=: nothing to hold
    assert held(service) == 0
    assert ask(service, exim_data(ROOMY, ROOM + 1)).startswith("552")
    assert ask(service, exim_data(ROOMY, ROOM, instance="B")) == "DUNNO"
    assert held(service) == ROOM
    assert (
        service.metrics.registry.get_sample_value(
            "quotagate_policy_checks_total", {"stage": "data", "decision": "reject"}
        )
        == 1
    )


def test_the_real_size_replaces_the_room_held_at_rcpt_and_never_adds_to_it(service: PolicyService) -> None:
    assert ask(service, request(ROOMY, 8000, instance="A")) == "DUNNO"
    # 8,000 held and 8,500 more would not fit; in its place, 8,500 does.
    assert ask(service, exim_data(ROOMY, 8500)) == "DUNNO"
    assert held(service) == 8500 and len(service.reservations) == 1
    assert ask(service, exim_data(ROOMY, 8400)) == "DUNNO"  # asked again: replaced again
    assert held(service) == 8400


def test_a_recipient_refused_at_data_lets_its_room_go(service: PolicyService) -> None:
    assert ask(service, request(ROOMY, 4000, instance="A")) == "DUNNO"
    assert ask(service, request(ROOMY, 4000, instance="B")) == "DUNNO"
    # SIZE= lied; only B's held room stands in the way of the real size: deferred, not refused.
    assert ask(service, exim_data(ROOMY, 6000, instance="A")).startswith("452")
    assert held(service) == 4000
    assert ask(service, request(ROOMY, 5000, instance="C")) == "DUNNO"  # another client gets it


def test_exim_sizes_count_its_received_header_and_crlf_where_the_profile_does(site: Site) -> None:
    data = site.data(grace="0", client_hold="100%")
    as_files = site.service(parse_config(data), Metrics())
    as_dovecot = site.service(
        parse_config({**data, "spool": {**data["spool"], "accounting": "dovecot-count"}}), Metrics()
    )
    # 8,000 bytes with LF line ends, a 600-byte Received header, 600 lines: 8,600 in a file,
    # 9,200 counted with CRLF line ends. The room is 9,000.
    message = exim_data(ROOMY, 8000, added=600, lines=600)
    assert ask(as_files, message) == "DUNNO" and held(as_files) == 8600
    assert ask(as_dovecot, message).startswith("552")
    assert ask(as_files, exim_data(ROOMY, 8000, instance="B", added=1001)).startswith("552")


def test_postfix_refuses_a_single_recipient_message_that_does_not_fit(service: PolicyService) -> None:
    connection = Session()
    assert ask(service, request(ROOMY, instance="A"), connection) == "DUNNO"
    assert ask(service, end_of_message(ROOM + 1, 1, recipient=ROOMY), connection).startswith("552")
    assert held(service) == 0 and len(service.recipients) == 0
    assert ask(service, request(ROOMY, instance="B"), connection) == "DUNNO"
    assert ask(service, end_of_message(ROOM, 1, instance="B", recipient=ROOMY), connection) == "DUNNO"
    assert service.reservations.totals() == {"held": 0, "flight": ROOM}  # accepted: in flight


def test_postfix_refuses_a_message_only_when_every_recipient_it_had_is_refused(
    service: PolicyService, caplog: pytest.LogCaptureFixture
) -> None:
    # Two recipients, both of them the roomy mailbox (an alias would do the same): both refused.
    ask(service, request(ROOMY, instance="A"))
    ask(service, request(ROOMY.upper(), instance="A"))
    assert ask(service, end_of_message(ROOM + 1, 2)).startswith("552")
    # The roomy mailbox and one quotagate does not know: accepted, the delivery agent decides.
    ask(service, request(ROOMY, instance="B"))
    ask(service, request("stranger@example.org", instance="B"))
    with caplog.at_level(logging.INFO, logger="quotagate.policy.service"):
        assert ask(service, end_of_message(ROOM + 1, 2, instance="B")) == "DUNNO"
    assert "but the message was accepted for its other recipients" in caplog.text
    # A recipient the MTA let in without asking (recipient_count says 2, one was seen): accepted.
    ask(service, request(ROOMY, instance="C"))
    assert ask(service, end_of_message(ROOM + 1, 2, instance="C")) == "DUNNO"
    # Refused at RCPT: not a recipient of the message, not counted.
    ask(service, request(FULL, instance="D"))
    ask(service, request(ROOMY, instance="D"))
    assert ask(service, end_of_message(ROOM + 1, 1, instance="D", recipient=ROOMY)).startswith("552")


def test_postfix_messages_without_size_let_in_only_what_fits(service: PolicyService) -> None:
    for n in range(5):
        assert ask(service, request(ROOMY, instance=f"m{n}")) == "DUNNO"  # RCPT without SIZE=
    answers = [ask(service, end_of_message(2500, 1, instance=f"m{n}", recipient=ROOMY)) for n in range(5)]
    # The last two wait for the room of the three in flight: deferred, refused once it has landed.
    assert answers == ["DUNNO"] * 3 + [BUSY.decode().removeprefix("action=").strip()] * 2
    assert service.reservations.totals()["flight"] == 7500


def test_without_the_recipients_seen_the_message_is_accepted(service: PolicyService) -> None:
    # The daemon restarted between RCPT and END-OF-MESSAGE, or the MTA never asked at RCPT.
    assert ask(service, end_of_message(ROOM + 1, 2)) == "DUNNO"
    assert ask(service, end_of_message(ROOM + 1, 1, instance="B", recipient=ROOMY)).startswith("552")


def test_transactions_that_end_forget_their_recipients(service: PolicyService) -> None:
    connection = Session()
    ask(service, request(ROOMY, instance="1"), connection)
    ask(service, request(ROOMY, instance="2"), connection)  # a new instance ends the first
    assert len(service.recipients) == 1
    ask(service, b"request=quotagate_end\ninstance=2\nclient_address=192.0.2.1\n\n")
    assert len(service.recipients) == 0


def test_the_daemon_answers_end_of_message_and_fails_open(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> list[bytes]:
        async with serving_site(site, client_hold="100%") as running, connected(running.host_port) as client:
            answers = [await client.ask(request(ROOMY, instance="A"))]
            answers.append(await client.ask(end_of_message(ROOM + 1, 1, recipient=ROOMY)))
            monkeypatch.setattr(PolicyService, "_decide", _broken)
            answers.append(await client.ask(request(ROOMY, instance="B")))
            answers.append(await client.ask(end_of_message(ROOM + 1, 1, instance="B", recipient=ROOMY)))
            return answers

    assert run(scenario()) == [DUNNO, too_big(ROOM + 1), DUNNO, DUNNO]


def _broken(*_: object) -> None:
    raise RuntimeError("a bug")


def test_a_whole_message_waits_for_the_maildirsize_reads_of_its_recipients(tmp_path: Path) -> None:
    site = with_maildirsize(tmp_path)

    async def scenario() -> list[bytes]:
        async with serving_site(site, client_hold="100%") as running, connected(running.host_port) as client:
            answers = []
            for instance, size in (("A", ROOM + 1), ("B", ROOM)):
                await client.ask(request(ROOMY, instance=instance))
                await client.ask(request(ROOMY.upper(), instance=instance))
                answers.append(await client.ask(end_of_message(size, 2, instance=instance)))
            return answers

    assert run(scenario()) == [too_big(ROOM + 1), DUNNO]


def test_check_names_the_stage_it_decides_for(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    config = site.base / "quotagate.toml"
    config.write_text(site.toml())
    check = ["--config", str(config), "check", ROOMY]
    assert main([*check, "--size", str(ROOM + 1), "--stage", "data"]) == 1
    assert "  stage     DATA: the message's real size" in capsys.readouterr().out
    assert main([*check, "--size", str(ROOM)]) == 0
    assert "  stage     RCPT: the size the client declared" in capsys.readouterr().out
    assert main([*check, "--stage", "data"]) == 2  # at DATA the size is known


def test_without_reservations_the_recipients_are_still_known_at_the_end(site: Site) -> None:
    service = site.service(site.config(reservation_seconds=0), Metrics())
    ask(service, request(ROOMY, instance="A"))
    ask(service, request(ROOMY.upper(), instance="A"))
    assert ask(service, end_of_message(ROOM + 1, 2)).startswith("552")


def test_postfix_a_copy_deferred_at_end_of_message_holds_its_room_once_the_message_is_accepted(
    service: PolicyService,
) -> None:
    """Scenario: as for Exim: two clients hold 8,000 of roomy's 9,000 free; through Postfix a
    third sends 3,000 bytes without SIZE= to roomy and to a recipient quotagate does not know.
    END-OF-MESSAGE: roomy is deferred, the other recipient is not: Postfix accepts the message.
    Expected: roomy's copy is in flight (3,000 bytes). A copy refused because the mailbox is
    full by what lands before it (its usage, mail in flight, the message's other copies) is
    not: its delivery agent refuses it too (tests/policy/test_copies.py)."""
    connection = Session()
    for n, instance in enumerate("BC"):
        assert ask(service, request(ROOMY, 4000, instance=instance, client=f"198.51.100.{n + 1}")) == "DUNNO"
    assert ask(service, request(ROOMY, instance="A"), connection) == "DUNNO"
    assert ask(service, request("stranger@example.org", instance="A"), connection) == "DUNNO"
    assert ask(service, end_of_message(3000, 2, instance="A"), connection) == "DUNNO"
    assert service.reservations.totals() == {"held": 8000, "flight": 3000}
