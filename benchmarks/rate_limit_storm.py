"""A 429 storm: the whole fleet at once against a Stripe that allows fewer events/s than it tries.

Seeds N billable organizations (SQLite by default), starts the emulator as its own process with
``--rate-limit R``, queues one fan-out and runs ``sensormeter worker -n W --burst`` with the
default settings (no SENSORMETER_RATE_LIMIT: against the emulator nothing limits the workers
until the first 429; default chunk size, in-flight, retries and backoff). Prints the duration,
its ratio to the ideal N / R seconds, the 429s the emulator answered, the limiter's decreases,
the job retries and the final ledger rows by status.

    python benchmarks/rate_limit_storm.py --orgs 3000 --rate-limit 100

Needs Redis on 127.0.0.1:6379 (it uses database 12 and flushes it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).parent))
from pipeline import CLI, emulator_stats, seed, start_emulator  # noqa: E402

from sensormeter.models import MeterReport, open_database  # noqa: E402
from sensormeter.settings import Settings  # noqa: E402
from sensormeter.tasks.fanout import enqueue_fanout


def env_for(settings: Settings, client_rate_limit: float | None) -> dict[str, str]:
    """The workers' environment: the settings' addresses, every tuning variable at its default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENSORMETER_", "STRIPE_"))}
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "DATABASE_URL": settings.database_url,
            "STRIPE_API_KEY": settings.stripe_api_key or "",
            "STRIPE_API_BASE": settings.stripe_api_base or "",
            "SENSORMETER_QUEUE": settings.queue_name,
            "SENSORMETER_TRANSPORT": settings.transport,
        }
    )
    if client_rate_limit is not None:
        env["SENSORMETER_RATE_LIMIT"] = str(client_rate_limit)
    return env


def log_events(path: Path) -> Counter[str]:
    """How many times each structlog event appears in the workers' JSON log."""
    counts: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "event" in record:
            counts[str(record["event"])] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=3000)
    parser.add_argument("--rate-limit", type=float, default=100.0, help="emulator events/s")
    parser.add_argument("--latency", type=float, default=0.0, help="emulator seconds/request")
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--transport", choices=["v1", "v2"], default="v1")
    parser.add_argument(
        "--client-rate-limit", type=float, help="SENSORMETER_RATE_LIMIT (default: unset)"
    )
    parser.add_argument("--database", default="sqlite:////tmp/sensormeter-storm.db")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()

    connection = redis.Redis.from_url(args.redis)
    connection.flushdb()
    emulator, base = start_emulator(args.rate_limit, args.latency)
    settings = Settings(
        redis_url=args.redis,
        database_url=args.database,
        stripe_api_key="sk_test_storm",
        stripe_api_base=base,
        queue_name="sensormeter-storm",
        transport=args.transport,
    )
    report: dict[str, Any] = {
        "orgs": args.orgs,
        "transport": args.transport,
        "emulator_rate_limit": args.rate_limit,
        "client_rate_limit": args.client_rate_limit,
    }
    try:
        report["seed_seconds"] = round(seed(args.database, args.orgs), 1)
        with tempfile.NamedTemporaryFile(suffix=".log", delete=False) as log:
            log_path = Path(log.name)
        started = time.perf_counter()
        enqueue_fanout(settings, connection)
        with log_path.open("w") as log_file:
            subprocess.run(
                [*CLI, "worker", "-n", str(args.workers), "--burst"],
                env=env_for(settings, args.client_rate_limit),
                check=True,
                stdout=log_file,
                stderr=log_file,
            )
        seconds = time.perf_counter() - started
        stats = emulator_stats(base)
        ideal = args.orgs / args.rate_limit
        db = open_database(args.database)
        rows = Counter(str(r.status) for r in MeterReport.select(MeterReport.status))
        attempts = Counter(int(r.attempts) for r in MeterReport.select(MeterReport.attempts))
        db.close()
        events = log_events(log_path)
        report.update(
            seconds=round(seconds, 1),
            ideal_seconds=round(ideal, 1),
            ratio_to_ideal=round(seconds / ideal, 2),
            emulator_events=stats["events"],
            emulator_requests=stats["request_count"],
            # v1: every request the emulator did not record was a 429 (the ledger shows no
            # rejection, and no timeout happened to cause a duplicate). v2 counts requests of
            # up to 100 events and session creations, so this figure is for v1 only.
            emulator_429s=(
                stats["request_count"] - stats["events"] if args.transport == "v1" else None
            ),
            limiter_decreases=events["ratelimit.decreased"],
            limiter_restored=events["ratelimit.restored"],
            jobs_retrying=events["job.retrying"],
            jobs_failed=events["job.failed"],
            rows_by_status=dict(rows),
            rows_by_attempts=dict(sorted(attempts.items())),
            log=str(log_path),
        )
    finally:
        emulator.terminate()
        emulator.wait()
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
