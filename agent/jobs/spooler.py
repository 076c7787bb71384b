"""One spooler per printer: the next job, the printer's word before, the bytes, its word after.

For each job, in queue order (a group's later members wait for the earlier ones):

1. The printer is asked for its status (:meth:`Printer.query_status`, bounded by the
   printer's ``status_timeout_ms``). Paper out, head open, paused, offline, an unknown
   status or no connection holds the job (``held`` with that code); the spooler asks again
   every ``hold_poll_s`` and at every state change of the printer, and goes on by itself.
2. ``printing`` is stored (and reported) before the first byte leaves: a job found in that
   state after a crash may have printed, and is reported ``uncertain``, never resent.
3. The bytes go out whole, within ``send_timeout_s``. A failure while sending leaves the
   job ``uncertain`` (part of it may have printed).
4. A ZPL printer is asked (``~HS``) every ``confirm_poll_s`` until no format and no label
   is left in its buffer: ``printed``. A fault meanwhile (paper out mid-job) is reported on
   the job (``printing`` with the fault's code) and waited out; no progress for
   ``confirm_timeout_s`` of ready time leaves it ``uncertain``. Other languages cannot say
   whether a label printed: ``sent``, with the reason.

One job is at a printer at a time, so the printer's buffer counts belong to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from agent.config import PrintJobsConfig
from agent.devices.printer import Printer
from agent.devices.readings import StateChange
from agent.errors import AgentError, DeviceError, OutboxFull
from agent.jobs.print_model import WAITING, JobState, PrintJob
from agent.tasks import task_name

if TYPE_CHECKING:
    from agent.jobs.print_service import PrintService

log = logging.getLogger("agent.jobs.print")


class Spooler:
    """Sends one printer's jobs, one at a time."""

    def __init__(self, printer: Printer, service: PrintService, config: PrintJobsConfig) -> None:
        self.printer = printer
        self.service = service
        self.config = config
        self.wake = asyncio.Event()
        self.current: PrintJob | None = None

    async def run(self) -> None:
        with self.printer.bus.subscribe(StateChange, device=self.printer.name) as changes:
            watcher = asyncio.create_task(self._watch(changes),
                                          name=task_name(f"print.{self.printer.name}.watch"))
            try:
                while True:
                    self.wake.clear()
                    try:
                        job = await self.service.next_for(self.printer.name)
                    except AgentError as exc:  # a group member's state could not be stored
                        log.error("print queue of %s: %s", self.printer.name, exc)
                        await self._nap(self.config.hold_poll_s)
                        continue
                    if job is None:
                        await self.wake.wait()
                        continue
                    self.current = job
                    try:
                        await self._run_job(job)
                    except OutboxFull as exc:
                        # The job's state could not be stored: it stays where it was.
                        log.error("print job %s waits: %s", job.id, exc)
                        await self._nap(self.config.hold_poll_s)
                    except Exception as exc:
                        # A bug must not stop the printer's queue or restart the agent in a
                        # loop on the same job: this job ends, the next ones go on.
                        log.exception("print job %s: unexpected failure", job.id)
                        await self._give_up(job, exc)
                    finally:
                        self.current = None
            finally:
                watcher.cancel()

    async def _watch(self, changes: object) -> None:
        async for _change in changes:  # type: ignore[attr-defined]
            self.wake.set()

    async def _nap(self, seconds: float) -> None:
        """Sleep until ``seconds`` pass, the printer changes state or the queue changes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.wake.wait()

    # ------------------------------------------------------------ one job
    async def _run_job(self, job: PrintJob) -> None:
        service = self.service
        if job.expired():
            await service.expire(job)
            return
        blocker = await self._blocker()
        if blocker is not None:
            code, message = blocker
            if job.state is not JobState.HELD or job.code != code:
                await service.transition(job, JobState.HELD, code, message, expect=WAITING)
            self.wake.clear()
            delay = self.config.hold_poll_s
            if job.expires_at is not None:
                delay = max(0.0, min(delay, job.expires_at - service.now()))
            await self._nap(delay)
            return
        data = await service.load_data(job)
        if data is None:
            return  # failed with data_expired by load_data
        if job.expired():  # the status request took time
            await service.expire(job)
            return
        if not await service.transition(job, JobState.PRINTING, None,
                                        f"sending {len(data)} bytes to {self.printer.name}",
                                        expect=WAITING):
            return  # cancelled or expired meanwhile
        limit_s = self._send_limit_s(len(data))
        try:
            async with asyncio.timeout(limit_s):
                await self.printer.send(data)
        except TimeoutError:
            await self._uncertain(job, "send_timeout",
                                  f"{self.printer.name} did not take the job's {len(data)} "
                                  f"bytes within {limit_s:g} s")
            return
        except DeviceError as exc:
            await self._uncertain(job, "send_failed", f"{self.printer.name}: {exc} while sending")
            return
        if self.printer.confirms_printing:
            await self._confirm(job)
        else:
            why = ("the printer has no return channel" if not self.printer.can_report_status
                   else f"{self.printer.language.name.upper()} printers cannot report "
                        f"whether a label has printed")
            await self._finish(job, JobState.SENT, None,
                               f"{self.printer.name} took all {len(data)} bytes; {why}")

    def _send_limit_s(self, size: int) -> float:
        """``send_timeout_s``, plus the wire time of ``size`` bytes on a serial line (10 bits
        a byte: start, 8 data, stop): a 200 kB PDF label takes 208 s at 9600 baud."""
        conn = self.printer.connection
        if conn.scheme != "serial":
            return self.config.send_timeout_s
        baud = int(conn.params.get("baud", self.printer.language.line.baud))
        return round(self.config.send_timeout_s + size * 10 / baud, 1)

    async def _blocker(self) -> tuple[str, str] | None:
        """Why the printer cannot take a job now, as (code, message); ``None``: it can."""
        printer = self.printer
        if not printer.connected:
            return "disconnected", printer.message or f"{printer.name} is not connected"
        if not printer.can_report_status:
            return None
        try:
            status = await printer.query_status()
        except DeviceError as exc:
            return exc.code if exc.code != "device_error" else "disconnected", str(exc)
        if status.ready:
            return None
        code = status.blocking_faults[0] if status.blocking_faults else "status_unknown"
        return code, f"{printer.name}: {status.message}"

    async def _confirm(self, job: PrintJob) -> None:
        """Ask a ZPL printer until the job has left its buffer (see the module docstring)."""
        printer = self.printer
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        last: tuple[int | None, int | None] | None = None
        stalled: str | None = None
        while True:
            await asyncio.sleep(self.config.confirm_poll_s)
            try:
                status = await printer.query_status()
            except DeviceError as exc:
                await self._uncertain(job, "send_failed",
                                      f"{printer.name}: {exc} before it confirmed the job")
                return
            counts = (status.formats_in_buffer, status.labels_remaining)
            if counts == (0, 0):
                await self._finish(job, JobState.PRINTED, None,
                                   f"{printer.name} reports the job printed (nothing left in "
                                   f"its buffer)")
                printer.jobs_printed += 1
                printer.labels_printed += job.labels or 0
                return
            if status.blocking_faults and status.ready is False:
                code = status.blocking_faults[0]
                if stalled != code:
                    stalled = code
                    left = (f"; {status.labels_remaining} label(s) of the job still to print"
                            if status.labels_remaining else
                            "; the job waits in the printer's buffer"
                            if status.formats_in_buffer else "")
                    await self._note(job, code, f"{printer.name} stopped: {status.message}"
                                               f"{left}; it goes on when the printer is fixed")
                idle_since = loop.time()
                continue
            if stalled is not None and status.ready:
                stalled = None
                await self._note(job, None, f"{printer.name} printing again")
            if counts != last:
                last, idle_since = counts, loop.time()
            elif loop.time() - idle_since > self.config.confirm_timeout_s:
                await self._uncertain(job, "confirm_timeout",
                                      f"{printer.name} still reports {counts[0]} format(s) and "
                                      f"{counts[1]} label(s) in its buffer after "
                                      f"{self.config.confirm_timeout_s:g} s without progress")
                return

    async def _give_up(self, job: PrintJob, exc: Exception) -> None:
        what = f"internal error: {type(exc).__name__}: {exc}"
        try:
            if job.state is JobState.PRINTING:
                await self._uncertain(job, "internal_error", what)
            else:
                await self.service.transition(job, JobState.FAILED, "internal_error", what,
                                              expect=WAITING)
        except Exception:
            log.exception("print job %s: its failure could not be stored", job.id)
            await self._nap(self.config.hold_poll_s)

    async def _note(self, job: PrintJob, code: str | None, message: str) -> None:
        """Report a stall (or its end) on a printing job; news only, so a full outbox skips it."""
        try:
            await self.service.transition(job, JobState.PRINTING, code, message,
                                          expect={JobState.PRINTING})
        except AgentError as exc:
            log.error("print job %s: %s (not reported: %s)", job.id, message, exc)

    async def _finish(self, job: PrintJob, state: JobState, code: str | None,
                      message: str) -> None:
        """Store what became of a job whose bytes left: retried until it is stored (the
        outbox may be full), because a job left ``printing`` is ``uncertain`` after a restart."""
        while True:
            try:
                await self.service.transition(job, state, code, message,
                                              expect={JobState.PRINTING})
                return
            except AgentError as exc:
                log.error("print job %s is %s, which cannot be stored yet (%s); retrying in "
                          "%g s", job.id, state.value, exc, self.config.hold_poll_s)
                await asyncio.sleep(self.config.hold_poll_s)

    async def _uncertain(self, job: PrintJob, code: str, what: str) -> None:
        """The job may or may not have printed: say so, and never resend it by itself."""
        await self._finish(
            job, JobState.UNCERTAIN, code,
            f"{what}; it may or may not have printed. Check the parcel and reprint with "
            f"print.reprint if it has no label")
