"""Simulate one hourly run past one machine, from per-organization costs measured here.

A discrete-event simulation of the hourly run: one fan-out job pages the billable
organizations and queues chunk jobs at its measured pace; W worker processes (spread over
worker machines of C cores) take chunks as they come; each chunk costs its measured worker CPU
(on a core shared with the other processes of its machine), waits for its share of Stripe's
rate limit, and charges the database and Redis their measured CPU per organization. It prints
when the run ends, each resource's busy share, and which one saturates first; the ledger size
a month comes from the measured bytes per row.

    python benchmarks/scaling.py --orgs 10000000
    python benchmarks/scaling.py --orgs 10000000 --machines 4 --workers-per-machine 5

The defaults are the figures of docs/performance.md; pass others (``--worker-ms`` and so on)
to plan with your own measurements. Nothing here talks to a service: it is arithmetic, and as
good as the figures fed to it.
"""

from __future__ import annotations

import argparse
import heapq
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Costs:
    """Measured costs per organization (milliseconds of CPU unless said otherwise)."""

    worker_ms: float  # worker CPU per organization, chunk jobs (v2 stream)
    postgres_ms: float  # PostgreSQL server CPU per organization
    redis_ms: float  # Redis CPU per organization
    fanout_ms: float  # the fan-out job's CPU per organization (paging, history, queueing)
    catchup_ms: float  # the hourly catch-up check per organization (steady state)
    bytes_per_row: float  # ledger bytes per hourly row, table and indexes


@dataclass(frozen=True)
class Plan:
    """What is simulated: the fleet and the machines."""

    orgs: int
    chunk_size: int
    machines: int
    workers_per_machine: int
    cores_per_machine: int
    rate_limit: float  # events/s Stripe accepts (sensormeter's v2 default ceiling: 9,000)
    postgres_cores: int
    redis_cores: int


def simulate(plan: Plan, costs: Costs) -> dict[str, float]:
    """Run the hourly run event by event; returns its duration and resource figures."""
    chunks = math.ceil(plan.orgs / plan.chunk_size)
    workers = plan.machines * plan.workers_per_machine
    # A worker process gets a whole core only while its machine has no more busy processes
    # than cores: the fan-out runs on one of them too.
    share = min(1.0, plan.cores_per_machine / plan.workers_per_machine)
    fanout_per_chunk = plan.chunk_size * costs.fanout_ms / 1000
    cpu_per_chunk = plan.chunk_size * costs.worker_ms / 1000 / share
    send_per_chunk = plan.chunk_size / plan.rate_limit  # the chunk's share of Stripe's limit
    free_at = [0.0] * workers
    heapq.heapify(free_at)
    stripe_free = 0.0  # the moment Stripe's shared limit can take the next chunk's events
    end = 0.0
    for n in range(chunks):
        queued = (n + 1) * fanout_per_chunk
        start = max(heapq.heappop(free_at), queued)
        counted = start + cpu_per_chunk  # the chunk's own work, then its events go out
        stripe_free = max(stripe_free, counted) + send_per_chunk
        heapq.heappush(free_at, stripe_free)
        end = max(end, stripe_free)
    postgres_seconds = plan.orgs * costs.postgres_ms / 1000
    redis_seconds = plan.orgs * costs.redis_ms / 1000
    worker_seconds = plan.orgs * costs.worker_ms / 1000
    # The database and Redis serve every worker: the run cannot end before they have done
    # their share of the work on the cores they have.
    end = max(end, postgres_seconds / plan.postgres_cores, redis_seconds / plan.redis_cores)
    return {
        "run_seconds": end,
        "fanout_seconds": chunks * fanout_per_chunk,
        "stripe_seconds": plan.orgs / plan.rate_limit,
        "worker_core_seconds": worker_seconds,
        "worker_busy_share": worker_seconds / (end * plan.machines * plan.cores_per_machine),
        "postgres_core_seconds": postgres_seconds,
        "postgres_busy_share": postgres_seconds / (end * plan.postgres_cores),
        "redis_core_seconds": redis_seconds,
        "redis_busy_share": redis_seconds / (end * plan.redis_cores),
        "catchup_seconds": plan.orgs * costs.catchup_ms / 1000,
        "ledger_gb_per_month": plan.orgs * 24 * 30 * costs.bytes_per_row / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=10_000_000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--machines", type=int, default=1)
    parser.add_argument("--workers-per-machine", type=int, default=5)
    parser.add_argument("--cores-per-machine", type=int, default=2)
    parser.add_argument("--rate-limit", type=float, default=9000.0)
    parser.add_argument("--postgres-cores", type=int, default=2)
    parser.add_argument("--redis-cores", type=int, default=1)
    parser.add_argument("--worker-ms", type=float, required=True)
    parser.add_argument("--postgres-ms", type=float, required=True)
    parser.add_argument("--redis-ms", type=float, required=True)
    parser.add_argument("--fanout-ms", type=float, required=True)
    parser.add_argument("--catchup-ms", type=float, required=True)
    parser.add_argument("--bytes-per-row", type=float, required=True)
    args = parser.parse_args()
    plan = Plan(
        args.orgs,
        args.chunk_size,
        args.machines,
        args.workers_per_machine,
        args.cores_per_machine,
        args.rate_limit,
        args.postgres_cores,
        args.redis_cores,
    )
    costs = Costs(
        args.worker_ms,
        args.postgres_ms,
        args.redis_ms,
        args.fanout_ms,
        args.catchup_ms,
        args.bytes_per_row,
    )
    result = simulate(plan, costs)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:,.2f}")
    busy = {
        "workers": result["worker_busy_share"],
        "postgres": result["postgres_busy_share"],
        "redis": result["redis_busy_share"],
        "stripe rate limit": result["stripe_seconds"] / result["run_seconds"],
        "fan-out (one job)": result["fanout_seconds"] / result["run_seconds"],
    }
    first = max(busy, key=lambda k: busy[k])
    print(f"{'saturates first':<{width}}  {first} ({busy[first]:.0%} busy)")


if __name__ == "__main__":
    main()
