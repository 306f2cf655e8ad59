"""``quotagate check ADDRESS``: the decision the daemon would give, with the numbers behind it."""

from __future__ import annotations

import time
from pathlib import Path

import click

from quotagate.accounting import Profile, profile_for
from quotagate.address import normalize, without_detail
from quotagate.cli.app import App, pass_app
from quotagate.forecast import Forecast, describe, forecast
from quotagate.history import DAY
from quotagate.model import Action, Decision, Mailbox, Reading, State, Usage
from quotagate.policy.codec import PolicyRequest
from quotagate.policy.control import ControlError, ask
from quotagate.policy.live import Snapshot, usage_age
from quotagate.policy.metrics import Metrics
from quotagate.policy.replies import action_sent
from quotagate.policy.reservations import Reservation, Transaction
from quotagate.policy.service import PolicyService
from quotagate.policy.stages import STAGES, Stage, label
from quotagate.sizes import format_size, parse_size
from quotagate.store import Store
from quotagate.text import printable
from quotagate.usage.names import ascii_lower

EXIT = {Action.ACCEPT: 0, Action.REJECT: 1, Action.DEFER: 1, Action.DUNNO: 3}
_STAGE_SIZE: dict[Stage, str] = {
    "rcpt": "the size the client declared (SIZE=), if any",
    "data": "the message's real size, in place of what its transaction held at RCPT",
}


def _snapshot(store: Store, address: str, delimiter: str) -> Snapshot:
    """Just what the daemon would know of this recipient (and of its base for local+folder, and
    of the same at the domain an alias domain reaches)."""
    aliases = store.domain_aliases()
    split = without_detail(address, delimiter)
    candidates = [address, *filter(None, [aliases.target(address, split[0] if split else None)])]
    keys = set(candidates) | {base[0] for a in candidates if (base := without_detail(a, delimiter))}
    mailboxes = {k: m for k in keys if (m := store.mailbox(k)) is not None}
    readings = {k: r for k in mailboxes if (r := store.reading(k)) is not None}
    last = store.last_scan()
    return Snapshot(mailboxes, readings, last.started_at if last else 0.0, time.time(), domain_aliases=aliases)


def _daemons_reservations(service: PolicyService, address: str, control: Path) -> str:
    """The room the running daemon holds for the mailbox, taken into this check so that it
    decides as the daemon would; a line saying what was found (or that the daemon was not asked)."""
    try:
        rows = ask(control, {"op": "list", "address": address}, timeout=2)["reservations"]
    except ControlError:
        return "  reserved  not known: the daemon's control socket cannot be asked (is serve running?)"
    now = time.time()
    held = [
        Reservation(
            Transaction(str(row["client"]), str(row["transaction"])),
            address,
            int(row["bytes"]),
            now - float(row["age"]),
            now + float(row.get("expires_in", service.reservations.seconds)),
            "flight" if row["state"] == "in flight" else "held",
            # Seen delivered: a reading taken since includes it, and it no longer counts.
            None if row.get("delivered_ago") is None else now - float(row["delivered_ago"]),
            copy=str(row.get("copy", "")),
            folder=str(row.get("folder", "")),
        )
        for row in rows
        if row["state"] != "set aside"  # counted only once its message is accepted
    ]
    service.reservations.restore(held, now)
    return f"  reserved  {sum(r.bytes for r in held)} bytes in {len(held)} messages held by the daemon"


def _forecast(store: Store, mailbox: Mailbox | None, usage: Usage | None, days: float) -> Forecast | None:
    if mailbox is None or usage is None:
        return None
    at = max(usage.measured_at, time.time())  # the usage still holds now: see report.forecasts
    history = store.history(at - days * DAY, [mailbox.address]).get(mailbox.address, [])
    return forecast(history, mailbox.limits, (usage.bytes, usage.messages), at)


def _forecast_line(f: Forecast | None) -> str:
    text = describe(f, time.time())
    if f is None or f.bytes_per_day == 0:
        return f"  forecast  {text}"
    rate = format_size(round(abs(f.bytes_per_day)))
    return f"  forecast  {text} ({'+' if f.bytes_per_day > 0 else '-'}{rate} a day)"


