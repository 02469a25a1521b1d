"""The exceptions sensormeter raises: one base class, one subclass per failure."""

from __future__ import annotations

from .logs import scrub

SHOWN_CHARS = 80  # of a value quoted back in a message: enough to recognise it
MAX_MESSAGE_CHARS = 2000  # of a whole message: it ends up in logs, Redis and terminals


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long the value was."""
    # A 100 KB id or setting is echoed in errors, logs and RQ's stored exceptions: never whole.
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}... ({len(message) - MAX_MESSAGE_CHARS} characters cut)"


class SensormeterError(Exception):
    """Base class of every error sensormeter raises on purpose.

    Its message is scrubbed of Stripe keys, webhook secrets and URL passwords: RQ stores the
    message of a job's exception in Redis, and outside text (a Stripe error, a driver's
    error) may quote a secret.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(_bounded(scrub(a)) if isinstance(a, str) else a for a in args))


class ConfigurationError(SensormeterError):
    """Raised when a setting is missing or malformed; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = _bounded(scrub(problem))


class InvalidOrganizationId(SensormeterError, ValueError):
    """Raised when an organization id is empty or not of the accepted form."""

    def __init__(self, organization_id: object, problem: str) -> None:
        super().__init__(f"invalid organization id {shown(organization_id)}: {problem}")
        self.organization_id = organization_id


class ServiceUnavailable(SensormeterError):
    """Raised when Redis or the database cannot be reached; the message carries a safe URL."""

    def __init__(self, service: str, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {service} at {url}: {reason}")
        self.service = service
        self.url = scrub(url)
        self.reason = scrub(reason)


class RetryableReportError(SensormeterError):
    """Raised by a report job so RQ retries it: some events met a transient Stripe failure."""

    def __init__(self, organization_ids: list[str], reason: str) -> None:
        super().__init__(
            f"{len(organization_ids)} report(s) will be retried ({reason}): "
            + ", ".join(organization_ids[:10])
        )
        self.organization_ids = organization_ids
        self.reason = scrub(reason)


class ReportsFailed(SensormeterError):
    """Raised by a report job whose retries ran out; its ledger rows are marked failed."""

    def __init__(self, organization_ids: list[str], reason: str) -> None:
        super().__init__(
            f"{len(organization_ids)} report(s) failed after all retries ({reason}): "
            + ", ".join(organization_ids[:10])
        )
        self.organization_ids = organization_ids
        self.reason = scrub(reason)


class WebhookError(SensormeterError):
    """Raised when a Stripe webhook delivery cannot be verified, read or completed.

    Nothing in the ledger has changed when it is raised. ``retryable`` is False for a
    delivery that will never be accepted (no secret configured, bad or stale signature,
    malformed body): answer it with 400. It is True when the event's data could not be
    fetched from Stripe: answer with a 5xx so that Stripe delivers the event again.
    """

    def __init__(
        self,
        problem: str,
        *,
        event_id: str | None = None,
        retryable: bool = False,
        request_id: str | None = None,
    ) -> None:
        where = f" (event {event_id})" if event_id else ""
        super().__init__(f"Stripe webhook not handled{where}: {problem}")
        self.problem = scrub(problem)
        self.event_id = event_id
        self.retryable = retryable
        self.request_id = request_id


class SchemaOutdated(SensormeterError):
    """Raised when the database's schema is older than this release needs."""

    def __init__(self, version: int, required: int) -> None:
        super().__init__(
            f"the database schema is at version {version}, this release needs {required}: "
            "run 'sensormeter migrate' (it upgrades in place, keeping every row; "
            "--sql prints the SQL first)"
        )
        self.version = version
        self.required = required


class SchemaConflict(SensormeterError):
    """Raised when a table sensormeter would create or change exists with another shape."""

    def __init__(self, table: str, problem: str, advice: str) -> None:
        super().__init__(
            f"table {table} exists and is not sensormeter's ({problem}): {advice}; "
            "nothing was changed"
        )
        self.table = table
        self.problem = problem
