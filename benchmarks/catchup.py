"""Catch-up scan cost: how long finding the missed hours of a whole fleet takes.

Seeds N billable organizations with a full ledger of sent hourly reports over the catch-up
window, removes a share of them (the "missed" hours), then times the search the hourly
catch-up job and `sensormeter backfill` run: for each chunk of billable organizations, one
aggregate query, and a detailed read of the incomplete ones only. Prints seconds, rows
scanned, gaps found (checked against what was removed) and queries per chunk. With
``--history``, every organization is billable over the window in the billable history (as
hourly runs leave it), so the scan also reads the organizations it has (to find those not
billable now) and the history of the incomplete ones; without it the history is empty.

    python benchmarks/catchup.py --orgs 100000 --hours 48 --missing 0.01
    python benchmarks/catchup.py --orgs 100000 --hours 48 --missing 0.01 --skip-seed --history
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from pipeline import ensure_pg_database, seed  # noqa: E402

from sensormeter import db as drivers  # noqa: E402
from sensormeter import ledger  # noqa: E402
from sensormeter.hours import format_hour
from sensormeter.ledger import history  # noqa: E402
from sensormeter.models import open_database, utcnow  # noqa: E402
from sensormeter.settings import Settings  # noqa: E402
from sensormeter.tasks.catchup import catchup_window, iter_gaps
from sensormeter.usage import DatabaseUsageSource  # noqa: E402

EVENT = "active_sensors"
drivers.POSTGRES_DRIVERS = ("psycopg2",)  # the seeding copies with psycopg2's copy_expert


def missing(org_index: int, hour_index: int, share: float) -> bool:
    """A deterministic, evenly spread share of (organization, hour) pairs left out."""
    return ((org_index * 48271 + hour_index * 16807) % 10_000) < share * 10_000


def seed_ledger(
    database_url: str, orgs: int, hours: list[datetime], share: float
) -> tuple[int, int]:
    """Sent hourly rows for every organization and hour but the missing share (PostgreSQL).

    Every organization also has a row the hour before the window: sensormeter reported it
    before, so catch-up may reach the window's first hour.
    """
    db = open_database(database_url)
    written = left_out = 0
    step = 20_000
    for lo in range(0, orgs, step):
        buffer = io.StringIO()
        for i in range(lo, min(orgs, lo + step)):
            org = f"org{i:08d}"
            before = [hours[0] - timedelta(hours=1)]
            for h, hour in enumerate(before + hours, start=-1):
                if h >= 0 and missing(i, h, share):
                    left_out += 1
                    continue
                ident = ledger.hourly_identifier(org, EVENT, hour)
                stamp = hour.isoformat(sep=" ")
                buffer.write(
                    f"{org}\t{EVENT}\t1\t{ident}\thourly\t{stamp}\tcus_{org}\t{stamp}\tsent"
                    f"\t1\t{stamp}\t{stamp}\t{stamp}\n"
                )
                written += 1
        buffer.seek(0)
        with db.atomic():
            db.connection().cursor().copy_expert(
                "COPY meter_reports (organization_id, event_name, value, identifier, kind,"
                " period_hour, stripe_customer_id, measured_at, status, attempts, created_at,"
                " updated_at, sent_at) FROM STDIN",
                buffer,
            )
    db.execute_sql("ANALYZE meter_reports")
    db.close()
    return written, left_out


def seed_history(database_url: str, orgs: int, hours: list[datetime], on: bool) -> None:
    """With ``on``, every organization billable over the whole window in the billable history
    (and every hour recorded by a fan-out), as hourly runs leave it; else an empty history."""
    db = open_database(database_url)
    db.execute_sql("DELETE FROM sensormeter_billable_history")
    if on:
        first, last = (
            (hours[0] - timedelta(hours=1)).isoformat(sep=" "),
            hours[-1].isoformat(sep=" "),
        )
        buffer = io.StringIO()
        buffer.write(f"{history.RUNS}\t\t{first}\t{last}\t{last}\n")
        for i in range(orgs):
            buffer.write(f"org{i:08d}\tcus_org{i:08d}\t{first}\t{last}\t{last}\n")
        buffer.seek(0)
        with db.atomic():
            db.connection().cursor().copy_expert(
                "COPY sensormeter_billable_history (organization_id, stripe_customer_id,"
                " first_hour, last_hour, updated_at) FROM STDIN",
                buffer,
            )
    db.execute_sql("ANALYZE sensormeter_billable_history")
    db.close()


class Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=100_000)
    parser.add_argument(
        "--database", default="postgresql://postgres@127.0.0.1:5432/sensormeter_bench_catchup"
    )
    parser.add_argument("--hours", type=int, default=48)
    parser.add_argument("--missing", type=float, default=0.01, help="share of hours left out")
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument(
        "--history",
        action="store_true",
        help="every organization billable over the window in the billable history (else none)",
    )
    args = parser.parse_args()
    if not args.database.startswith("postgres"):
        sys.exit("this benchmark seeds with COPY: give a postgresql:// --database")

    settings = Settings(
        database_url=args.database, catchup_hours=args.hours, chunk_size=args.chunk_size
    )
    # The hours before the current one, as the hourly tick's catch-up looks at them.
    hours = catchup_window(settings, utcnow(), include_current=False)
    left_out = None
    if not args.skip_seed:
        ensure_pg_database(args.database)
        seeded = seed(args.database, args.orgs)
        started = time.perf_counter()
        written, left_out = seed_ledger(args.database, args.orgs, hours, args.missing)
        print(
            f"seeded {args.orgs} organizations in {seeded:.1f} s; ledger {written} rows "
            f"({left_out} hours left out) in {time.perf_counter() - started:.1f} s"
        )

    seed_history(args.database, args.orgs, hours, args.history)
    db = open_database(args.database)
    source = DatabaseUsageSource(db, settings.billable_status_values)
    queries = Counter()
    peewee_log = logging.getLogger("peewee")
    peewee_log.addHandler(queries)
    peewee_log.setLevel(logging.DEBUG)
    started = time.perf_counter()
    gaps = batches = 0
    for _label, orgs in iter_gaps(source, settings, hours):
        gaps += len(orgs)
        batches += 1
    seconds = time.perf_counter() - started
    chunks = -(-args.orgs // args.chunk_size)
    print(
        f"catch-up scan: {args.orgs} organizations x {len(hours)} hours "
        f"({format_hour(hours[0])}..{format_hour(hours[-1])}), "
        f"chunks of {args.chunk_size}"
    )
    print(f"  seconds {seconds:.2f}, organizations/s {args.orgs / seconds:,.0f}")
    print(
        f"  gaps found {gaps} in {batches} report jobs"
        + (f" (left out: {left_out})" if left_out is not None else "")
    )
    print(f"  queries {queries.count} ({queries.count / chunks:.1f} per chunk of {chunks})")
    db.close()
    if left_out is not None and gaps != left_out:
        sys.exit(f"MISMATCH: found {gaps} gaps, {left_out} were left out")


if __name__ == "__main__":
    main()
