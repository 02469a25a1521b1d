"""The host's own schema. sensormeter never creates or alters these tables; it reads them
through fleet/usage.py. Table and column names are Django's, not sensormeter's defaults."""

from django.db import models
from django.utils import timezone


class Company(models.Model):
    """A customer: sensormeter's "organization", identified by str(pk)."""

    name = models.CharField(max_length=200)
    stripe_customer = models.CharField(max_length=255, blank=True, default="")


class Plan(models.Model):
    """A company's Stripe subscription, as the host's billing code mirrors it."""

    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="plans")
    state = models.CharField(max_length=32)  # Stripe's subscription status: active, past_due...
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True, db_index=True)


class Device(models.Model):
    """One sensor. Billed while enabled, installed and not retired."""

    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="devices")
    serial = models.CharField(max_length=64)
    enabled = models.BooleanField(default=True)
    installed_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)
