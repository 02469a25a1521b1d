"""A work-horse takes over the worker's runtime (share_runtime), never a live connection."""

from __future__ import annotations

import os

import peewee
import pytest
import redis

from sensormeter import runtime as runtime_module
from sensormeter.runtime import Runtime, get_runtime, set_runtime, share_runtime
from sensormeter.settings import Settings


def in_child(check: object) -> str:
    """Run ``check`` (returns a short text) in a forked process; its answer."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            answer = str(check())  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001
            answer = f"error {type(exc).__name__}: {exc}"
        os.write(write, answer.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        return pipe.read()


@pytest.fixture
def shared(
    settings: Settings,
    database: peewee.Database,
    redis_conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> Runtime:
    """The worker's runtime, shared; a runtime built anew reads the same settings."""
    monkeypatch.setattr(runtime_module.Settings, "from_env", staticmethod(lambda: settings))
    built = Runtime.build(settings)
    share_runtime(built)
    yield built
    set_runtime(None)
    built.close()


def test_a_forked_process_takes_over_the_shared_runtime(shared: Runtime) -> None:
    """Same Stripe client, its own pid, source and database connection; the parent stays closed."""

    def check() -> str:
        mine = get_runtime()
        with mine.database.connection_context():
            (one,) = mine.database.execute_sql("SELECT 1").fetchone()
        mine.redis.ping()
        # The Stripe client is taken over; a usage source (a host's may hold a connection)
        # is built anew.
        same = mine.meter is shared.meter and mine.source is not shared.source
        return f"{same} {mine.pid == os.getpid()} {one}"

    assert in_child(check) == "True True 1"
    assert shared.database.is_closed()  # the parent never opened it


def test_a_runtime_with_an_open_connection_is_built_anew(shared: Runtime) -> None:
    """A socket the parent has open is never used by two processes: the child builds its own."""
    shared.database.connect()

    def check() -> str:
        mine = get_runtime()
        return f"{mine.meter is shared.meter} {mine.shared}"

    assert in_child(check) == "False False"
    shared.database.close()


def test_the_process_that_shared_it_keeps_it(shared: Runtime) -> None:
    """In the worker itself get_runtime answers the shared runtime (no rebuild)."""
    assert get_runtime() is shared
