"""Catch-up cost: the full scan, and the hourly check that reads only what is new.

Seeds N billable organizations in PostgreSQL with set-based SQL (INSERT ... SELECT FROM
generate_series, indexes built afterwards): a sent hourly ledger row for every organization
and hour of ``--ledger-hours`` hours (the 48-hour catch-up window and as many hours before
it as asked: the ledger's history), less a share of the window's (organization, hour) pairs
spread evenly (``--missing``), and the billable history as the hourly runs leave it (one
interval per organization and the ``*hourly-runs`` intervals over the whole ledger).

Then it times, on the window that ends the hour before the last one:

(a) the full scan (the scheduler's start-up catch-up, ``sensormeter backfill``, the daily
    safety net): every billable organization, chunk by chunk; it also finds which hours are
    verified complete;
(b) the steady state: one new hour is reported (its rows, less ``--new-missing`` of them,
    the history extended, the run marked), then the hourly incremental check;
(c) the same check again, nothing new (every hour verified).

It prints wall and CPU seconds (this process, and the PostgreSQL backend from /proc), the
queries run and the gaps found, checked against what was left out.

    python benchmarks/catchup.py --orgs 100000 --ledger-hours 49 --database .../bench_c
    python benchmarks/catchup.py --orgs 100000 --ledger-hours 240 --database .../bench_c

``--skip-seed`` re-runs on the database a complete run left: (b)'s hour is taken back first.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from pipeline import ensure_pg_database, seed  # noqa: E402

from sensormeter.hours import format_hour, hour_start  # noqa: E402
from sensormeter.ledger import history  # noqa: E402
from sensormeter.models import open_database, utcnow  # noqa: E402
from sensormeter.settings import Settings  # noqa: E402
from sensormeter.tasks import completeness  # noqa: E402
from sensormeter.tasks.catchup import catchup_window, iter_gaps  # noqa: E402
from sensormeter.usage import DatabaseUsageSource  # noqa: E402

EVENT = "active_sensors"
H = timedelta(hours=1)


def _missing_sql(share: float, hour_index: str) -> str:
    """SQL: whether (organization i, hour) is left out; an evenly spread share of pairs."""
    return f"((o.i::bigint * 48271 + ({hour_index}) * 16807) %% 10000) < {int(share * 10_000)}"


def insert_hour(db: Any, orgs: int, hour: datetime, share: float, index: int) -> int:
    """Sent rows of ``hour`` for every organization but the left-out share; returns left out."""
    left_out = 0
    if share:
        left_out = db.execute_sql(
            f"SELECT count(*) FROM generate_series(0, {orgs - 1}) o(i)"
            f" WHERE {_missing_sql(share, str(index))}"
        ).fetchone()[0]
    keep = f"NOT {_missing_sql(share, str(index))}" if share else "true"
    db.execute_sql(
        "INSERT INTO meter_reports (organization_id, event_name, value, identifier, kind,"
        " period_hour, stripe_customer_id, measured_at, status, attempts, created_at,"
        " updated_at, sent_at)"
        f" SELECT org, %s, 1, %s || '-' || org || '-' || %s, 'hourly', %s, 'cus_' || org,"
        f" %s, 'sent', 1, %s, %s, %s"
        f" FROM (SELECT i, 'org' || lpad(i::text, 8, '0') AS org"
        f" FROM generate_series(0, {orgs - 1}) i) o WHERE {keep} ORDER BY org",
        [EVENT, EVENT, format_hour(hour), hour, hour, hour, hour, hour],
    )
    return int(left_out)


def seed_ledger(
    database_url: str, orgs: int, ledger: list[datetime], window: list[datetime], share: float
) -> tuple[int, int]:
    """The ledger, hour by hour (ids grow with the hour, as reports leave them), indexes after."""
    db = open_database(database_url)
    indexes = [
        sql
        for (sql,) in db.execute_sql(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'meter_reports'"
            " AND indexname <> 'meter_reports_pkey'"
        ).fetchall()
    ]
    for sql in indexes:
        db.execute_sql(f"DROP INDEX {sql.split(' INDEX ')[1].split(' ON ')[0]}")
    left_out = 0
    first_window = window[0]
    for hour in ledger:
        in_window = hour >= first_window
        index = int((hour - first_window) / H)
        with db.atomic():
            left_out += insert_hour(db, orgs, hour, share if in_window else 0.0, index)
    for sql in indexes:
        db.execute_sql(sql)
    db.execute_sql("ANALYZE meter_reports")
    written = db.execute_sql("SELECT count(*) FROM meter_reports").fetchone()[0]
    db.close()
    return int(written), left_out


def seed_history(database_url: str, orgs: int, first: datetime, last: datetime) -> None:
    """Every organization billable first..last, and every hour recorded by a fan-out."""
    db = open_database(database_url)
    with db.atomic():
        db.execute_sql("DELETE FROM sensormeter_billable_history")
        db.execute_sql(
            "INSERT INTO sensormeter_billable_history (organization_id, stripe_customer_id,"
            " first_hour, last_hour, updated_at) VALUES (%s, '', %s, %s, %s)",
            [history.RUNS, first, last, last],
        )
        db.execute_sql(
            "INSERT INTO sensormeter_billable_history (organization_id, stripe_customer_id,"
            " first_hour, last_hour, updated_at) SELECT 'org' || lpad(i::text, 8, '0'),"
            f" 'cus_org' || lpad(i::text, 8, '0'), %s, %s, %s"
            f" FROM generate_series(0, {orgs - 1}) i",
            [first, last, last],
        )
    db.execute_sql("ANALYZE sensormeter_billable_history")
    db.close()


def new_hour(database_url: str, orgs: int, hour: datetime, share: float) -> int:
    """What the hourly run of ``hour`` leaves: the history extended, the run marked, rows."""
    db = open_database(database_url)
    with db.atomic():
        db.execute_sql(
            "UPDATE sensormeter_billable_history SET last_hour = %s WHERE last_hour = %s",
            [hour, hour - H],
        )
        left_out = insert_hour(db, orgs, hour, share, 10_000)
    db.execute_sql("ANALYZE meter_reports")
    db.close()
    return left_out


def mark_before(db: Any, hour: datetime) -> int:
    """The highest ledger id before the rows of ``hour`` (seeded in organization order)."""
    first = [f"org{i:08d}" for i in range(100)]
    (found,) = db.execute_sql(
        "SELECT MIN(id) FROM meter_reports WHERE organization_id = ANY(%s) AND period_hour = %s",
        [first, hour],
    ).fetchone()
    return int(found) - 1 if found else completeness.max_ledger_id(db)


def undo_new_hour(database_url: str) -> datetime:
    """Take back what (b) added (the rows and history of the newest hour); returns that hour."""
    db = open_database(database_url)
    (latest,) = db.execute_sql("SELECT MAX(period_hour) FROM meter_reports").fetchone()
    with db.atomic():
        db.execute_sql("DELETE FROM meter_reports WHERE period_hour = %s", [latest])
        db.execute_sql(
            "UPDATE sensormeter_billable_history SET last_hour = %s WHERE last_hour = %s",
            [latest - H, latest],
        )
    db.execute_sql("VACUUM ANALYZE meter_reports")
    # As autovacuum leaves it between hourly runs; (b)'s own update leaves its dead rows.
    db.execute_sql("VACUUM ANALYZE sensormeter_billable_history")
    db.close()
    return hour_start(latest)


class Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def backend_cpu(db: Any) -> float:
    """CPU seconds of this connection's PostgreSQL backend (same machine), from /proc."""
    pid = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(name: str, db: Any, run: Any) -> Any:
    """Run ``run()``, print wall, CPU and queries; returns its result."""
    counter = Counter()
    peewee_log = logging.getLogger("peewee")
    peewee_log.addHandler(counter)
    peewee_log.setLevel(logging.DEBUG)
    cpu, pg, wall = time.process_time(), backend_cpu(db), time.perf_counter()
    result = run()
    wall = time.perf_counter() - wall
    cpu, pg = time.process_time() - cpu, backend_cpu(db) - pg
    peewee_log.removeHandler(counter)
    print(
        f"{name}: {wall:.2f} s wall, CPU {cpu:.2f} s sensormeter + {pg:.2f} s PostgreSQL,"
        f" {counter.count} queries"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=100_000)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/bench_c")
    parser.add_argument("--ledger-hours", type=int, default=49, help="hours of ledger")
    parser.add_argument("--missing", type=float, default=0.0, help="window hours left out")
    parser.add_argument("--new-missing", type=float, default=0.001, help="new hour left out")
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument(
        "--skip-full",
        action="store_true",
        help="no (a): the window counts as verified, as a full scan of a complete ledger leaves"
        " it (the history covers the window even when --ledger-hours is shorter)",
    )
    args = parser.parse_args()
    if not args.database.startswith("postgres"):
        sys.exit("this benchmark seeds with PostgreSQL's generate_series: give a postgresql://")

    settings = Settings(database_url=args.database, catchup_hours=48, chunk_size=args.chunk_size)
    latest = hour_start(utcnow()) - H  # the new hour of (b)
    if args.skip_seed:
        latest = undo_new_hour(args.database)
    window = catchup_window(settings, latest + timedelta(minutes=30), include_current=False)
    ledger = [latest - H * k for k in range(args.ledger_hours, 0, -1)]
    left_out = None
    if not args.skip_seed:
        ensure_pg_database(args.database)
        seeded = seed(args.database, args.orgs)
        started = time.perf_counter()
        written, left_out = seed_ledger(args.database, args.orgs, ledger, window, args.missing)
        seed_history(args.database, args.orgs, min(ledger[0], window[0] - H), ledger[-1])
        print(
            f"seeded {args.orgs} organizations in {seeded:.1f} s; ledger {written} rows"
            f" ({len(ledger)} hours, {left_out} window hours left out) and history"
            f" in {time.perf_counter() - started:.1f} s"
        )

    db = open_database(args.database)
    source = DatabaseUsageSource(db, settings.billable_status_values)
    print(
        f"{args.orgs} organizations, ledger {len(ledger)} hours; full-scan window"
        f" {format_hour(window[0])}..{format_hour(window[-1])}, chunks of {args.chunk_size}"
    )

    # Every query on one backend, so that its CPU is all of PostgreSQL's work.
    db.execute_sql("SET max_parallel_workers_per_gather = 0")

    def full() -> tuple[int, set[datetime]]:
        unsettled: set[datetime] = set()
        gaps = sum(len(orgs) for _, orgs in iter_gaps(source, settings, window, None, unsettled))
        return gaps, completeness.marked_hours(window) - unsettled

    began = time.time()
    if args.skip_full:
        verified = completeness.marked_hours(window)
    else:
        gaps, verified = timed("(a) full scan", db, full)
        print(f"    gaps {gaps}" + (f" (left out {left_out})" if left_out is not None else ""))
    print(f"    hours verified complete: {len(verified)} of {len(window)}")

    # The check of the hour before ``latest`` began noted the highest ledger id then: the
    # rows of the hour before and of ``latest`` come after it, as in production.
    record = completeness.Record(began, verified)
    before = (latest - H - timedelta(minutes=10)).replace(tzinfo=UTC).timestamp()
    record.note(before, mark_before(db, latest - H))
    new_left_out = new_hour(args.database, args.orgs, latest, args.new_missing)
    hours = catchup_window(settings, latest + timedelta(minutes=90), include_current=False)
    stale_before = utcnow() - timedelta(hours=1)

    def incremental() -> tuple[int, completeness.IncrementalCheck]:
        check = completeness.IncrementalCheck(source, settings, db, record, hours, stale_before)
        return sum(len(orgs) for _, orgs in check.gaps()), check

    found, check = timed("(b) incremental check, one new hour", db, incremental)
    print(f"    gaps {found} (left out of the new hour {new_left_out}); verified {check.checked}")
    record.verified = check.verified | {latest}  # as if its gaps were reported since
    again, check = timed("(c) incremental check, nothing new", db, incremental)
    print(f"    gaps {again}; organizations read again {check.rechecked}")
    db.close()
    if left_out is not None and not args.skip_full and gaps != left_out:
        sys.exit(f"MISMATCH: full scan found {gaps} gaps, {left_out} were left out")
    if not args.missing and found != new_left_out:
        sys.exit(f"MISMATCH: incremental check found {found}, {new_left_out} were left out")


if __name__ == "__main__":
    main()
