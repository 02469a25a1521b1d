"""sensormeter's own tables added after the first release, in the shape migration 3 made them.

Migration 3 creates them from these definitions on a database made before it, and
``init-db`` creates them on a new one, so both get the same DDL. They are frozen like the
migrations: a later change is a new migration, and a new field here at the same time.
"""

from __future__ import annotations

import peewee

from ..db import BaseModel, utcnow


class BillableInterval(BaseModel):
    """A stretch of UTC hours during which an organization was billable under one customer.

    The hourly run records it: an organization billable now under the customer of its
    latest interval extends that interval to the current hour; otherwise a new one starts.
    ``first_hour`` and ``last_hour`` are hour starts, both included.
    """

    id = peewee.AutoField()
    organization_id = peewee.TextField()
    stripe_customer_id = peewee.TextField()
    first_hour = peewee.DateTimeField()
    last_hour = peewee.DateTimeField()
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "sensormeter_billable_history"
        indexes = (
            # An organization's intervals, newest last (record, explain, catch-up).
            (("organization_id", "last_hour"), False),
            # A shared customer's organizations at a past hour.
            (("stripe_customer_id", "last_hour"), False),
        )


class Quarantine(BaseModel):
    """A customer (or a whole meter) whose events Stripe refuses for a reason of its own.

    ``scope`` is ``customer`` (``subject`` is the Stripe customer id) or ``meter``
    (``subject`` is the meter's event name). Open while ``released_at`` is null.
    """

    CUSTOMER = "customer"
    METER = "meter"

    id = peewee.AutoField()
    scope = peewee.TextField()
    subject = peewee.TextField()
    code = peewee.TextField()
    reason = peewee.TextField()
    since = peewee.DateTimeField(default=utcnow)
    released_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "sensormeter_quarantine"
        indexes = ((("scope", "subject"), False),)


ADDED_TABLES: tuple[type[BaseModel], ...] = (BillableInterval, Quarantine)