def _explain(
    action: Action,
    decision: Decision,
    mailbox: Mailbox | None,
    reading: Reading | None,
    usage: Usage | None,
    profile: Profile,
    stage: Stage = "rcpt",
) -> list[str]:
    """What the admin reads; every name in it escaped (:func:`printable`), one line each."""
    lines = [f"{action.value}: {printable(decision.reason)}"]
    if mailbox is None:
        return lines
    lines.append(f"  stage     {label(stage)}: {_STAGE_SIZE[stage]}")
    lines.append(f"  counted   as {profile.describe}")
    limits = mailbox.limits
    lines.append(f"  mailbox   {printable(mailbox.address)}" + ("" if mailbox.enabled else " (disabled)"))
    if reading is None:
        lines.append("  usage     not measured yet: run 'quotagate scan'")
        return lines
    lines.append(f"  location  {printable(reading.path)} ({reading.usage.format.value})")
    if reading.state is State.UNKNOWN or usage is None:
        lines.append(f"  usage     unknown: {printable(str(reading.reason))}")
        return lines
    if reading.reason:  # measured, but not all of it; or kept at its last numbers
        lines.append(f"  note      {printable(reading.reason)}")
    quota = format_size(limits.bytes) if limits.bytes else "unlimited"
    pct = f" ({100 * usage.bytes / limits.bytes:.1f}%)" if limits.bytes else ""
    lines.append(f"  usage     {format_size(usage.bytes)} of {quota}{pct} [{usage.bytes} bytes]")
    lines.append(f"  messages  {usage.messages} of {limits.messages or 'unlimited'}")
    size, grace = decision.numbers.size, decision.numbers.grace_bytes
    lines.append(f"  size      {size} bytes (inclusive check)" if size else "  size      unknown (exclusive check)")
    if grace:
        lines.append(f"  grace     {grace} bytes")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(usage.measured_at))
    if usage.source == "maildirsize":
        lines.append(f"  measured  now, from maildirsize (last changed {stamp})")
    else:
        lines.append(f"  measured  {stamp}, {usage_age(usage, time.time()):.0f} s ago, from a {usage.source}")
    return lines


def _declared(text: str) -> int | None:
    """``--size`` as the daemon takes a SIZE=: digits by its rules (a negative one, Exim's -1, is
    no size; past 2^53 - 1, that), else a size with a unit (10M)."""
    digits = text.strip()
    if digits.startswith("-") and digits[1:].isascii() and digits[1:].isdigit():
        return None
    if digits.isascii() and digits.isdigit():
        return PolicyRequest({"size": digits}).size
    return parse_size(digits)


@click.command("check")
@click.argument("address")
@click.option("--size", default=None, help="Declared message size (SIZE=): bytes or 10M; absent = unknown.")
@click.option(
    "--stage",
    type=click.Choice(STAGES),
    default="rcpt",
    show_default=True,
    help="rcpt: the size the client declared; data: the message's real size, as checked after DATA.",
)
@click.option(
    "--mta",
    type=click.Choice(["postfix", "exim"]),
    default="postfix",
    show_default=True,
    help="Ask as this MTA asks: Exim's ACLs give the local part with A-Z lowered (at DATA, only Exim asks).",
)
@pass_app
def check(app: App, address: str, size: str | None, stage: Stage, mta: str) -> int:
    """The decision the daemon would give. Exit 0 accept, 1 reject/defer, 3 dunno, 2 error."""
    try:
        declared = None if size is None else _declared(size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--size") from None
    if stage == "data" and declared is None:
        raise click.BadParameter("a check at DATA needs the message's size", param_hint="--size")
    config = app.config
    with app.store() as store:
        snapshot = _snapshot(store, normalize(address), config.policy.folder_delimiter)
        service = PolicyService(config, Metrics())
        service.snapshot = snapshot
        # The daemon holds room by mailbox: ask about the one this recipient reaches.
        reached = service.mailbox_of(address) or normalize(address)
        held = _daemons_reservations(service, reached, config.policy.control_socket)
        # Only Exim asks at DATA about one recipient, as it asked at RCPT: A-Z lowered.
        exim = mta == "exim" or stage == "data"
        local, at, domain = address.rpartition("@")
        asked = f"{ascii_lower(local)}{at}{domain}" if exim else address
        outcome = service.check(asked, declared, stage=stage, lowered=exim)
        mailbox = snapshot.mailboxes.get(outcome.address)
        reading = snapshot.readings.get(outcome.address)
        predicted = _forecast(store, mailbox, outcome.usage, config.history.forecast_days)
    action = action_sent(outcome.decision, config.policy)  # as the daemon words it: on_full
    lines = _explain(action, outcome.decision, mailbox, reading, outcome.usage, profile_for(config.spool), stage)
    if mailbox is not None:
        lines.append(held)
    if outcome.usage is not None and reading is not None and reading.state is not State.UNKNOWN:
        lines.append(_forecast_line(predicted))
    click.echo("\n".join(lines))
    return EXIT[action]


def register(cli: click.Group) -> None:
    cli.add_command(check)
