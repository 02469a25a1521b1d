"""The Stripe emulator, driven over real HTTP by stripe-python and urllib."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe

from sensormeter.emulator import ReceivedEvent, StripeEmulator

HOUR = 3600
# A fixed, hour-aligned moment, so summaries tests do not depend on the wall clock.
T0 = 1_750_003_200
CUSTOMER = "cus_1"


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator() as running:
        yield running


def make_client(
    emulator: StripeEmulator, key: str = "sk_test_x", timeout: float = 2.0
) -> stripe.StripeClient:
    base = emulator.base_url
    return stripe.StripeClient(
        key,
        base_addresses={"api": base, "meter_events": base},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


@pytest.fixture
def client(emulator: StripeEmulator) -> stripe.StripeClient:
    return make_client(emulator)


def send(
    client: stripe.StripeClient,
    value: str = "17",
    *,
    customer: str | None = CUSTOMER,
    timestamp: int | None = None,
    identifier: str | None = None,
    event_name: str = "active_sensors",
) -> Any:
    payload = {"value": value}
    if customer is not None:
        payload["stripe_customer_id"] = customer
    params: dict[str, Any] = {"event_name": event_name, "payload": payload}
    if timestamp is not None:
        params["timestamp"] = timestamp
    if identifier is not None:
        params["identifier"] = identifier
    return client.v1.billing.meter_events.create(params=params)  # type: ignore[arg-type]


def http(
    emulator: StripeEmulator, method: str, path: str, body: Any = None, headers: Any = None
) -> tuple[int, Any, Any]:
    """Call the emulator with urllib; return status, decoded JSON and headers."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        emulator.base_url + path, data=data, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read()), error.headers


