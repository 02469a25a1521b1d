"""The host's app: companies, their plans and their devices."""

from django.apps import AppConfig


class FleetConfig(AppConfig):
    """Connects the device signals that tell sensormeter a company's count changed."""

    name = "fleet"

    def ready(self) -> None:
        """Register the signal handlers (Django's documented place for it)."""
        from . import signals  # noqa: F401
