"""What ``status`` and ``failed`` show that nothing else would: abandoned rows, shared customers."""

from __future__ import annotations

from datetime import timedelta

import peewee
import redis

from sensormeter.models import MeterReport, Subscription, utcnow
from sensormeter.settings import Settings

from .conftest import cli_env
from .factories import make_org
from .test_cli import add_ledger_row, sensormeter


class TestStalePending:
    def test_status_and_failed_list_pending_rows_no_job_will_finish(
        self, settings: Settings, database: peewee.Database, redis_conn: redis.Redis
    ) -> None:
        """A pending row untouched for longer than a job can keep it is listed, a fresh one not."""
        add_ledger_row("lost", MeterReport.PENDING)
        add_ledger_row("live", MeterReport.PENDING)
        MeterReport.update(updated_at=utcnow() - timedelta(hours=2), attempts=1).where(
            MeterReport.organization_id == "lost"
        ).execute()
        status = sensormeter(cli_env(settings), "status")
        assert status.returncode == 1, status.stderr  # abandoned pending rows are a problem
        assert "1 pending report(s) untouched since before" in status.stdout
        assert "  pending: lost active_sensors-lost-2026-11-29T04 attempts 1" in status.stdout
        assert "live" not in status.stdout
        failed = sensormeter(cli_env(settings), "failed")
        assert failed.returncode == 0, failed.stderr
        assert "1 pending report(s) untouched" in failed.stdout


class TestSharedCustomers:
    def test_status_warns_of_a_customer_with_several_billable_subscriptions(
        self, settings: Settings, database: peewee.Database, redis_conn: redis.Redis
    ) -> None:
        """Stripe's docs do not say how such a customer's meter is billed: a person should look."""
        make_org("a", customer="cus_x")
        make_org("b", customer="cus_x")
        make_org("c", customer="cus_y")
        Subscription.create(organization="c", status="canceled", stripe_customer_id="cus_y")
        done = sensormeter(cli_env(settings), "status")
        assert done.returncode == 1, done.stderr  # nothing scheduled: a problem
        [warning] = [line for line in done.stdout.splitlines() if line.startswith("warning:")]
        assert warning.endswith("splits it): cus_x (2)")
