"""Ledger retention: what a ledger weighs on disk, and what the prune costs.

Seeds ``meter_reports`` with the hourly rows of ``--orgs`` organizations over ``--days`` days
(24 rows per organization per day; UUID organization ids, Stripe-like customer and request
ids, RQ-like job ids, all rows sent) with one set-based INSERT per day, as hourly runs would
leave it (ids in time order). Then:

1. the disk: ``pg_total_relation_size('meter_reports')`` (table, TOAST and indexes) on
   PostgreSQL after ANALYZE, or the file size on SQLite after a checkpoint; per row, per
   1,000 organizations per month (30 days) and for 13 months of 1,000 / 1,000,000 organizations;
2. a prune with nothing to remove (the hourly run of a steady ledger);
3. a prune of the oldest ``--remove-days`` days, batch by batch as the job does, without its
   pauses: rows removed, seconds, rows/s, and the CPU seconds of this process and of its
   PostgreSQL backend (read from /proc: that backend only, not the other sessions);
4. a prune with nothing to remove again, before and after VACUUM (the dead index entries a
   large delete leaves are skipped until vacuum clears them).

    python benchmarks/retention.py --orgs 1000 --days 30 --remove-days 7 \
        --database postgresql://postgres@127.0.0.1:5432/bench_r
    python benchmarks/retention.py --orgs 1000 --days 30 --remove-days 7 --database /tmp/r.db
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import peewee

sys.path.insert(0, str(Path(__file__).parent))

from pipeline import ensure_pg_database  # noqa: E402

from sensormeter.hours import hour_start  # noqa: E402
from sensormeter.ledger import retention  # noqa: E402
from sensormeter.models import MeterReport, create_tables, open_database, utcnow  # noqa: E402

DAY = timedelta(days=1)

# One day of hourly rows, in hour then organization order (the ids grow with time).
PG_DAY = """
INSERT INTO meter_reports (organization_id, event_name, value, identifier, kind, period_hour,
    stripe_customer_id, measured_at, status, attempts, stripe_request_id, job_id,
    created_at, updated_at, sent_at)
SELECT org, 'active_sensors', (o * 7919) %% 21 + 1,
    'active_sensors-' || org || '-' || to_char(h, 'YYYY-MM-DD"T"HH24'),
    'hourly', h, 'cus_' || substr(md5('c' || o), 1, 14), h + s, 'sent', 1,
    'req_' || substr(md5(o || '-' || h), 1, 14), j, h + s, h + s + '1 second', h + s + '1 second'
FROM generate_series(%s::timestamp, %s::timestamp, '1 hour') AS h
CROSS JOIN LATERAL (SELECT md5(h::text) AS jh) AS jobs
CROSS JOIN generate_series(1, %s) AS o
CROSS JOIN LATERAL (
    SELECT substr(md5('o' || o), 1, 8) || '-' || substr(md5('o' || o), 9, 4) || '-4'
        || substr(md5('o' || o), 14, 3) || '-a' || substr(md5('o' || o), 18, 3) || '-'
        || substr(md5('o' || o), 21, 12) AS org,
        interval '2 seconds' + (o %% 600) * interval '100 milliseconds' AS s,
        substr(jh, 1, 8) || '-' || substr(jh, 9, 4) || '-' || substr(jh, 13, 4) || '-'
        || substr(jh, 17, 4) || '-' || substr(md5(jh || (o / 500)), 1, 12) AS j
) AS per_org
ORDER BY h, o
"""

SQLITE_DAY = """
WITH RECURSIVE hours(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM hours WHERE n < 23),
orgs(o) AS (SELECT 1 UNION ALL SELECT o + 1 FROM orgs WHERE o < ?),
rows AS (
    SELECT o, datetime(?, '+' || n || ' hours') AS h,
        printf('%08x-%04x-4%03x-a%03x-%012x', (o * 2654435761) % 4294967296, o % 65536,
            o % 4096, (o * 7) % 4096, o * 40503) AS org,
        printf('%08x-%04x-%04x-%04x-%012x', n * 2654435761 % 4294967296, n, o / 500, n,
            (n * 97 + o / 500) * 40503) AS j
    FROM hours CROSS JOIN orgs
)
INSERT INTO meter_reports (organization_id, event_name, value, identifier, kind, period_hour,
    stripe_customer_id, measured_at, status, attempts, stripe_request_id, job_id,
    created_at, updated_at, sent_at)
SELECT org, 'active_sensors', (o * 7919) % 21 + 1,
    'active_sensors-' || org || '-' || strftime('%Y-%m-%dT%H', h),
    'hourly', h, printf('cus_%014x', o * 2654435761),
    datetime(h, '+' || (2 + o % 60) || ' seconds'),
    'sent', 1, 'req_' || lower(hex(randomblob(7))), j,
    datetime(h, '+' || (2 + o % 60) || ' seconds'), datetime(h, '+' || (3 + o % 60) || ' seconds'),
    datetime(h, '+' || (3 + o % 60) || ' seconds')
