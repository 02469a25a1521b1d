"""Health: the problems ``sensormeter check`` (and ``status``) report, one line each.

Each problem has a stable code and a line that starts with :data:`CHECK_FAILED`, so a log
drain or a cron mail filter can alert on it whatever the wording of the detail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import peewee
import redis

from ..errors import ServiceUnavailable
from ..guard import held_rows
from ..models import MeterReport, open_database, utcnow
from ..quarantine import CUSTOMER, METER, open_quarantines
from ..quarantine.store import explain
from ..runtime import check_redis, make_redis
from ..settings import Settings
from ..tasks.held import period_end
from ..tasks.recovery import stale_after
from ..usage import UsageSource, load_usage_source
from ..usage.unbilled import last_totals
from .readings import (
    SCHEDULED_JOBS,
    count_abandoned_pending,
    count_status,
    newest_hourly_delivery,
    registrations,
)

CHECK_OK = "sensormeter.check.ok"
CHECK_FAILED = "sensormeter.check.failed"
# Worth knowing, not failing for: quarantined customers (each was one warning when it began).
CHECK_NOTICE = "sensormeter.check.notice"
# The hourly fan-out runs at minute 0; 5 minutes of slack for it to send its first reports.
HOURLY_LIMIT = timedelta(minutes=65)

# At most this many held_period_close lines (one per held closing report, oldest first).
HELD_CLOSE_LINES = 20
OK, PROBLEMS, UNREACHABLE = 0, 1, 2  # the exit statuses of check (and of status)


@dataclass(frozen=True)
class Problem:
    """One thing that needs a person: a stable ``code`` and a one-line ``detail``."""

    code: str  # not_registered, failed_reports, meter_paused, abandoned_pending,
    # no_recent_hourly_report, held_period_close, redis_unreachable, database_unreachable;
    # as a notice: quarantined_customers
    detail: str
    notice: bool = False  # shown, but check still passes

    def line(self) -> str:
        """``sensormeter.check.failed CODE: DETAIL`` (the line to alert on), or ``...notice``."""
        return f"{CHECK_NOTICE if self.notice else CHECK_FAILED} {self.code}: {self.detail}"

    def as_dict(self) -> dict[str, str]:
        """The problem for ``status --json``."""
        return {"code": self.code, "detail": self.detail}


def find_problems(
    settings: Settings,
    database: peewee.Database,
    connection: redis.Redis,
    source: UsageSource,
    now: datetime,
) -> list[Problem]:
    """Everything wrong right now, in a fixed order (empty when all is well).

    Args:
        now: naive UTC, as the ledger stores it.
    """
    problems = []
    for name, next_run in registrations(connection, settings.queue_name).items():
        if next_run is None:
            job_id = SCHEDULED_JOBS[name](settings.queue_name)
            problems.append(
                Problem(
                    "not_registered",
                    f"the {name} job ({job_id}) is not registered: is the scheduler running?",
                )
            )
    failed = count_status(database, MeterReport.FAILED)
    if failed:
        problems.append(
            Problem(
                "failed_reports",
                f"{failed} failed report(s): see 'sensormeter failed', then "
                "'sensormeter retry-failed'",
            )
        )
    for paused in open_quarantines(database):
        if paused.scope == METER:
            problems.append(
                Problem(
                    "meter_paused",
                    f"sending to the meter {paused.subject} is paused since "
                    f"{paused.since:%Y-%m-%d %H:%M} UTC: {explain(paused.code)} "
                    f"({paused.code}); reactivate it in Stripe, then "
                    "'sensormeter quarantine release --meter'",
                )
            )
    limit = stale_after(settings)
    abandoned = count_abandoned_pending(database, now - limit)
    if abandoned:
        problems.append(
            Problem(
                "abandoned_pending",
                f"{abandoned} pending report(s) untouched for over {limit.total_seconds() / 60:.0f}"
                " min: no job will finish them (the sweep resends them; or 'sensormeter "
                "retry-failed --include-stale-pending')",
            )
        )
    problems.extend(held_closes(settings, database))
    newest = newest_hourly_delivery(database, settings.meter_event_name, now - HOURLY_LIMIT)
    # Only asked when nothing was delivered: one indexed row from the usage source.
    if newest is None and source.billable_organization_ids(None, 1):
        problems.append(
            Problem(
                "no_recent_hourly_report",
                f"no hourly report delivered in the last {HOURLY_LIMIT.total_seconds() / 60:.0f}"
                " minutes while billable organizations exist: are the worker and scheduler "
                "running?",
            )
        )
    return problems


def find_notices(database: peewee.Database) -> list[Problem]:
    """What check shows without failing: the customers under quarantine (one small query)."""
    customers = [q.subject for q in open_quarantines(database) if q.scope == CUSTOMER]
    if not customers:
        return []
    shown = ", ".join(customers[:10]) + (
        f" and {len(customers) - 10} more" if len(customers) > 10 else ""
    )
    return [
        Problem(
            "quarantined_customers",
            f"{len(customers)} customer(s) refused by Stripe, their reports kept back: {shown} "
            "(see 'sensormeter quarantine')",
            notice=True,
        )
    ]


def held_closes(settings: Settings, database: peewee.Database) -> list[Problem]:
    """One problem per closing report the anomaly guard holds: the invoice waits for a decision.

    Stripe finalizes the invoice ``SENSORMETER_INVOICE_GRACE_HOURS`` after the period's end
    with the last value it has; until someone (or the recount) sends the held one, that is
    the previous report's value.
    """
    if count_status(database, MeterReport.HELD) == 0:
        return []  # the usual answer, from the status index alone
    problems = []
    for row in held_rows(kind=MeterReport.PERIOD_CLOSE, limit=HELD_CLOSE_LINES):
        end = period_end(row)
        if end is None:
            continue
        final = end + timedelta(hours=settings.invoice_grace_hours)
        problems.append(
            Problem(
                "held_period_close",
                f"{row.organization_id}'s closing report of the period ending "
                f"{end:%Y-%m-%d %H:%M} UTC is held by the anomaly guard: {row.value} sensors, "
                f"{row.explanation}; Stripe finalizes the invoice at {final:%Y-%m-%d %H:%M} UTC "
                f"with the previous value: see 'sensormeter held', then 'sensormeter held "
                f"release {row.id}' or let the recount send it",
            )
        )
    return problems


def unbilled_notices(connection: redis.Redis, queue_name: str) -> list[Problem]:
    """Active sensors nobody is billed for, as the last hourly survey found them (one GET)."""
    found = last_totals(connection, queue_name)
    if found is None or not sum(found.sensors.values()):
        return []
    reasons = ", ".join(
        f"{reason} {n}" for reason, n in sorted(found.sensors.items(), key=lambda r: -r[1])
    )
    return [
        Problem(
            "unbilled_usage",
            f"{sum(found.sensors.values())} active sensor(s) of "
            f"{sum(found.organizations.values())} organization(s) are not billed ({reasons}; "
            "see 'sensormeter unbilled')",
            notice=True,
        )
    ]


@dataclass(frozen=True)
class CheckResult:
    """What ``sensormeter check`` found: its exit status, the problems and the notices."""

    status: int  # OK, PROBLEMS or UNREACHABLE
    problems: list[Problem] = field(default_factory=list)
    notices: list[Problem] = field(default_factory=list)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_check(settings: Settings) -> CheckResult:
    """Open the database and Redis, find the problems, close them again.

    A service that cannot be reached (or read: a missing table) is a problem of its own,
    ``database_unreachable`` or ``redis_unreachable``, and the status is UNREACHABLE.

    Raises:
        ConfigurationError: a setting is malformed (the usage source cannot be loaded).
    """
    unreachable = []
    database = None
    try:
        database = open_database(settings.database_url, create=False)
    except (ServiceUnavailable, peewee.DatabaseError) as exc:
        unreachable.append(Problem("database_unreachable", _first_line(exc)))
    connection = make_redis(settings.redis_url)
    try:
        check_redis(connection, settings.redis_url)
    except ServiceUnavailable as exc:
        unreachable.append(Problem("redis_unreachable", _first_line(exc)))
    try:
        if database is None or unreachable:
            return CheckResult(UNREACHABLE, unreachable)
        source = load_usage_source(settings, database)
        problems = find_problems(settings, database, connection, source, utcnow())
        notices = find_notices(database) + unbilled_notices(connection, settings.queue_name)
    except peewee.DatabaseError as exc:
        detail = f"cannot read it: {_first_line(exc)} (did you run 'sensormeter init-db'?)"
        return CheckResult(UNREACHABLE, [Problem("database_unreachable", detail)])
    except redis.RedisError as exc:
        return CheckResult(UNREACHABLE, [Problem("redis_unreachable", _first_line(exc))])
    finally:
        if database is not None:
            database.close()
        connection.close()
    return CheckResult(PROBLEMS if problems else OK, problems, notices)
