"""The anomaly guard: implausible readings are held with their evidence, then recounted.

The rules and settings on their own (fast); then end to end on SQLite and PostgreSQL, real
Redis, stripe-python over HTTP to the emulator: what Stripe received is read back from the
emulator, and each test ends on the billing invariants. The commands are in test_held_cli.py.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, timedelta

import peewee
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from sensormeter import ledger
from sensormeter.emulator import StripeEmulator
from sensormeter.errors import ConfigurationError
from sensormeter.guard import Guard, Thresholds, judge
from sensormeter.hours import format_hour, hour_start, parse_hour
from sensormeter.logs import capture_logs
from sensormeter.models import MeterReport, Sensor, utcnow
from sensormeter.ops.readings import window_counts
from sensormeter.report import Report, close_request_id
from sensormeter.runtime import Runtime, set_runtime
from sensormeter.settings import Settings
from sensormeter.tasks.catchup import find_gaps
from sensormeter.tasks.held import recount_held_reports

from .conftest import cli_env
from .factories import make_org
from .guard_scenarios import (
    EVENT,
    assert_billed_once,
    deliver,
    evidence,
    history_hours,
    report_hour,
    set_active,
    stripe_values,
    wait_out,
    with_history,
)
from .test_cli import sensormeter

HOUR = format_hour(hour_start(utcnow()))


@pytest.fixture(autouse=True)
def current_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOUR is the hour each test runs in, so a suite that crosses the top of an hour passes."""
    monkeypatch.setattr(sys.modules[__name__], "HOUR", format_hour(hour_start(utcnow())))


DEFAULTS = Thresholds()


class TestRules:
    @pytest.mark.parametrize(
        ("previous", "value", "rule"),
        [
            ([15, 15, 14], 0, "drop_to_zero"),
            ([12], 0, "drop_to_zero"),
            ([3], 0, None),  # too small to be meaningful
            ([5, 15, 15], 0, None),  # the newest delivered value was small
            ([12], 13, None),
            ([20, 20, 20], 400, "jump"),
            ([20, 20, 20], 199, None),
            ([1], 40, None),  # a new customer's first day
            ([5, 6], 400, None),
            ([15, 15, 14], 1, "fall"),
            ([100, 100], 11, None),
            ([100, 100], 60, None),
            ([], 0, None),  # no history: never held
        ],
    )
    def test_the_documented_examples(
        self, previous: list[int], value: int, rule: str | None
    ) -> None:
        """The rules as docs/operations.md gives them, with the default thresholds (10, 10x)."""
        trip = judge(value, previous, DEFAULTS)
        assert (trip.rule if trip else None) == rule

    def test_the_explanation_names_the_values(self) -> None:
        """The sentence a support engineer reads."""
        trip = judge(0, [15, 15, 14], DEFAULTS)
        assert trip is not None and trip.explanation == "dropped to 0 from 15"
        jump = judge(400, [20, 20], DEFAULTS)
        assert jump is not None and jump.explanation.startswith("jumped to 400 from 20 (20x")

    @given(
        start=st.integers(0, 100_000),
        steps=st.lists(st.floats(0.5, 3.0), min_size=1, max_size=48),
    )
    def test_ordinary_growth_and_decline_is_never_held(
        self, start: int, steps: list[float]
    ) -> None:
        """Hour to hour, anything from halving to tripling never trips a rule."""
        series = [start]
        for step in steps:
            series.append(round(series[-1] * step))
        for i in range(1, len(series)):
            previous = series[max(0, i - 3) : i][::-1]
            assert judge(series[i], previous, DEFAULTS) is None, (previous, series[i])

    @given(
        previous=st.lists(st.integers(0, 9), min_size=1, max_size=3),
        value=st.integers(0, 1_000_000),
    )
    def test_small_customers_are_never_held(self, previous: list[int], value: int) -> None:
        """Below the minimum count (10) every move is ordinary: 1 -> 40, 9 -> 0, 3 -> 5000."""
        assert judge(value, previous, DEFAULTS) is None


