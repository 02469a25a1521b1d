"""Report: the kind of a report fixes its identifiers, its deadline and where it is stamped."""

from __future__ import annotations

from datetime import datetime

import pytest

from sensormeter.report import Report

EVENT = "active_sensors"
HOUR = datetime(2026, 11, 29, 4)
END = datetime(2026, 12, 1)


class TestIdentifiers:
    def test_each_kind_keeps_todays_identifiers_byte_for_byte(self) -> None:
        """The forms already in ledgers and at Stripe, for an organization and a customer."""
        cases = [
            (
                Report.hourly(HOUR),
                "active_sensors-acme-2026-11-29T04",
                "active_sensors+cus_1-2026-11-29T04",
            ),
            (
                Report.hourly("2026-11-29T04"),
                "active_sensors-acme-2026-11-29T04",
                "active_sensors+cus_1-2026-11-29T04",
            ),
            (Report.on_demand("abc"), "active_sensors-acme-rabc", "active_sensors+cus_1-rabc"),
            (
                Report.period_close(END),
                "active_sensors-acme-rclose-20261201T000000",
                "active_sensors+cus_1-rclose-20261201T000000",
            ),
        ]
        for report, own, shared in cases:
            assert report.identifier("acme", EVENT) == own
            assert report.customer_identifier("cus_1", EVENT) == shared


class TestDeadline:
    def test_hourly_reports_stand_for_their_hours_last_second(self) -> None:
        """A late hourly job is stamped at HH:59:59 of its hour."""
        assert Report.hourly(HOUR).deadline == datetime(2026, 11, 29, 4, 59, 59)

    def test_a_period_close_stands_for_the_second_before_the_end(self) -> None:
        """A close report sent after the end is stamped inside the period."""
        assert Report.period_close(END).deadline == datetime(2026, 11, 30, 23, 59, 59)

    def test_an_on_demand_report_has_no_deadline(self) -> None:
        """It is stamped when it runs."""
        assert Report.on_demand("abc").deadline is None


class TestFromJob:
    def test_job_arguments_name_the_report(self) -> None:
        """An hour label means hourly, a request id on demand; neither is refused."""
        assert Report.from_job("2026-11-29T04", None) == Report.hourly(HOUR)
        assert Report.from_job(None, "abc") == Report.on_demand("abc")
        with pytest.raises(ValueError):
            Report.from_job(None, None)
        with pytest.raises(ValueError, match="YYYY-MM-DDTHH"):
            Report.from_job("2026-11-29", None)
