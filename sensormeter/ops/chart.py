"""The ``whatif --plot`` picture: one organization's hourly counts, with the billed ``last``.

matplotlib is an optional extra (``pip install 'sensormeter[plot]'``): it is imported only
when a picture is asked for, so nothing else depends on it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from datetime import datetime
from types import ModuleType

from ..errors import SensormeterError


class PlotUnavailable(SensormeterError):
    """Raised when a plot is asked for and matplotlib is not installed."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"--plot needs matplotlib ({reason}): pip install 'sensormeter[plot]'")


def require_matplotlib() -> None:
    """Check that a plot can be drawn, before any work (raises PlotUnavailable)."""
    _pyplot()


def _pyplot() -> ModuleType:
    # Its first run logs building a font cache at info: not news for whoever asked for a PNG.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")  # a file, never a window: this runs on servers and dynos
        return importlib.import_module("matplotlib.pyplot")
    except ImportError as exc:
        raise PlotUnavailable(str(exc)) from None


def plot_hourly(
    path: str,
    organization_id: str,
    counts: Sequence[tuple[datetime, int]],
    last: int | None,
    span: tuple[datetime, datetime],
    title: str,
) -> None:
    """Draw the hourly counts as steps and the billed ``last`` as a line; write a PNG.

    ``span`` is the [start, end) of the range, so hours without a report show as gaps.
    """
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(10, 4), dpi=100)
    try:
        if counts:
            hours, values = zip(*counts, strict=True)
            axes.step(hours, values, where="post", marker=".", label="hourly count (delivered)")
        if last is not None:
            axes.axhline(last, color="tab:red", linestyle="--", label=f"billed (last): {last}")
        axes.set_title(title)
        axes.set_xlabel("hour (UTC)")
        axes.set_ylabel(f"active sensors of {organization_id}")
        axes.set_xlim(*span)
        axes.set_ylim(bottom=0)
        axes.legend(loc="lower left")
        figure.autofmt_xdate()
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        pyplot.close(figure)
