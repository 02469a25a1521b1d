"""Quarantine: customers Stripe refuses, and a meter Stripe refuses, stop being sent to.

``store`` opens, finds and closes quarantines; ``gate`` keeps their reports back before
sending; ``listing`` shows them; ``release`` (imported on its own: it sends through the
reporter) lets them flow again. See docs/operations.md, "Quarantined customers and paused
meters".
"""

from .gate import QuarantineGate
from .store import CUSTOMER, METER, OpenQuarantine, blame, open_quarantines, start

__all__ = [
    "CUSTOMER",
    "METER",
    "OpenQuarantine",
    "QuarantineGate",
    "blame",
    "open_quarantines",
    "start",
]
