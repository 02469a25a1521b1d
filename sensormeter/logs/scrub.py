"""Secret scrubbing: Stripe keys, webhook signing secrets and URL passwords never leave."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

# Stripe keys, webhook signing secrets and the password part of URLs (redis://:pw@host,
# postgresql://u:pw@host).
_SECRET_PATTERNS = [
    (re.compile(r"\b(sk|rk|pk)_(live|test)_[A-Za-z0-9_]+"), r"\1_\2_***"),
    (re.compile(r"\bwhsec_[A-Za-z0-9_]+"), "whsec_***"),
    (
        # The look-behind starts a scheme only where a word starts: without it, a long run
        # of letters (a blob in a traceback) costs quadratic time, tried from every letter.
        re.compile(
            r"(?<![a-z0-9+.\-])(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@"
        ),
        r"\g<scheme>\g<user>:***@",
    ),
]

# Every secret the patterns match contains one of these.
_MARKERS = ("_live_", "_test_", "whsec_", "://")


def scrub(text: str) -> str:
    """Remove Stripe keys, webhook secrets and URL passwords from a string."""
    # Most values hold none of them: four substring tests cost less than three regexes.
    if not any(marker in text for marker in _MARKERS):
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub_value(value: Any) -> Any:
    """``value`` with every string in it scrubbed (through dicts, lists and tuples)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v) for v in value]
    return value


def scrub_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: scrub every string value of the event."""
    for key, value in list(event_dict.items()):
        event_dict[key] = scrub_value(value)
    return event_dict
