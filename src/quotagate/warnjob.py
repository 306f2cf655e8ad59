"""``quotagate warn``: warnings due by the ledger, rendered, claimed, sent (see :mod:`quotagate.warn`).

A warning is claimed in the store's ledger before it is sent, and released if the SMTP server
refuses it: at most once, across restarts and hosts. A crash between the claim and the send
loses that one warning rather than sending it twice; the next crossing warns again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from quotagate.config import Config, ConfigError
from quotagate.forecast import Forecast, days_left, describe
from quotagate.history import DAY
from quotagate.mailer import MailError, Smtp, message, render
from quotagate.model import Mailbox, Reading, State
from quotagate.report import forecasts
from quotagate.sizes import format_size
from quotagate.store import Store
from quotagate.text import printable
from quotagate.warn import FILLING, Outlook, fullness, outlook, plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    address: str
    notice: str
    status: str  # sent, would send, taken (another run sent it), failed: why
    subject: str = ""


def _context(m: Mailbox, r: Reading, share: Decimal, f: Forecast | None, now: float) -> dict[str, Any]:
    limits = m.limits
    quota = format_size(limits.bytes) if limits.bytes else f"{limits.messages} messages"
    used = format_size(r.bytes) if limits.bytes else f"{r.messages} messages"
    folders = sorted(r.usage.folders, key=lambda folder: -folder.bytes)[:3]
    left = days_left(f, now)
    return {
        "address": printable(m.address),
        "used": used,
        "quota": quota,
        "share": float(share),
        "percent": int(share * 100),
        "forecast": describe(f, now),
        "days": "?" if left is None else max(1, round(left)),
        "rate": format_size(round(max(f.bytes_per_day, 0))) if f else "?",
        "full_date": time.strftime("%Y-%m-%d", time.localtime(f.full_at)) if f and f.full_at else "?",
        "folders": [(printable(folder.name), format_size(folder.bytes)) for folder in folders if folder.bytes],
    }


@dataclass(frozen=True)
class WarnRun:
    outcomes: list[Outcome]
    outlook: Outlook


def run_warn(config: Config, store: Store, *, dry_run: bool = False, now: float | None = None) -> WarnRun:
    """Send (or with ``dry_run`` only list) the warnings due now; re-arm those usage fell below."""
    now = time.time() if now is None else now
    w = config.warn
    if w.template_dir is not None and not w.template_dir.is_dir():
        # Else every warning would go out in the built-in texts, and the admin learn it from a user.
        raise ConfigError(
            f"warn.template_dir: {printable(str(w.template_dir))} is not a directory (put the templates"
            " there, or unset the key for the built-in texts)"
        )
    mailboxes = [m for m in store.mailboxes() if m.enabled]
    readings = store.readings()
    predicted = forecasts(mailboxes, readings, store.history(now - config.history.forecast_days * DAY), now)
    ledger = store.sent_warnings()
    outcomes = []
    states: list[tuple[Decimal, float | None]] = []
    with Smtp(w.smtp, w.timeout) as smtp:
        for m in mailboxes:
            r = readings.get(m.address)
            share = None if r is None or r.state is State.UNKNOWN else fullness(m.limits, r.bytes, r.messages)
            if r is None or share is None:
                continue
            f = predicted.get(m.address)
            states.append((share, days_left(f, now)))
            due = plan(share, states[-1][1], ledger.get(m.address, set()), w.thresholds, w.rearm, w.full_within_days)
            if due.rearm and not dry_run:
                store.release_warnings(m.address, due.rearm)
            for notice, keys in due.mails:
                template = "filling.txt" if notice == FILLING else "threshold.txt"
                outcome = _one(
                    config, store, smtp, m, notice, keys, template, _context(m, r, share, f, now), dry_run, now
                )
                outcomes.append(outcome)
    return WarnRun(outcomes, outlook(states, w.thresholds))


def _one(
    config: Config,
    store: Store,
    smtp: Smtp,
    m: Mailbox,
    notice: str,
    keys: list[str],
    template: str,
    context: dict[str, Any],
    dry_run: bool,
    now: float,
) -> Outcome:
    sender = config.warn.sender
    try:
        subject, body = render(template, context, config.warn.template_dir)
        msg = message(sender, m.address, subject, body, notice)
    except MailError as exc:
        log.error("%s: warning %s not sent: %s", m.address, notice, exc)
        return Outcome(m.address, notice, f"failed: {exc}")
    if dry_run:
        return Outcome(m.address, notice, "would send", subject)
    if not store.claim_warning(m.address, keys[-1], now):
        return Outcome(m.address, notice, "taken", subject)
    for key in keys[:-1]:
        store.claim_warning(m.address, key, now)
    try:
        smtp.send(msg, sender, m.address)
    except MailError as exc:
        store.release_warnings(m.address, keys)
        log.error("%s: warning %s not sent: %s", m.address, notice, exc)
        return Outcome(m.address, notice, f"failed: {exc}", subject)
    log.info("%s: warning %s sent", m.address, notice)
    return Outcome(m.address, notice, "sent", subject)
