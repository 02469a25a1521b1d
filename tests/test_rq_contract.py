"""What sensormeter's worker and scheduler rely on in rq and rq-scheduler: an upgrade that
changes it fails here, by name, before it fails in production."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest
import redis
from rq.exceptions import StopRequested
from rq.worker import WorkerStatus

from sensormeter.settings import Settings
from sensormeter.tasks.queue import make_queue
from sensormeter.tasks.schedule import ReportingScheduler
from sensormeter.tasks.worker import ReportingWorker

from .conftest import REDIS_URL, TEST_QUEUE

SETTINGS = Settings(redis_url=REDIS_URL, queue_name=TEST_QUEUE)


@pytest.fixture
def handlers_kept() -> Iterator[None]:
    """rq installs process-wide signal handlers; give this test process its own back after."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def make_worker(connection: redis.Redis) -> ReportingWorker:
    return ReportingWorker([make_queue(SETTINGS, connection)], connection=connection)


def noop() -> None:
    """A job that is never meant to run."""


@pytest.mark.usefixtures("handlers_kept")
class TestWorkerStop:
    def test_stop_while_busy_is_noted_not_raised(self, redis_conn: redis.Redis) -> None:
        """rq's SIGTERM handler calls handle_warm_shutdown_request on a busy worker, no raise."""
        worker = make_worker(redis_conn)
        worker.set_state(WorkerStatus.BUSY)
        worker.request_stop(signal.SIGTERM, None)
        assert worker.stop_signalled

    def test_stop_while_idle_raises_and_is_noted(self, redis_conn: redis.Redis) -> None:
        """On an idle worker the handler raises StopRequested, and the request is noted too."""
        worker = make_worker(redis_conn)
        worker.set_state(WorkerStatus.IDLE)
        with pytest.raises(StopRequested):
            worker.request_stop(signal.SIGTERM, None)
        assert worker.stop_signalled

    def test_work_loop_dequeues_through_the_override(self, redis_conn: redis.Redis) -> None:
        """rq's work loop takes jobs only through dequeue_job_and_maintain_ttl (the stop check)."""
        queue = make_queue(SETTINGS, redis_conn)
        queue.enqueue(noop)
        worker = make_worker(redis_conn)
        worker.stop_signalled = True
        assert worker.work(burst=True) is False
        assert queue.count == 1

    def test_dequeue_marks_the_worker_idle_first(self, redis_conn: redis.Redis) -> None:
        """Before the stop check the worker is idle, in rq's state and in Redis."""
        worker = make_worker(redis_conn)
        worker.set_state(WorkerStatus.BUSY)
        worker.stop_signalled = True
        returned: list[object] = []
        dequeue = threading.Thread(
            target=lambda: returned.append(worker.dequeue_job_and_maintain_ttl(timeout=1)),
            daemon=True,
        )
        dequeue.start()
        dequeue.join(5)
        assert returned == [None], "the worker went on waiting for work after a stop request"
        assert worker.get_state() == WorkerStatus.IDLE
        assert redis_conn.hget(worker.key, "state") == WorkerStatus.IDLE.encode()


class TestSchedulerLock:
    def test_remove_lock_deletes_only_a_lock_this_scheduler_took(
        self, redis_conn: redis.Redis
    ) -> None:
        """rq-scheduler's remove_lock leaves a lock held by another scheduler alone."""
        first = ReportingScheduler(SETTINGS, redis_conn)
        second = ReportingScheduler(SETTINGS, redis_conn)
        assert first.acquire_lock()
        assert not second.acquire_lock()
        second.remove_lock()
        assert redis_conn.exists(first.scheduler_lock_key)
        first.remove_lock()
        assert not redis_conn.exists(first.scheduler_lock_key)


class LosesRedisOnce(ReportingScheduler):  # type: ignore[misc]
    """A scheduler whose first enqueue fails, while another scheduler takes the lock over."""

    ticks = 0

    def start(self) -> None:
        """Registers nothing: this test is about the lock only."""

    def heartbeat(self) -> None:
        """Count ticks; a SIGTERM arrives at the second."""
        self.ticks += 1
        if self.ticks == 2:  # before the second tick takes the lock (or not) again
            raise SystemExit()
        super().heartbeat()

    def enqueue_jobs(self) -> None:
        """Redis fails mid-tick; meanwhile the lock expires and another scheduler takes it."""
        self.connection.set(self.scheduler_lock_key, "another scheduler")
        raise redis.ConnectionError("Connection reset by peer")


@pytest.mark.usefixtures("handlers_kept")
def test_scheduler_never_removes_a_lock_it_may_have_lost(redis_conn: redis.Redis) -> None:
    """After a Redis error the scheduler stops without deleting the lock another one holds."""
    scheduler = LosesRedisOnce(SETTINGS, redis_conn, interval=0)
    with pytest.raises(SystemExit):
        scheduler.run()
    assert redis_conn.get(scheduler.scheduler_lock_key) == b"another scheduler"
    assert redis_conn.hexists(scheduler.key, "death")


@pytest.mark.usefixtures("handlers_kept")
def test_scheduler_stops_on_sigterm(redis_conn: redis.Redis) -> None:
    """SIGTERM ends the scheduler's loop with SystemExit, its lock removed and death recorded."""

    class StoppedAtOnce(LosesRedisOnce):
        def enqueue_jobs(self) -> None:
            signal.raise_signal(signal.SIGTERM)

    scheduler = StoppedAtOnce(SETTINGS, redis_conn, interval=0)
    with pytest.raises(SystemExit):
        scheduler.run()
    assert not redis_conn.exists(scheduler.scheduler_lock_key)
    assert redis_conn.hexists(scheduler.key, "death")
