"""The one store contract, against every backend on its real server: quotagate's own tables in
SQLite, PostgreSQL and MariaDB, PostfixAdmin's and the classic schema, and an LDAP tree."""

from __future__ import annotations

from pathlib import Path

from msgspec.structs import replace
from sqlalchemy import text

from quotagate.config import parse_config
from quotagate.history import DAY, HOUR, Retention, Sample
from quotagate.model import FolderUsage, Format, Limits, Mailbox, MailboxUsage, Reading, ScanSummary, State
from quotagate.policy.live import Snapshot, SnapshotLoader, load_snapshot
from quotagate.scan import run_scan
from quotagate.store import open_store
from tests.store.backends import Backend

HOSTILE = ["o'brien@example.org", "star*@example.org", "paren(s)@example.org", "semi;colon@example.org"]


def reading(address: str, bytes_: int, state: State = State.OK) -> Reading:
    folders = (FolderUsage("INBOX", bytes_, 1, (1, 2)), FolderUsage("Sent", 0, 0, None))
    usage = MailboxUsage(Format.MAILDIR, folders, root_stamp=1_700_000_000_123_456_789)
    return Reading(address, f"/m/{address}", usage, bytes_, 1, state, 1_700_000_000.25)


def test_the_directory_lists_mailboxes_with_their_limits(backend: Backend) -> None:
    backend.add("alice@example.org", 1000)
    for i, address in enumerate(HOSTILE):
        backend.add(address, 100 + i)
    boxes = {m.address: m for m in backend.store.mailboxes()}
    assert boxes["alice@example.org"].limits == Limits(1000)
    for i, address in enumerate(HOSTILE):
        assert boxes[address].limits == Limits(100 + i)
        found = backend.store.mailbox(address)
        assert found is not None and found.address == address
    assert backend.store.mailbox("star@example.org") is None
    assert backend.store.mailbox("x' OR '1'='1@example.org") is None


def test_readings_round_trip(backend: Backend) -> None:
    backend.add("a@example.org", 10)
    backend.add("b@example.org", 10)
    backend.store.mailboxes()
    a, b = reading("a@example.org", 50, State.OVER), reading("b@example.org", 5)
    backend.store.save_readings([a, b], [], {"a@example.org": True, "b@example.org": False})
    assert backend.store.readings() == {a.address: a, b.address: b}
    totals_only = backend.store.readings(with_folders=False)[a.address]
    assert totals_only.usage.folders == () and (totals_only.bytes, totals_only.state) == (a.bytes, a.state)
    assert backend.store.reading("b@example.org") == b
    # The daemon with folder limits asks only for the folders they limit, as name and totals.
    limited = {r.address: r.usage.folders for r in backend.store.changes(None, True, lambda n: n == "Sent").readings}
    assert limited == {a.address: (FolderUsage("Sent", 0, 0),), b.address: (FolderUsage("Sent", 0, 0),)}
    backend.store.save_readings([], ["a@example.org"], {"a@example.org": False})
    assert set(backend.store.readings()) == {"b@example.org"}


def test_flags_are_published_where_the_mta_reads_them(backend: Backend) -> None:
    for address in HOSTILE[:2]:
        backend.add(address, 10)
    backend.store.mailboxes()
    backend.store.save_readings(
        [reading(HOSTILE[0], 50, State.OVER), reading(HOSTILE[1], 5)], [], {HOSTILE[0]: True, HOSTILE[1]: False}
    )
    assert backend.flagged(HOSTILE[0])
    assert not backend.flagged(HOSTILE[1])
    backend.store.save_readings([reading(HOSTILE[0], 5)], [], {HOSTILE[0]: False})
    assert not backend.flagged(HOSTILE[0])


def test_scan_history(backend: Backend) -> None:
    assert backend.store.last_scan() is None
    for n in (1, 2):
        backend.store.record_scan(ScanSummary(float(n), n + 0.5, n == 1, 10 * n, n, 100, 10**12, 1, 0, n))
    last = backend.store.last_scan()
    assert last is not None and last.mailboxes == 20 and not last.full


