"""Old import path (release 0.1): kept so jobs queued or scheduled before an upgrade still run.

RQ stores each job's function by its dotted path (``sensormeter.jobs.process_meter_report``,
``sensormeter.jobs.report_all_sensor_counts``); a job queued, waiting for a retry or
registered with rq-scheduler by an earlier release is found here. New code imports from
:mod:`sensormeter.tasks`.
"""

from __future__ import annotations

from .tasks.fanout import enqueue_fanout, report_all_sensor_counts
from .tasks.queue import JSONJob, make_queue
from .tasks.report import enqueue_sensor_report, process_meter_report

__all__ = [
    "JSONJob",
    "enqueue_fanout",
    "enqueue_sensor_report",
    "make_queue",
    "process_meter_report",
    "report_all_sensor_counts",
]
