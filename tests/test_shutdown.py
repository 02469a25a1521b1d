"""A dyno restart (SIGTERM to every process of the worker dyno) loses no report."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time

import peewee
import pytest
import redis
from rq.worker import WorkerStatus

from sensormeter import enqueue_sensor_report
from sensormeter.emulator import StripeEmulator
from sensormeter.errors import ConfigurationError
from sensormeter.models import MeterReport
from sensormeter.settings import Settings
from sensormeter.tasks.queue import make_queue
from sensormeter.tasks.worker import ReportingWorker, worker_class

from .conftest import SENSORMETER, cli_env
from .factories import make_org

HONCHO_KILL_SECONDS = 5  # honcho's and foreman's default wait between SIGTERM and SIGKILL


def run_stop_handler(worker: ReportingWorker) -> None:
    """Run rq's SIGTERM handler on ``worker`` here, restoring this process's handlers after."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker.request_stop(signal.SIGTERM, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_sigterm_mid_job_is_retried_not_lost(
    settings: Settings,
    database: peewee.Database,
    redis_conn: redis.Redis,
    emulator: StripeEmulator,
) -> None:
    """SIGTERM to the Procfile's pool while Stripe is slow: gone before honcho's SIGKILL.

    honcho and foreman send SIGKILL 5 s after SIGTERM (Heroku 30 s). The default grace cuts
    the running job off in time; the cut-off job is retried and its report lands.
    """
    make_org("acme", active=4)
    settings = settings.with_overrides(stripe_timeout_seconds=20)
    enqueue_sensor_report("acme", settings=settings, connection=redis_conn)
    emulator.set_latency(15)  # longer than the shutdown grace: the job is cut off
    # The pool's log goes to a file (an unread pipe could block it) and is shown on failure.
    pool_log = tempfile.TemporaryFile()
    pool = subprocess.Popen(
        [*SENSORMETER, "worker", "-n", "5"],
        env=cli_env(settings),
        start_new_session=True,
        stdout=pool_log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for(lambda: emulator.request_count() >= 1, 30), "the job never called Stripe"
        os.killpg(pool.pid, signal.SIGTERM)  # honcho and Heroku signal every process
        stopped = time.monotonic()
        pool.wait(timeout=30)
        took = time.monotonic() - stopped
        # honcho's SIGKILL would have come at 5 s (this is a deadline, not a benchmark).
        assert took < HONCHO_KILL_SECONDS, f"the pool took {took:.1f} s to stop"
    finally:
        if pool.poll() is None:
            os.killpg(pool.pid, signal.SIGKILL)
            pool.wait()
    # The job was cut off, not finished: it is still to be sent, and queued again by RQ.
    pool_log.seek(0)
    written = pool_log.read().decode(errors="replace")
    shown = written[-4000:]
    assert MeterReport.get().status == "pending", shown
    # An expected cut-off: the job's own job.failed line says it is retried, no traceback.
    assert "ShutDownImminentException" in written and "Traceback" not in written, shown
    emulator.set_latency(0)
    # The cut-off job was handed back to RQ (queued, or waiting for its retry): run it again.
    burst = subprocess.run(
        [*SENSORMETER, "worker", "--burst"],
        env=cli_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert burst.returncode == 0, burst.stderr[-2000:]
    row = MeterReport.get()
    assert row.status == "sent"
    assert [e.identifier for e in emulator.events()] == [row.identifier]
    queue = make_queue(settings, redis_conn)
    assert queue.count == 0 and queue.failed_job_registry.count == 0


def _blocked_signals(thread_id: int) -> set[int]:
    """The signals a thread of this process blocks, from /proc (Linux)."""
    with open(f"/proc/self/task/{thread_id}/status") as status:
        mask = next(int(line.split()[1], 16) for line in status if line.startswith("SigBlk:"))
    return {n for n in range(1, 65) if mask & (1 << (n - 1))}


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads thread masks from /proc")
def test_command_listener_thread_never_takes_the_stop_signals(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    """SIGTERM must reach the worker's main thread, never rq's pub/sub listener thread."""
    worker = ReportingWorker([make_queue(settings, redis_conn)], connection=redis_conn)
    worker.subscribe()
    try:
        listener = worker.pubsub_thread
        assert listener.native_id is not None
        blocked = _blocked_signals(listener.native_id)
        assert {signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGRTMIN} <= blocked
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        worker.unsubscribe()


def test_a_stop_requested_between_jobs_is_honoured_before_dequeue(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    """A SIGTERM that lands while rq still marks the worker busy must not leave it dequeueing."""
    worker = ReportingWorker([make_queue(settings, redis_conn)], connection=redis_conn)
    worker.set_state(WorkerStatus.BUSY)  # as rq leaves it between the end of a job and the next
    run_stop_handler(worker)  # what a SIGTERM in that moment runs
    returned: list[object] = []
    dequeue = threading.Thread(
        target=lambda: returned.append(worker.dequeue_job_and_maintain_ttl(timeout=1)),
        daemon=True,
    )
    dequeue.start()
    dequeue.join(5)
    assert not dequeue.is_alive(), "the worker went on waiting for work after a stop request"
    assert returned == [None]


def test_the_shutdown_grace_is_a_setting_within_herokus_kill() -> None:
    """The grace comes from SENSORMETER_SHUTDOWN_GRACE_SECONDS; past 25 s is refused."""
    assert worker_class(Settings()).imminent_shutdown_delay == 2
    chosen = Settings.from_env({"SENSORMETER_SHUTDOWN_GRACE_SECONDS": "20"})
    assert worker_class(chosen).imminent_shutdown_delay == 20
    assert issubclass(worker_class(chosen), ReportingWorker)
    with pytest.raises(ConfigurationError, match="SENSORMETER_SHUTDOWN_GRACE_SECONDS"):
        Settings.from_env({"SENSORMETER_SHUTDOWN_GRACE_SECONDS": "30"})