def test_a_scan_flags_a_full_mailbox_and_clears_it_after_a_deletion(backend: Backend, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    for local, size in (("full", 2000), ("roomy", 10)):
        cur = spool / "example.org" / local / "Maildir" / "cur"
        cur.mkdir(parents=True)
        (cur / f"1.M1.h,S={size}:2,S").write_bytes(b"x" * size)
    backend.add("full@example.org", 1000)
    backend.add("roomy@example.org", 1000)
    config = replace(parse_config({"spool": {"root": str(spool)}}), store=backend.config)

    first = run_scan(config, backend.store)
    assert first.summary.over == 1
    assert backend.flagged("full@example.org") and not backend.flagged("roomy@example.org")
    assert run_scan(config, backend.store).summary.written == 0

    for message in (spool / "example.org" / "full" / "Maildir" / "cur").iterdir():
        message.unlink()
    assert run_scan(config, backend.store).summary.over == 0
    assert not backend.flagged("full@example.org")


def test_history_round_trips_per_mailbox_in_time_order(backend: Backend) -> None:
    store = backend.store
    store.record_history([Sample("a@example.org", 20.0, 200, 2), Sample(HOSTILE[0], 5.0, 1, 1)])
    store.record_history([Sample("a@example.org", 10.0, 100, 1)])
    assert store.history(0) == {
        "a@example.org": [Sample("a@example.org", 10.0, 100, 1), Sample("a@example.org", 20.0, 200, 2)],
        HOSTILE[0]: [Sample(HOSTILE[0], 5.0, 1, 1)],
    }
    assert store.history(15, [HOSTILE[0], "a@example.org"]) == {
        "a@example.org": [Sample("a@example.org", 20.0, 200, 2)]
    }
    assert store.history(0, []) == {}


def test_history_thins_with_age_and_expires(backend: Backend) -> None:
    store = backend.store
    now = 1000 * DAY + 12 * HOUR
    address = "a@example.org"
    recent = [now - 60 * i for i in range(10)]  # every minute: all kept
    three_days = [now - 3 * DAY + 60 * i for i in range(10)]  # within one hour: the last survives
    forty_days = [now - 40 * DAY + HOUR * i for i in range(5)]  # within one day: the last survives
    ancient = [now - 800 * DAY]
    times = recent + three_days + forty_days + ancient
    store.record_history([Sample(address, t, int(t), 1) for t in times])
    assert store.prune_history(now, Retention(2, 30, 730)) == 9 + 4 + 1
    kept = [s.at for s in store.history(0)[address]]
    assert kept == sorted([*recent, max(three_days), max(forty_days)])
    assert store.prune_history(now, Retention(2, 30, 730)) == 0  # nothing crossed a boundary since
    assert store.prune_history(now + 20 * DAY, Retention(2, 30, 730)) == 8  # the minutes, now hourly: 2 hours


def test_the_warnings_ledger_claims_once(backend: Backend) -> None:
    store = backend.store
    assert store.sent_warnings() == {}
    assert store.claim_warning(HOSTILE[0], "80%", 1.0)
    assert not store.claim_warning(HOSTILE[0], "80%", 2.0)  # a second host, or a restart
    assert store.claim_warning(HOSTILE[0], "90%", 3.0)
    assert store.claim_warning("b@example.org", "80%", 4.0)
    assert store.sent_warnings() == {HOSTILE[0]: {"80%", "90%"}, "b@example.org": {"80%"}}
    store.release_warnings(HOSTILE[0], ["90%", "95%"])
    assert store.sent_warnings() == {HOSTILE[0]: {"80%"}, "b@example.org": {"80%"}}
    assert store.claim_warning(HOSTILE[0], "90%", 5.0)  # re-armed: may be sent again


def _seen(snapshot: Snapshot) -> tuple[dict[str, Mailbox], dict[str, tuple[int, int, State, float, str]]]:
    """What the daemon answers from: every mailbox, and each reading's totals, state and path."""
    readings = {a: (r.bytes, r.messages, r.state, r.measured_at, r.path) for a, r in snapshot.readings.items()}
    return dict(snapshot.mailboxes), readings


def test_a_refresh_reads_what_changed_and_ends_where_a_full_load_does(backend: Backend) -> None:
    """The daemon refreshes from the change stamp: new readings and mailboxes, dropped readings
    and (on quotagate's own table) new limits reach it, and it holds what a full load holds."""
    store = backend.store
    for address in ("a@example.org", "b@example.org"):
        backend.add(address, 1000)
    store.save_readings([reading("a@example.org", 10), reading("b@example.org", 20)], [])
    loader = SnapshotLoader()
    assert _seen(loader.load(store)) == _seen(load_snapshot(store))
    stamp = store.changes(None).stamp

    backend.add("c@example.org", 3000)
    store.save_readings([reading("a@example.org", 500), reading("c@example.org", 1)], ["b@example.org"])
    own = backend.config.url.startswith(("sqlite", "postgresql", "mysql")) and backend.config.schema_ == "quotagate"
    if own:
        store.upsert_mailboxes([Mailbox("a@example.org", Limits(2000))])
    since = store.changes(stamp)
    assert sorted(r.address for r in since.readings) == ["a@example.org", "c@example.org"]
    assert since.removed_readings == ["b@example.org"] and not since.readings_full

    refreshed = loader.load(store)
    assert _seen(refreshed) == _seen(load_snapshot(store))
    a = refreshed.mailboxes["a@example.org"]
    assert a.limits == Limits(2000 if own else 1000)
    assert refreshed.readings["a@example.org"].bytes == 500 and "b@example.org" not in refreshed.readings
    assert "c@example.org" in refreshed.mailboxes


def test_a_mailbox_deleted_by_hand_leaves_the_daemon_too(db_url: str) -> None:
    """A row deleted from quotagate's own table in SQL carries no stamp: the mailbox count shows
    it, and the refresh reads everything again."""
    with open_store(db_url) as store:
        store.migrate()
        store.upsert_mailboxes([Mailbox("a@example.org", Limits(10)), Mailbox("b@example.org", Limits(10))])
        loader = SnapshotLoader()
        assert set(loader.load(store).mailboxes) == {"a@example.org", "b@example.org"}
        with store.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(text("DELETE FROM quotagate_mailbox WHERE address = 'b@example.org'"))
        assert set(loader.load(store).mailboxes) == {"a@example.org"}
