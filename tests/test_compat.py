"""What outlives a deploy: jobs queued under release 0.1's dotted paths still run.

RQ stores each job's function by its dotted path; a job queued, waiting for a retry or
registered with rq-scheduler before an upgrade names ``sensormeter.jobs.*`` and the other
flat modules of 0.1. Those paths are kept as aliases of the new ``sensormeter.tasks`` ones.
"""

from __future__ import annotations

import pytest
from rq import SimpleWorker
from rq.serializers import JSONSerializer

import sensormeter
from sensormeter.hours import format_hour, hour_start
from sensormeter.models import MeterReport, utcnow
from sensormeter.runtime import Runtime
from sensormeter.tasks.queue import JSONJob, make_queue

from .factories import make_org

OLD_PATHS = [
    ("sensormeter.jobs.process_meter_report", "sensormeter.tasks.report.process_meter_report"),
    (
        "sensormeter.jobs.report_all_sensor_counts",
        "sensormeter.tasks.fanout.report_all_sensor_counts",
    ),
    ("sensormeter.catchup.catch_up", "sensormeter.tasks.catchup.catch_up"),
    ("sensormeter.recovery.resend_reports", "sensormeter.tasks.recovery.resend_reports"),
    ("sensormeter.recovery.sweep_stale_reports", "sensormeter.tasks.recovery.sweep_stale_reports"),
    ("sensormeter.period_close.close_periods", "sensormeter.tasks.period_close.close_periods"),
    (
        "sensormeter.period_close.report_period_close",
        "sensormeter.tasks.period_close.report_period_close",
    ),
]


@pytest.mark.parametrize(("old", "new"), OLD_PATHS)
def test_every_old_job_path_names_the_new_function(old: str, new: str) -> None:
    """Each 0.1 path resolves to the very function the new path names."""
    from rq.utils import import_attribute

    assert import_attribute(old) is import_attribute(new)


@pytest.mark.integration
def test_a_job_queued_under_an_old_path_runs_after_the_move(
    runtime: Runtime, emulator: object
) -> None:
    """A report job stored as sensormeter.jobs.process_meter_report is run and billed once."""
    make_org("acme", active=3)
    hour = format_hour(hour_start(utcnow()))
    queue = make_queue(runtime.settings, runtime.redis)
    job = queue.enqueue("sensormeter.jobs.process_meter_report", ["acme"], hour=hour)
    assert job.func_name == "sensormeter.jobs.process_meter_report"
    SimpleWorker(
        [queue], connection=runtime.redis, serializer=JSONSerializer, job_class=JSONJob
    ).work(burst=True)
    assert JSONJob.fetch(job.id, connection=runtime.redis).get_status() == "finished"
    [row] = MeterReport.select()
    assert (row.organization_id, row.value, row.status) == ("acme", 3, "sent")
    assert [e.value for e in emulator.events()] == [3]  # type: ignore[attr-defined]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # tests/test_public_api.py checks them
def test_public_api_names_stay_importable() -> None:
    """Every name the README's Public API lists is importable from sensormeter."""
    for name in sensormeter.__all__:
        assert getattr(sensormeter, name) is not None, name


def test_every_folder_of_the_package_is_a_regular_package() -> None:
    """An installed (non-editable) wheel holds every module: each folder has an __init__.py."""
    from pathlib import Path

    root = Path(sensormeter.__file__).parent
    folders = {p.parent for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    assert (
        sorted(str(f.relative_to(root)) for f in folders if not (f / "__init__.py").exists()) == []
    )
