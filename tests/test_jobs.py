"""RQ jobs on real Redis: coalescing, fan-out chunking, JSON payloads, retries, the schedule."""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from rq_scheduler import Scheduler

from sensormeter import enqueue_sensor_report, register_hourly_job, report_all_sensor_counts
from sensormeter.emulator import StripeEmulator
from sensormeter.errors import InvalidOrganizationId
from sensormeter.meters.ratelimit import THROTTLE_RETRIES
from sensormeter.models import MeterReport, Sensor
from sensormeter.runtime import Runtime
from sensormeter.tasks.queue import JSONJob, make_queue
from sensormeter.tasks.schedule import hourly_job_id, make_scheduler, scheduled_run_time

from .conftest import TEST_QUEUE
from .factories import make_org


def work(rt: Runtime) -> None:
    """Run every queued job in this process (real Redis, real jobs), then return."""
    queue = make_queue(rt.settings, rt.redis)
    SimpleWorker([queue], connection=rt.redis, serializer=JSONSerializer, job_class=JSONJob).work(
        burst=True
    )


class TestEnqueueSensorReport:
    def test_burst_coalesces_into_one_report(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """Twenty calls while a report waits queue one job and send one event."""
        make_org("acme", active=3)
        ids = {
            enqueue_sensor_report("acme", settings=runtime.settings, connection=runtime.redis)
            for _ in range(20)
        }
        assert len(ids) == 1
        assert make_queue(runtime.settings, runtime.redis).count == 1
        work(runtime)
        assert [(e.customer, e.value) for e in emulator.events()] == [("cus_acme", 3)]

    def test_idempotency_key_is_the_identifier(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """Stripe's async error reports quote a request key: it must name the ledger row."""
        make_org("acme", active=2)
        enqueue_sensor_report("acme", settings=runtime.settings, connection=runtime.redis)
        work(runtime)
        [event] = emulator.events()
        assert event.idempotency_key == event.identifier == MeterReport.get().identifier

    def test_count_is_read_when_the_job_runs(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """Sensors added after queueing but before the job runs are in the reported value."""
        make_org("acme", active=1)
        enqueue_sensor_report("acme", settings=runtime.settings, connection=runtime.redis)
        Sensor.create(organization="acme")
        Sensor.create(organization="acme")
        work(runtime)
        assert [e.value for e in emulator.events()] == [3]

    def test_call_after_the_job_started_queues_a_new_report(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """Once a report has run, the next change gets its own report and identifier."""
        make_org("acme", active=1)
        first = enqueue_sensor_report("acme", settings=runtime.settings, connection=runtime.redis)
        work(runtime)
        Sensor.create(organization="acme")
        second = enqueue_sensor_report("acme", settings=runtime.settings, connection=runtime.redis)
        work(runtime)
        assert first != second
        events = emulator.events()
        assert [e.value for e in events] == [1, 2]
        assert events[0].identifier != events[1].identifier
        assert MeterReport.select().where(MeterReport.kind == "on_demand").count() == 2

    @pytest.mark.parametrize("bad", ["", "  ", "a b", None])
    def test_bad_id_raises_and_queues_nothing(self, runtime: Runtime, bad: object) -> None:
        """An empty or malformed id raises at once, before touching Redis."""
        with pytest.raises(InvalidOrganizationId):
            enqueue_sensor_report(bad, settings=runtime.settings, connection=runtime.redis)  # type: ignore[arg-type]
        assert make_queue(runtime.settings, runtime.redis).count == 0

    def test_jobs_are_json_not_pickle(self, runtime: Runtime) -> None:
        """The job payload in Redis is JSON, so a worker never unpickles Redis data."""
        job_id = enqueue_sensor_report("acme", settings=runtime.settings, connection=runtime.redis)
        raw = runtime.redis.hget(f"rq:job:{job_id}", "data")
        assert raw is not None
        decoded = json.loads(zlib.decompress(raw))  # RQ zlib-compresses the serialized data
        assert decoded[0] == "sensormeter.tasks.report.process_meter_report"
        assert decoded[2] == [["acme"]]


class TestFanOut:
    def test_one_job_per_chunk(self, runtime: Runtime, emulator: StripeEmulator) -> None:
        """25 billable organizations with chunks of 10 make 3 jobs and 25 events, not 25 jobs."""
        object.__setattr__(runtime, "settings", runtime.settings.with_overrides(chunk_size=10))
        for i in range(25):
            make_org(f"org{i:02d}", active=i)
        make_org("canceled", status="canceled", active=5)
        summary = report_all_sensor_counts()
        assert (summary["organizations"], summary["chunks"]) == (25, 3)
        queue = make_queue(runtime.settings, runtime.redis)
        chunk_jobs = [j for j in queue.get_jobs() if j.func_name.endswith("process_meter_report")]
        assert sorted(len(j.args[0]) for j in chunk_jobs) == [5, 10, 10]
        # The hourly tick also queues the catch-up that looks back for missed hours, and the
        # survey of the sensors nobody is billed for (the unbilled metrics).
        assert [j.func_name for j in queue.get_jobs() if j not in chunk_jobs] == [
            "sensormeter.tasks.catchup.catch_up",
            "sensormeter.tasks.unbilled.survey_unbilled",
        ]
        work(runtime)
        assert sorted(e.value for e in emulator.events()) == list(range(25))

    def test_second_fanout_in_the_same_hour_sends_nothing(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """Two fan-outs of one hour leave one event and one ledger row per organization."""
        make_org("a", active=1)
        make_org("b", active=2)
        report_all_sensor_counts()
        report_all_sensor_counts()
        work(runtime)
        assert len(emulator.events()) == 2
        assert MeterReport.select().count() == 2

    def test_transient_errors_are_retried_by_rq(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """429s past the in-job tries, then a 503, are retried by RQ (same identifier)."""
        make_org("a", active=4)
        emulator.inject(429, times=THROTTLE_RETRIES + 1)
        emulator.inject(503, times=1)
        report_all_sensor_counts()
        work(runtime)
        [event] = emulator.events()
        row = MeterReport.get()
        assert (row.status, row.attempts, event.identifier) == ("sent", 3, row.identifier)

    def test_retries_run_out_into_failed(self, runtime: Runtime, emulator: StripeEmulator) -> None:
        """When every attempt fails, the row ends 'failed' with the reason, and stays visible."""
        make_org("a", active=4)
        emulator.inject(500, times=10)
        report_all_sensor_counts()
        work(runtime)
        row = MeterReport.get()
        assert row.status == "failed"
        assert row.attempts == runtime.settings.max_retries + 1
        assert "APIError" in row.last_error
        assert emulator.events() == []


@pytest.fixture
def kolkata() -> Iterator[None]:
    """Run the test with the process's local time zone set to Asia/Kolkata (UTC+5:30)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


class TestSchedule:
    def test_three_registrations_leave_one_job_at_minute_zero_utc(
        self, redis_conn: redis.Redis, kolkata: None
    ) -> None:
        """register_hourly_job run three times under TZ=Asia/Kolkata: one job, at :00 UTC."""
        assert time.localtime().tm_gmtoff == 19800  # the time zone really is +5:30
        scheduler = make_scheduler(TEST_QUEUE, redis_conn)
        for _ in range(3):
            register_hourly_job(scheduler, TEST_QUEUE)
        jobs = list(Scheduler(connection=redis_conn, job_class=JSONJob).get_jobs())
        assert [j.id for j in jobs] == [hourly_job_id(TEST_QUEUE)]
        when = scheduled_run_time(scheduler, TEST_QUEUE)
        assert when is not None
        assert (when.minute, when.second) == (0, 0)
        assert 0 < (when - datetime.now(UTC)).total_seconds() <= 3600
        assert jobs[0].func_name == "sensormeter.tasks.fanout.report_all_sensor_counts"
        assert jobs[0].origin == TEST_QUEUE

    def test_fan_outs_get_an_hour_however_short_the_report_jobs_timeout(
        self, redis_conn: redis.Redis, runtime: Runtime
    ) -> None:
        """One fan-out job pages the whole fleet: it is not cut at the report jobs' 300 s."""
        from sensormeter.defaults import FANOUT_TIMEOUT_SECONDS
        from sensormeter.tasks.fanout import enqueue_fanout

        assert runtime.settings.job_timeout_seconds < FANOUT_TIMEOUT_SECONDS == 3600
        register_hourly_job(make_scheduler(TEST_QUEUE, redis_conn), TEST_QUEUE)
        scheduled = list(Scheduler(connection=redis_conn, job_class=JSONJob).get_jobs())
        assert [j.timeout for j in scheduled] == [FANOUT_TIMEOUT_SECONDS]
        job_id = enqueue_fanout(runtime.settings, redis_conn)
        queued = make_queue(runtime.settings, redis_conn).fetch_job(job_id)
        assert queued is not None and queued.timeout == FANOUT_TIMEOUT_SECONDS


def test_malformed_id_in_a_chunk_spares_the_others(
    runtime: Runtime, emulator: StripeEmulator
) -> None:
    """A bad id from a host's source is skipped and logged; the chunk's other reports go out."""
    from sensormeter import process_meter_report

    make_org("good", active=2)
    result = process_meter_report(["good", "bad id"], hour=f"{datetime.now(UTC):%Y-%m-%dT%H}")
    assert result["outcomes"] == {"good": "sent"}
    assert [e.customer for e in emulator.events()] == ["cus_good"]
