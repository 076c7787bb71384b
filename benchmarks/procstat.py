"""What the long benchmarks watch in a process: memory and CPU time from ``/proc``, and
what the agent logged at WARNING or above."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections import Counter
from pathlib import Path

_TICKS_S = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of ``pid`` (``VmRSS``); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def trimmed_rss_bytes() -> int:
    """This process's resident memory after glibc hands its free heap pages back
    (``malloc_trim(0)``, every arena): what is still in use, without the fragmentation
    that glibc keeps. The same as :func:`rss_bytes` where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_bytes()


def cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds ``pid`` has used (every thread); 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _TICKS_S  # utime, stime


def mb(size: float) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


def folder_size(folder: Path) -> tuple[int, int]:
    """Files below ``folder`` and their bytes."""
    files = size = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                size += os.stat(os.path.join(root, name)).st_size
                files += 1
            except OSError:
                pass  # removed meanwhile
    return files, size


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (0 with fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


class LogTally(logging.Handler):
    """Counts the records at WARNING and above, grouped by level, logger and message
    format; each group is named by its first message."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self._first: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.levelname} {record.name}: {record.msg}"
        if key not in self._first:
            self._first[key] = f"{record.levelname} {record.name}: {record.getMessage()}"
        self.counts[key] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, int]:
        """Count per group, the group named by its first message."""
        return {self._first[key]: count for key, count in self.counts.items()}

    def top(self, most: int = 5) -> list[str]:
        return [f"{count} x {self._first[key]}" for key, count in self.counts.most_common(most)]
