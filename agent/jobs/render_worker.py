"""Pictures (PNG, PDF) are rendered in a worker process with a time limit.

Why a process: PDFium cannot be interrupted, and a small crafted PDF can keep it busy for
minutes (a 24 kB file took 106 s in review); a thread running it could never be stopped.
In a process the render gets ``jobs.print.render_timeout_s``: past it the process is
killed, the job fails with ``render_timeout`` and the next render starts a new process.
The memory a large picture needed goes back to the system with the process, too.

One worker process (``multiprocessing`` *spawn*: no fork of a threaded agent), started on
the first picture and kept; one render at a time. The agent side waits for it in a thread
(``asyncio.to_thread``), never on the loop. If the agent dies, the worker reads end of
file on its pipe and exits. Raw documents and packing slips are cheap and render in the
calling thread (:func:`agent.jobs.documents.render`).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from agent.devices.settings import PrinterSettings
from agent.jobs.documents import PICTURE_FORMATS, DocumentError, Limits, Rendered, render

log = logging.getLogger("agent.jobs.render")

_START_TIMEOUT_S = 30.0
"""How long a new worker may take to start (imports Pillow, PDFium) before it counts."""


def _serve(conn: Connection) -> None:
    """The worker process: render requests until the agent closes the pipe."""
    conn.send(("ready",))  # its imports (Pillow, PDFium) are done: time limits start now
    while True:
        try:
            document, settings, copies, limits = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", render(document, settings, copies=copies, limits=limits)))
        except DocumentError as exc:
            conn.send(("error", exc.code, exc.message))
        except MemoryError:
            conn.send(("error", "too_large", "the picture needs more memory than the "
                                             "render worker has"))
        except Exception as exc:  # a document that breaks Pillow or PDFium in a new way
            conn.send(("error", "invalid_document",
                       f"the document could not be rendered: {type(exc).__name__}: {exc}"))


class RenderWorker:
    """Renders documents; pictures in the worker process, with a time limit."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._turn = asyncio.Lock()
        self.renders = 0
        self.killed = 0

    async def render(self, document: Mapping[str, Any], settings: PrinterSettings, *,
                     copies: int, limits: Limits) -> Rendered:
        """Validate and convert ``document``; raises :class:`DocumentError`."""
        if document.get("format") not in PICTURE_FORMATS:
            return await asyncio.to_thread(render, document, settings, copies=copies,
                                           limits=limits)
        async with self._turn:  # waiting renders wait here, not in executor threads
            return await asyncio.to_thread(self._call, dict(document), settings, copies,
                                           limits)

    def _call(self, document: dict[str, Any], settings: PrinterSettings, copies: int,
              limits: Limits) -> Rendered:
        with self._lock:
            conn = self._start()
            conn.send((document, settings, copies, limits))
            if not conn.poll(self.timeout_s):
                self.killed += 1
                self._stop()
                raise DocumentError(
                    f"rendering the {document.get('format', '').upper()} took longer than "
                    f"{self.timeout_s:g} s (jobs.print.render_timeout_s) and was stopped; "
                    f"simplify the document (fewer vector objects, a bitmap page) or send it "
                    f"as ZPL", code="render_timeout")
            try:
                reply = conn.recv()
            except (EOFError, OSError) as exc:
                self._stop()
                raise DocumentError(f"the render worker died while rendering the document "
                                    f"({exc!r})", code="invalid_document") from exc
            self.renders += 1
        if reply[0] == "ok":
            rendered: Rendered = reply[1]
            return rendered
        raise DocumentError(reply[2], code=reply[1])

    def _start(self) -> Connection:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            return self._conn
        self._stop()
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(theirs,), daemon=True,
                                        name="bench-render")
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        try:
            if not ours.poll(_START_TIMEOUT_S) or ours.recv() != ("ready",):
                raise EOFError(f"no ready message within {_START_TIMEOUT_S:g} s")
        except (EOFError, OSError) as exc:
            self._stop()
            raise DocumentError(f"the render worker did not start: {exc}",
                                code="render_timeout") from exc
        log.info("render worker started (pid %s)", process.pid)
        return ours

    def _stop(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is not None and process.is_alive():
            process.kill()
            process.join(5)

    def close(self) -> None:
        """End the worker at agent stop, at once (a render still running gets an error)."""
        process = self._process
        if process is not None and process.is_alive():
            process.kill()
