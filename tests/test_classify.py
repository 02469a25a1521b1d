"""classify_error: Stripe's machine fields (header, status, code) decide before its message."""

from __future__ import annotations

import time

import pytest
import stripe

from sensormeter.emulator import StripeEmulator
from sensormeter.meters import StripeMeterClient
from sensormeter.meters.base import (
    DUPLICATE_CODE,
    MeterEvent,
    Outcome,
    classify_error,
    should_retry_header,
)
from sensormeter.settings import Settings

DUPLICATE = "An event already exists with identifier org-1-2026-12-01T10."


def invalid(
    message: str = "Invalid timestamp: not an integer.",
    *,
    status: int = 400,
    code: str | None = None,
    param: str | None = "timestamp",
    should_retry: str | None = None,
) -> stripe.InvalidRequestError:
    """A 400-class error built as stripe-python builds it from an answer."""
    headers = {"request-id": "req_1"}
    if should_retry is not None:
        headers["Stripe-Should-Retry"] = should_retry
    return stripe.InvalidRequestError(
        message, param, code=code, http_status=status, headers=headers
    )


def duplicate(**kwargs: object) -> stripe.InvalidRequestError:
    """Stripe's answer to a repeated identifier, as seen in the field."""
    fields: dict[str, object] = {"param": "identifier", "should_retry": "false"}
    fields.update(kwargs)
    return invalid(DUPLICATE, **fields)  # type: ignore[arg-type]


class TestDuplicate:
    def test_duplicate_answer_is_delivered(self) -> None:
        """A 400 saying the identifier exists, with Stripe-Should-Retry: false, is delivered."""
        result = classify_error(duplicate())
        assert result.outcome is Outcome.DUPLICATE
        assert result.outcome.delivered
        assert (result.error, result.request_id, result.http_status) == (DUPLICATE, "req_1", 400)

    def test_duplicate_without_the_header_is_delivered(self) -> None:
        """The message prefix alone still recognises the duplicate (the fallback)."""
        assert classify_error(duplicate(should_retry=None)).outcome is Outcome.DUPLICATE

    def test_code_recognises_the_duplicate_without_the_message(self) -> None:
        """A code saying the identifier exists is taken before (and without) the English text."""
        exc = duplicate(code=DUPLICATE_CODE)
        exc._message = "Ein Ereignis mit dieser Kennung existiert bereits."
        assert classify_error(exc).outcome is Outcome.DUPLICATE

    def test_code_about_another_parameter_is_not_a_duplicate(self) -> None:
        """resource_already_exists naming a parameter other than the identifier is a rejection."""
        exc = invalid("That already exists.", code=DUPLICATE_CODE, param="event_name")
        assert classify_error(exc).outcome is Outcome.REJECTED

    def test_duplicate_text_on_another_status_is_not_a_duplicate(self) -> None:
        """Only a 400 is the duplicate answer: a 404 with the same text is a rejection."""
        assert classify_error(duplicate(status=404)).outcome is Outcome.REJECTED

    def test_should_retry_true_wins_over_duplicate_text(self) -> None:
        """A duplicate-looking answer that Stripe says to retry is retried, not taken as sent."""
        assert classify_error(duplicate(should_retry="true")).outcome is Outcome.RETRYABLE

    def test_emulator_duplicate_answer_is_delivered(self, emulator: StripeEmulator) -> None:
        """The bundled emulator's duplicate answer, through the real client, counts as delivered."""
        client = StripeMeterClient(
            Settings(stripe_api_key="sk_test_x", stripe_api_base=emulator.base_url)
        )
        event = MeterEvent("classify-dup", "active_sensors", "cus_1", 3, int(time.time()))
        assert client.send(event).outcome is Outcome.DELIVERED
        again = client.send(event)
        assert again.outcome is Outcome.DUPLICATE
        assert again.http_status == 400
        assert [e.value for e in emulator.events()] == [3]


class TestRejected:
    def test_plain_400_is_rejected(self) -> None:
        """A 400 without Stripe-Should-Retry is a permanent rejection."""
        result = classify_error(invalid())
        assert result.outcome is Outcome.REJECTED
        assert result.error == "Invalid timestamp: not an integer."

    def test_400_marked_not_to_retry_is_rejected(self) -> None:
        """A 400 with Stripe-Should-Retry: false (not a duplicate) is rejected."""
        assert classify_error(invalid(should_retry="false")).outcome is Outcome.REJECTED

    def test_idempotency_error_is_rejected(self) -> None:
        """An idempotency error is rejected."""
        exc = stripe.IdempotencyError("Keys for idempotent requests ...", http_status=400)
        assert classify_error(exc).outcome is Outcome.REJECTED


class TestRetryable:
    def test_400_marked_to_retry_is_retryable(self) -> None:
        """A 400 with Stripe-Should-Retry: true becomes retryable, with the class in the reason."""
        result = classify_error(invalid(should_retry="true"))
        assert result.outcome is Outcome.RETRYABLE
        assert result.error == "InvalidRequestError: Invalid timestamp: not an integer."
        assert result.http_status == 400

    def test_header_is_read_in_any_case(self) -> None:
        """The header name is matched without regard to case, as HTTP says."""
        exc = invalid()
        exc.headers = {"stripe-should-retry": "TRUE"}
        assert should_retry_header(exc) is True
        assert classify_error(exc).outcome is Outcome.RETRYABLE

    def test_idempotency_error_marked_to_retry_is_retryable(self) -> None:
        """Stripe-Should-Retry: true makes even an idempotency error retryable."""
        exc = stripe.IdempotencyError(
            "in progress", http_status=400, headers={"Stripe-Should-Retry": "true"}
        )
        assert classify_error(exc).outcome is Outcome.RETRYABLE

    @pytest.mark.parametrize(
        ("error_class", "status"),
        [
            (stripe.AuthenticationError, 401),
            (stripe.PermissionError, 403),
            (stripe.APIError, 409),
            (stripe.RateLimitError, 429),
            (stripe.APIError, 500),
            (stripe.APIError, 503),
        ],
    )
    def test_should_retry_false_never_makes_a_rejection(
        self, error_class: type[stripe.StripeError], status: int
    ) -> None:
        """401, 403, 409, 429 and 5xx stay retryable even when Stripe says not to retry."""
        for header in (None, "false"):
            headers = {} if header is None else {"Stripe-Should-Retry": header}
            exc = error_class("Something.", http_status=status, headers=headers)
            result = classify_error(exc)
            assert result.outcome is Outcome.RETRYABLE
            assert result.error == f"{error_class.__name__}: Something."

    @pytest.mark.parametrize("status", [409, 429, 500])
    def test_retryable_status_wins_over_a_400_class(self, status: int) -> None:
        """The status decides: an InvalidRequestError carrying 409, 429 or 5xx is retryable."""
        assert classify_error(invalid(status=status)).outcome is Outcome.RETRYABLE

    def test_connection_error_is_retryable(self) -> None:
        """A network failure (no status, no headers) is retryable."""
        exc = stripe.APIConnectionError("Network error talking to Stripe (timed out: x)")
        assert classify_error(exc).outcome is Outcome.RETRYABLE

    def test_other_exception_is_retryable_with_its_type(self) -> None:
        """Anything but a Stripe error is retryable, reason '<Type>: <first line>'."""
        result = classify_error(ValueError("bad header\nmore"))
        assert (result.outcome, result.error) == (Outcome.RETRYABLE, "ValueError: bad header")
