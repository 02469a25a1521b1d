"""Gates: what may keep a report back before it is sent (the anomaly guard, the quarantine).

The reporter asks each gate, in order, about the rows it is about to send. A row a gate keeps
back is written to the ledger with the gate's status (``held``, ``quarantined``) and its
evidence, and is not sent; it leaves only by an explicit release or recount. After sending,
every gate sees Stripe's answers (the quarantine learns of a refused customer there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .ledger import LedgerRow
from .meters.base import SendResult


@dataclass(frozen=True)
class KeptBack:
    """A gate's decision not to send a row: the ledger status it gets, and why (JSON-able)."""

    status: str
    evidence: dict[str, Any] = field(default_factory=dict)


class Gate(Protocol):
    """Decides, before sending, which rows must not go out now; learns from the answers."""

    def keep_back(self, database: Any, rows: Sequence[LedgerRow]) -> dict[int, KeptBack]:
        """The rows (by ledger id) that must not be sent now, with status and evidence."""
        ...

    def observe(
        self, database: Any, rows: Sequence[LedgerRow], answers: Sequence[SendResult]
    ) -> None:
        """See Stripe's answer to each row that was sent (same order); may not raise."""
        ...
