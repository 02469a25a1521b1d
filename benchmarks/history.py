"""Billable history's cost in the hourly fan-out: the fan-out timed without and with recording.

Seeds N billable organizations (as benchmarks/pipeline.py does), then runs the fan-out job
in this process against real Redis (its queue is emptied between runs) and prints, for each
run, its seconds, the fan-out's ``db_seconds`` (reading billable ids) and ``history_seconds``
(reading each chunk's customers and recording them):

- before: a fan-out of the previous hour, which records nothing (what the fan-out cost
  before the history existed: the same code without the recording);
- first: the current hour on an empty history (every organization starts an interval: the
  first run after upgrading);
- steady: the current hour on a history recorded the hour before (every interval is
  extended: what each hourly run pays);
- repeat: the current hour once more (every organization already covered).

It also times the usage source's ``billable_customers`` over every chunk alone (with the
paging), the part of ``history_seconds`` that is not the history's own.

    python benchmarks/history.py --orgs 20000 --database sqlite:////tmp/sensormeter-history.db
    python benchmarks/history.py --orgs 20000 --database postgresql://postgres@127.0.0.1:5432/x
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from pipeline import ensure_pg_database, seed  # noqa: E402

from sensormeter import db  # noqa: E402
from sensormeter.hours import format_hour, hour_start  # noqa: E402
from sensormeter.ledger import history  # noqa: E402
from sensormeter.models import BillableInterval, utcnow  # noqa: E402
from sensormeter.runtime import Runtime, set_runtime  # noqa: E402
from sensormeter.settings import Settings  # noqa: E402
from sensormeter.tasks.fanout import report_all_sensor_counts  # noqa: E402
from sensormeter.usage import iter_billable_chunks  # noqa: E402


def timed(runtime: Runtime, hour: str | None) -> dict[str, Any]:
    """One fan-out (in this process), its wall seconds added to its result."""
    runtime.redis.flushdb()
    started = time.perf_counter()
    result = report_all_sensor_counts(hour=hour)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=20_000)
    parser.add_argument(
        "--database", default="postgresql://postgres@127.0.0.1:5432/sensormeter_bench"
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--skip-seed", action="store_true")
    args = parser.parse_args()

    if not args.skip_seed:
        if args.database.startswith("postgres"):
            ensure_pg_database(args.database)
        # pipeline.seed copies with psycopg2's copy_expert; the runs use the default driver.
        drivers, db.POSTGRES_DRIVERS = db.POSTGRES_DRIVERS, ("psycopg2",)
        try:
            print(f"seeded {args.orgs} organizations in {seed(args.database, args.orgs):.1f} s")
        finally:
            db.POSTGRES_DRIVERS = drivers
    settings = Settings(
        database_url=args.database,
        redis_url=args.redis,
        chunk_size=args.chunk_size,
        stripe_api_key="sk_test_benchmark",
        queue_name="sensormeter-bench-history",
    )
    runtime = Runtime.build(settings)
    set_runtime(runtime)
    hour = hour_start(utcnow())
    previous = hour - history.HOUR
    runs: dict[str, dict[str, Any]] = {}
    with runtime.database.connection_context():
        BillableInterval.delete().execute()
        runs["before"] = timed(runtime, format_hour(previous))
        runs["first"] = timed(runtime, None)
        # The hour before, recorded for the whole fleet: the next run extends every interval.
        BillableInterval.delete().execute()
        for chunk in iter_billable_chunks(runtime.source, settings.chunk_size):
            customers = runtime.source.billable_customers(chunk)
            history.record(runtime.database, customers, previous, bridge_hours=48)
        history.mark_run(runtime.database, previous)
        runs["steady"] = timed(runtime, None)
        runs["repeat"] = timed(runtime, None)
        intervals = BillableInterval.select().count()
        # The part of history_seconds that is the usage source's customers query alone.
        started = time.perf_counter()
        for chunk in iter_billable_chunks(runtime.source, settings.chunk_size):
            runtime.source.billable_customers(chunk)
        customers_seconds = time.perf_counter() - started
    runtime.redis.flushdb()
    set_runtime(None)
    runtime.close()
    print(f"fan-out of {args.orgs} organizations, chunks of {args.chunk_size}, {args.database}")
    print(f"{'run':8} {'seconds':>8} {'db_seconds':>11} {'history_seconds':>16}")
    for name, result in runs.items():
        print(
            f"{name:8} {result['seconds']:8.3f} {result['db_seconds']:11.3f} "
            f"{result['history_seconds'] if result['history_seconds'] is not None else '-':>16}"
        )
    print(f"history rows after the runs: {intervals} (one per organization, and one of runs)")
    print(f"of history_seconds, billable_customers for every chunk: {customers_seconds:.3f} s")


if __name__ == "__main__":
    main()
