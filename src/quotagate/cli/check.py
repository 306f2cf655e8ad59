"""``quotagate check ADDRESS``: the decision from stored usage, with the numbers behind it."""

from __future__ import annotations

import time
from dataclasses import replace

import click

from quotagate.address import normalize
from quotagate.cli.app import App, pass_app
from quotagate.decide import decide
from quotagate.model import Action, Decision, Mailbox, Reading, State, Usage
from quotagate.sizes import format_size, parse_size

EXIT = {Action.ACCEPT: 0, Action.REJECT: 1, Action.DEFER: 1, Action.DUNNO: 3}


def _usage(reading: Reading | None) -> Usage | None:
    if reading is None or reading.state is State.UNKNOWN:
        return None
    return Usage(reading.bytes, reading.messages, reading.measured_at, "scan")


def _explain(decision: Decision, mailbox: Mailbox | None, reading: Reading | None, now: float) -> list[str]:
    lines = [f"{decision.action.value}: {decision.reason}"]
    if mailbox is None:
        return lines
    limits = mailbox.limits
    lines.append(f"  mailbox   {mailbox.address}" + ("" if mailbox.enabled else " (disabled)"))
    if reading is None:
        lines.append("  usage     not measured yet: run 'quotagate scan'")
        return lines
    lines.append(f"  location  {reading.path} ({reading.usage.format.value})")
    if reading.state is State.UNKNOWN:
        lines.append(f"  usage     unknown: {reading.reason}")
        return lines
    quota = format_size(limits.bytes) if limits.bytes else "unlimited"
    pct = f" ({100 * reading.bytes / limits.bytes:.1f}%)" if limits.bytes else ""
    lines.append(f"  usage     {format_size(reading.bytes)} of {quota}{pct} [{reading.bytes} bytes]")
    lines.append(f"  messages  {reading.messages} of {limits.messages or 'unlimited'}")
    size = decision.numbers.get("size")
    lines.append(f"  size      {size} bytes (inclusive check)" if size else "  size      unknown (exclusive check)")
    if decision.numbers.get("grace_bytes"):
        lines.append(f"  grace     {decision.numbers['grace_bytes']} bytes")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(reading.measured_at))
    lines.append(f"  measured  {stamp}, {now - reading.measured_at:.0f} s ago, by a scan")
    return lines


@click.command("check")
@click.argument("address")
@click.option("--size", default=None, help="Declared message size (SIZE=): bytes or 10M; absent = unknown.")
@pass_app
def check(app: App, address: str, size: str | None) -> int:
    """The decision the daemon would give. Exit 0 accept, 1 reject/defer, 3 dunno, 2 error."""
    try:
        declared = None if size is None else parse_size(size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--size") from None
    store = app.store()
    key = normalize(address)
    try:
        mailbox = store.mailbox(key)
        reading = store.reading(key)
        last = store.last_scan()
    finally:
        store.close()
    if reading is not None and last is not None:
        # The last scan confirmed every unchanged reading: its age is the scan's, not the change's.
        reading = replace(reading, measured_at=max(reading.measured_at, last.started_at))
    decision = decide(mailbox, _usage(reading), declared, grace=app.config.policy.grace)
    click.echo("\n".join(_explain(decision, mailbox, reading, time.time())))
    return EXIT[decision.action]


def register(cli: click.Group) -> None:
    cli.add_command(check)
