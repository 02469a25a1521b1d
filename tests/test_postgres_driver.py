"""PostgreSQL through psycopg 3 or psycopg2, whichever is installed (psycopg 3 first)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import datetime

import peewee
import pytest

from sensormeter import ledger
from sensormeter.db import make_database, postgres_driver
from sensormeter.errors import ConfigurationError
from sensormeter.migrations import plan_migrations
from sensormeter.models import MODELS, MeterReport, create_tables, open_database

from .conftest import POSTGRES_URL, unavailable

URL = "postgresql://user@db.example:5432/app"


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import MODULE`` fail, as when the package is not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


class TestDriverChoice:
    def test_psycopg_3_is_preferred_when_both_are_installed(self) -> None:
        """With both importable, psycopg 3 is chosen (the maintained driver)."""
        pytest.importorskip("psycopg")
        pytest.importorskip("psycopg2")
        assert postgres_driver() == "psycopg"

    def test_psycopg2_alone_is_used(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A deployment with only psycopg2 keeps working."""
        pytest.importorskip("psycopg2")
        hide(monkeypatch, "psycopg")
        assert postgres_driver() == "psycopg2"

    def test_psycopg_3_alone_is_used(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A Django project with only psycopg 3 is no longer refused."""
        pytest.importorskip("psycopg")
        hide(monkeypatch, "psycopg2")
        assert postgres_driver() == "psycopg"
        assert isinstance(make_database(URL), peewee.PostgresqlDatabase)

    def test_neither_installed_is_one_line_saying_what_to_install(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The error names both drivers and the extra that installs one."""
        hide(monkeypatch, "psycopg", "psycopg2")
        with pytest.raises(ConfigurationError) as caught:
            make_database(URL)
        assert str(caught.value) == (
            "DATABASE_URL: PostgreSQL needs a driver, and neither psycopg (3) nor psycopg2 is "
            "installed: pip install 'sensormeter[postgres]' (or psycopg2-binary)"
        )

    def test_sqlite_needs_no_driver(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Hiding both PostgreSQL drivers changes nothing for SQLite."""
        hide(monkeypatch, "psycopg", "psycopg2")
        assert isinstance(make_database("sqlite:///x.db"), peewee.SqliteDatabase)


@pytest.fixture(params=["psycopg", "psycopg2"])
def postgres_with(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[peewee.Database]:
    """The test PostgreSQL database opened through one driver, the other one hidden."""
    driver = request.param
    pytest.importorskip(driver)
    hide(monkeypatch, "psycopg2" if driver == "psycopg" else "psycopg")
    try:
        db = open_database(POSTGRES_URL)
    except Exception as exc:  # noqa: BLE001 (any failure means the server is not usable here)
        unavailable("PostgreSQL", exc)
    db.drop_tables(list(reversed(MODELS)), safe=True, cascade=True)
    yield db
    db.drop_tables(list(reversed(MODELS)), safe=True, cascade=True)
    db.close()


def test_each_driver_creates_writes_and_reads_the_ledger(postgres_with: peewee.Database) -> None:
    """Through either driver: tables created, ledger rows round-trip (one by one and in bulk,
    a repeated identifier skipped), nothing left to migrate."""
    driver = postgres_driver()
    assert type(postgres_with.connection()).__module__.split(".")[0] == driver
    create_tables(postgres_with)
    moment = datetime(2026, 11, 30, 4, 59, 59)
    MeterReport.create(
        organization_id="o1",
        event_name="active_sensors",
        value=7,
        identifier="active_sensors-o1-2026-11-30T04",
        stripe_customer_id="cus_o1",
        measured_at=moment,
    )
    row = MeterReport.get(MeterReport.organization_id == "o1")
    assert (row.value, row.measured_at, row.status) == (7, moment, "pending")
    bulk = [
        ledger.NewReport(
            f"o{n}",
            f"active_sensors-o{n}-2026-11-30T04",
            "cus_shared",
            n,
            moment,
            "hourly",
            datetime(2026, 11, 30, 4),
            "event-cus_shared",
            6,
        )
        for n in (1, 2, 3)
    ]
    ledger.create_pending(postgres_with, bulk, "active_sensors", "job-1")
    rows = MeterReport.select().order_by(MeterReport.organization_id)
    assert [(r.organization_id, r.value, r.event_value, r.job_id) for r in rows] == [
        ("o1", 7, None, None),  # already there: left as it was
        ("o2", 2, 6, "job-1"),
        ("o3", 3, 6, "job-1"),
    ]
    assert plan_migrations(postgres_with).statements == []
