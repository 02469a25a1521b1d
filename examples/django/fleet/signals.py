"""The hook on sensor changes: any saved or deleted Device queues its company's report."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .billing import report_company
from .models import Device


@receiver(post_save, sender=Device)
@receiver(post_delete, sender=Device)
def device_changed(sender: type[Device], instance: Device, **kwargs: Any) -> None:
    """Queue the company's report once the change is committed.

    on_commit, not now: the worker reads the count from the database on its own connection,
    and may run within milliseconds. Queued inside the transaction, it could count before
    the commit (and report the old count until the next hour), or report a change that is
    then rolled back. Outside a transaction, on_commit runs the callback at once.
    """
    company_id = instance.company_id
    transaction.on_commit(lambda: report_company(company_id))
