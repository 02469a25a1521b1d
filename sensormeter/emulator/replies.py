"""The emulator's answers: the response shape and Stripe-shaped error replies."""

from __future__ import annotations

import re
from typing import Any

Response = tuple[int, Any, dict[str, str]]  # status, JSON body, extra headers
WHOLE_NUMBER = re.compile(r"[0-9]+")


class Reply(Exception):
    """Raised inside a route to answer at once with a Stripe-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        *,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        error = {"type": kind, "message": message, "param": param, "code": code}
        body = {"error": {key: value for key, value in error.items() if value is not None}}
        self.response: Response = (status, body, headers or {})


def check(ok: bool, message: str, param: str | None = None) -> None:
    """Answer 400 invalid_request_error unless a validation rule holds."""
    if not ok:
        raise Reply(400, message, param)
