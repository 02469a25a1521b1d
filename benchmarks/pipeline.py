"""End-to-end benchmark: seeded organizations -> fan-out -> RQ workers -> emulator over HTTP.

Prints end-to-end seconds (fan-out queued until the workers are done and every ledger row
is sent; the fan-out is queued for the current hour by name, as ``sensormeter report-all
--hour`` does, so the hourly tick's catch-up check and unbilled survey are left out unless
``--with-catch-up``: benchmarks/catchup.py measures the check on its own), organizations/s
and its share of the emulator's rate limit, the fan-out's database seconds, the CPU seconds
of the workers, the emulator, PostgreSQL and Redis (the run's CPU budget), the workers' peak
RSS, and the same run in per-organization mode (one job and one query per organization, the
original design) on a sample of the same data.

    python benchmarks/pipeline.py --orgs 100000 --transport v1 --rate-limit 1000 --latency 0.03
    python benchmarks/pipeline.py --orgs 100000 --database sqlite:////tmp/bench.db

Needs Redis on 127.0.0.1:6379 (it uses database 12 and flushes it) and, for PostgreSQL,
a server where it may create the database ``sensormeter_bench``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import socket
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any
from urllib.request import urlopen

import redis
from rq import Queue
from rq.registry import FinishedJobRegistry

from sensormeter.hours import format_hour, hour_start
from sensormeter.models import MODELS, MeterReport, create_tables, open_database, utcnow
from sensormeter.settings import Settings
from sensormeter.tasks.fanout import enqueue_fanout
from sensormeter.tasks.queue import JSONJob, make_queue
from sensormeter.tasks.report import process_meter_report

CLI = [sys.executable, "-m", "sensormeter.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_emulator(rate_limit: float, latency: float) -> tuple[subprocess.Popen[str], str]:
    """Start ``sensormeter stripe-emulator`` as its own process; returns it and its base URL."""
    port = free_port()
    emulator = subprocess.Popen(
        [*CLI, "stripe-emulator", "--port", str(port)]
        + ["--rate-limit", str(rate_limit), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert emulator.stdout is not None
    emulator.stdout.readline()  # "Stripe emulator listening on ..."
    return emulator, f"http://127.0.0.1:{port}"


def sensors_of(i: int) -> int:
    """0..20 sensors, 10 on average, spread deterministically."""
    return (i * 7919) % 21


def ensure_pg_database(url: str) -> None:
    from urllib.parse import urlsplit

    import psycopg2

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    conn = psycopg2.connect(
        host=parts.hostname, port=parts.port or 5432, user=parts.username, dbname="postgres"
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def copy_in(cursor: Any, statement: str, data: str) -> None:
    """COPY ``data`` in, with psycopg 3 or psycopg2 (whichever the database was opened with)."""
    if hasattr(cursor, "copy_expert"):
        cursor.copy_expert(statement, io.StringIO(data))
        return
    with cursor.copy(statement) as copy:
        copy.write(data)


def seed(database_url: str, orgs: int) -> float:
    """Recreate the tables and insert ``orgs`` billable organizations with their sensors."""
    started = time.perf_counter()
    db = open_database(database_url)
    db.drop_tables(list(reversed(MODELS)), safe=True)
    create_tables(db)
    now = utcnow().isoformat(sep=" ")
    step = 100_000
    postgres = not database_url.startswith("sqlite")
    for lo in range(0, orgs, step):
        ids = [f"org{i:08d}" for i in range(lo, min(orgs, lo + step))]
        if postgres:
            with db.atomic():
                cur = db.connection().cursor()
                copy_in(
                    cur,
                    "COPY organizations (id, name) FROM STDIN",
                    "".join(f"{o}\t{o}\n" for o in ids),
                )
                copy_in(
                    cur,
                    "COPY subscriptions (organization_id, stripe_customer_id, status) FROM STDIN",
                    "".join(f"{o}\tcus_{o}\tactive\n" for o in ids),
                )
                rows = io.StringIO()
                for n, o in enumerate(ids, start=lo):
                    rows.write(f"{o}\tt\t{now}\n" * sensors_of(n))
                copy_in(
                    cur,
                    "COPY sensors (organization_id, is_active, created_at) FROM STDIN",
                    rows.getvalue(),
                )
        else:
            with db.atomic():
                db.execute_sql("SELECT 1")
                conn = db.connection()
                conn.executemany(
                    "INSERT INTO organizations (id, name) VALUES (?, ?)", [(o, o) for o in ids]
                )
                conn.executemany(
                    "INSERT INTO subscriptions (organization_id, stripe_customer_id, status)"
                    " VALUES (?, ?, 'active')",
                    [(o, f"cus_{o}") for o in ids],
                )
                conn.executemany(
                    "INSERT INTO sensors (organization_id, is_active, created_at) VALUES (?, 1, ?)",
                    [(o, now) for n, o in enumerate(ids, start=lo) for _ in range(sensors_of(n))],
                )
    if postgres:
        db.execute_sql("ANALYZE")
    db.close()
    return time.perf_counter() - started


def env_for(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENSORMETER_", "STRIPE_"))}
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "DATABASE_URL": settings.database_url,
            "STRIPE_API_KEY": settings.stripe_api_key or "",
            "STRIPE_API_BASE": settings.stripe_api_base or "",
            "SENSORMETER_QUEUE": settings.queue_name,
            "SENSORMETER_TRANSPORT": settings.transport,
            "SENSORMETER_CHUNK_SIZE": str(settings.chunk_size),
            "SENSORMETER_MAX_IN_FLIGHT": str(settings.max_in_flight),
            "SENSORMETER_RATE_LIMIT": str(settings.rate_limit or 0),
            "SENSORMETER_RETRY_BACKOFF_SECONDS": "1",
            "SENSORMETER_LOG_LEVEL": "WARNING",
        }
    )
    return env


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User + system CPU seconds of a live process (from /proc), with its reaped children's."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped:  # PostgreSQL's backends exit with their connection; the postmaster reaps them
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def service_cpu() -> dict[str, float]:
    """CPU seconds so far of the PostgreSQL and Redis server processes on this machine."""
    totals = {"postgres": 0.0, "redis": 0.0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as comm:
                name = comm.read().strip()
            if name.startswith("postgres"):
                totals["postgres"] += cpu_seconds(int(entry), reaped=True)
            elif name.startswith("redis-server"):
                totals["redis"] += cpu_seconds(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # a backend that exited meanwhile
    return totals


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_workers(settings: Settings, workers: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [*CLI, "worker", "-n", str(workers), "--burst"],
        env=env_for(settings),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def job_results(settings: Settings, connection: redis.Redis) -> list[dict[str, Any]]:
    queue = make_queue(settings, connection)
    ids = FinishedJobRegistry(queue=queue).get_job_ids()
    results = []
    for job in JSONJob.fetch_many(ids, connection=connection, serializer=queue.serializer):
        value = job.return_value() if job is not None else None
        if isinstance(value, dict):
            results.append(value)
    return results


def emulator_stats(base: str) -> dict[str, Any]:
    with urlopen(f"{base}/_emulator/stats") as answer:  # noqa: S310 (loopback only)
        stats: dict[str, Any] = json.load(answer)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument(
        "--database", default="postgresql://postgres@127.0.0.1:5432/sensormeter_bench"
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--transport", choices=["v1", "v2"], default="v1")
    parser.add_argument("--rate-limit", type=float, default=1000.0, help="emulator events/s")
    parser.add_argument("--latency", type=float, default=0.03, help="emulator seconds/request")
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, help="default: the settings' default")
    parser.add_argument("--max-in-flight", type=int, help="default: the settings' default")
    parser.add_argument(
        "--client-rate-limit",
        type=float,
        help="SENSORMETER_RATE_LIMIT; default none (the adaptive limit, as a user gets it)",
    )
    parser.add_argument("--per-org-sample", type=int, default=2000, help="0 skips that mode")
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument(
        "--with-catch-up",
        action="store_true",
        help="queue the fan-out as the scheduler does, with its catch-up check and survey",
    )
    args = parser.parse_args()

    if not args.database.startswith("sqlite"):
        ensure_pg_database(args.database)
    connection = redis.Redis.from_url(args.redis)
    connection.flushdb()
    emulator, base = start_emulator(args.rate_limit, args.latency)
    tuning: dict[str, Any] = {
        "chunk_size": args.chunk_size,
        "max_in_flight": args.max_in_flight,
        "rate_limit": args.client_rate_limit,
    }
    settings = Settings(
        redis_url=args.redis,
        database_url=args.database,
        stripe_api_key="sk_test_benchmark",
        stripe_api_base=base,
        queue_name="sensormeter-bench",
        transport=args.transport,
        **{k: v for k, v in tuning.items() if v is not None},
    )
    try:
        report: dict[str, Any] = {"orgs": args.orgs, "transport": args.transport}
        report.update(chunk_size=settings.chunk_size, max_in_flight=settings.max_in_flight)
        report["database"] = "sqlite" if args.database.startswith("sqlite") else "postgresql"
        if not args.skip_seed:
            report["seed_seconds"] = round(seed(args.database, args.orgs), 1)
        db = open_database(args.database)
        MeterReport.delete().execute()  # a rerun with --skip-seed starts from an empty ledger
        report["sensors"] = int(db.execute_sql("SELECT COUNT(*) FROM sensors").fetchone()[0])
        db.close()

        emulator_cpu, workers_cpu = cpu_seconds(emulator.pid), children_cpu()
        services = service_cpu()
        started = time.perf_counter()
        hour = None if args.with_catch_up else format_hour(hour_start(utcnow()))
        enqueue_fanout(settings, connection, hour)
        run_workers(settings, args.workers)
        batched = time.perf_counter() - started
        emulator_cpu = cpu_seconds(emulator.pid) - emulator_cpu
        workers_cpu = children_cpu() - workers_cpu
        services = {k: v - services[k] for k, v in service_cpu().items()}
        results = job_results(settings, connection)
        fanout = next(r for r in results if "chunks" in r)
        chunks = [r for r in results if "send_seconds" in r]
        db = open_database(args.database)
        sent = MeterReport.select().where(MeterReport.status == MeterReport.SENT).count()
        report.update(
            end_to_end_seconds=round(batched, 1),
            orgs_per_second=round(args.orgs / batched, 1),
            share_of_rate_limit=round(args.orgs / batched / args.rate_limit, 3),
            ledger_sent=sent,
            emulator_events=emulator_stats(base)["events"],
            fanout_db_seconds=fanout["db_seconds"],
            fanout_history_seconds=fanout.get("history_seconds"),
            chunk_jobs=len(chunks),
            chunk_db_seconds_total=round(sum(r["db_seconds"] for r in chunks), 1),
            chunk_send_seconds_total=round(sum(r["send_seconds"] for r in chunks), 1),
            worker_peak_rss_mb=max((r["peak_rss_mb"] for r in chunks), default=None),
            workers_cpu_seconds=round(workers_cpu, 1),
            emulator_cpu_seconds=round(emulator_cpu, 1),
            cpu_ms_per_org_workers=round(workers_cpu / args.orgs * 1000, 3),
            cpu_ms_per_org_emulator=round(emulator_cpu / args.orgs * 1000, 3),
            postgres_cpu_seconds=round(services["postgres"], 1),
            redis_cpu_seconds=round(services["redis"], 1),
            cpu_ms_per_org_postgres=round(services["postgres"] / args.orgs * 1000, 3),
            cpu_ms_per_org_redis=round(services["redis"] / args.orgs * 1000, 3),
            cpu_busy_share=round(
                (workers_cpu + emulator_cpu + sum(services.values()))
                / (batched * (os.cpu_count() or 1)),
                3,
            ),
        )

        if args.per_org_sample:
            sample = [f"org{i:08d}" for i in range(min(args.per_org_sample, args.orgs))]
            hour = format_hour(hour_start(utcnow() - timedelta(days=1)))
            queue = make_queue(settings, connection)
            single = settings.with_overrides(chunk_size=1)
            started = time.perf_counter()
            with connection.pipeline() as pipe:
                queue.enqueue_many(
                    [
                        Queue.prepare_data(process_meter_report, args=([o],), kwargs={"hour": hour})
                        for o in sample
                    ],
                    pipeline=pipe,
                )
                pipe.execute()
            run_workers(single, args.workers)
            per_org = time.perf_counter() - started
            report.update(
                per_org_sample=len(sample),
                per_org_seconds=round(per_org, 1),
                per_org_orgs_per_second=round(len(sample) / per_org, 1),
                speedup=round((args.orgs / batched) / (len(sample) / per_org), 1),
            )
        db.close()
    finally:
        emulator.terminate()
        emulator.wait()
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
