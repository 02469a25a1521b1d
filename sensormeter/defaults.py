"""Every limit and default that more than one module needs, defined once (as rq's defaults.py).

Settings a deployment may change live in :mod:`sensormeter.settings`; these are fixed by
Stripe, by RQ or by the design, and each says why it is what it is.
"""

from __future__ import annotations

# Stripe's limits (../shared/reference/stripe-meters.md).
MAX_IDENTIFIER = 100  # characters in a meter event identifier
# The oldest hour a report may stand for: Stripe accepts events up to 35 days old; an hour
# is kept as margin for a job that runs late. Also the largest catch-up window.
MAX_PAST_HOURS = 35 * 24 - 1
# The shortest ledger retention: Stripe's 35 days (no report older can be sent, and catch-up,
# backfill, the period-close late check and quarantine releases all look back within them),
# a 72-hour invoice grace, and margin. Default 400 days: 13 months of disputes and audits.
MIN_RETENTION_DAYS = 40
DEFAULT_RETENTION_DAYS = 400
STREAM_BATCH_SIZE = 100  # events per v2 meter event stream request (Stripe's maximum)
SUMMARY_PAGE_SIZE = 100  # meter event summaries per list request (Stripe's maximum)

# The ledger.
ERROR_LIMIT = 500  # characters of an error message a ledger row keeps

# RQ.
RESULT_TTL_SECONDS = 3600  # how long RQ keeps a finished job's result
COALESCE_SECONDS = 3600  # how long a queued on-demand report absorbs further calls
ENQUEUE_BATCH = 200  # prepared jobs per Redis pipeline when queueing many
CATCHUP_TIMEOUT_SECONDS = 3600  # the catch-up scans the fleet's ledger over its window
# The fan-out pages and records the whole fleet in one job: 219 s at 1,000,000 organizations
# on the first recording (docs/performance.md), so the jobs' 300 s would cut a larger fleet.
FANOUT_TIMEOUT_SECONDS = 3600
STALE_MARGIN_SECONDS = 300  # beyond a job's whole lifetime, a pending row is abandoned
