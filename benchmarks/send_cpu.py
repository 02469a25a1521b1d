"""CPU per organization of v1 chunk jobs run in this process: sending, and everything else.

Seeds a SQLite file, starts the emulator (unlimited, ``--latency``) as its own process, then
runs ``process_meter_report`` chunk by chunk, each with a fresh Runtime as a work-horse has,
timing ``send_many`` with ``time.process_time()``. No fork, no RQ: the figures isolate the
sending side from the job machinery. To compare with an older release, run this file with
``PYTHONPATH`` pointing at that release's source (e.g. a ``git archive`` of it).

    python benchmarks/send_cpu.py --orgs 2000 --chunk-size 500 --max-in-flight 8
    python benchmarks/send_cpu.py --orgs 2000 --chunk-size 500            # auto
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import redis  # noqa: E402
from pipeline import seed, start_emulator  # noqa: E402

from sensormeter.hours import format_hour, hour_start  # noqa: E402
from sensormeter.models import utcnow  # noqa: E402
from sensormeter.runtime import Runtime, set_runtime  # noqa: E402
from sensormeter.settings import Settings  # noqa: E402
from sensormeter.tasks.report import process_meter_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=2000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--max-in-flight", type=int, help="default: the settings' default")
    parser.add_argument("--latency", type=float, default=0.03)
    parser.add_argument("--database", default="sqlite:////tmp/sensormeter-send-cpu.db")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()

    seed(args.database, args.orgs)
    emulator, base = start_emulator(1_000_000, args.latency)
    redis.Redis.from_url(args.redis).flushdb()
    tuning = {} if args.max_in_flight is None else {"max_in_flight": args.max_in_flight}
    settings = Settings(
        redis_url=args.redis,
        database_url=args.database,
        stripe_api_key="sk_test_benchmark",
        stripe_api_base=base,
        log_level="WARNING",
        **tuning,
    )
    logging.disable(logging.INFO)  # the report lines are not what is measured
    hour = format_hour(hour_start(utcnow()))
    orgs = [f"org{i:08d}" for i in range(args.orgs)]
    sending = 0.0
    try:
        started = time.process_time()
        for lo in range(0, args.orgs, args.chunk_size):
            runtime = Runtime.build(settings)
            set_runtime(runtime)
            send_many = runtime.meter.send_many

            def timed(events: Any, send_many: Any = send_many) -> Any:
                nonlocal sending
                before = time.process_time()
                try:
                    return send_many(events)
                finally:
                    sending += time.process_time() - before

            runtime.meter.send_many = timed  # type: ignore[method-assign]
            process_meter_report(orgs[lo : lo + args.chunk_size], hour=hour)
            runtime.close()
            set_runtime(None)
        total = time.process_time() - started
    finally:
        emulator.terminate()
        emulator.wait()
    per_org = 1000 / args.orgs
    print(
        f"cpu_ms_per_org total {total * per_org:.3f}  sending {sending * per_org:.3f}"
        f"  rest {(total - sending) * per_org:.3f}"
    )


if __name__ == "__main__":
    main()
