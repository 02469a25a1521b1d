"""The quarantine gate: keeps back the reports of refused customers and of a paused meter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..gate import KeptBack
from ..ledger import LedgerRow
from ..logs import get_logger
from ..meters.base import Outcome, SendResult
from ..models import MeterReport
from . import store

log = get_logger(__name__)


class QuarantineGate:
    """A :class:`~sensormeter.gate.Gate`: no Stripe call for a customer or meter Stripe refuses.

    Before sending, one query finds the open quarantines of the chunk's customers and meter;
    their rows are kept back as ``quarantined`` with the quarantine as evidence. After
    sending, an answer whose code blames the customer (or the meter) opens a quarantine.
    """

    def __init__(self, customer_key: str = "stripe_customer_id") -> None:
        # The payload key that names the customer: a ``resource_missing`` answer whose param
        # is that key blames the customer.
        self.customer_key = customer_key

    def keep_back(self, database: Any, rows: Sequence[LedgerRow]) -> dict[int, KeptBack]:
        """Rows of a quarantined customer, or every row of a paused meter (one query)."""
        if not rows:
            return {}
        found = store.find_open(
            database, (row.customer for row in rows), (row.event_name for row in rows)
        )
        if not found:
            return {}
        kept: dict[int, KeptBack] = {}
        for row in rows:
            # A paused meter wins: releasing the customer alone would not let the row out.
            quarantine = found.get((store.METER, row.event_name)) or found.get(
                (store.CUSTOMER, row.customer)
            )
            if quarantine is not None:
                kept[row.id] = KeptBack(MeterReport.QUARANTINED, quarantine.evidence())
        return kept

    def observe(
        self, database: Any, rows: Sequence[LedgerRow], answers: Sequence[SendResult]
    ) -> None:
        """Quarantine a customer (or pause a meter) that Stripe refused on the request itself.

        Stripe refuses an unknown customer or an archived meter in its asynchronous error
        report (the webhook handles those), and the emulator does the same; an answer on the
        request with one of those codes is taken the same way should Stripe ever send one.
        """
        opened: set[tuple[str, str]] = set()
        for row, answer in zip(rows, answers, strict=True):
            if answer.outcome is not Outcome.REJECTED:
                continue
            scope = store.blame(answer.code, answer.param, self.customer_key)
            if scope is None:
                continue
            subject = row.customer if scope == store.CUSTOMER else row.event_name
            if (scope, subject) in opened:
                continue
            opened.add((scope, subject))
            store.start(
                database, scope, subject, str(answer.code), answer.error or str(answer.code)
            )
