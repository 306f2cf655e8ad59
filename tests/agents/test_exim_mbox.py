"""Exim's appendfile delivering into mbox files (``file =``), with ``quota``, under the
``exim`` profile: the file size is what appendfile weighs."""

from __future__ import annotations

import pytest

from quotagate.model import Limits
from tests.agents.conftest import DOMAIN, Gate
from tests.servers.exim import MAIL_UID, Exim
from tests.servers.mailuser import message

pytestmark = [pytest.mark.servers, pytest.mark.mta]

LIMIT = 10_000

_ROUTER = """\
mbox_user:
  driver = accept
  domains = +local_domains
  local_parts = ^mb
  address_data = ${lookup{$local_part}lsearch{USERS}{$value}fail}
  transport = mbox_delivery
"""

_TRANSPORT = """\
mbox_delivery:
  driver = appendfile
  file = {spool}/$address_data
  user = {uid}
  group = {uid}
  mode = 0600
  quota = {limit}
  quota_is_inclusive = {inclusive}
"""


@pytest.mark.parametrize("inclusive", [True, False])
def test_check_agrees_with_appendfile_on_an_mbox_at_the_boundary(gate: Gate, exim: Exim, inclusive: bool) -> None:
    """Scenario: Exim's appendfile delivers into one mbox file per user with ``quota`` (inclusive
    or not); mailboxes at 60%, 90% and 99%. Expected: quotagate counts the file as Exim writes
    it (its From_ line and trailing blank line), and ``check --size`` accepts exactly the
    messages appendfile then delivers: one byte short of the room, at it, one byte past."""
    exim.configure(
        users={},  # the mbox users are in mbox_users
        main="received_header_text =",
        routers=_ROUTER.replace("USERS", str(exim.work / "mbox_users")),
        transports=_TRANSPORT.format(spool=gate.spool, uid=MAIL_UID, limit=LIMIT, inclusive=str(inclusive).lower()),
    )
    (exim.work / "mbox_users").write_text("".join(f"mb{i}: mb{i}\n" for i in range(5)))
    gate.configure("exim", layout="{local}", quota_is_inclusive=inclusive)
    probes = []
    for i, fill in enumerate([6000, 6000, 6000, 9000, 9900]):
        user = f"mb{i}"
        gate.add(user, Limits(LIMIT))
        assert exim.deliver(f"{user}@{DOMAIN}", message(fill, 5))
        probes.append(user)
    gate.scan()
    found = []
    for i, user in enumerate(probes):
        held = (gate.spool / user).stat().st_size
        assert gate.counted(user)[0] == held, (gate.counted(user), held)
        room = LIMIT - held
        size = max(200, room + (i % 3) - 1) if i < 3 else 300
        ours = gate.accepts(user, size)
        said = gate.output.replace("\n", " | ")
        theirs = exim.deliver(f"{user}@{DOMAIN}", message(size, 2))
        if ours != theirs:
            found.append(f"{user}: held {held}, message {size}: quotagate {ours}, exim {theirs} ({said})")
    assert found == []