class TestSettings:
    def test_defaults_and_overrides(self) -> None:
        """On by default; each threshold is read from its variable."""
        assert (Settings().guard, Settings().guard_min_count) == (True, 10)
        env = {
            "SENSORMETER_GUARD": "OFF",
            "SENSORMETER_GUARD_MIN_COUNT": "50",
            "SENSORMETER_GUARD_FACTOR": "4.5",
            "SENSORMETER_GUARD_RECOUNT_MINUTES": "0",
        }
        settings = Settings.from_env(env)
        assert (settings.guard, settings.guard_min_count) == (False, 50)
        assert (settings.guard_factor, settings.guard_recount_minutes) == (4.5, 0)

    @pytest.mark.parametrize(
        ("variable", "raw", "words"),
        [
            ("SENSORMETER_GUARD", "maybe", "must be on or off"),
            ("SENSORMETER_GUARD_MIN_COUNT", "0", "out of range (1 to 1000000"),
            ("SENSORMETER_GUARD_FACTOR", "1", "out of range (2 to 1000"),
            ("SENSORMETER_GUARD_FACTOR", "ten", "is not a number"),
            ("SENSORMETER_GUARD_RECOUNT_MINUTES", "-1", "out of range (0 to 1440"),
        ],
    )
    def test_a_bad_value_names_the_variable(self, variable: str, raw: str, words: str) -> None:
        """A bad value stops with the variable's name and what is wrong."""
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_env({variable: raw})
        assert variable in str(caught.value) and words in str(caught.value)


