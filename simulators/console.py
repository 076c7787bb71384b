"""The simulators' line-based stdin control, shared by every ``python -m simulators.X``."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable


def serve_stdin(handle: Callable[[str], str | None], *, help_text: str = "",
                quit_words: tuple[str, ...] = ("quit", "exit")) -> None:
    """Answer each stdin line with ``handle(line)`` until a quit word or Ctrl-C.

    A ``ValueError`` or ``OSError`` from ``handle`` is printed as ``error: ...`` and the
    simulator goes on. When stdin ends (the simulator runs in the background with stdin
    closed) it keeps serving until killed.
    """
    try:
        for line in sys.stdin:
            word = line.strip().lower()
            if word in quit_words:
                return
            try:
                answer = help_text if word == "help" and help_text else handle(line)
            except (ValueError, OSError) as exc:
                answer = f"error: {exc}"
            if answer:
                print(answer, flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        return
