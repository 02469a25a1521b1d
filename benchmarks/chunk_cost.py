"""One report job's CPU, in the worker and in its PostgreSQL backend, and its statements.

Seeds ``--orgs`` organizations (as benchmarks/pipeline.py does) and 24 hours of delivered
hourly rows for the chunk's organizations (what the anomaly guard reads in steady state),
starts the emulator, then runs ``process_meter_report`` on one chunk in this process
``--reps`` times (its rows deleted before each run) and prints the medians: worker CPU per
organization, the CPU of the job's PostgreSQL backend per organization, and the statements
sent, each with its time (``--show``).

    python benchmarks/chunk_cost.py --orgs 100000 --chunk 500 \
        --database postgresql://postgres@127.0.0.1:5432/bench_chunk --redis redis://127.0.0.1:6379/12
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import pipeline  # noqa: E402 (the same seeding and emulator as the pipeline benchmark)

from sensormeter.hours import format_hour, hour_start  # noqa: E402
from sensormeter.logs import configure_logging  # noqa: E402
from sensormeter.models import utcnow  # noqa: E402


class Counting:
    """A DB-API cursor that counts (and may time) what it sends."""

    def __init__(self, cursor: Any, seen: list[tuple[float, str]]) -> None:
        self._cursor, self._seen = cursor, seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __iter__(self) -> Any:
        return iter(self._cursor)

    def _timed(self, method: str, query: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = getattr(self._cursor, method)(query, *args, **kwargs)
        self._seen.append((time.perf_counter() - started, str(query)))
        return result

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        return self._timed("execute", query, *args, **kwargs)

    def executemany(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        return self._timed("executemany", query, *args, **kwargs)


def seed_history(url: str, orgs: list[str]) -> None:
    """24 delivered hourly rows per organization, the hours before the current one."""
    import psycopg

    now = hour_start(utcnow())
    columns = (
        "organization_id, event_name, value, identifier, kind, period_hour,"
        " stripe_customer_id, measured_at, status, attempts, created_at, updated_at"
    )
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY meter_reports ({columns}) FROM STDIN") as copy:
            for hours in range(24, 0, -1):
                hour = now - timedelta(hours=hours)
                for n, org in enumerate(orgs):
                    identifier = f"active_sensors-{org}-{hour:%Y-%m-%dT%H}"
                    minute = hour + timedelta(minutes=3)
                    copy.write_row(
                        (org, "active_sensors", pipeline.sensors_of(n), identifier, "hourly")
                        + (hour, f"cus_{org}", minute, "sent", 1, minute, minute)
                    )
        conn.execute("ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/bench_chunk")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--transport", choices=["v1", "v2"], default="v2")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument("--show", action="store_true", help="print each statement's time")
    args = parser.parse_args()

    pipeline.ensure_pg_database(args.database)
    first = args.orgs // 2
    orgs = [f"org{i:08d}" for i in range(first, first + args.chunk)]
    if not args.skip_seed:
        pipeline.seed(args.database, args.orgs)
        seed_history(args.database, orgs)
    emulator, base = pipeline.start_emulator(100_000, 0.0)
    os.environ.update(
        {
            "REDIS_URL": args.redis,
            "DATABASE_URL": args.database,
            "STRIPE_API_KEY": "sk_test_benchmark",
            "STRIPE_API_BASE": base,
            "SENSORMETER_TRANSPORT": args.transport,
            "SENSORMETER_QUEUE": "sensormeter-chunk-cost",
        }
    )
    with open(os.devnull, "w") as sink:
        configure_logging(args.log_level, stream=sink, log_format="json")
        from sensormeter.runtime import get_runtime
        from sensormeter.tasks.report import process_meter_report

        try:
            runtime = get_runtime()
            db = runtime.database
            db.connect(reuse_if_open=True)
            db.close = lambda: True  # one backend for every run, to read its CPU
            seen: list[tuple[float, str]] = []
            connection = db.connection()
            plain_cursor = connection.cursor
            connection.cursor = lambda *a, **k: Counting(plain_cursor(*a, **k), seen)
            backend = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            label = format_hour(hour_start(utcnow()))
            worker_ms: list[float] = []
            postgres_ms: list[float] = []
            for _ in range(args.reps):
                db.execute_sql("DELETE FROM meter_reports WHERE organization_id = ANY(%s)"
                               " AND period_hour = %s", [orgs, hour_start(utcnow())])  # fmt: skip
                seen.clear()
                cpu, server = time.process_time(), pipeline.cpu_seconds(backend)
                process_meter_report(orgs, hour=label)
                worker_ms.append((time.process_time() - cpu) / len(orgs) * 1000)
                postgres_ms.append((pipeline.cpu_seconds(backend) - server) / len(orgs) * 1000)
        finally:
            emulator.terminate()
    print(f"chunk of {len(orgs)} of {args.orgs} organizations, {args.transport}, {args.reps} runs")
    print(f"worker CPU per organization      {statistics.median(worker_ms):.3f} ms")
    print(f"PostgreSQL CPU per organization  {statistics.median(postgres_ms):.3f} ms")
    print(f"statements per chunk             {len(seen)}")
    if args.show:
        for seconds, query in seen:
            print(f"  {seconds * 1000:7.1f} ms  {' '.join(query.split())[:100]}")


if __name__ == "__main__":
    main()