class TestHeld:
    def test_drop_from_15_to_0_is_held_with_evidence_and_released_sends_0(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """The issue's case: held (no Stripe call), listed with why, released: 0 is billed."""
        with_history(runtime, "org-7", [14, 15, 15])
        set_active("org-7", 0)
        with capture_logs() as logs:
            row = report_hour(runtime, "org-7", HOUR)
        assert row.status == MeterReport.HELD
        assert stripe_values(emulator, row.identifier) == []
        facts = evidence(row)
        assert facts["rule"] == "drop_to_zero"
        assert facts["reading"] == {"value": 0, "measured_at": row.measured_at.isoformat()}
        assert [p["value"] for p in facts["previous"]] == [15, 15, 14]  # type: ignore[index]
        assert facts["thresholds"] == {"min_count": 10, "factor": 10.0}
        [kept] = [line for line in logs if line["event"] == "report.kept_back"]
        assert (kept["organization_id"], kept["status"]) == ("org-7", "held")

        env = cli_env(runtime.settings)
        listed = sensormeter(env, "held")
        assert listed.returncode == 0, listed.stderr
        assert (
            f"#{row.id} org-7, hour {HOUR}: 0 sensors, held: dropped to 0 from 15 "
            "(previous: 15, 15, 14)"
        ) in listed.stdout
        [item] = json.loads(sensormeter(env, "held", "--json").stdout)
        assert (item["id"], item["rule"], item["value"], item["previous"]) == (
            row.id,
            "drop_to_zero",
            0,
            [15, 15, 14],
        )

        released = sensormeter(env, "held", "release", str(row.id))
        assert released.returncode == 0, released.stdout + released.stderr
        assert f"#{row.id} org-7, hour {HOUR}: sent 0 sensors to Stripe" in released.stdout
        assert stripe_values(emulator, row.identifier) == [0]
        facts = evidence(row)
        assert facts["released"]["by"] == "sensormeter held release"  # type: ignore[index]
        assert facts["reading"]["value"] == 0  # type: ignore[index]
        assert json.loads(sensormeter(env, "held", "--json").stdout) == []
        assert_billed_once(emulator, "org-7", HOUR, 0)

    def test_a_jump_by_the_factor_is_held_and_small_customers_grow_freely(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """20 -> 400 is held; 1 -> 40 (a new customer's first day) and 12 -> 13 are not."""
        with_history(runtime, "big", [20, 20])
        with_history(runtime, "new", [1])
        with_history(runtime, "calm", [12])
        set_active("big", 400)
        set_active("new", 40)
        set_active("calm", 13)
        runtime.reporter().run(runtime.database, ["big", "new", "calm"], Report.hourly(HOUR))
        statuses = {
            r.organization_id: r.status
            for r in MeterReport.select().where(MeterReport.period_hour == parse_hour(HOUR))
        }
        assert statuses == {"big": "held", "new": "sent", "calm": "sent"}
        big = MeterReport.get(organization_id="big", period_hour=parse_hour(HOUR))
        assert evidence(big)["rule"] == "jump"
        for org, value in [("new", 40), ("calm", 13)]:
            identifier = ledger.hourly_identifier(org, EVENT, parse_hour(HOUR))
            assert stripe_values(emulator, identifier) == [value]

    def test_an_ordinary_week_of_growth_goes_out_hour_after_hour(self, runtime: Runtime) -> None:
        """A customer onboarding and settling (1 to 90 and back to 52): every report is sent."""
        with_history(runtime, "growing", [1, 3, 8, 20, 25, 40, 38, 60, 90, 45, 47, 52])
        assert MeterReport.select().where(MeterReport.status != MeterReport.SENT).count() == 0

    def test_no_history_is_never_held(self, runtime: Runtime, emulator: StripeEmulator) -> None:
        """An organization never delivered before goes out whatever its count."""
        make_org("fresh")
        set_active("fresh", 5000)
        row = report_hour(runtime, "fresh", HOUR)
        assert row.status == MeterReport.SENT and row.evidence is None
        assert_billed_once(emulator, "fresh", HOUR, 5000)

    def test_guard_off_sends_everything(
        self,
        settings: Settings,
        database: peewee.Database,
        redis_conn: redis.Redis,
        emulator: StripeEmulator,
    ) -> None:
        """SENSORMETER_GUARD=off: no guard among the gates, the drop to 0 is sent at once."""
        off = Settings.from_env(cli_env(settings, SENSORMETER_GUARD="off"))
        assert off.guard is False
        runtime = Runtime.build(off)
        try:
            assert not [gate for gate in runtime.gates if isinstance(gate, Guard)]
            with_history(runtime, "org-7", [15, 15, 15])
            set_active("org-7", 0)
            assert report_hour(runtime, "org-7", HOUR).status == MeterReport.SENT
            assert_billed_once(emulator, "org-7", HOUR, 0)
        finally:
            runtime.close()

    def test_the_metrics_count_held_rows(self, runtime: Runtime) -> None:
        """sensormeter_reports{status="held"} reads the held row, not as sent."""
        with_history(runtime, "org-7", [15])
        set_active("org-7", 0)
        report_hour(runtime, "org-7", HOUR)
        counts = window_counts(runtime.database, hour_start(utcnow()) - timedelta(hours=24))
        assert (counts["held"], counts["sent"]) == (1, 1)


class TestRecount:
    def test_a_confirming_recount_sends_the_new_reading(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """Still 0 after the wait: the recount sends 0, its outcome 'confirmed'."""
        with_history(runtime, "org-7", [15, 15, 14])
        set_active("org-7", 0)
        row = report_hour(runtime, "org-7", HOUR)
        assert recount_held_reports()["held"] == 0  # not yet: the wait is not over
        assert MeterReport.get_by_id(row.id).status == MeterReport.HELD
        wait_out(row)
        with capture_logs() as logs:
            summary = recount_held_reports()
        assert summary["outcomes"] == {"sent": 1}
        [line] = [line for line in logs if line["event"] == "report.recounted"]
        assert (line["outcome"], line["first_value"], line["value"]) == ("confirmed", 0, 0)
        facts = evidence(row)
        assert facts["recount"]["outcome"] == "confirmed"  # type: ignore[index]
        assert_billed_once(emulator, "org-7", HOUR, 0)

    def test_a_recount_back_to_normal_sends_the_normal_value_and_keeps_the_first_reading(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """A glitch: 0 held, 14 by the recount; 14 is billed, the 0 stays in the evidence."""
        with_history(runtime, "org-7", [15, 15, 14])
        set_active("org-7", 0)
        row = report_hour(runtime, "org-7", HOUR)
        set_active("org-7", 14)
        wait_out(row)
        recount_held_reports()
        facts = evidence(row)
        assert facts["reading"]["value"] == 0  # type: ignore[index]
        assert facts["recount"]["value"] == 14  # type: ignore[index]
        assert facts["recount"]["outcome"] == "back_to_normal"  # type: ignore[index]
        assert stripe_values(emulator, row.identifier) == [14]
        assert_billed_once(emulator, "org-7", HOUR, 14)

    def test_a_recount_after_the_hour_counts_as_of_its_last_second(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """The hour is over when the recount runs: stamped HH:59:59, with the count as of then."""
        past = hour_start(utcnow()) - timedelta(hours=1)
        with_history(runtime, "org-7", [15])
        # As of the hour's end the sensors were not there yet (a host bug, say): 0, held.
        Sensor.update(created_at=past + timedelta(hours=2)).execute()
        row = report_hour(runtime, "org-7", past)
        assert row.status == MeterReport.HELD
        Sensor.update(created_at=past - timedelta(days=1)).execute()  # the bug fixed
        wait_out(row)
        assert recount_held_reports()["outcomes"] == {"sent": 1}
        last_second = past + timedelta(hours=1) - timedelta(seconds=1)
        [event] = [e for e in emulator.events() if e.identifier == row.identifier]
        assert (event.value, event.timestamp) == (
            15,
            int(last_second.replace(tzinfo=UTC).timestamp()),
        )
        assert evidence(row)["recount"]["outcome"] == "back_to_normal"  # type: ignore[index]
        assert_billed_once(emulator, "org-7", format_hour(past), 15)

    def test_a_held_closing_report_is_recounted_as_of_the_period_end(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """The period ended: the recount counts as of its last second and bills that."""
        with_history(runtime, "org-7", [15])
        end = (utcnow() - timedelta(minutes=2)).replace(microsecond=0)
        Sensor.update(created_at=end + timedelta(hours=1)).execute()  # a glitch: 0 at the end
        runtime.reporter().run(runtime.database, ["org-7"], Report.period_close(end))
        identifier = ledger.on_demand_identifier("org-7", EVENT, close_request_id(end))
        row = MeterReport.get(MeterReport.identifier == identifier)
        assert (row.kind, row.status, row.value) == (MeterReport.PERIOD_CLOSE, "held", 0)
        Sensor.update(created_at=end - timedelta(days=1)).execute()
        wait_out(row)
        assert recount_held_reports()["outcomes"] == {"sent": 1}
        [event] = [e for e in emulator.events() if e.identifier == identifier]
        last_second = int((end - timedelta(seconds=1)).replace(tzinfo=UTC).timestamp())
        assert (event.value, event.timestamp) == (15, last_second)
        # The period's last event carries the count at its end.
        mine = [e for e in emulator.events() if e.customer == "cus_org-7"]
        assert max(mine, key=lambda e: e.timestamp) == event

    def test_a_recount_overtaken_by_a_newer_delivery_is_superseded(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """A held past hour, and a report delivered since: the recount sends nothing."""
        past = hour_start(utcnow()) - timedelta(hours=1)
        with_history(runtime, "org-7", [15])
        deliver(runtime, "org-7", 15)  # on demand, now: newer than the past hour
        Sensor.update(created_at=past + timedelta(hours=2)).execute()
        row = report_hour(runtime, "org-7", past)
        assert row.status == MeterReport.HELD
        wait_out(row)
        assert recount_held_reports()["outcomes"] == {"superseded": 1}
        assert MeterReport.get_by_id(row.id).status == MeterReport.SUPERSEDED
        assert stripe_values(emulator, row.identifier) == []

    def test_a_shared_customers_event_is_held_whole_and_recounted_as_a_sum(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """Two organizations on one customer: one part drops to 0, the event waits whole; the
        recount sends the customer's sum once."""
        for org in ("a", "b"):
            make_org(org, customer="cus_shared")
        set_active("a", 15)
        set_active("b", 5)
        [earlier] = history_hours(1)
        runtime.reporter().run(runtime.database, ["a", "b"], Report.hourly(earlier))
        set_active("a", 0)
        runtime.reporter().run(runtime.database, ["a", "b"], Report.hourly(HOUR))
        parts = list(MeterReport.select().where(MeterReport.period_hour == parse_hour(HOUR)))
        assert {(p.organization_id, p.status) for p in parts} == {("a", "held"), ("b", "held")}
        identifier = ledger.customer_hourly_identifier("cus_shared", EVENT, parse_hour(HOUR))
        assert stripe_values(emulator, identifier) == []
        set_active("a", 15)
        for part in parts:
            wait_out(part)
        recount_held_reports()
        assert stripe_values(emulator, identifier) == [20]
        rows = {
            r.organization_id: r
            for r in MeterReport.select().where(MeterReport.period_hour == parse_hour(HOUR))
        }
        assert {o: (r.status, r.value, r.event_value) for o, r in rows.items()} == {
            "a": ("sent", 15, 20),
            "b": ("sent", 5, 20),
        }

    def test_many_held_rows_are_recounted_a_chunk_at_a_time(
        self, runtime: Runtime, emulator: StripeEmulator
    ) -> None:
        """A fleet-wide glitch: with one organization a chunk, one run still sends them all."""
        orgs = ["a", "b", "c"]
        for org in orgs:
            with_history(runtime, org, [40])
            set_active(org, 0)
        runtime.reporter().run(runtime.database, orgs, Report.hourly(HOUR))
        held = list(MeterReport.select().where(MeterReport.status == MeterReport.HELD))
        assert len(held) == 3
        for row in held:
            set_active(row.organization_id, 38)
            wait_out(row)
        set_runtime(None)
        small = Runtime.build(runtime.settings.with_overrides(chunk_size=1))
        set_runtime(small)
        try:
            summary = recount_held_reports()
        finally:
            set_runtime(runtime)
            small.close()
        assert summary["outcomes"] == {"sent": 3}
        for org in orgs:
            assert_billed_once(emulator, org, HOUR, 38)

    def test_recount_off_leaves_held_rows_for_a_person(self, runtime: Runtime) -> None:
        """SENSORMETER_GUARD_RECOUNT_MINUTES=0: the job sends nothing."""
        with_history(runtime, "org-7", [15])
        set_active("org-7", 0)
        row = report_hour(runtime, "org-7", HOUR)
        wait_out(row, minutes=600)
        set_runtime(None)
        off = Runtime.build(runtime.settings.with_overrides(guard_recount_minutes=0))
        set_runtime(off)
        try:
            assert recount_held_reports() == {"held": 0}
        finally:
            set_runtime(runtime)
            off.close()
        assert MeterReport.get_by_id(row.id).status == MeterReport.HELD

    def test_catch_up_leaves_a_held_hour_to_the_recount(self, runtime: Runtime) -> None:
        """A held (or superseded) hour is no gap: catch-up could not send it anyway."""
        past = hour_start(utcnow()) - timedelta(hours=2)
        with_history(runtime, "org-7", [15])
        report_hour(runtime, "org-7", past)  # 15 sensors: sent
        Sensor.update(created_at=past + timedelta(hours=3)).execute()
        held = report_hour(runtime, "org-7", past + timedelta(hours=1))
        assert held.status == MeterReport.HELD
        hours = [past, past + timedelta(hours=1)]
        assert find_gaps(EVENT, ["org-7"], hours) == {}
        MeterReport.update(status=MeterReport.SUPERSEDED).where(MeterReport.id == held.id).execute()
        assert find_gaps(EVENT, ["org-7"], hours) == {}
