"""Bad settings and arguments: one line naming the problem, never a traceback or a password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peewee
import pytest
import redis
from click.testing import CliRunner

from sensormeter import ledger
from sensormeter.cli import main
from sensormeter.errors import ConfigurationError, InvalidOrganizationId, ServiceUnavailable
from sensormeter.hours import format_hour, parse_hour, parse_hour_option
from sensormeter.models import make_database, open_database, utcnow
from sensormeter.runtime import Runtime, make_redis
from sensormeter.settings import Settings, redact_url
from sensormeter.tasks.queue import make_queue
from sensormeter.usage import load_usage_source

from .conftest import REDIS_URL, cli_env
from .test_cli import one_error_line, sensormeter

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

URL_VARIABLES = ["REDIS_URL", "DATABASE_URL", "STRIPE_API_BASE", "HTTPS_PROXY"]
SCHEMES = {
    "REDIS_URL": "redis",
    "DATABASE_URL": "postgresql",
    "STRIPE_API_BASE": "http",
    "HTTPS_PROXY": "http",
}
INTEGER_VARIABLES = [
    "SENSORMETER_CHUNK_SIZE",
    "SENSORMETER_MAX_RETRIES",
    "SENSORMETER_JOB_TIMEOUT_SECONDS",
    "SENSORMETER_MAX_IN_FLIGHT",
    "SENSORMETER_CATCHUP_HOURS",
    "SENSORMETER_PERIOD_CLOSE_MINUTES",
]
NUMBER_VARIABLES = [
    "SENSORMETER_RETRY_BACKOFF_SECONDS",
    "SENSORMETER_STRIPE_TIMEOUT_SECONDS",
    "SENSORMETER_RATE_LIMIT",
]
# Each would be 10 (or 1,000) to int()/float(): underscores, Arabic-Indic, full-width digits.
NOT_ASCII_DIGITS = ["1_0", "\u0661\u0660", "\uff11\uff10", "\u0967\u0966"]




class TestMalformedUrls:
    @pytest.mark.parametrize("variable", URL_VARIABLES)
    @pytest.mark.parametrize("netloc", ["u:hunter2@[::1", "u:hunter2@[::1]:port", "h:99999"])
    def test_each_url_setting_names_itself(self, variable: str, netloc: str) -> None:
        """A malformed IPv6 host or port is a ConfigurationError naming the variable."""
        with pytest.raises(ConfigurationError) as info:
            Settings.from_env({variable: f"{SCHEMES[variable]}://{netloc}/0"})
        assert info.value.variable == variable
        assert "not a valid URL" in str(info.value) and "hunter2" not in str(info.value)

    def test_direct_settings_name_the_field(self) -> None:
        """Settings built in code name the field of the malformed URL."""
        with pytest.raises(ConfigurationError, match="^redis_url: is not a valid URL"):
            Settings(redis_url="redis://[::1/0")

    def test_url_parsers_after_settings_name_the_variable(self) -> None:
        """make_database and make_redis, given a malformed URL directly, name the variable."""
        with pytest.raises(ConfigurationError, match="^DATABASE_URL: .*Invalid IPv6"):
            make_database("postgresql://u:pw@[::1/db")
        with pytest.raises(ConfigurationError, match="^DATABASE_URL: .*Port"):
            make_database("postgresql://u:pw@host:5x/db")
        with pytest.raises(ConfigurationError, match="^REDIS_URL: .*Invalid IPv6"):
            make_redis("redis://:pw@[::1/0")
        with pytest.raises(ConfigurationError, match="^REDIS_URL: .*socket_timeout") as info:
            make_redis("redis://:pw@h:6379/0?socket_timeout=soon")
        assert "pw" not in str(info.value)
        assert redact_url("redis://:pw@[::1/0") == "<unparseable url>"

    def test_redis_database_must_be_a_number(self) -> None:
        """redis-py would quietly use database 0 for /abc or a full-width /\uff10."""
        for path in ("/abc", "/\uff10", "/1_0"):
            with pytest.raises(ConfigurationError, match="^REDIS_URL: .*database number"):
                Settings.from_env({"REDIS_URL": f"redis://h:6379{path}"})
        assert Settings.from_env({"REDIS_URL": "redis://h:6379/3"}).redis_url.endswith("/3")

    def test_proxy_is_checked_and_its_password_hidden(self) -> None:
        """HTTPS_PROXY must be a proxy address; its password never shows in the settings."""
        s = Settings.from_env({"HTTPS_PROXY": "http://u:hunter2@proxy:3128"})
        assert "hunter2" not in repr(s)
        assert Settings.from_env({"HTTPS_PROXY": "proxy:3128"}).https_proxy == "proxy:3128"
        with pytest.raises(ConfigurationError, match="^HTTPS_PROXY: must be a proxy address"):
            Settings.from_env({"HTTPS_PROXY": "http://:3128"})

    @sqlite_only
    @pytest.mark.parametrize("variable", ["REDIS_URL", "DATABASE_URL", "STRIPE_API_BASE"])
    def test_cli_says_one_line(self, settings: Settings, variable: str) -> None:
        """``sensormeter status`` with a malformed URL prints one line, without the password."""
        url = f"{SCHEMES[variable]}://u:hunter2@[::1/0"
        line = one_error_line(sensormeter(cli_env(settings, **{variable: url}), "status"))
        assert line.startswith(f"error: {variable}: is not a valid URL (Invalid IPv6 URL)")
        assert "hunter2" not in line


class TestNumbers:
    @pytest.mark.parametrize("variable", INTEGER_VARIABLES + NUMBER_VARIABLES)
    @pytest.mark.parametrize("value", NOT_ASCII_DIGITS)
    def test_only_ascii_digits(self, variable: str, value: str) -> None:
        """Every numeric setting refuses digits other than 0-9, and underscores."""
        with pytest.raises(ConfigurationError) as info:
            Settings.from_env({variable: value})
        assert info.value.variable == variable
        assert "digits 0-9" in info.value.problem

    @pytest.mark.parametrize("variable", NUMBER_VARIABLES)
    @pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e999"])
    def test_no_nan_or_infinity(self, variable: str, value: str) -> None:
        """nan and infinities are not numbers a setting can take."""
        with pytest.raises(ConfigurationError, match=f"^{variable}: .* is not a number"):
            Settings.from_env({variable: value})

    def test_plain_numbers_still_read(self) -> None:
        """Signs, decimals and exponents written with 0-9 are accepted."""
        s = Settings.from_env(
            {
                "SENSORMETER_CHUNK_SIZE": "+250",
                "SENSORMETER_RETRY_BACKOFF_SECONDS": ".5",
                "SENSORMETER_RATE_LIMIT": "1e3",
            }
        )
        assert (s.chunk_size, s.retry_backoff_seconds, s.rate_limit) == (250, 0.5, 1000.0)


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands that would run a long-lived process fail the test instead of starting it."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the command started although its argument is malformed")

    monkeypatch.setattr("sensormeter.tasks.worker.run_workers", refuse)
    monkeypatch.setattr("sensormeter.tasks.schedule.ReportingScheduler", refuse)
    monkeypatch.setattr("sensormeter.emulator.serve", refuse)
    monkeypatch.setattr("sensormeter.cli.demo.run_demo", refuse)
    monkeypatch.setattr("sensormeter.runtime.Runtime.build", refuse)


@pytest.mark.usefixtures("nothing_starts")
class TestNumericOptions:
    @pytest.mark.parametrize(
        "args",
        [
            ["worker", "--burst", "-n"],
            ["failed", "--limit"],
            ["scheduler", "--burst", "--interval"],
            ["stripe-emulator", "--port"],
            ["stripe-emulator", "--rate-limit"],
            ["stripe-emulator", "--latency"],
            ["demo", "-n"],
        ],
    )
    @pytest.mark.parametrize("value", ["\uff12", "\u0662", "1_0"])
    def test_only_ascii_digits(self, tmp_path: Path, args: list[str], value: str) -> None:
        """A numeric option written with other digits is one usage error line, exit 2."""
        env = {"REDIS_URL": REDIS_URL, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
        result = CliRunner().invoke(main, [*args, value], env=env)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert lines[0].startswith("error: Invalid value for ")
        assert "digits 0-9" in lines[0] and args[-1] in lines[0]

    @pytest.mark.parametrize("value", ["nan", "inf", "1e999"])
    def test_emulator_numbers_are_finite(self, value: str) -> None:
        """--latency and --rate-limit refuse nan and infinities (click's ranges let nan in)."""
        for option in ("--latency", "--rate-limit"):
            result = CliRunner().invoke(main, ["stripe-emulator", option, value])
            assert result.exit_code == 2, result.output
            assert result.output.startswith(f"error: Invalid value for '{option}'")

    def test_range_errors_are_one_line_too(self) -> None:
        """An out-of-range value keeps click's wording, on one line."""
        result = CliRunner().invoke(main, ["demo", "-n", "99"])
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == [
            "error: Invalid value for '-n' / '--workers': 99 is not in the range 1<=x<=16."
        ]


class TestHours:
    FULL_WIDTH = "\uff12\uff10\uff12\uff16-01-05T04"

    def test_parsers_take_ascii_digits_only(self) -> None:
        """Hours and days written with other digits, or not zero-padded, are refused."""
        for label in (self.FULL_WIDTH, "2026-01-05T4", "\u0662026-01-05T04"):
            with pytest.raises(ValueError, match="digits 0-9"):
                parse_hour(label)
            with pytest.raises(ValueError, match="digits 0-9"):
                parse_hour_option(label)
        with pytest.raises(ValueError, match="digits 0-9"):
            parse_hour("2026-01-05T04\n")  # a job argument is never stripped
        with pytest.raises(ValueError, match="digits 0-9"):
            parse_hour_option("\uff12\uff10\uff12\uff16-01-05")
        assert parse_hour_option(" 2026-01-05 ").hour == 0
        assert parse_hour("2026-01-05T04").hour == 4

    @sqlite_only
    def test_report_all_refuses_and_queues_nothing(
        self, settings: Settings, redis_conn: redis.Redis
    ) -> None:
        """``report-all --hour`` in full-width digits exits 2 with one line; nothing is queued."""
        done = sensormeter(cli_env(settings), "report-all", "--hour", self.FULL_WIDTH)
        line = one_error_line(done)
        assert done.returncode == 2 and "--hour" in line and "digits 0-9" in line
        assert make_queue(settings, redis_conn).count == 0

    @sqlite_only
    @pytest.mark.parametrize(
        "args", [["backfill", "--dry-run", "--since"], ["reconcile", "--since"]]
    )
    def test_backfill_and_reconcile_refuse(
        self, settings: Settings, database: peewee.Database, args: list[str]
    ) -> None:
        """backfill and reconcile refuse a full-width --since on one line."""
        line = one_error_line(sensormeter(cli_env(settings), *args, self.FULL_WIDTH))
        assert "--since" in line and "digits 0-9" in line


class TestOrganizationIds:
    @pytest.mark.parametrize("bad", ["acme\n", "acme ", " acme", "acme\r\n", "\uff41cme"])
    def test_whole_string_ascii_only(self, bad: str) -> None:
        """An id with a trailing newline (or other blank, or a non-ASCII letter) is refused."""
        with pytest.raises(InvalidOrganizationId):
            ledger.validate_organization_id(bad)
        assert ledger.organization_id_problem(bad) is not None


class TestUsageSourceFactory:
    @pytest.mark.parametrize(
        ("factory", "problem"),
        [
            ("os:getcwd", "failed: TypeError"),
            ("builtins:dict", "failed: TypeError"),
            ("os:sep", "not a factory to call"),
            ("tests.host_source:not_a_source", "lacks the UsageSource methods"),
            ("tests.test_bad_input:leaky_factory", "failed: RuntimeError: cannot connect"),
        ],
    )
    def test_any_failure_names_the_variable(self, factory: str, problem: str) -> None:
        """Whatever goes wrong with the factory is a ConfigurationError naming the variable."""
        with pytest.raises(ConfigurationError) as info:
            load_usage_source(Settings(usage_source=factory), None)  # type: ignore[arg-type]
        assert info.value.variable == "SENSORMETER_USAGE_SOURCE"
        assert problem in info.value.problem and "hunter2" not in info.value.problem

    def test_sensormeter_errors_pass_through(self) -> None:
        """A factory's own SensormeterError (its database is down) keeps its meaning."""
        with pytest.raises(ServiceUnavailable):
            load_usage_source(
                Settings(usage_source="tests.test_bad_input:unreachable_factory"),
                None,  # type: ignore[arg-type]
            )

    @sqlite_only
    @pytest.mark.parametrize("factory", ["os:getcwd", "builtins:dict"])
    def test_worker_says_one_line(
        self, settings: Settings, database: peewee.Database, redis_conn: redis.Redis, factory: str
    ) -> None:
        """``sensormeter worker`` with an unusable factory stops with one line naming it."""
        env = cli_env(settings, SENSORMETER_USAGE_SOURCE=factory)
        line = one_error_line(sensormeter(env, "worker", "--burst"))
        assert line.startswith("error: SENSORMETER_USAGE_SOURCE: ") and "TypeError" in line


def leaky_factory(settings: Settings, database: Any) -> Any:
    """A host factory whose error message carries a URL with a password."""
    raise RuntimeError("cannot connect to postgresql://app:hunter2@db/x\nsecond line")


def unreachable_factory(settings: Settings, database: Any) -> Any:
    """A host factory that checks its own database first."""
    raise ServiceUnavailable("the host database", "postgresql://db/x", "refused")


class TestNeverCreateTheDatabase:
    @sqlite_only
    @pytest.mark.parametrize(
        "args",
        [
            ["status"],
            ["failed"],
            ["failed", "--rejected"],
            ["reconcile"],
            ["backfill", "--dry-run", "--since", "THIS-HOUR"],
            ["retry-failed"],
            ["worker", "--burst"],
        ],
    )
    def test_mistyped_sqlite_path_is_one_line(
        self, settings: Settings, redis_conn: redis.Redis, tmp_path: Path, args: list[str]
    ) -> None:
        """A command other than init-db or demo refuses a SQLite file that does not exist."""
        missing = tmp_path / "typo.db"
        env = cli_env(settings, DATABASE_URL=f"sqlite:///{missing}")
        this_hour = format_hour(utcnow())
        args = [this_hour if a == "THIS-HOUR" else a for a in args]
        line = one_error_line(sensormeter(env, *args))
        assert f"no SQLite database at {missing} (run 'sensormeter init-db' first)" in line
        assert not missing.exists()

    def test_open_database_keyword(self, tmp_path: Path) -> None:
        """create=False refuses a missing file; the default (init-db's) still creates it."""
        missing = tmp_path / "new.db"
        with pytest.raises(ServiceUnavailable, match="no SQLite database at"):
            open_database(f"sqlite:///{missing}", create=False)
        assert not missing.exists()
        with pytest.raises(ServiceUnavailable):
            Runtime.build(Settings(database_url=f"sqlite:///{missing}"))
        assert not missing.exists()
        open_database("sqlite:///:memory:", create=False).close()
        open_database(f"sqlite:///{missing}").close()
        assert missing.exists()

    @sqlite_only
    def test_init_db_still_creates(self, settings: Settings, tmp_path: Path) -> None:
        """``init-db`` creates the SQLite file and its tables; then ``failed`` reads it."""
        path = tmp_path / "fresh.db"
        env = cli_env(settings, DATABASE_URL=f"sqlite:///{path}")
        assert sensormeter(env, "init-db").returncode == 0
        assert path.exists()
        done = sensormeter(env, "failed")
        assert done.returncode == 0 and done.stdout.startswith("0 failed report(s)")

