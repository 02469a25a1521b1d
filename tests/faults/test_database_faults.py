"""The database unreachable for a while, behind a TCP proxy the test cuts and restores."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator

import peewee
import pytest
import redis

from sensormeter.emulator import StripeEmulator
from sensormeter.models import MODELS, MeterReport, create_tables, open_database
from sensormeter.settings import Settings
from sensormeter.tasks.fanout import enqueue_fanout

from ..conftest import POSTGRES_URL, unavailable
from .conftest import (
    assert_billed_exactly_once,
    current_hour,
    seed,
    start_cli,
    stop_group,
    wait_for,
)


class CuttableProxy:
    """Forwards loopback TCP to PostgreSQL; ``cut()`` drops every connection and refuses new."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()  # "connection refused" as far as the client can tell
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self.sockets.clear()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def postgres() -> Iterator[peewee.Database]:
    try:
        db = open_database(POSTGRES_URL)
    except Exception as exc:  # noqa: BLE001
        unavailable("PostgreSQL", exc)
    db.drop_tables(list(reversed(MODELS)), safe=True, cascade=True)
    create_tables(db)
    yield db
    db.connect(reuse_if_open=True)
    db.drop_tables(list(reversed(MODELS)), safe=True, cascade=True)
    db.close()


def test_database_unreachable_for_a_while(
    fault_settings: Settings, postgres: peewee.Database, emulator: StripeEmulator
) -> None:
    """Connections cut and refused for 4 s mid-run: jobs retry, each hour is billed once."""
    proxy = CuttableProxy(("127.0.0.1", 5432))
    settings = fault_settings.with_overrides(
        database_url=POSTGRES_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    )
    customers = seed(25)
    hour = current_hour()
    emulator.set_latency(0.3)
    enqueue_fanout(settings, redis.Redis.from_url(settings.redis_url), hour)
    dyno = start_cli(settings, "worker", "-n", "2")
    try:
        assert wait_for(lambda: emulator.request_count() >= 2, 60), "no chunk started"
        proxy.cut()
        threading.Event().wait(4)
        proxy.restore()
        emulator.set_latency(0)
        done = lambda: MeterReport.select().where(MeterReport.status == "sent").count()  # noqa: E731
        assert wait_for(lambda: done() == len(customers), 120, every=0.5), "not all sent"
    finally:
        stop_group(dyno, signal.SIGTERM, timeout=30)
        proxy.close()
    assert_billed_exactly_once(emulator, customers, hour)
