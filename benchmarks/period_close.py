"""Period-close check cost: the every-minute query, and the whole-window look-back.

Seeds N billable subscriptions whose monthly periods end evenly over 30 days (their start
is the previous end, as after a renewal), with a sent close report in the ledger for every
period that ended in the catch-up window and an earlier hourly row for each organization.
Then times what a check reads in the database, on the default tables, for:

- a steady minute: period ends from the previous check (6 minutes back with the clock
  margin) to 10 minutes ahead;
- the first check on an empty Redis: the whole 48-hour window (every period end in it is
  found, and found done in the ledger);
- the first check after an outage: the whole window, with no period closed yet (each end
  is checked against the ledger for an earlier row of its organization).

Prints the query plans, seconds, subscriptions found and ledger lookups.

    python benchmarks/period_close.py --orgs 100000 --database sqlite:////tmp/pc-bench.db
    python benchmarks/period_close.py --orgs 100000 --database postgresql://postgres@127.0.0.1/pc
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

import peewee

from sensormeter import ledger
from sensormeter.hours import hour_start
from sensormeter.models import (
    MODELS,
    MeterReport,
    Organization,
    Subscription,
    create_tables,
    open_database,
    utcnow,
)
from sensormeter.settings import Settings
from sensormeter.tasks.period_close import _due, close_request_id
from sensormeter.usage import DatabaseUsageSource

EVENT = "active_sensors"
PERIOD = timedelta(days=30)


def seed(database: peewee.Database, orgs: int, window: timedelta) -> None:
    """Subscriptions with ends spread over a period; ledger rows for the window's ended ones."""
    now = utcnow().replace(microsecond=0)
    options = {"cascade": True} if isinstance(database, peewee.PostgresqlDatabase) else {}
    database.drop_tables(list(reversed(MODELS)), safe=True, **options)
    create_tables(database)
    step = PERIOD / orgs
    with database.atomic():
        for lo in range(0, orgs, 5000):
            ids = range(lo, min(orgs, lo + 5000))
            Organization.insert_many([(f"org{i:08d}",) for i in ids], [Organization.id]).execute()
            subs, rows = [], []
            for i in ids:
                org = f"org{i:08d}"
                end = now - PERIOD / 2 + step * i  # half already ended, half to come
                start = end - PERIOD if end > now else end  # ended ones are renewed
                subs.append((org, "active", f"cus_{i}", start, start + PERIOD))
                earlier = hour_start(now - window - timedelta(hours=2))
                rows.append(
                    (org, EVENT, 1, ledger.hourly_identifier(org, EVENT, earlier), "hourly")
                    + (earlier, f"cus_{i}", earlier, "sent")
                )
                if now - window < start <= now:
                    request = close_request_id(start)
                    rows.append(
                        (org, EVENT, 1, ledger.on_demand_identifier(org, EVENT, request))
                        + ("period_close", None, f"cus_{i}", start, "sent")
                    )
            Subscription.insert_many(
                subs,
                [
                    Subscription.organization,
                    Subscription.status,
                    Subscription.stripe_customer_id,
                    Subscription.current_period_start,
                    Subscription.current_period_end,
                ],
            ).execute()
            MeterReport.insert_many(
                rows,
                [
                    MeterReport.organization_id,
                    MeterReport.event_name,
                    MeterReport.value,
                    MeterReport.identifier,
                    MeterReport.kind,
                    MeterReport.period_hour,
                    MeterReport.stripe_customer_id,
                    MeterReport.measured_at,
                    MeterReport.status,
                ],
            ).execute()
    if isinstance(database, peewee.PostgresqlDatabase):
        database.execute_sql("ANALYZE")


def plan(database: peewee.Database) -> str:
    """The query plan of the every-minute query."""
    now = utcnow()
    org = Subscription.organization_id  # type: ignore[attr-defined]
    start, end = Subscription.current_period_start, Subscription.current_period_end
    after, until = now - timedelta(minutes=6), now + timedelta(minutes=10)
    query = Subscription.select(
        org, Subscription.status, Subscription.stripe_customer_id, start, end
    ).where(((end > after) & (end <= until)) | ((start > after) & (start <= until)))
    sql, params = query.sql()
    prefix = (
        "EXPLAIN " if isinstance(database, peewee.PostgresqlDatabase) else "EXPLAIN QUERY PLAN "
    )
    return "\n".join(" ".join(map(str, row)) for row in database.execute_sql(prefix + sql, params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orgs", type=int, default=100_000)
    parser.add_argument("--database", default="sqlite:////tmp/sensormeter-pc-bench.db")
    parser.add_argument("--hours", type=int, default=48)
    args = parser.parse_args()
    database = open_database(args.database)
    settings = Settings(database_url=args.database, catchup_hours=args.hours)
    window = timedelta(hours=args.hours)
    began = time.perf_counter()
    seed(database, args.orgs, window)
    print(f"seeded {args.orgs} subscriptions in {time.perf_counter() - began:.1f} s")
    source = DatabaseUsageSource(database, settings.billable_status_values)
    print("plan of the every-minute query:\n" + plan(database))
    now = utcnow()
    for name, after in (
        ("steady minute", now - timedelta(minutes=6)),
        ("whole window", now - window),
        ("whole window, nothing closed yet", now - window),
    ):
        if name.endswith("nothing closed yet"):
            # After an outage: every ended period is due, each checked against the ledger rule.
            MeterReport.delete().where(MeterReport.kind == MeterReport.PERIOD_CLOSE).execute()
        until = now + timedelta(minutes=10)
        timings = []
        for _ in range(5):
            began = time.perf_counter()
            found = source.periods_ending(after, until)
            due = _due(settings, found, now)
            timings.append(time.perf_counter() - began)
        print(
            f"{name}: {len(found)} organizations found, {len(due)} due, "
            f"median {sorted(timings)[2] * 1000:.1f} ms (query, ledger lookups, rule)"
        )


if __name__ == "__main__":
    main()