FROM rows ORDER BY h, o
"""


def backend_cpu(database: peewee.Database) -> float:
    """CPU seconds of this connection's PostgreSQL backend so far (0 on SQLite)."""
    if not isinstance(database, peewee.PostgresqlDatabase):
        return 0.0
    pid = database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def seed(database: peewee.Database, orgs: int, first_day: datetime, days: int) -> float:
    """Insert ``days`` days of hourly rows for ``orgs`` organizations; seconds taken."""
    started = time.perf_counter()
    for d in range(days):
        day = first_day + d * DAY
        with database.atomic():
            if isinstance(database, peewee.PostgresqlDatabase):
                database.execute_sql(PG_DAY, (day, day + timedelta(hours=23), orgs))
            else:
                database.execute_sql(SQLITE_DAY, (orgs, day.strftime("%Y-%m-%d %H:%M:%S")))
        print(f"  seeded day {d + 1}/{days}", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    return time.perf_counter() - started


def disk_bytes(database: peewee.Database, path: str | None) -> int:
    """The ledger's bytes on disk: table, TOAST and indexes (PostgreSQL) or the file (SQLite)."""
    if isinstance(database, peewee.PostgresqlDatabase):
        database.execute_sql("ANALYZE meter_reports")
        return int(
            database.execute_sql("SELECT pg_total_relation_size('meter_reports')").fetchone()[0]
        )
    database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    assert path is not None
    return os.path.getsize(path)


def index_bytes(database: peewee.Database) -> dict[str, int]:
    """Each index of meter_reports and the table itself, in bytes (PostgreSQL only)."""
    if not isinstance(database, peewee.PostgresqlDatabase):
        return {}
    found = database.execute_sql(
        "SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = 'meter_reports'::regclass ORDER BY 2 DESC"
    ).fetchall()
    table = database.execute_sql("SELECT pg_relation_size('meter_reports')").fetchone()[0]
    return {"table": int(table), **{str(name): int(size) for name, size in found}}


def timed_prune(database: peewee.Database, before: datetime, batch: int) -> dict[str, Any]:
    """One prune without pauses: rows, batches, seconds, rows/s, CPU of client and server."""
    cpu, server = own_cpu(), backend_cpu(database)
    pruned = retention.prune_reports(
        database, before, batch=batch, budget_seconds=None, sleep=lambda s: None
    )
    cpu, server = own_cpu() - cpu, backend_cpu(database) - server
    return {
        "removed": pruned.reports,
        "batches": pruned.batches,
        "seconds": round(pruned.seconds, 4),
        "rows_per_second": round(pruned.reports / pruned.seconds) if pruned.seconds else 0,
        "client_cpu_seconds": round(cpu, 3),
        "server_cpu_seconds": round(server, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30, help="days of ledger to seed")
    parser.add_argument("--remove-days", type=int, default=7, help="oldest days to prune")
    parser.add_argument("--batch", type=int, default=retention.BATCH)
    parser.add_argument("--database", required=True, help="postgresql://... or a SQLite path")
    parser.add_argument("--skip-seed", action="store_true", help="reuse the last seeded ledger")
    args = parser.parse_args()

    url = args.database
    path = None
    if not url.startswith("postgres"):
        path, url = url, f"sqlite:///{url}"
        if not args.skip_seed and os.path.exists(path):
            os.remove(path)
    else:
        ensure_pg_database(url)
    database = open_database(url)
    first_day = hour_start(utcnow()).replace(hour=0) - args.days * DAY
    if not args.skip_seed:
        database.drop_tables([MeterReport], safe=True)
        create_tables(database, host_tables=False)
        seconds = seed(database, args.orgs, first_day, args.days)
        print(f"seeded {args.orgs * args.days * 24:,} rows in {seconds:.1f} s", file=sys.stderr)
    rows = MeterReport.select().count()
    size = disk_bytes(database, path)
    per_row = size / rows
    disk = {
        "rows": rows,
        "bytes": size,
        "bytes_per_row": round(per_row, 1),
        "mb_per_1000_orgs_per_month": round(per_row * 1000 * 24 * 30 / 1e6, 1),
        "gb_13_months_1000_orgs": round(per_row * 1000 * 24 * 396 / 1e9, 2),
        "gb_13_months_1000000_orgs": round(per_row * 1_000_000 * 24 * 396 / 1e9, 0),
    }
    parts = index_bytes(database)
    if parts:
        disk["bytes_per_row_by_part"] = {k: round(v / rows, 1) for k, v in parts.items()}
    nothing = timed_prune(database, first_day, args.batch)
    cut = first_day + args.remove_days * DAY
    removed = timed_prune(database, cut, args.batch)
    after = timed_prune(database, cut, args.batch)
    if isinstance(database, peewee.PostgresqlDatabase):
        database.execute_sql("VACUUM meter_reports")
    vacuumed = timed_prune(database, cut, args.batch)
    print(
        json.dumps(
            {
                "database": "postgresql" if path is None else "sqlite",
                "orgs": args.orgs,
                "days": args.days,
                "disk": disk,
                "prune_nothing_to_remove": nothing,
                f"prune_oldest_{args.remove_days}_days": removed,
                "prune_nothing_left_before_vacuum": after,
                "prune_nothing_left_after_vacuum": vacuumed,
            },
            indent=2,
        )
    )
    database.close()


if __name__ == "__main__":
    main()
