"""The emulator's read side: the meter list, event summaries and Stripe's pagination."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from .events import ReceivedEvent
from .replies import WHOLE_NUMBER, Reply, check

_WINDOWS = {"hour": 3600, "day": 86400}


def stable_id(prefix: str, *parts: object) -> str:
    """Derive an id that stays the same across runs for the same inputs."""
    return f"{prefix}_{hashlib.sha256(repr(parts).encode()).hexdigest()[:24]}"


def int_param(query: Mapping[str, str], name: str) -> int:
    """Read a required whole-number query parameter."""
    raw = query.get(name, "")
    check(bool(raw), f"Missing required param: {name}.", name)
    check(bool(WHOLE_NUMBER.fullmatch(raw)), f"Invalid integer: {raw}", name)
    return int(raw)


def page(items: list[dict[str, Any]], query: Mapping[str, str], url: str) -> dict[str, Any]:
    """Cut one page out of a list the way Stripe's cursor pagination does (default 10).

    Both documented cursors work: ``starting_after`` pages forward, ``ending_before`` back.
    """
    raw = query.get("limit", "10")
    limit = int(raw) if WHOLE_NUMBER.fullmatch(raw) else 0
    check(1 <= limit <= 100, "Invalid limit: must be between 1 and 100.", "limit")
    after, before = query.get("starting_after"), query.get("ending_before")
    problem = "You may only specify one of these parameters: ending_before, starting_after."
    check(not (after and before), problem, "ending_before")
    ids = [item["id"] for item in items]
    if before:
        # Stripe documents ending_before as the way back: the page just before the cursor,
        # in the same order, with has_more saying whether anything is left before it.
        check(before in ids, f"No such object: '{before}'", "ending_before")
        stop = ids.index(before)
        first = max(0, stop - limit)
        return {"object": "list", "data": items[first:stop], "has_more": first > 0, "url": url}
    start = 0
    if after:
        check(after in ids, f"No such object: '{after}'", "starting_after")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return {"object": "list", "data": page, "has_more": len(items) > start + limit, "url": url}


def meter_list(
    meters: Mapping[str, int], customer_key: str, value_key: str
) -> list[dict[str, Any]]:
    """Describe one `last` meter per event name seen, plus the default meter."""
    return [
        {
            "id": stable_id("mtr", name),
            "object": "billing.meter",
            "event_name": name,
            "display_name": name.replace("_", " ").capitalize(),
            "default_aggregation": {"formula": "last"},
            "customer_mapping": {"event_payload_key": customer_key, "type": "by_id"},
            "value_settings": {"event_payload_key": value_key},
            "status": "active",
            "livemode": False,
            "created": created,
        }
        for name, created in meters.items()
    ]


def summaries(
    meters: list[dict[str, Any]],
    events: Sequence[ReceivedEvent],
    meter_id: str,
    query: Mapping[str, str],
    url: str,
) -> dict[str, Any]:
    """Aggregate one customer's events on a meter with the `last` formula, per window."""
    meter = next((m for m in meters if m["id"] == meter_id), None)
    if meter is None:
        message = f"No such billing meter: '{meter_id}'"
        raise Reply(404, message, "id", code="resource_missing")
    customer = query.get("customer", "")
    check(bool(customer), "Missing required param: customer.", "customer")
    start, end = int_param(query, "start_time"), int_param(query, "end_time")
    for param, moment in (("start_time", start), ("end_time", end)):
        check(moment % 60 == 0, f"Invalid {param}: must be aligned with minutes.", param)
    check(start < end, "Invalid end_time: must be after start_time.", "end_time")
    grouping = query.get("value_grouping_window")
    size = _WINDOWS.get(grouping or "")
    param = "value_grouping_window"
    check(grouping is None or size is not None, f"Invalid {param}: hour or day.", param)
    # Stripe documents that grouped queries must start and end on window boundaries.
    check(
        not size or (start % size == 0 and end % size == 0),
        f"Invalid start_time/end_time: must align with {grouping} boundaries.",
        "start_time",
    )
    latest: dict[int, ReceivedEvent] = {}
    for event in events:  # arrival order, so ">=" lets a later arrival win a tie
        if event.event_name != meter["event_name"] or event.customer != customer:
            continue
        if start <= event.timestamp < end:
            window = event.timestamp - event.timestamp % size if size else start
            if window not in latest or event.timestamp >= latest[window].timestamp:
                latest[window] = event
    windows: list[tuple[int, int, ReceivedEvent | None]]
    if size:  # only windows with events, newest first as Stripe lists them
        windows = [(lo, lo + size, latest[lo]) for lo in sorted(latest, reverse=True)]
    else:  # Stripe documents a single summary for the whole range, even an empty one
        windows = [(start, end, latest.get(start))]
    items = [
        {
            "id": stable_id("mtrusg", meter_id, customer, lo, hi),
            "object": "billing.meter_event_summary",
            "aggregated_value": float(event.value) if event else 0.0,
            "start_time": lo,
            "end_time": hi,
            "livemode": False,
            "meter": meter_id,
        }
        for lo, hi, event in windows
    ]
    return page(items, query, url)
