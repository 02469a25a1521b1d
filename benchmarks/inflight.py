"""Sweep chunk size x requests in flight (fixed values and auto) at two emulator latencies, v1.

Each cell is one run of benchmarks/pipeline.py (seeded once, then ``--skip-seed``: the
ledger is emptied and Redis flushed before every run, so ``auto`` starts as a user's first
job does). Prints, per latency, organizations/s and worker CPU per organization, and how far
``auto`` is from the best fixed value.

    python benchmarks/inflight.py --orgs 5000 --redis redis://127.0.0.1:6379/12
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PIPELINE = str(Path(__file__).with_name("pipeline.py"))
DEFAULT_GRID = {0.03: "4,8,16,32,64,auto", 0.3: "16,32,64,128,auto"}


def run(
    args: argparse.Namespace, latency: float, chunk: int, in_flight: str, seed: bool
) -> dict[str, Any]:
    """One pipeline run; its JSON report."""
    command = [sys.executable, PIPELINE, "--orgs", str(args.orgs), "--transport", "v1"]
    command += ["--rate-limit", str(args.rate_limit), "--latency", str(latency)]
    command += ["--database", args.database, "--redis", args.redis, "--per-org-sample", "0"]
    command += ["--chunk-size", str(chunk), "--workers", str(args.workers)]
    command += [] if in_flight == "auto" else ["--max-in-flight", in_flight]
    command += [] if seed else ["--skip-seed"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    out = done.stdout
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if report["ledger_sent"] != args.orgs or report["emulator_events"] != args.orgs:
        raise SystemExit(f"run lost or doubled events: {report}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orgs", type=int, default=5000)
    parser.add_argument("--database", default="sqlite:////tmp/sensormeter-inflight.db")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--rate-limit", type=float, default=1000.0, help="emulator events/s")
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--latencies", default="0.03,0.3")
    parser.add_argument("--chunk-sizes", default="500,1000")
    parser.add_argument(
        "--in-flight", help="comma-separated values and/or auto; default depends on latency"
    )
    args = parser.parse_args()

    seeded = False
    for latency in (float(x) for x in args.latencies.split(",")):
        grid = (args.in_flight or DEFAULT_GRID.get(latency, "8,32,128,auto")).split(",")
        print(
            f"\nlatency {latency * 1000:.0f} ms, emulator {args.rate_limit:.0f} events/s, "
            f"{args.orgs} orgs, {args.workers} workers"
        )
        print(f"{'chunk':>6} {'in flight':>9} {'orgs/s':>8} {'cpu ms/org':>10}")
        for chunk in (int(x) for x in args.chunk_sizes.split(",")):
            cells: dict[str, dict[str, Any]] = {}
            for in_flight in grid:
                report = run(args, latency, chunk, in_flight, seed=not seeded)
                seeded = True
                cells[in_flight] = report
                print(
                    f"{chunk:>6} {in_flight:>9} {report['orgs_per_second']:>8.1f} "
                    f"{report['cpu_ms_per_org_workers']:>10.3f}",
                    flush=True,
                )
            fixed = {k: v for k, v in cells.items() if k != "auto"}
            if "auto" in cells and fixed:
                best = max(fixed, key=lambda k: fixed[k]["orgs_per_second"])
                ratio = cells["auto"]["orgs_per_second"] / fixed[best]["orgs_per_second"]
                print(f"{'':>6} auto / best fixed ({best}): {ratio:.1%}")


if __name__ == "__main__":
    main()
