"""What the example tests share: the queued jobs, a worker run, and signed webhook bodies."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import redis
from rq.serializers import JSONSerializer

from sensormeter.models import MeterReport
from sensormeter.settings import Settings
from sensormeter.tasks.queue import JSONJob, make_queue

from ..conftest import IN_CI, SENSORMETER, cli_env
from ..test_webhook import error_type, full_event, sample, sign, thin_event

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REPORT_JOB = "sensormeter.tasks.report.process_meter_report"
WEBHOOK_SECRET = "whsec_sensormeter_example_tests"
REJECTION = "No customer found for the given stripe_customer_id."


def queued_reports(settings: Settings, connection: redis.Redis) -> list[tuple[str, str, list]]:
    """(job id, function, organization ids) of each job waiting on the reporting queue."""
    queue = make_queue(settings, connection)
    jobs = [
        JSONJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
        for job_id in queue.job_ids
    ]
    return [(job.id, job.func_name, list(job.args[0]) if job.args else []) for job in jobs]


def run_worker(settings: Settings, cwd: Path | None = None, **env: str) -> None:
    """Run ``sensormeter worker --burst`` until the queue is empty."""
    run_procfile(settings, {"worker": "sensormeter worker"}, cwd=cwd, **env)


def procfile(path: Path) -> dict[str, str]:
    """A Procfile's processes: name -> command."""
    lines = [line.partition(":") for line in path.read_text().splitlines() if line.strip()]
    return {name.strip(): command.strip() for name, _, command in lines}


def run_procfile(
    settings: Settings, processes: dict[str, str], cwd: Path | None = None, **env: str
) -> None:
    """Start sensormeter processes together, each with ``--burst``, as honcho would start
    them; require each to exit 0 once the queue is empty."""
    procs = []
    for command in processes.values():
        program, *args = command.split()
        assert program == "sensormeter", command
        procs.append(
            subprocess.Popen(
                [*SENSORMETER, *args, "--burst"],
                env=cli_env(settings, **env),
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for name, proc in zip(processes, procs, strict=True):
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{name}: {stderr[-3000:]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def ledger() -> dict[str, tuple[str, int, str]]:
    """Each organization's ledger row: (status, value, Stripe customer)."""
    return {
        row.organization_id: (row.status, row.value, row.stripe_customer_id)
        for row in MeterReport.select()
    }


def error_report(emulator: object, identifier: str) -> str:
    """Register at the emulator a meter error report naming ``identifier``; its thin body."""
    emulator.add_v2_event(  # type: ignore[attr-defined]
        full_event(
            "evt_test_example",
            [error_type("meter_event_customer_not_found", sample(identifier, REJECTION))],
        )
    )
    return json.dumps(thin_event("evt_test_example"))


def signature(body: str, secret: str = WEBHOOK_SECRET) -> str:
    """The Stripe-Signature header Stripe would send for ``body``."""
    return sign(body, secret)


def load_example(relative: str, name: str) -> ModuleType:
    """Import an example's module from its file (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def framework(module: str) -> ModuleType:
    """Import a framework of the ``examples`` extra: skipped without it, failed in CI (where
    ``pip install -e '.[dev]'`` brings it)."""
    if IN_CI:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} comes with the 'examples' extra")