class TestMeterEvents:
    def test_accepted_event_is_recorded(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """An accepted event is answered like Stripe and recorded with customer, value and time."""
        ts = int(time.time()) - 60
        answer = send(client, "17", timestamp=ts, identifier="org-1-hour-1")
        assert answer.object == "billing.meter_event"
        assert (answer.identifier, answer.timestamp, answer.livemode) == ("org-1-hour-1", ts, False)
        assert answer.payload.to_dict() == {"value": "17", "stripe_customer_id": CUSTOMER}
        [event] = emulator.events()
        assert isinstance(event, ReceivedEvent)
        assert (event.customer, event.value, event.timestamp) == (CUSTOMER, 17, ts)
        assert (event.event_name, event.identifier) == ("active_sensors", "org-1-hour-1")
        assert emulator.request_count() == 1

    def test_defaults_for_timestamp_and_identifier(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """Without timestamp and identifier the arrival time and a generated identifier are used."""
        before = int(time.time())
        send(client)
        send(client)
        first, second = emulator.events()
        assert before <= first.timestamp <= time.time()
        assert first.identifier and first.identifier != second.identifier

    def test_duplicate_identifier_is_rejected(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """A repeated identifier is refused with Stripe's message, a request id and no retry."""
        send(client, "1", identifier="dup")
        with pytest.raises(stripe.InvalidRequestError) as caught:
            send(client, "2", identifier="dup")
        assert caught.value.user_message is not None
        assert caught.value.user_message.startswith("An event already exists with identifier")
        assert caught.value.user_message == "An event already exists with identifier dup."
        assert caught.value.request_id is not None
        assert caught.value.request_id.startswith("req_")
        assert caught.value.http_status == 400
        assert caught.value.headers is not None
        assert caught.value.headers.get("Stripe-Should-Retry") == "false"
        assert [e.value for e in emulator.events()] == [1]

    def test_identifier_is_reusable_after_24_hours(self) -> None:
        """An identifier is only kept unique for 24 hours of the emulator's clock."""
        now = [float(T0)]
        with StripeEmulator(clock=lambda: now[0]) as emulator:
            client = make_client(emulator)
            send(client, "1", timestamp=T0, identifier="same")
            now[0] += 24 * HOUR - 1
            with pytest.raises(stripe.InvalidRequestError):
                send(client, "2", timestamp=int(now[0]), identifier="same")
            now[0] += 1
            send(client, "3", timestamp=int(now[0]), identifier="same")
            assert [e.value for e in emulator.events()] == [1, 3]

    def test_concurrent_repeats_accept_exactly_one(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """Of several concurrent sends with one identifier exactly one is accepted."""
        outcomes: list[str] = []

        def attempt() -> None:
            try:
                send(make_client(emulator), identifier="race")
                outcomes.append("ok")
            except stripe.InvalidRequestError:
                outcomes.append("duplicate")

        threads = [threading.Thread(target=attempt) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["duplicate"] * 7 + ["ok"]
        assert len(emulator.events()) == 1

    @pytest.mark.parametrize(
        ("overrides", "param"),
        [
            ({"customer": None}, "payload[stripe_customer_id]"),
            ({"value": "1.5"}, "payload[value]"),
            ({"value": "abc"}, "payload[value]"),
            ({"value": "-3"}, "payload[value]"),
            ({"value": ""}, "payload[value]"),
            ({"timestamp": -36 * 24 * HOUR}, "timestamp"),
            ({"timestamp": 10 * 60}, "timestamp"),
            ({"identifier": "x" * 101}, "identifier"),
            ({"event_name": "e" * 101}, "event_name"),
        ],
        ids=[
            "no-customer",
            "fraction",
            "letters",
            "negative",
            "empty-value",
            "36-days-old",
            "10-min-ahead",
            "long-identifier",
            "long-event-name",
        ],
    )
    def test_invalid_event_is_rejected(
        self,
        emulator: StripeEmulator,
        client: stripe.StripeClient,
        overrides: dict[str, Any],
        param: str,
    ) -> None:
        """Each validation rule answers 400 InvalidRequestError naming the parameter."""
        if "timestamp" in overrides:
            overrides = {"timestamp": int(time.time()) + overrides["timestamp"]}
        with pytest.raises(stripe.InvalidRequestError) as caught:
            send(client, **overrides)
        assert caught.value.http_status == 400
        assert caught.value.param == param
        assert emulator.events() == []

    def test_limits_are_inclusive(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """Values at the limits (100-char identifier, 4 minutes ahead, 34 days old) are accepted."""
        now = int(time.time())
        send(client, "0", identifier="i" * 100, timestamp=now + 4 * 60)
        send(client, "5", timestamp=now - 34 * 24 * HOUR)
        assert [e.value for e in emulator.events()] == [0, 5]

    def test_renamed_payload_keys(self) -> None:
        """The customer and value payload keys follow the emulator's configuration."""
        with StripeEmulator(customer_key="cust", value_key="count") as emulator:
            client = make_client(emulator)
            client.v1.billing.meter_events.create(
                params={"event_name": "active_sensors", "payload": {"cust": "cus_9", "count": "4"}}
            )
            with pytest.raises(stripe.InvalidRequestError) as caught:
                send(client)
            assert caught.value.param == "payload[cust]"
            assert [(e.customer, e.value) for e in emulator.events()] == [("cus_9", 4)]


class TestFaults:
    def test_injected_429_then_success(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """An injected 429 raises RateLimitError once, and the next call succeeds."""
        emulator.inject(429)
        with pytest.raises(stripe.RateLimitError) as caught:
            send(client)
        assert caught.value.http_status == 429
        assert caught.value.error is not None and caught.value.error.type == "rate_limit_error"
        assert caught.value.request_id is not None
        send(client)
        assert emulator.request_count() == 2
        assert len(emulator.events()) == 1

    def test_injected_500_is_api_error(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """An injected 500 raises APIError carrying the custom message, and records nothing."""
        emulator.inject(500, message="boom")
        with pytest.raises(stripe.APIError) as caught:
            send(client)
        assert caught.value.http_status == 500
        assert caught.value.user_message == "boom"
        assert caught.value.error is not None and caught.value.error.type == "api_error"
        assert emulator.events() == []

    def test_faults_are_consumed_in_order(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """Queued faults meet the following requests in the order they were injected."""
        emulator.inject(429, times=2)
        emulator.inject(503)
        errors = []
        for _ in range(3):
            with pytest.raises(stripe.StripeError) as caught:
                send(client)
            errors.append(type(caught.value))
        assert errors == [stripe.RateLimitError, stripe.RateLimitError, stripe.APIError]
        send(client)
        assert emulator.request_count() == 4

    def test_disconnect_is_connection_error(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """A disconnect fault closes the connection unanswered, which raises APIConnectionError."""
        emulator.inject_disconnect()
        with pytest.raises(stripe.APIConnectionError):
            send(client)
        send(client)
        assert emulator.request_count() == 2
        assert len(emulator.events()) == 1

    def test_latency_beyond_client_timeout(self, emulator: StripeEmulator) -> None:
        """Latency above the client's timeout raises APIConnectionError, yet the event lands."""
        emulator.set_latency(0.6)
        with pytest.raises(stripe.APIConnectionError):
            send(make_client(emulator, timeout=0.2), identifier="slow")
        deadline = time.monotonic() + 2
        while not emulator.events() and time.monotonic() < deadline:
            time.sleep(0.02)
        # Like Stripe, the emulator recorded what the client gave up on: a retry is a duplicate.
        assert [e.identifier for e in emulator.events()] == ["slow"]
        emulator.set_latency(0)
        with pytest.raises(stripe.InvalidRequestError):
            send(make_client(emulator), identifier="slow")

    def test_invalid_fault_arguments(self, emulator: StripeEmulator) -> None:
        """Fault injection refuses statuses that are not errors and non-positive counts."""
        with pytest.raises(ValueError):
            emulator.inject(200)
        with pytest.raises(ValueError):
            emulator.inject(500, times=0)
        with pytest.raises(ValueError):
            emulator.set_latency(-1)

    def test_reset_forgets_everything(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """reset() forgets events, identifiers, queued faults and the request count."""
        send(client, identifier="again")
        emulator.inject(500)
        emulator.reset()
        assert emulator.events() == [] and emulator.request_count() == 0
        send(client, identifier="again")
        assert len(emulator.events()) == 1


class TestAuthentication:
    @pytest.mark.parametrize("key", ["pk_test_123", "sk_nope_123", "sk_test_", "whatever"])
    def test_invalid_key(self, emulator: StripeEmulator, key: str) -> None:
        """A key that is not a secret or restricted key raises AuthenticationError, masked."""
        with pytest.raises(stripe.AuthenticationError) as caught:
            send(make_client(emulator, key=key))
        assert caught.value.http_status == 401
        assert caught.value.user_message is not None
        assert caught.value.user_message.startswith("Invalid API Key provided: ")
        assert emulator.events() == []

    def test_key_is_masked(self, emulator: StripeEmulator) -> None:
        """The error message never repeats a long key in full."""
        key = "pk_live_abcdefghijklmnop"
        with pytest.raises(stripe.AuthenticationError) as caught:
            make_client(emulator, key=key).v1.billing.meters.list()
        assert key not in str(caught.value)
        assert caught.value.user_message == "Invalid API Key provided: pk_live_************mnop"

    def test_missing_key(self, emulator: StripeEmulator) -> None:
        """A request without an Authorization header is answered 401 with a Stripe error body."""
        status, body, headers = http(emulator, "GET", "/v1/billing/meters")
        assert status == 401
        assert body["error"]["type"] == "invalid_request_error"
        assert headers["Request-Id"].startswith("req_")

    @pytest.mark.parametrize("key", ["rk_test_abc", "sk_live_abc", "rk_live_abc"])
    def test_other_valid_key_kinds(self, emulator: StripeEmulator, key: str) -> None:
        """Restricted and live keys are accepted as well as sk_test_ keys."""
        send(make_client(emulator, key=key))
        assert len(emulator.events()) == 1


class TestMeters:
    def test_meters_list_contains_active_sensors(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """The meter list always has active_sensors, a `last` meter keyed like the payload."""
        meters = client.v1.billing.meters.list()
        assert meters["object"] == "list" and meters.has_more is False
        [meter] = [m for m in meters.data if m.event_name == "active_sensors"]
        assert meter.id.startswith("mtr_")
        assert meter.default_aggregation.formula == "last"
        assert meter.customer_mapping.event_payload_key == "stripe_customer_id"
        assert meter.value_settings.event_payload_key == "value"
        assert meter.status == "active"

    def test_meters_follow_event_names(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """Each new event name adds a meter, and meter ids are stable across emulators."""
        send(client, event_name="gateways")
        names = [m.event_name for m in client.v1.billing.meters.list().data]
        assert names == ["active_sensors", "gateways"]
        with StripeEmulator() as other:
            ids = {m.id for m in make_client(other).v1.billing.meters.list().data}
        assert ids <= {m.id for m in client.v1.billing.meters.list().data}


class TestEventSummaries:
    @pytest.fixture
    def fixed(self) -> Iterator[tuple[StripeEmulator, stripe.StripeClient, str]]:
        with StripeEmulator(clock=lambda: T0 + 3 * HOUR) as emulator:
            client = make_client(emulator)
            meter_id = client.v1.billing.meters.list().data[0].id
            yield emulator, client, meter_id

    def summaries(self, client: stripe.StripeClient, meter_id: str, **params: Any) -> Any:
        query: Any = {"customer": CUSTOMER, "start_time": T0, "end_time": T0 + 2 * HOUR, **params}
        return client.v1.billing.meters.event_summaries.list(meter_id, params=query)

    def test_last_aggregation_by_hour(
        self, fixed: tuple[StripeEmulator, stripe.StripeClient, str]
    ) -> None:
        """Hourly summaries hold the value with the latest timestamp in each hour, newest first."""
        _, client, meter_id = fixed
        send(client, "7", timestamp=T0 + 50 * 60)
        send(client, "3", timestamp=T0 + 10 * 60)  # older measurement, sent later
        send(client, "9", timestamp=T0 + HOUR + 5)
        send(client, "99", timestamp=T0 + 2 * HOUR)  # end_time is exclusive
        send(client, "55", customer="cus_other", timestamp=T0 + 20 * 60)
        result = self.summaries(client, meter_id, value_grouping_window="hour")
        got = [(s.start_time, s.end_time, s.aggregated_value) for s in result.data]
        assert got == [(T0 + HOUR, T0 + 2 * HOUR, 9.0), (T0, T0 + HOUR, 7.0)]
        assert all(s.object == "billing.meter_event_summary" for s in result.data)
        assert all(s.meter == meter_id for s in result.data)

    def test_last_aggregation_over_range(
        self, fixed: tuple[StripeEmulator, stripe.StripeClient, str]
    ) -> None:
        """Ungrouped, one summary covers the range; a timestamp tie goes to the last arrival."""
        _, client, meter_id = fixed
        assert [s.aggregated_value for s in self.summaries(client, meter_id).data] == [0.0]
        send(client, "4", timestamp=T0 + HOUR)
        send(client, "6", timestamp=T0 + HOUR)
        send(client, "2", timestamp=T0 + 30)
        [summary] = self.summaries(client, meter_id).data
        assert (summary.start_time, summary.end_time) == (T0, T0 + 2 * HOUR)
        assert summary.aggregated_value == 6.0

    def test_pagination(self, fixed: tuple[StripeEmulator, stripe.StripeClient, str]) -> None:
        """Summaries are paged ten at a time like Stripe, and auto-paging reaches them all."""
        _, client, meter_id = fixed
        for hour in range(12):
            send(client, str(hour), timestamp=T0 - 9 * HOUR + hour * HOUR)
        params = {"start_time": T0 - 9 * HOUR, "end_time": T0 + 3 * HOUR}
        page = self.summaries(client, meter_id, value_grouping_window="hour", **params)
        assert len(page.data) == 10 and page.has_more is True
        values = [s.aggregated_value for s in page.auto_paging_iter()]
        assert values == [float(v) for v in reversed(range(12))]

    def test_pages_back_with_ending_before(
        self, fixed: tuple[StripeEmulator, stripe.StripeClient, str]
    ) -> None:
        """Stripe's documented ending_before cursor gives the page just before it, in order."""
        _, client, meter_id = fixed
        for hour in range(5):
            send(client, str(hour), timestamp=T0 - 2 * HOUR + hour * HOUR)
        params = {"start_time": T0 - 2 * HOUR, "end_time": T0 + 3 * HOUR, "limit": 2}
        pages = self.summaries(client, meter_id, value_grouping_window="hour", **params)
        ids = [s.id for s in pages.auto_paging_iter()]
        assert len(ids) == 5
        back = self.summaries(
            client, meter_id, value_grouping_window="hour", ending_before=ids[3], **params
        )
        assert [s.id for s in back.data] == ids[1:3] and back.has_more is True
        first = self.summaries(
            client, meter_id, value_grouping_window="hour", ending_before=ids[1], **params
        )
        assert [s.id for s in first.data] == ids[:1] and first.has_more is False

    @pytest.mark.parametrize(
        "params",
        [
            {"customer": ""},
            {"start_time": T0 + 30},
            {"end_time": T0 + HOUR + 1},
            {"end_time": T0},
            {"value_grouping_window": "week"},
            {"value_grouping_window": "hour", "start_time": T0 + 60},
        ],
        ids=[
            "no-customer",
            "start-seconds",
            "end-seconds",
            "empty-range",
            "week",
            "hour-misaligned",
        ],
    )
    def test_invalid_query(
        self, fixed: tuple[StripeEmulator, stripe.StripeClient, str], params: dict[str, Any]
    ) -> None:
        """A missing customer, unaligned times or an unknown window answer 400."""
        _, client, meter_id = fixed
        with pytest.raises(stripe.InvalidRequestError) as caught:
            self.summaries(client, meter_id, **params)
        assert caught.value.http_status == 400

    def test_unknown_meter(self, client: stripe.StripeClient) -> None:
        """An unknown meter id answers 404 resource_missing."""
        with pytest.raises(stripe.InvalidRequestError) as caught:
            client.v1.billing.meters.event_summaries.list(
                "mtr_nope", params={"customer": CUSTOMER, "start_time": T0, "end_time": T0 + 60}
            )
        assert caught.value.http_status == 404
        assert caught.value.code == "resource_missing"


class TestHttpControl:
    def test_faults_over_http(self, emulator: StripeEmulator, client: stripe.StripeClient) -> None:
        """POST /_emulator/faults queues statuses and disconnects for the next meter events."""
        status, state, _ = http(emulator, "POST", "/_emulator/faults", {"status": 429, "times": 2})
        assert status == 200 and state["queued_faults"] == 2
        http(emulator, "POST", "/_emulator/faults", {"disconnect": 1})
        for _ in range(2):
            with pytest.raises(stripe.RateLimitError):
                send(client)
        with pytest.raises(stripe.APIConnectionError):
            send(client)
        send(client)
        assert http(emulator, "GET", "/_emulator/stats")[1]["request_count"] == 4

    def test_latency_over_http(self, emulator: StripeEmulator) -> None:
        """POST /_emulator/faults with latency slows meter events past the client's timeout."""
        http(emulator, "POST", "/_emulator/faults", {"latency": 0.5})
        with pytest.raises(stripe.APIConnectionError):
            send(make_client(emulator, timeout=0.2))

    def test_bad_fault_spec(self, emulator: StripeEmulator) -> None:
        """A fault specification that makes no sense is refused with 400."""
        for spec in ({"status": 200}, {"colour": "red"}, [1], {"disconnect": "x"}):
            status, body, _ = http(emulator, "POST", "/_emulator/faults", spec)
            assert status == 400, spec
            assert "Invalid fault specification" in body["error"]["message"]

    def test_events_and_reset_over_http(
        self, emulator: StripeEmulator, client: stripe.StripeClient
    ) -> None:
        """GET /_emulator/events lists accepted events; POST /_emulator/reset forgets them."""
        ts = int(time.time())
        send(client, "12", timestamp=ts, identifier="id-1")
        status, events, headers = http(emulator, "GET", "/_emulator/events")
        assert status == 200 and headers["Content-Type"] == "application/json"
        [event] = events
        assert event["customer"] == CUSTOMER and event["value"] == 12
        assert (event["identifier"], event["timestamp"]) == ("id-1", ts)
        assert event["payload"] == {"value": "12", "stripe_customer_id": CUSTOMER}
        assert set(event) == set(ReceivedEvent.__dataclass_fields__)
        assert http(emulator, "POST", "/_emulator/reset")[0] == 200
        assert http(emulator, "GET", "/_emulator/events")[1] == []

    def test_unknown_url(self, emulator: StripeEmulator) -> None:
        """An unknown path or method answers 404 with a JSON error and a Request-Id header."""
        auth = {"Authorization": "Bearer sk_test_x"}
        for method, path in [("GET", "/v1/customers"), ("DELETE", "/v1/billing/meters")]:
            status, body, headers = http(emulator, method, path, headers=auth)
            assert status == 404
            assert body["error"]["message"] == f"Unrecognized request URL ({method}: {path})."
            assert headers["Request-Id"].startswith("req_")


class TestLifecycle:
    def test_base_url_and_stop(self) -> None:
        """base_url names the bound port, and stop() releases it while a request sleeps."""
        emulator = StripeEmulator()
        with pytest.raises(RuntimeError):
            emulator.base_url  # noqa: B018 - the property raises before start()
        emulator.start()
        assert emulator.base_url.startswith("http://127.0.0.1:")
        assert not emulator.base_url.endswith(":0")
        emulator.set_latency(30)
        outcome: list[type[Exception]] = []

        def slow_send() -> None:
            try:
                send(make_client(emulator, timeout=5))
            except stripe.StripeError as error:
                outcome.append(type(error))

        sender = threading.Thread(target=slow_send)
        sender.start()
        while emulator.request_count() == 0:
            time.sleep(0.01)
        started = time.monotonic()
        emulator.stop()
        emulator.stop()
        sender.join(timeout=3)
        assert time.monotonic() - started < 1
        assert outcome == [stripe.APIConnectionError]

    def test_serve_runs_until_sigterm(self) -> None:
        """serve() prints its address, answers requests and exits cleanly on SIGTERM."""
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        code = "from sensormeter.emulator import serve; serve('127.0.0.1', 0)"
        process = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line.startswith("Stripe emulator listening on http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1]
            with urllib.request.urlopen(url + "/_emulator/events", timeout=2) as response:
                assert json.loads(response.read()) == []
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()
