"""``sensormeter demo``: the whole pipeline once, and nothing left behind in Redis."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis

from sensormeter.settings import Settings

from .conftest import SENSORMETER

DEMO_QUEUE = "sensormeter-demo"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_demo_reports_the_billable_and_leaves_no_registration_or_queue(
    settings: Settings, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    """The demo bills exactly the billable organizations, then removes its schedule and queue.

    Left registered, its sweep and period-close jobs were queued every minute by any
    scheduler on that Redis onto a queue no worker reads.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENSORMETER_", "STRIPE_"))}
    env["REDIS_URL"] = settings.redis_url
    done = subprocess.run(
        [*SENSORMETER, "demo", "-n", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    received = [line.split() for line in done.stdout.splitlines() if "identifier=" in line]
    billed = {fields[0].split("=")[1]: int(fields[1].split("=")[1]) for fields in received}
    # Active sensors only; past_due, canceled and customer-less organizations are not billed.
    assert billed == {"cus_demo_acme": 12, "cus_demo_globex": 5, "cus_demo_initech": 3}

    scheduled = [
        job_id.decode() for job_id in redis_conn.zrange("rq:scheduler:scheduled_jobs", 0, -1)
    ]
    assert [j for j in scheduled if j.endswith(DEMO_QUEUE)] == []
    assert redis_conn.sismember("rq:queues", f"rq:queue:{DEMO_QUEUE}") == 0
    left = [key.decode() for key in redis_conn.keys("*")]
    assert [k for k in left if DEMO_QUEUE in k] == []
    # What remains is rq's bookkeeping of the processes that just exited, which expires.
    assert [k for k in left if redis_conn.ttl(k) == -1] == []
