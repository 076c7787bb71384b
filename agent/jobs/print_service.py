"""The print-job queue: intake, states, cancel and reprint, restart recovery, status.

The daemon's ``print`` service. Jobs arrive through the ``print.submit`` command (or
:meth:`PrintService.submit` from the pack job), are validated and rendered for their
printer (:func:`agent.jobs.documents.render`, in a worker thread: PDF rendering is CPU
work), stored with their bytes, and handed to their printer's :class:`Spooler`.

Every state change is one ``print_job`` event (critical: never evicted from the outbox)
written in the same transaction as the job's row, so the central system learns every
state in order and a restart resumes from the state it was told. A job id seen before
is never printed again: its last state is sent again (``duplicate: true``).

After a restart, jobs that were ``printing`` become ``uncertain`` (or are queued again
with ``jobs.print.uncertain_policy = "reprint"``); waiting jobs wait on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

from agent.clock import ClockWatch
from agent.commands import CommandChannel, parse_time
from agent.config import PrintJobsConfig
from agent.devices.manager import DeviceManager
from agent.devices.printer import Printer
from agent.devices.readings import DeviceState
from agent.devices.settings import PrinterSettings
from agent.errors import AgentError, CommandError
from agent.jobs import print_store
from agent.jobs.documents import DocumentError, Limits
from agent.jobs.print_model import (
    CANCEL_SCHEMA,
    DONE,
    FINAL,
    GET_SCHEMA,
    LIST_SCHEMA,
    OPEN,
    REPRINT_SCHEMA,
    REPRINTABLE,
    SUBMIT_SCHEMA,
    WAITING,
    JobState,
    PrintJob,
)
from agent.jobs.render_worker import RenderWorker
from agent.jobs.spooler import Spooler
from agent.outbox import Outbox, Priority, iso_time
from agent.store import Store
from agent.tasks import task_name

log = logging.getLogger("agent.jobs.print")

_TICK_S = 0.5
"""How often waiting jobs are checked for expiry."""
_PRUNE_EVERY_S = 3600.0


class PrintService:
    """Every print job of the bench, and one :class:`Spooler` per enabled printer."""

    name = "print"

    def __init__(self, config: PrintJobsConfig, devices: DeviceManager, store: Store,
                 outbox: Outbox, commands: CommandChannel,
                 clock: ClockWatch | None = None) -> None:
        self.config = config
        self._clock = clock
        self.devices = devices
        self._store = store
        self._outbox = outbox
        self._limits = Limits(max_bytes=config.max_job_bytes, max_pages=config.max_pages)
        self.renderer = RenderWorker(config.render_timeout_s)
        self.jobs: dict[str, PrintJob] = {}
        """Jobs not final (``uncertain`` included), in arrival order."""
        self._intake: dict[str, asyncio.Future[None]] = {}
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        """Called with the job's view after each state change is stored (the packing job
        follows its parcel's labels)."""
        self._admin = asyncio.Lock()
        self.spoolers = {name: Spooler(device, self, config)
                         for name, device in devices.devices.items()
                         if isinstance(device, Printer)}
        commands.register("print.submit", self.submit, args_schema=SUBMIT_SCHEMA, action=True)
        commands.register("print.cancel", self.cancel, args_schema=CANCEL_SCHEMA, action=True)
        commands.register("print.reprint", self.reprint, args_schema=REPRINT_SCHEMA,
                          action=True)
        commands.register("print.get", self.get, args_schema=GET_SCHEMA, local=True)
        commands.register("print.list", self.list, args_schema=LIST_SCHEMA, local=True)

    @staticmethod
    def now() -> float:
        return time.time()

    # ------------------------------------------------------------ service
    async def run(self, _daemon: object = None) -> None:
        try:
            await self._recover()
            async with asyncio.TaskGroup() as group:
                for name, spooler in self.spoolers.items():
                    group.create_task(spooler.run(), name=task_name(f"print.{name}"))
                group.create_task(self._housekeeping(), name=task_name("print.housekeeping"))
        finally:
            self.renderer.close()

    async def _recover(self) -> None:
        for job in await self._store.run(print_store.unfinished):
            self.jobs[job.id] = job
        if self.jobs:
            log.info("print queue resumed with %d unfinished jobs", len(self.jobs))
        await self._settle()

    async def _settle(self) -> None:
        """Move jobs no spooler or intake is working on out of states they cannot stay in.

        At start: ``printing`` jobs (the agent stopped while they were at the printer) and
        ``accepted`` ones. Later (every tick): the same for a job whose new state could not
        be stored (outbox full), so it is retried rather than stuck.
        """
        busy = {s.current.id for s in self.spoolers.values() if s.current is not None}
        for job in list(self.jobs.values()):
            if job.id in busy or job.id in self._intake:
                continue
            try:
                await self._settle_one(job)
            except AgentError as exc:
                log.error("print job %s stays %s for now: %s", job.id, job.state.value, exc)

    async def _settle_one(self, job: PrintJob) -> None:
        if job.state in OPEN and job.printer not in self.spoolers:
            await self.transition(job, JobState.FAILED, "unknown_printer",
                                  f"printer {job.printer!r} is no longer configured and "
                                  f"enabled", expect=OPEN)
        elif job.state is JobState.PRINTING and self.config.uncertain_policy == "reprint":
            await self.transition(job, JobState.QUEUED, "agent_restarted",
                                  "the agent stopped while this job was at the printer; "
                                  "printing it again (uncertain_policy = reprint)",
                                  attempt=job.attempt + 1, expect={JobState.PRINTING})
        elif job.state is JobState.PRINTING:
            await self.transition(job, JobState.UNCERTAIN, "agent_restarted",
                                  "the agent stopped while this job was at the printer; it "
                                  "may or may not have printed. Check the parcel and "
                                  "reprint with print.reprint if it has no label",
                                  expect={JobState.PRINTING})
        elif job.state is JobState.ACCEPTED:
            await self.transition(job, JobState.QUEUED, None, f"queued for {job.printer}",
                                  expect={JobState.ACCEPTED})

    async def _housekeeping(self) -> None:
        pruned_at = -_PRUNE_EVERY_S
        while True:
            await asyncio.sleep(_TICK_S)
            now = self.now()
            try:
                for job in list(self.jobs.values()):
                    if job.state in WAITING and job.expired(now):
                        await self.expire(job)
                    elif job.code == "waiting_for_group" and (
                            now - job.received_at > self.config.group_timeout_s):
                        self._poke()  # its spooler ends the wait (group_failed)
                await self._settle()
                if time.monotonic() - pruned_at > _PRUNE_EVERY_S:
                    pruned_at = time.monotonic()
                    await self.prune(now)
            except AgentError as exc:  # outbox full, disk trouble: try again next tick
                log.error("print queue housekeeping: %s", exc)

    async def prune(self, now: float) -> int:
        """Drop finished jobs' bytes after ``keep_data_s`` and forget them after
        ``retention_s``; not while the clock watch pauses age-based retention (a clock set
        ahead would forget jobs a repeated print.submit can still name, and print them
        again). Returns the jobs forgotten."""
        if self._clock is not None and self._clock.retention_paused:
            return 0
        forgotten: int = await self._store.run(print_store.prune, now - self.config.keep_data_s,
                                               now - self.config.retention_s)
        if forgotten:
            log.info("forgot %d print jobs older than %d s", forgotten, self.config.retention_s)
        return forgotten

    # ------------------------------------------------------------ states
    async def transition(self, job: PrintJob, state: JobState, code: str | None, message: str,
                         *, expect: Collection[JobState] | None = None,
                         attempt: int | None = None, clear_expiry: bool = False) -> bool:
        """Store and report ``job``'s new state; ``False`` (nothing done) if its state is
        no longer in ``expect``.

        Raises:
            OutboxFull: the state could not be stored; the job keeps its old state.
        """
        async with job.lock:
            if expect is not None and job.state not in expect:
                return False
            new = dataclasses.replace(job, state=state, code=code, message=message,
                                      attempt=attempt or job.attempt, updated_at=self.now(),
                                      expires_at=None if clear_expiry else job.expires_at)
            await self._outbox.enqueue(
                "print_job", new.view(), priority=Priority.CRITICAL,
                also=lambda db: print_store.save_state(db, new))
            old = job.state
            job.state, job.code, job.message = new.state, new.code, new.message
            job.attempt, job.updated_at, job.expires_at = new.attempt, new.updated_at, \
                new.expires_at
        if state in FINAL:
            self.jobs.pop(job.id, None)
        else:
            self.jobs.setdefault(job.id, job)
        log.log(logging.WARNING if state in (JobState.FAILED, JobState.UNCERTAIN)
                else logging.INFO, "print job %s on %s: %s -> %s%s: %s", job.id, job.printer,
                old.value, state.value, f" ({code})" if code else "", message)
        self._poke()
        view = job.view()
        for listener in self.listeners:
            listener(view)
        return True

    def _poke(self) -> None:
        for spooler in self.spoolers.values():
            spooler.wake.set()

    async def expire(self, job: PrintJob) -> None:
        assert job.expires_at is not None
        await self.transition(job, JobState.EXPIRED, "expired",
                              f"expired at {iso_time(job.expires_at)} before it could print",
                              expect=WAITING)

    async def load_data(self, job: PrintJob) -> bytes | None:
        data = await self._store.run(print_store.data, job.id)
        if data is None:
            await self.transition(job, JobState.FAILED, "data_expired",
                                  "the job's bytes are no longer stored", expect=WAITING)
        return data

    async def next_for(self, printer: str) -> PrintJob | None:
        """The first job ``printer`` may print now; group members wait for earlier ones."""
        for job in [j for j in self.jobs.values() if j.printer == printer]:
            if job.state not in (JobState.QUEUED, JobState.HELD):
                continue
            if job.group_id is not None and (job.group_seq or 1) > 1:
                verdict, why = await self._group_gate(job)
                if verdict == "fail":
                    await self.transition(job, JobState.FAILED, "group_failed", why,
                                          expect=WAITING)
                    continue
                if verdict == "wait":
                    if (job.state, job.code) != (JobState.HELD, "waiting_for_group"):
                        await self.transition(job, JobState.HELD, "waiting_for_group", why,
                                              expect=WAITING)
                    continue
            return job
        return None

    async def _group_gate(self, job: PrintJob) -> tuple[str, str]:
        assert job.group_id is not None and job.group_seq is not None
        members = await self._store.run(print_store.group_states, job.group_id)
        for seq in range(1, job.group_seq):
            if seq not in members:
                waited_s = self.now() - job.received_at
                if waited_s > self.config.group_timeout_s:
                    return "fail", (f"job number {seq} of group {job.group_id} did not arrive "
                                    f"within jobs.print.group_timeout_s = "
                                    f"{self.config.group_timeout_s:g} s")
                return "wait", f"waits for job {seq} of group {job.group_id} to arrive"
            other, state = members[seq]
            if state in (JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED):
                return "fail", (f"job {other} (number {seq} of group {job.group_id}) is "
                                f"{state.value}; the group does not print out of order")
            if state not in DONE:
                return "wait", (f"waits for job {other} (number {seq} of group "
                                f"{job.group_id}), {state.value}")
        return "go", ""

    # ------------------------------------------------------------ commands
    async def submit(self, args: dict[str, Any]) -> dict[str, Any]:
        """``print.submit``: validate, render, store and queue a job (or answer a repeat)."""
        job_id = args["job_id"]
        while (pending := self._intake.get(job_id)) is not None:
            await asyncio.shield(pending)
        if job_id in self.jobs:
            return await self._repeat(self.jobs[job_id])
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._intake[job_id] = done
        try:
            stored = await self._store.run(print_store.get, job_id)
            if stored is not None:
                return await self._repeat(stored)
            return await self._accept(args)
        finally:
            del self._intake[job_id]
            done.set_result(None)

    async def _repeat(self, job: PrintJob) -> dict[str, Any]:
        view = {**job.view(), "duplicate": True}
        log.info("print job %s submitted again; it is %s, not printed again", job.id,
                 job.state.value)
        await self._outbox.enqueue("print_job", view, priority=Priority.CRITICAL)
        return view

    async def _accept(self, args: dict[str, Any]) -> dict[str, Any]:
        unfinished = sum(1 for j in self.jobs.values() if j.state in OPEN) + len(self._intake)
        if unfinished > self.config.max_queue:
            raise CommandError(f"the print queue holds {unfinished - 1} unfinished jobs; "
                               f"the limit is {self.config.max_queue} (jobs.print.max_queue)",
                               code="queue_full")
        document = args["document"]
        group = args.get("group") or {}
        job = PrintJob(id=args["job_id"], printer=args.get("printer") or f"role:{args['role']}",
                       document=document["format"], copies=args.get("copies", 1), size=0,
                       labels=None, summary="", received_at=self.now(),
                       group_id=group.get("id"), group_seq=group.get("seq"),
                       group_size=group.get("size"), waybill=args.get("waybill"))
        try:
            if "expires_at" in args:
                job.expires_at = parse_time(args["expires_at"], "expires_at", "invalid_args")
            printer, settings = self._resolve(args)
            job.printer = printer
            if job.group_id is not None:
                await self._check_group(job)
            rendered = await self.renderer.render(document, settings, copies=job.copies,
                                                  limits=self._limits)
        except (CommandError, DocumentError) as exc:
            job.state, job.code, job.message = JobState.FAILED, exc.code, exc.message
            await self._insert(job, None)
            raise CommandError(exc.message, code=exc.code) from exc
        job.size, job.labels, job.summary = len(rendered.data), rendered.labels, rendered.summary
        job.message = f"accepted for {job.printer}: {rendered.summary}"
        await self._insert(job, rendered.data)
        self.jobs[job.id] = job
        if job.expired():
            await self.expire(job)
        else:
            await self.transition(job, JobState.QUEUED, None, f"queued for {job.printer}",
                                  expect={JobState.ACCEPTED})
        return {**job.view(), "duplicate": False, "pages": rendered.pages}

    async def _check_group(self, job: PrintJob) -> None:
        assert job.group_id is not None and job.group_seq is not None
        if job.group_size is not None and job.group_seq > job.group_size:
            raise CommandError(f"group.seq {job.group_seq} is larger than group.size "
                               f"{job.group_size}", code="invalid_args")
        members = await self._store.run(print_store.group_states, job.group_id)
        if job.group_seq in members:
            other, state = members[job.group_seq]
            raise CommandError(f"group {job.group_id} already has job number "
                               f"{job.group_seq} ({other}, {state.value}); a new pair needs a "
                               f"new group id (print.reprint prints a job again)",
                               code="group_conflict")

    async def _insert(self, job: PrintJob, data: bytes | None) -> None:
        snapshot = dataclasses.replace(job)
        await self._outbox.enqueue("print_job", snapshot.view(), priority=Priority.CRITICAL,
                                   also=lambda db: print_store.insert(db, snapshot, data))
        log.log(logging.INFO if data is not None else logging.WARNING,
                "print job %s %s: %s", job.id, job.state.value, job.message)

    def _resolve(self, args: dict[str, Any]) -> tuple[str, PrinterSettings]:
        """The printer a job goes to: by name, or the first ready one with its role."""
        printers = {name: s for name, s in self.devices.configured.items()
                    if isinstance(s, PrinterSettings)}
        known = ", ".join(f"{n} ({s.role or 'no role'}{'' if s.enabled else ', disabled'})"
                          for n, s in printers.items()) or "none configured"
        if "printer" in args:
            name = args["printer"]
            if name not in self.spoolers:
                why = "is disabled" if name in printers else "is not configured"
                raise CommandError(f"printer {name!r} {why}; printers: {known}",
                                   code="unknown_printer")
        else:
            role = args["role"]
            candidates = [d for d in self.devices.by_role(role, "printer")
                          if d.name in self.spoolers]
            if not candidates:
                raise CommandError(f"no enabled printer has role {role!r}; printers: {known}",
                                   code="unknown_printer")
            ready = [d for d in candidates if d.state is DeviceState.READY]
            name = (ready or candidates)[0].name
        return name, printers[name]

    async def _settled_intake(self, job_id: str | None = None) -> None:
        """Wait until ``job_id`` (every job, when ``None``) is no longer being accepted."""
        while pending := (self._intake.get(job_id) if job_id is not None
                          else next(iter(self._intake.values()), None)):
            await asyncio.shield(pending)

    async def _find(self, job_id: str) -> PrintJob:
        await self._settled_intake(job_id)
        job = self.jobs.get(job_id) or await self._store.run(print_store.get, job_id)
        if job is None:
            raise CommandError(f"no print job {job_id!r} on this bench (never received, or "
                               f"finished more than jobs.print.retention_s = "
                               f"{self.config.retention_s} s ago)", code="unknown_job")
        return job

    async def cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        """``print.cancel``: a waiting or uncertain job (or a group's) is not printed."""
        async with self._admin:
            if "job_id" in args:
                job = await self._find(args["job_id"])
                if not await self._cancel_one(job):
                    raise CommandError(f"print job {job.id} is {job.state.value}; only queued, "
                                       f"held or uncertain jobs can be cancelled",
                                       code="not_cancellable")
                return job.view()
            await self._settled_intake()
            members = [j for j in self.jobs.values() if j.group_id == args["group_id"]]
            cancelled = [j.id for j in members if await self._cancel_one(j)]
            return {"group_id": args["group_id"], "cancelled": cancelled,
                    "not_cancelled": [{"job_id": j.id, "state": j.state.value}
                                      for j in members if j.id not in cancelled]}

    async def _cancel_one(self, job: PrintJob) -> bool:
        return await self.transition(job, JobState.CANCELLED, None,
                                     "cancelled by the central system",
                                     expect=WAITING | {JobState.UNCERTAIN})

    async def reprint(self, args: dict[str, Any]) -> dict[str, Any]:
        """``print.reprint``: print a printed, sent, uncertain or failed job again."""
        async with self._admin:
            job = await self._find(args["job_id"])
            if job.state not in REPRINTABLE:
                raise CommandError(f"print job {job.id} is {job.state.value}; only printed, "
                                   f"sent, uncertain or failed jobs can be reprinted",
                                   code="not_reprintable")
            if job.printer not in self.spoolers:
                raise CommandError(f"printer {job.printer!r} is no longer enabled",
                                   code="unknown_printer")
            if job.state is JobState.FAILED and job.size == 0:
                raise CommandError(f"print job {job.id} was refused at intake ({job.code}); "
                                   f"there is nothing to reprint: fix the document and send "
                                   f"it with a new job id", code="not_reprintable")
            if not await self._store.run(print_store.has_data, job.id):
                raise CommandError(f"print job {job.id}'s bytes are no longer stored "
                                   f"(jobs.print.keep_data_s = {self.config.keep_data_s}); "
                                   f"send it again with a new job id", code="data_expired")
            reason = args.get("reason") or "no reason given"
            await self.transition(job, JobState.QUEUED, None,
                                  f"reprint requested ({reason}); attempt {job.attempt + 1}",
                                  expect=REPRINTABLE, attempt=job.attempt + 1,
                                  clear_expiry=True)
            return job.view()

    async def get(self, args: dict[str, Any]) -> dict[str, Any]:
        return (await self._find(args["job_id"])).view()

    async def list(self, args: dict[str, Any]) -> dict[str, Any]:
        """``print.list``: the newest jobs (all states unless ``states`` says)."""
        jobs = await self._store.run(print_store.recent, args.get("states", []),
                                     args.get("limit", 50))
        return {"jobs": [(self.jobs.get(j.id) or j).view() for j in jobs]}

    # ------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """The ``print`` part of the bench status."""
        counts = Counter(job.state.value for job in self.jobs.values())
        waiting = [job.received_at for job in self.jobs.values() if job.state in WAITING]
        printers: dict[str, Any] = {}
        for name, spooler in self.spoolers.items():
            printer = spooler.printer
            mine = [j for j in self.jobs.values() if j.printer == name]
            printers[name] = {
                "state": printer.state.value,
                "code": printer.code,
                "message": printer.message,
                "current_job": spooler.current.id if spooler.current else None,
                "waiting": sum(1 for j in mine if j.state in WAITING),
                "held": sum(1 for j in mine if j.state is JobState.HELD),
                "jobs_sent": printer.jobs_sent,
                "labels_sent": printer.labels_sent,
                "jobs_printed": printer.jobs_printed,
                "labels_printed": printer.labels_printed,
                "confirms_printing": printer.confirms_printing,
            }
        return {
            "jobs": {state.value: counts.get(state.value, 0)
                     for state in (JobState.ACCEPTED, JobState.QUEUED, JobState.HELD,
                                   JobState.PRINTING, JobState.UNCERTAIN)},
            "oldest_waiting_at": iso_time(min(waiting)) if waiting else None,
            "printers": printers,
        }

