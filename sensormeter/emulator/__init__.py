"""A local HTTP emulator of Stripe's Billing Meter endpoints, for tests and local runs.

Development and tests only: nothing in the library's core imports this package.
"""

from .server import ReceivedEvent, StripeEmulator, serve

__all__ = ["ReceivedEvent", "StripeEmulator", "serve"]
