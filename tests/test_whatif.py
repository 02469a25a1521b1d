"""``sensormeter whatif``: the figures equal those worked out by hand from the ledger."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import peewee
import pytest

from sensormeter import ledger
from sensormeter.models import MeterReport
from sensormeter.settings import Settings

from .conftest import cli_env
from .test_cli import one_error_line, sensormeter

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
EVENT = "active_sensors"
SINCE, UNTIL = datetime(2026, 11, 10), datetime(2026, 11, 12)  # --until's whole day counts
END = UNTIL + timedelta(days=1)
HOURLY, CLOSE, ON_DEMAND = MeterReport.HOURLY, MeterReport.PERIOD_CLOSE, MeterReport.ON_DEMAND
SENT = MeterReport.SENT
KEPT_BACK = [s for s in MeterReport.STATUSES if s != SENT]


@dataclass(frozen=True)
class Row:
    """One ledger row of the test: who, when it was stamped, what, and how it ended."""

    org: str
    stamp: datetime
    value: int
    kind: str = HOURLY
    status: str = SENT
    event: str = EVENT


def ledger_rows() -> list[Row]:
    """Several organizations, with rows that must be ignored beside the ones that count."""
    rows = []
    # a: an hourly count every hour of the three days, and the period's close at the very
    # end of --until's day, which is its latest report.
    for n in range(72):
        rows.append(Row("a", SINCE + timedelta(hours=n, minutes=1), 10 + n % 7))
    rows.append(Row("a", END - timedelta(seconds=1), 13, CLOSE))
    rows.append(Row("a", SINCE + timedelta(hours=5, minutes=30), 99, ON_DEMAND))
    # Outside the range by a second on each side, and rows never delivered: all ignored.
    rows.append(Row("a", SINCE - timedelta(seconds=1), 500, CLOSE))
    rows.append(Row("a", END, 500))
    for i, status in enumerate(KEPT_BACK):
        rows.append(Row("a", END - timedelta(minutes=30 - i), 700 + i, ON_DEMAND, status))
    # b: a few hours only, the latest an hourly report; a failed hour in between.
    for hour, value in ((0, 4), (1, 6), (30, 9), (71, 5)):
        rows.append(Row("b", SINCE + timedelta(hours=hour, minutes=2), value))
    rows.append(Row("b", SINCE + timedelta(hours=2, minutes=2), 1000, status=MeterReport.FAILED))
    rows.append(Row("b", SINCE + timedelta(hours=3, minutes=2), 0, status=MeterReport.HELD))
    # c: only an on-demand report: a last, no hourly figures.
    rows.append(Row("c", SINCE + timedelta(days=1, hours=3), 7, ON_DEMAND))
    # d: nothing delivered; e: only another meter's events.
    rows.append(Row("d", SINCE + timedelta(hours=4), 8, status=MeterReport.REJECTED))
    rows.append(Row("e", SINCE + timedelta(hours=4), 8, event="api_calls"))
    return rows


def write(rows: list[Row]) -> None:
    """The rows into the ledger, as report jobs leave them."""
    for n, row in enumerate(rows):
        hour = row.stamp.replace(minute=0, second=0, microsecond=0)
        MeterReport.create(
            organization_id=row.org,
            event_name=row.event,
            value=row.value,
            identifier=ledger.hourly_identifier(row.org, row.event, hour)
            if row.kind == HOURLY
            else f"{row.event}-{row.org}-r{n}",
            kind=row.kind,
            period_hour=hour if row.kind == HOURLY else None,
            stripe_customer_id=f"cus_{row.org}",
            measured_at=row.stamp,
            status=row.status,
            sent_at=row.stamp if row.status == SENT else None,
        )


def by_hand(rows: list[Row], org: str | None = None) -> list[dict[str, str]]:
    """The expected CSV rows, worked out from the list in plain Python."""
    counted = [
        r
        for r in rows
        if r.status == SENT and r.event == EVENT and SINCE <= r.stamp < END and org in (None, r.org)
    ]
    expected = []
    totals = {"last": 0, "max": 0, "device_hours": 0}
    for name in sorted({r.org for r in counted}):
        mine = [r for r in counted if r.org == name]
        hourly = [r.value for r in mine if r.kind == HOURLY]
        last = max(mine, key=lambda r: r.stamp).value
        figures = {
            "organization_id": name,
            "last": str(last),
            "max": str(max(hourly)) if hourly else "",
            "mean": str(round(sum(hourly) / len(hourly), 2)) if hourly else "",
            "device_hours": str(sum(hourly)),
        }
        expected.append(figures)
        totals["last"] += last
        totals["max"] += max(hourly) if hourly else 0
        totals["device_hours"] += sum(hourly)
    expected.append(
        {"organization_id": "TOTAL", "mean": "", **{k: str(v) for k, v in totals.items()}}
    )
    return expected


def whatif(settings: Settings, *args: str, **env: str) -> str:
    """Run ``sensormeter whatif --since SINCE --until UNTIL ARGS``; its stdout."""
    done = sensormeter(
        cli_env(settings, **env),
        "whatif",
        "--since",
        f"{SINCE:%Y-%m-%d}",
        "--until",
        f"{UNTIL:%Y-%m-%d}",
        *args,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class TestFigures:
    def test_csv_equals_the_figures_worked_out_by_hand(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """last, max, mean, device_hours per organization and the TOTAL row; header exact."""
        rows = ledger_rows()
        write(rows)
        out = whatif(settings, "--format", "csv")
        assert out.splitlines()[0] == "organization_id,last,max,mean,device_hours"
        got = list(csv.DictReader(io.StringIO(out)))
        assert got == by_hand(rows)
        assert [r["organization_id"] for r in got] == ["a", "b", "c", "TOTAL"]
        # a's last is the period close stamped in the last second of --until's day.
        assert got[0]["last"] == "13"

    def test_json_and_table_give_the_same_figures(
        self, settings: Settings, database: peewee.Database
    ) -> None:
        """The JSON rows are the CSV's, numbers as numbers; the table ends on TOTAL."""
        rows = ledger_rows()
        write(rows)
        facts = json.loads(whatif(settings, "--format", "json"))
        assert (facts["since"], facts["until"]) == ("2026-11-10T00", "2026-11-12T23")
        as_text = [
            {k: "" if v is None else str(v) for k, v in row.items()} for row in facts["rows"]
        ]
        assert as_text == by_hand(rows)
        table = whatif(settings).splitlines()
        assert table[1].split() == ["organization_id", "last", "max", "mean", "device_hours"]
        total = by_hand(rows)[-1]
        assert table[-1].split() == [
            "TOTAL",
            total["last"],
            total["max"],
            "-",
            total["device_hours"],
        ]

    def test_one_organization(self, settings: Settings, database: peewee.Database) -> None:
        """--org: that organization's figures, and a TOTAL of it alone."""
        rows = ledger_rows()
        write(rows)
        got = list(csv.DictReader(io.StringIO(whatif(settings, "--org", "b", "--format", "csv"))))
        assert got == by_hand(rows, "b")
        assert got[0]["mean"] == str(round((4 + 6 + 9 + 5) / 4, 2))


