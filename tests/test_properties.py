"""Property-based checks: malformed input gets a clear error, never a crash or a Stripe call."""

from __future__ import annotations

import string

import peewee
import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sensormeter import enqueue_sensor_report
from sensormeter.cli import main
from sensormeter.errors import ConfigurationError, InvalidOrganizationId
from sensormeter.hours import parse_hour, parse_hour_option
from sensormeter.ledger import validate_organization_id
from sensormeter.meters import InMemoryMeterClient
from sensormeter.report import Report
from sensormeter.reporter import Reporter
from sensormeter.settings import ASCII_INTEGER, ASCII_NUMBER, VARIABLES, Settings
from sensormeter.tasks.queue import make_queue
from sensormeter.usage import InMemoryUsageSource

from .conftest import REDIS_URL, TEST_QUEUE

FIXTURES = [HealthCheck.function_scoped_fixture]
ids = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=string.ascii_letters + string.digits + "._:@- /\\\n\t'\"", max_size=70),
    st.integers(),
    st.none(),
    st.binary(max_size=10),
)


@given(ids)
def test_organization_ids_are_accepted_or_refused_clearly(value: object) -> None:
    """Any value is either returned unchanged or refused with InvalidOrganizationId."""
    try:
        assert validate_organization_id(value) == value
    except InvalidOrganizationId as exc:
        assert "invalid organization id" in str(exc)


@example("acme\n")
@given(ids)
def test_accepted_organization_ids_are_plain_ascii(value: object) -> None:
    """An accepted id is 1-64 printable ASCII characters with no blank anywhere."""
    try:
        validate_organization_id(value)
    except InvalidOrganizationId:
        return
    assert isinstance(value, str) and value.isascii() and value.isprintable()
    assert 1 <= len(value) <= 64 and not any(c.isspace() for c in value)


NUMERIC = {"_integer": ASCII_INTEGER, "_number": ASCII_NUMBER}
digits_anywhere = st.text(
    alphabet=st.sampled_from("0123456789+-._eE \u0660\u0661\u06f1\uff10\uff11\u0967naif"),
    max_size=8,
)


@given(
    st.sampled_from(sorted(v for v, (_, parse) in VARIABLES.items() if parse.__name__ in NUMERIC)),
    st.one_of(digits_anywhere, st.text(max_size=8)),
)
def test_numeric_settings_take_ascii_digits_only(variable: str, value: str) -> None:
    """A numeric setting accepted from the environment was written with ASCII 0-9 only."""
    try:
        Settings.from_env({variable: value})
    except ConfigurationError as exc:
        assert exc.variable == variable
        return
    parse = VARIABLES[variable][1]
    assert value.strip() == "" or NUMERIC[parse.__name__].fullmatch(value.strip())


@example("\uff12\uff10\uff12\uff16-01-05T04")
@given(
    st.one_of(
        digits_anywhere,
        st.text(max_size=16),
        st.from_regex(r"\d{4}-\d\d-\d\d(T\d\d)?", fullmatch=True),
    )
)
def test_hours_take_ascii_digits_only(value: str) -> None:
    """An hour or day accepted by the parsers is written with ASCII characters only."""
    for parse in (parse_hour, parse_hour_option):
        try:
            parse(value)
        except ValueError:
            continue
        assert value.strip().isascii()


@settings(suppress_health_check=FIXTURES, max_examples=60, deadline=None)
@given(ids)
def test_enqueue_refuses_bad_ids_before_redis(redis_conn: redis.Redis, value: object) -> None:
    """A malformed id raises InvalidOrganizationId and queues nothing."""
    s = Settings(redis_url=REDIS_URL, queue_name=TEST_QUEUE)
    queue = make_queue(s, redis_conn)
    before = queue.count
    try:
        validate_organization_id(value)
    except InvalidOrganizationId:
        try:
            enqueue_sensor_report(value, settings=s, connection=redis_conn)  # type: ignore[arg-type]
        except InvalidOrganizationId:
            assert queue.count == before
            return
        raise AssertionError("a malformed id was queued") from None


@given(st.sampled_from(sorted(VARIABLES)), st.text(max_size=40))
def test_environment_values_are_accepted_or_named(variable: str, value: str) -> None:
    """Any value of any variable builds settings or raises an error naming that variable."""
    try:
        Settings.from_env({variable: value})
    except ConfigurationError as exc:
        assert exc.variable == variable
        assert str(exc).startswith(variable)


@pytest.mark.integration  # reaches Redis through the command (REDIS_URL)
@settings(max_examples=50, deadline=None)
@given(st.text(max_size=30))
def test_cli_report_never_crashes(value: str) -> None:
    """`sensormeter report ID` exits cleanly (0 queued, or an error line), never a traceback."""
    env = {"REDIS_URL": REDIS_URL, "SENSORMETER_QUEUE": TEST_QUEUE + "-props"}
    result = CliRunner().invoke(main, ["report", "--", value], env=env)
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


@settings(suppress_health_check=FIXTURES, max_examples=60, deadline=None)
@given(
    st.one_of(
        st.integers(min_value=-(10**16), max_value=10**16),
        st.floats(allow_nan=True),
        st.text(max_size=5),
        st.none(),
        st.booleans(),
    )
)
def test_malformed_counts_never_reach_stripe(database: peewee.Database, count: object) -> None:
    """A host source returning a bad count is skipped with a reason and no Stripe call."""
    meter = InMemoryMeterClient()
    source = InMemoryUsageSource({"org1": "cus_1"}, {"org1": count})  # type: ignore[dict-item]
    from sensormeter.models import MeterReport

    MeterReport.delete().execute()
    result = Reporter(source, meter, "active_sensors").run(
        database, ["org1"], Report.hourly("2026-11-29T04")
    )
    valid = isinstance(count, int) and not isinstance(count, bool) and 0 <= count < 10**15
    assert bool(meter.attempts) == valid
    if not valid:
        assert "invalid count" in result.skipped["org1"]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=20), st.sampled_from(["backfill", "reconcile"]))
def test_cli_hour_options_never_crash(value: str, command: str) -> None:
    """Any --since given to backfill or reconcile is used or refused on one line, never a crash.

    Nothing can be sent: the Stripe base is a closed port and the database is empty.
    """
    env = {
        "REDIS_URL": REDIS_URL,
        "DATABASE_URL": "sqlite:///:memory:",
        "STRIPE_API_KEY": "sk_test_properties",
        "STRIPE_API_BASE": "http://127.0.0.1:9",
        "SENSORMETER_QUEUE": TEST_QUEUE + "-props",
    }
    args = [command, "--since", value] + (["--dry-run"] if command == "backfill" else [])
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
