"""Cost of the read-side commands on a big ledger: explain, whatif and unbilled.

Seeds a SQLite file (or a PostgreSQL database) with N organizations, each with a sent hourly
ledger row for every hour of the last D days (35: Stripe's whole window), two billable
intervals in the history, and 10 sensors; a tenth of the organizations are past due. Then
times, each as the command runs it:

- ``explain``: one organization over the whole D days (its three queries), for a few
  organizations spread over the ledger;
- ``whatif``: every organization over the D days (one query), and one organization;
- ``unbilled``: the default tables' one query, and the history's "since when".

    python benchmarks/billing_reads.py --orgs 10000 --days 35 --database sqlite:////tmp/reads.db
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import timedelta

import peewee

from sensormeter.hours import hour_start
from sensormeter.ledger.explanation import Context, explain
from sensormeter.ledger.whatif import what_if
from sensormeter.models import MODELS, create_tables, open_database, utcnow
from sensormeter.usage import DatabaseUsageSource
from sensormeter.usage.unbilled import find_unbilled

EVENT = "active_sensors"


def seed(database: peewee.Database, orgs: int, days: int) -> float:
    """Write the fleet with set-based SQL (no row goes through Python); returns seconds."""
    started = time.perf_counter()
    current = hour_start(utcnow())
    first = current - timedelta(days=days)
    hours = days * 24
    sqlite = isinstance(database, peewee.SqliteDatabase)
    # Both dialects: a numbers table, then INSERT ... SELECT over it.
    database.execute_sql("DROP TABLE IF EXISTS bench_n")
    database.execute_sql("CREATE TABLE bench_n (n INTEGER PRIMARY KEY)")
    with database.atomic():
        top = max(orgs, hours)
        database.execute_sql(
            "INSERT INTO bench_n (n) "
            + (
                "WITH RECURSIVE c(n) AS (SELECT 0 UNION ALL "
                f"SELECT n + 1 FROM c WHERE n < {top - 1}) SELECT n FROM c"
                if sqlite
                else f"SELECT generate_series(0, {top - 1})"
            )
        )
    pad = "printf('%08d', o.n)" if sqlite else "lpad(o.n::text, 8, '0')"
    mod = "%" if sqlite else "%%"  # psycopg reads a lone % as a placeholder
    at = (
        "datetime(?, '+' || h.n || ' hours')"
        if sqlite
        else "(%s::timestamp + h.n * interval '1 hour')"
    )
    label = f"strftime('%Y-%m-%dT%H', {at})" if sqlite else f"to_char({at}, 'YYYY-MM-DD\"T\"HH24')"
    start = first.isoformat(sep=" ")
    with database.atomic():
        database.execute_sql(
            "INSERT INTO organizations (id, name) SELECT 'org' || "
            f"{pad}, '' FROM bench_n o WHERE o.n < {orgs}"
        )
        database.execute_sql(
            "INSERT INTO subscriptions (organization_id, stripe_customer_id, status) "
            f"SELECT 'org' || {pad}, 'cus_org' || {pad}, "
            f"CASE WHEN o.n {mod} 10 = 0 THEN 'past_due' ELSE 'active' END FROM bench_n o "
            f"WHERE o.n < {orgs}"
        )
        database.execute_sql(
            "INSERT INTO sensors (organization_id, is_active, created_at) "
            f"SELECT 'org' || {pad}, TRUE, {database.param} FROM bench_n o, bench_n s "
            f"WHERE o.n < {orgs} AND s.n < 10",
            (start,),
        )
        # Two intervals: billable but for a day in the middle of the range.
        gap = days // 2 * 24
        for lo, hi in ((0, gap - 1), (gap + 24, hours)):
            database.execute_sql(
                "INSERT INTO sensormeter_billable_history "
                "(organization_id, stripe_customer_id, first_hour, last_hour, updated_at) "
                f"SELECT 'org' || {pad}, 'cus_org' || {pad}, {at.replace('h.n', str(lo))}, "
                f"{at.replace('h.n', str(hi))}, {database.param} FROM bench_n o "
                f"WHERE o.n < {orgs}",
                (start, start, start),
            )
    # Day by day, as the hourly runs append them: the table is in time order, as in life.
    for day in range(days):
        with database.atomic():
            database.execute_sql(
                "INSERT INTO meter_reports (organization_id, event_name, value, identifier, kind,"
                " period_hour, stripe_customer_id, measured_at, status, attempts, created_at,"
                " updated_at, sent_at, stripe_request_id) "
                f"SELECT 'org' || {pad}, '{EVENT}', 5 + (o.n + h.n) {mod} 7, "
                f"'{EVENT}-org' || {pad} || '-' || {label}, 'hourly', {at}, 'cus_org' || {pad},"
                f" {at}, 'sent', 1, {at}, {at}, {at}, 'req_' || o.n || '_' || h.n "
                f"FROM bench_n h, bench_n o WHERE h.n >= {day * 24} AND h.n < {day * 24 + 24} "
                f"AND o.n < {orgs} ORDER BY h.n, o.n",
                (start,) * 6,
            )
    database.execute_sql("DROP TABLE bench_n")
    database.execute_sql("ANALYZE")
    return time.perf_counter() - started


def timed(action: object, repeat: int = 3) -> float:
    """The median of ``repeat`` runs, in seconds."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--database", default="sqlite:////tmp/sensormeter-reads.db")
    parser.add_argument("--reuse", action="store_true", help="Keep the seeded data of a last run.")
    args = parser.parse_args()
    database = open_database(args.database)
    if not args.reuse:
        database.drop_tables(list(reversed(MODELS)), safe=True)
        create_tables(database)
        took = seed(database, args.orgs, args.days)
        print(f"seeded {args.orgs} organizations x {args.days} days in {took:.1f} s")
    rows = database.execute_sql("SELECT COUNT(*) FROM meter_reports").fetchone()[0]
    print(f"ledger rows: {rows:,}")
    now = utcnow()
    current = hour_start(now)
    first = current - timedelta(days=args.days) + timedelta(hours=1)
    reach = (current - timedelta(hours=48), current - timedelta(hours=1))
    context = Context(now, EVENT, reach, 48, None)
    samples = [f"org{i:08d}" for i in (0, args.orgs // 3, args.orgs // 2, args.orgs - 1)]
    per_org = [timed(lambda o=o: explain(database, o, first, current, context)) for o in samples]
    lines = len(explain(database, samples[0], first, current, context).lines)
    median, worst = statistics.median(per_org) * 1000, max(per_org) * 1000
    print(f"explain, {lines} hours: median {median:.1f} ms, max {worst:.1f} ms")
    start, end = current - timedelta(days=args.days), current + timedelta(hours=1)
    fleet = timed(lambda: what_if(database, EVENT, start, end), 1)
    print(f"whatif, every organization: {fleet:.2f} s")
    one = timed(lambda: what_if(database, EVENT, start, end, samples[1])) * 1000
    print(f"whatif, one organization: {one:.1f} ms")
    source = DatabaseUsageSource(database, ["active", "trialing"])
    found = find_unbilled(source, database)
    whole, query = timed(lambda: find_unbilled(source, database)), timed(source.unbilled_usage)
    print(f"unbilled ({len(found)} organizations): {whole:.2f} s, the one query {query:.2f} s")
    database.close()


if __name__ == "__main__":
    main()