@sqlite_only
class TestPlot:
    def test_plot_writes_a_png(
        self, settings: Settings, database: peewee.Database, tmp_path: Path
    ) -> None:
        """--plot FILE.png --org a: a PNG file, and the figures still printed."""
        write(ledger_rows())
        picture = tmp_path / "a.png"
        out = whatif(settings, "--org", "a", "--plot", str(picture), "--format", "csv")
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert picture.stat().st_size > 5000
        assert out.splitlines()[1].startswith("a,13,")

    def test_plot_needs_one_organization(
        self, settings: Settings, database: peewee.Database, tmp_path: Path
    ) -> None:
        """--plot without --org: one error line, exit 2, no file."""
        picture = tmp_path / "all.png"
        done = sensormeter(
            cli_env(settings),
            "whatif",
            "--since",
            "2026-11-10",
            "--until",
            "2026-11-12",
            "--plot",
            str(picture),
        )
        assert "give --org too" in one_error_line(done)
        assert done.returncode == 2 and not picture.exists()

    def test_without_matplotlib_the_error_says_how_to_get_it(
        self, settings: Settings, database: peewee.Database, tmp_path: Path
    ) -> None:
        """matplotlib missing: one line naming the extra to install, exit 1."""
        write(ledger_rows())
        blocker = tmp_path / "blocked" / "matplotlib"
        blocker.mkdir(parents=True)
        (blocker / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
        done = sensormeter(
            cli_env(settings, PYTHONPATH=str(blocker.parent)),
            "whatif",
            "--since",
            "2026-11-10",
            "--until",
            "2026-11-12",
            "--org",
            "a",
            "--plot",
            str(tmp_path / "a.png"),
        )
        line = one_error_line(done)
        assert "pip install 'sensormeter[plot]'" in line and done.returncode == 1
        assert not (tmp_path / "a.png").exists() and done.stdout == ""

    @pytest.mark.parametrize(
        "args",
        [
            ["--since", "2026-11-31", "--until", "2026-12-01"],
            ["--since", "2026-11-12", "--until", "2026-11-10"],
        ],
    )
    def test_bad_days_are_one_error_line(
        self, settings: Settings, database: peewee.Database, args: list[str]
    ) -> None:
        """No such day, or --since after --until: one line naming --since, exit 2."""
        done = sensormeter(cli_env(settings), "whatif", *args)
        assert "--since" in one_error_line(done) and done.returncode == 2
