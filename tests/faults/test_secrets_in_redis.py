"""Secrets quoted by an error never reach Redis, where RQ keeps a failed job's exception text.

Every key of the test's Redis is read (strings, hashes, lists, sets, sorted sets, streams),
with the encodings RQ uses undone: a failed job's ``exc_info`` is zlib-compressed, and a
result's ``exc_string`` in ``rq:results:<job>`` is zlib-compressed then base64-encoded.
"""

from __future__ import annotations

import base64
import binascii
import json
import signal
import zlib
from collections.abc import Iterator

import redis
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from sensormeter.emulator import StripeEmulator
from sensormeter.hours import parse_hour
from sensormeter.logs import MAX_LINE_BYTES
from sensormeter.models import MeterReport
from sensormeter.settings import Settings
from sensormeter.tasks.fanout import enqueue_fanout
from sensormeter.tasks.queue import JSONJob
from sensormeter.tasks.worker import ReportingWorker

from .conftest import RedisServer, assert_billed_exactly_once, current_hour, run_cli, seed

STRIPE_KEY = "sk_live_51HqRedisLeakProbe0000wxyz"
TEST_KEY = "sk_test_51HqRedisLeakProbe1111wxyz"
PASSWORD = "s3cret-probe-7f3a"
SECRET_URL = f"redis://:{PASSWORD}@cache.internal:6379"
SECRETS = (
    STRIPE_KEY,
    STRIPE_KEY.removeprefix("sk_live_"),
    TEST_KEY.removeprefix("sk_test_"),
    PASSWORD,
)
STRIPE_MESSAGE = f"Upstream failure: key {STRIPE_KEY} (also {TEST_KEY}); cache {SECRET_URL} down"


def _decoded(value: bytes, depth: int = 0) -> Iterator[str]:
    """``value`` as text, and as text again after undoing zlib and base64 where they apply."""
    yield value.decode("utf-8", "replace")
    if depth >= 3:
        return
    try:
        yield from _decoded(zlib.decompress(value), depth + 1)
    except zlib.error:
        pass
    try:
        yield from _decoded(base64.b64decode(value, validate=True), depth + 1)
    except (binascii.Error, ValueError):
        pass


def redis_texts(client: redis.Redis) -> Iterator[tuple[str, str]]:
    """(key, text) for every key name and stored value of every type in the Redis database."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        values: list[bytes]
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "hash":
            values = [x for pair in client.hgetall(key).items() for x in pair]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [
                x for _, fields in client.xrange(key) for pair in fields.items() for x in pair
            ]
        else:
            raise AssertionError(f"{key!r}: a Redis type this test does not read: {kind}")
        for value in [key, *values]:
            for text in _decoded(value):
                yield key.decode(), text


def assert_no_secret_in_redis(client: redis.Redis) -> list[str]:
    """Fail on any secret anywhere in Redis; return every text read, for further checks."""
    texts = []
    for key, text in redis_texts(client):
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} stored in Redis under {key!r}"
        texts.append(text)
    return texts


def test_stripe_error_text_never_reaches_redis(
    fault_settings: Settings, fault_db: object, emulator: StripeEmulator
) -> None:
    """Stripe 500s quoting a key and a Redis password: failed jobs store neither; then it heals."""
    # The workers' own Redis URL carries a password too (the server accepts any: nopass).
    settings = fault_settings.with_overrides(
        max_retries=1, redis_url=fault_settings.redis_url.replace("//", f"//:{PASSWORD}@", 1)
    )
    customers = seed(12)
    hour = current_hour()
    # v1 sends one request per event: 12 organizations, each tried twice, all answered 500.
    emulator.inject(500, times=24, message=STRIPE_MESSAGE)
    client = redis.Redis.from_url(settings.redis_url)
    enqueue_fanout(settings, client, hour)
    done = run_cli(settings, "worker", "-n", "2", "--burst", timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    # The rows failed visibly, with the reason scrubbed.
    rows = list(MeterReport.select().where(MeterReport.period_hour == parse_hour(hour)))
    assert sorted(r.organization_id for r in rows) == sorted(customers)
    assert {r.status for r in rows} == {"failed"}
    assert {r.last_error for r in rows} == {
        "APIError: Upstream failure: key sk_live_*** (also sk_test_***); "
        "cache redis://:***@cache.internal:6379 down"
    }
    # The jobs' failures are in Redis, scrubbed: RQ's text was read, and holds no secret.
    texts = assert_no_secret_in_redis(client)
    stored = [t for t in texts if "ReportsFailed" in t and "redis://:***@cache.internal" in t]
    assert stored, "no failed job's exception text found in Redis"
    for line in done.stderr.splitlines():
        assert len(line.encode()) < MAX_LINE_BYTES
        json.loads(line)
        for secret in SECRETS:
            assert secret not in line

    # The fault is over: the failed rows are sent again, once each.
    requeued = run_cli(settings, "retry-failed")
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    healed = run_cli(settings, "worker", "-n", "2", "--burst", timeout=180)
    assert healed.returncode == 0, healed.stderr[-3000:]
    assert_billed_exactly_once(emulator, customers, hour)
    assert_no_secret_in_redis(client)


class LeakyError(Exception):
    """An exception that is no SensormeterError, as a driver or a library would raise."""


def leak_in_message() -> None:
    """RQ job: fail with a URL and its password in the message (built here, not in the args)."""
    raise LeakyError(f"cannot connect to {SECRET_URL}")


def leak_in_cause() -> None:
    """RQ job: fail with a KeyError whose cause quotes a Stripe key."""
    try:
        raise RuntimeError(f"Stripe refused {STRIPE_KEY}")
    except RuntimeError as exc:
        raise KeyError(f"no customer for key {TEST_KEY}") from exc


def test_any_exception_text_is_scrubbed_before_rq_stores_it(redis_server: RedisServer) -> None:
    """Exceptions of any type, chained or retried, reach Redis scrubbed through ReportingWorker."""
    client = redis.Redis.from_url(redis_server.url)
    queue = Queue("secrets", connection=client, serializer=JSONSerializer, job_class=JSONJob)
    leaky = queue.enqueue(leak_in_message, retry=Retry(max=1))
    chained = queue.enqueue(leak_in_cause)
    worker = ReportingWorker(
        [queue], connection=client, serializer=JSONSerializer, job_class=JSONJob
    )
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker.work(burst=True, with_scheduler=False)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert sorted(queue.failed_job_registry.get_job_ids()) == sorted([leaky.id, chained.id])
    texts = assert_no_secret_in_redis(client)
    assert any("LeakyError: cannot connect to redis://:***@cache.internal" in t for t in texts)
    assert any("RuntimeError: Stripe refused sk_live_***" in t for t in texts)
    assert any("KeyError: 'no customer for key sk_test_***'" in t for t in texts)
