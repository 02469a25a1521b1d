"""A local HTTP emulator of Stripe's Billing Meter endpoints, for tests and local runs.

Development and tests only: nothing in the library's core imports this package.
"""

from .events import ReceivedEvent
from .server import StripeEmulator, serve

__all__ = ["ReceivedEvent", "StripeEmulator", "serve"]
