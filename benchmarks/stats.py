"""What every benchmark prints: the machine it ran on, and percentiles."""

from __future__ import annotations

import os
import platform


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` (0..1) of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def machine() -> str:
    """One line: Python version, CPU architecture, kernel and CPU count."""
    return (f"Python {platform.python_version()} on {platform.machine()}, "
            f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs")
