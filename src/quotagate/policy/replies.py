"""The reply for a refusal: full, too big for the room left, or at the message limit. Pure."""

from __future__ import annotations

import re

from quotagate.config import PolicyConfig
from quotagate.model import Action, Decision, Refusal


def reply_for(decision: Decision, policy: PolicyConfig) -> str:
    """The ``action=`` text for a rejected decision, per ``[policy]``.

    With ``on_full = "defer"`` a full mailbox gets ``defer_reply``; the other refusals keep
    their own text with the 5 of the code and of the enhanced code made a 4.
    """
    n = decision.numbers
    if decision.refusal is Refusal.DOES_NOT_FIT:
        reply = policy.fit_reply.format(size=n.size, limit=n.limit_bytes)
    elif decision.refusal is Refusal.MESSAGES:
        reply = policy.messages_reply.format(limit=n.limit_messages)
    elif policy.on_full == "defer":
        return policy.defer_reply
    else:
        return policy.reject_reply
    return temporary(reply) if policy.on_full == "defer" else reply


def temporary(reply: str) -> str:
    """``552 5.2.2 text`` as ``452 4.2.2 text``."""
    return re.sub(r"^5(\d\d) (?:5(\.\d{1,3}\.\d{1,3} ))?", lambda m: f"4{m[1]} " + (f"4{m[2]}" if m[2] else ""), reply)


def action_sent(decision: Decision, policy: PolicyConfig) -> Action:
    """What the MTA is told: a refusal is temporary (defer) with ``on_full = "defer"``, as
    :func:`reply_for` words it."""
    if decision.action is Action.REJECT and policy.on_full == "defer":
        return Action.DEFER
    return decision.action
