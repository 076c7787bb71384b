"""Print jobs: their states, what the central system sends, what the bench reports.

A job's life (``docs/print-jobs.md`` has the diagram)::

    accepted -> queued <-> held -> printing -> printed | sent
                                          \\-> uncertain --(print.reprint)--> queued
    (any waiting state) -> cancelled | expired | failed

* ``accepted``: validated, rendered and stored; ``queued``: waiting for its printer.
* ``held``: the printer cannot print now (``code`` says why: ``paper_out``, ``head_open``,
  ``paused``, ``offline``, ``disconnected``..., or ``waiting_for_group``); the job goes on
  by itself when the printer recovers.
* ``printing``: the first byte may have left. Stored before it does, so a job found in
  this state after a crash may have printed: it becomes ``uncertain``.
* ``printed``: the printer itself said so (ZPL ``~HS``: nothing left in its buffer).
  ``sent``: the printer took every byte and that is all it can say (TSPL, EPL, ESC/POS,
  printers without a return channel).
* ``uncertain``: may or may not have printed; printed again only on ``print.reprint``
  (or with ``jobs.print.uncertain_policy = "reprint"``), never silently.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.jobs.documents import DOCUMENT_SCHEMA
from agent.outbox import iso_time


class JobState(StrEnum):
    ACCEPTED = "accepted"
    QUEUED = "queued"
    HELD = "held"
    PRINTING = "printing"
    PRINTED = "printed"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNCERTAIN = "uncertain"


WAITING = frozenset({JobState.ACCEPTED, JobState.QUEUED, JobState.HELD})
"""Not at the printer yet: may be cancelled, may expire."""
OPEN = WAITING | {JobState.PRINTING}
"""Counted against ``jobs.print.max_queue``."""
DONE = frozenset({JobState.PRINTED, JobState.SENT})
"""Reached the printer whole (a group's next member may go)."""
FINAL = DONE | {JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED}
"""Nothing more happens unless ``print.reprint`` asks (``uncertain`` is not final)."""
REPRINTABLE = DONE | {JobState.UNCERTAIN, JobState.FAILED}

JOB_CODES: dict[str, str] = {
    "waiting_for_group": "an earlier job of its group has not printed yet",
    "group_failed": "an earlier job of its group failed, was cancelled or expired, or did "
                    "not arrive within jobs.print.group_timeout_s",
    "group_conflict": "the group already has a job with that number",
    "disconnected": "the printer is not connected",
    "send_failed": "the connection failed while the job was being sent",
    "send_timeout": "the printer did not take the job's bytes in time",
    "confirm_timeout": "the printer made no progress on the job in time",
    "agent_restarted": "the agent stopped while the job was at the printer",
    "expired": "the job's expires_at passed before it could print",
    "unknown_printer": "no enabled printer has that name or role",
    "queue_full": "jobs.print.max_queue unfinished jobs already",
    "not_cancellable": "the job is at the printer or finished",
    "not_reprintable": "only printed, sent, uncertain or failed jobs can be reprinted",
    "data_expired": "the job's bytes are gone (jobs.print.keep_data_s)",
    "unknown_job": "no job with that id",
    "internal_error": "a bug in the agent ended the job (logged with its traceback)",
}
"""Codes of ``print_job`` events and print command errors, besides the printer's fault
codes (``paper_out``...) and the document codes (:mod:`agent.jobs.documents`)."""

_ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[\\x21-\\x7e]+$"}
_TIME = {"type": "string", "minLength": 10, "maxLength": 40}

SUBMIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["job_id", "document"],
    "additionalProperties": False,
    "properties": {
        "job_id": _ID,
        "printer": {"type": "string", "minLength": 1, "maxLength": 32},
        "role": {"type": "string", "minLength": 1, "maxLength": 32},
        "document": DOCUMENT_SCHEMA,
        "copies": {"type": "integer", "minimum": 1, "maximum": 100},
        "group": {
            "type": "object",
            "required": ["id", "seq"],
            "additionalProperties": False,
            "properties": {"id": _ID,
                           "seq": {"type": "integer", "minimum": 1, "maximum": 100},
                           "size": {"type": "integer", "minimum": 1, "maximum": 100}},
        },
        "expires_at": _TIME,
        "waybill": {"type": "string", "minLength": 1, "maxLength": 128},
    },
    "oneOf": [{"required": ["printer"]}, {"required": ["role"]}],
}
"""``print.submit`` args: one of ``printer`` (a device name) or ``role`` (label, slip)."""

ATTACHED_JOB_SCHEMA: dict[str, Any] = {**SUBMIT_SCHEMA, "required": ["document"]}
"""A print job an order or ``pack.labels`` brings: ``print.submit`` args, checked when they
arrive; the bench names a job without ``job_id`` (``<order_id>-<purpose>``)."""

CANCEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"job_id": _ID, "group_id": _ID},
    "oneOf": [{"required": ["job_id"]}, {"required": ["group_id"]}],
}
REPRINT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["job_id"],
    "additionalProperties": False,
    "properties": {"job_id": _ID, "reason": {"type": "string", "maxLength": 200}},
}
GET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["job_id"],
    "additionalProperties": False,
    "properties": {"job_id": _ID},
}
LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "states": {"type": "array", "items": {"enum": [s.value for s in JobState]}},
        "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
}


@dataclass
class PrintJob:
    """One job as the queue knows it; its bytes stay in the database until sent."""

    id: str
    printer: str
    document: str
    """The document's format: zpl, tspl, epl, escpos, png, pdf or slip."""
    copies: int
    size: int
    labels: int | None
    summary: str
    received_at: float
    expires_at: float | None = None
    group_id: str | None = None
    group_seq: int | None = None
    group_size: int | None = None
    waybill: str | None = None
    """The waybill number printed on this label, when the central system says it: the
    packing bench checks the label scanned back on the box against it."""
    state: JobState = JobState.ACCEPTED
    code: str | None = None
    message: str = ""
    attempt: int = 1
    updated_at: float = field(default_factory=time.time)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def view(self) -> dict[str, Any]:
        """The job as every ``print_job`` event and print command result shows it."""
        return {
            "job_id": self.id,
            "state": self.state.value,
            "code": self.code,
            "message": self.message,
            "printer": self.printer,
            "attempt": self.attempt,
            "document": self.document,
            "summary": self.summary,
            "copies": self.copies,
            "labels": self.labels,
            "bytes": self.size,
            "group": None if self.group_id is None else {
                "id": self.group_id, "seq": self.group_seq, "size": self.group_size},
            "received_at": iso_time(self.received_at),
            "expires_at": None if self.expires_at is None else iso_time(self.expires_at),
            "waybill": self.waybill,
            "updated_at": iso_time(self.updated_at),
        }
