"""The decisive property, shared by every agent's tests: for a message of every size around the
boundary, quotagate's ``check --size`` says what the real program then does with it.

Each case gets a mailbox of its own, filled by the agent itself; one scan measures them all;
then each is asked of quotagate and delivered. Every disagreement is collected, not just the first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quotagate.model import Limits
from tests.agents.conftest import Gate
from tests.servers.mailuser import message

FILL_LINES = 4  # the fill messages' body lines: their virtual size differs from their size
PROBE_LINES = 2


@dataclass(frozen=True)
class Case:
    """Messages delivered first (their counted sizes), then one of ``size`` bytes tried."""

    name: str
    fill: tuple[int, ...]
    size: int


def around(limit: int, grace: int, used: int) -> list[Case]:
    """A mailbox holding ``used`` bytes, and messages one short of, exactly at and one past the
    room left, and the same around the room the grace leaves."""
    room = limit - used
    sizes = {room - 1, room, room + 1}
    if grace:
        sizes |= {room + grace - 1, room + grace, room + grace + 1}
    return [Case(f"used {used}, message {s}", (used,), s) for s in sorted(sizes)]


def at_and_past(limit: int, past: int = 0, probe: int = 300) -> list[Case]:
    """A small message for mailboxes one short of and exactly at the limit, and (when the agent
    lets a mailbox get there: grace, Exim's exclusive boundary) ``past`` bytes beyond it."""
    used = [limit - 1, limit] + ([limit + past] if past else [])
    return [Case(f"used {u}, message {probe}", (u,), probe) for u in used]


def counting(messages: int, probe: int = 300) -> list[Case]:
    """One message short of a message limit, and at it."""
    return [Case(f"{n} messages, limit {messages}", tuple([probe] * n), probe) for n in (messages - 1, messages)]


def made(counted: int, virtual: bool, lines: int) -> bytes:
    """A message the agent counts as ``counted`` bytes: its size, or its virtual size."""
    if not virtual:
        return message(counted, lines)
    newlines = message(counted, lines).count(b"\n")  # the same for every size with these lines
    return message(counted - newlines, lines)


Deliver = Callable[[str, bytes], bool]


def disagreements(
    gate: Gate,
    cases: Sequence[Case],
    limits: Limits,
    deliver: Deliver,
    *,
    virtual: bool = False,
) -> list[str]:
    """Run the cases (see the module docstring); what quotagate and the agent disagreed on."""
    users = [f"case{i}" for i in range(len(cases))]
    for user, case in zip(users, cases, strict=True):
        gate.add(user, limits)
        for size in case.fill:
            assert deliver(user, made(size, virtual, FILL_LINES)), f"{case.name}: the agent refused the fill"
    gate.scan()
    found = []
    for user, case in zip(users, cases, strict=True):
        ours = gate.accepts(user, case.size)
        theirs = deliver(user, made(case.size, virtual, PROBE_LINES))
        if ours != theirs:
            said = gate.output.replace("\n", " | ")
            ours_text, theirs_text = ("accepts" if ours else "refuses"), ("delivers" if theirs else "refuses")
            found.append(f"{case.name}: quotagate {ours_text}, the agent {theirs_text} ({said})")
    return found
