"""What the example tests share: the queued jobs, a worker run, and signed webhook bodies."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import redis
from rq.serializers import JSONSerializer

from sensormeter.models import MeterReport
from sensormeter.settings import Settings
from sensormeter.tasks.queue import JSONJob, make_queue

from ..conftest import SENSORMETER, cli_env
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
    """Run ``sensormeter worker --burst`` as the Procfile does, until the queue is empty."""
    done = subprocess.run(
        [*SENSORMETER, "worker", "--burst"],
        env=cli_env(settings, **env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]


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
