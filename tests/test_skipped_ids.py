"""Ids from a host's source that cannot be reported are skipped, remembered and shown by status."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import redis

from sensormeter import report_all_sensor_counts
from sensormeter.emulator import StripeEmulator
from sensormeter.hours import format_hour
from sensormeter.keys import skipped_key
from sensormeter.models import utcnow
from sensormeter.runtime import Runtime
from sensormeter.settings import Settings
from sensormeter.tasks.period_close import close_periods
from sensormeter.tasks.skipped import MAX_SKIPPED, SKIPPED_TTL_SECONDS, record_skipped, skipped_ids
from sensormeter.usage import InMemoryUsageSource

from .conftest import SENSORMETER, TEST_QUEUE, cli_env
from .factories import make_org
from .faults.conftest import assert_billed_exactly_once
from .test_jobs import work

NOW = 1_800_000_000.0


def test_bad_ids_are_skipped_the_chunk_reported_and_status_shows_them(
    runtime: Runtime, emulator: StripeEmulator, settings: Settings
) -> None:
    """A host source's 'acme\\n' and 'beta ' are skipped; the rest is billed; status lists them."""
    source = InMemoryUsageSource(
        {"acme": "cus_acme", "acme\n": "cus_acme", "beta ": "cus_beta", "gamma": "cus_gamma"},
        {"acme": 3, "acme\n": 3, "beta ": 1, "gamma": 5},
    )
    object.__setattr__(runtime, "source", source)
    hour = format_hour(utcnow())
    assert report_all_sensor_counts(hour)["chunks"] == 1  # one chunk holds all four
    work(runtime)
    assert_billed_exactly_once(emulator, {"acme": "cus_acme", "gamma": "cus_gamma"}, hour)
    shown = {s.shown: s.reason for s in skipped_ids(runtime.redis, TEST_QUEUE)}
    assert shown == {
        "'acme\\n'": "has leading or trailing whitespace",
        "'beta '": "has leading or trailing whitespace",
    }
    done = subprocess.run(
        [*SENSORMETER, "status"], env=cli_env(settings), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr  # nothing scheduled: a problem
    [line] = [x for x in done.stdout.splitlines() if "cannot be reported" in x]
    assert line == (
        "2 organization id(s) from the usage source cannot be reported: "
        "'acme\\n' (has leading or trailing whitespace), "
        "'beta ' (has leading or trailing whitespace)"
    )


def test_an_unhashable_id_from_a_job_argument_is_skipped_too(
    runtime: Runtime, emulator: StripeEmulator
) -> None:
    """A list where an id belongs (job arguments are JSON) is skipped and recorded, not a crash."""
    from sensormeter import process_meter_report

    make_org("good", active=2)
    hour = format_hour(utcnow())
    result = process_meter_report(["good", ["bad"]], hour=hour)  # type: ignore[list-item]
    assert result["outcomes"] == {"good": "sent"}
    assert_billed_exactly_once(emulator, {"good": "cus_good"}, hour)
    [skipped] = skipped_ids(runtime.redis, TEST_QUEUE)
    assert (skipped.shown, skipped.reason) == ("['bad']", "must be a string, got list")


def test_period_close_records_its_skipped_ids(runtime: Runtime) -> None:
    """The every-minute period-close check records a bad id it skips."""
    end = utcnow() + timedelta(minutes=4)
    source = InMemoryUsageSource(
        {"acme": "cus_acme", "acme\n": "cus_acme"},
        {"acme": 1, "acme\n": 1},
        period_ends={"acme": end, "acme\n": end},
    )
    object.__setattr__(runtime, "source", source)
    assert close_periods()["organizations"] == 1
    assert [s.shown for s in skipped_ids(runtime.redis, TEST_QUEUE)] == ["'acme\\n'"]


class TestRecord:
    def test_sighting_refreshes_the_ttl(self, redis_conn: redis.Redis) -> None:
        """Each sighting sets the hash's TTL to about two days again."""
        record_skipped(redis_conn, "q", [("a\n", "why")], now=NOW)
        redis_conn.expire(skipped_key("q"), 60)
        record_skipped(redis_conn, "q", [("a\n", "why")], now=NOW + 10)
        assert redis_conn.ttl(skipped_key("q")) > SKIPPED_TTL_SECONDS - 60
        assert skipped_key("q") == "sensormeter:q:skipped-ids"

    def test_ids_unseen_for_the_ttl_drop_out(self, redis_conn: redis.Redis) -> None:
        """An id not seen for two days is no longer listed, while a fresher one is."""
        record_skipped(redis_conn, "q", [("old ", "gone")], now=NOW)
        later = NOW + SKIPPED_TTL_SECONDS + 1
        assert skipped_ids(redis_conn, "q", now=later) == []
        record_skipped(redis_conn, "q", [("new ", "here")], now=later)
        assert [s.shown for s in skipped_ids(redis_conn, "q", now=later)] == ["'new '"]
        assert redis_conn.hlen(skipped_key("q")) == 1

    def test_bounded_keeping_the_most_recent(self, redis_conn: redis.Redis) -> None:
        """Beyond MAX_SKIPPED ids, the least recently seen are forgotten."""
        for i in range(MAX_SKIPPED + 5):
            record_skipped(redis_conn, "q", [(f"id{i} ", "r")], now=NOW + i)
        kept = skipped_ids(redis_conn, "q", now=NOW + MAX_SKIPPED + 5)
        assert len(kept) == MAX_SKIPPED
        assert kept[0].shown == f"'id{MAX_SKIPPED + 4} '" and kept[-1].shown == "'id5 '"
        record_skipped(redis_conn, "q", [(f"x{i}", "r") for i in range(3 * MAX_SKIPPED)], now=NOW)
        assert redis_conn.hlen(skipped_key("q")) == MAX_SKIPPED

    def test_odd_values_are_shown_by_their_repr(self, redis_conn: redis.Redis) -> None:
        """Non-string ids and very long ones are listed readably and bounded."""
        odd = [(7, "must be a string"), (["a"], "must be a string"), ("x" * 500, "too long")]
        record_skipped(redis_conn, "q", odd, now=NOW)
        shown = sorted(s.shown for s in skipped_ids(redis_conn, "q", now=NOW))
        assert shown == ["'" + "x" * 120 + "'... (500 characters)", "7", "['a']"]

    def test_redis_down_does_not_stop_the_job(self) -> None:
        """Recording is best effort: an unreachable Redis is logged, not raised."""
        down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
        record_skipped(down, "q", [("a\n", "why")])
