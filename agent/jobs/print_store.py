"""The ``print_jobs`` table: every function runs in the ``bench-store`` thread.

A job's row and the ``print_job`` event reporting its state are written in one
transaction (the row update rides on the outbox insert, ``Outbox.enqueue(also=...)``),
so after any crash the stored state and the reported state agree.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from agent.jobs.print_model import FINAL, JobState, PrintJob

_COLUMNS = ("id, printer, document, copies, size, labels, summary, received_at, expires_at, "
            "group_id, group_seq, group_size, state, code, message, attempt, updated_at, waybill")


def _row(job: PrintJob) -> tuple[Any, ...]:
    return (job.id, job.printer, job.document, job.copies, job.size, job.labels, job.summary,
            job.received_at, job.expires_at, job.group_id, job.group_seq, job.group_size,
            job.state.value, job.code, job.message, job.attempt, job.updated_at, job.waybill)


def _job(row: tuple[Any, ...]) -> PrintJob:
    return PrintJob(id=row[0], printer=row[1], document=row[2], copies=row[3], size=row[4],
                    labels=row[5], summary=row[6], received_at=row[7], expires_at=row[8],
                    group_id=row[9], group_seq=row[10], group_size=row[11],
                    state=JobState(row[12]), code=row[13], message=row[14], attempt=row[15],
                    updated_at=row[16], waybill=row[17])


def insert(db: sqlite3.Connection, job: PrintJob, data: bytes | None) -> None:
    """Store a new job (and its bytes, unless it was refused)."""
    db.execute(f"INSERT INTO print_jobs ({_COLUMNS}, data) VALUES "
               f"({', '.join('?' * 19)})", (*_row(job), data))


def save_state(db: sqlite3.Connection, job: PrintJob) -> None:
    """Store ``job``'s state fields (``job`` is a snapshot: the caller's copy may move on)."""
    db.execute("UPDATE print_jobs SET state = ?, code = ?, message = ?, attempt = ?, "
               "updated_at = ?, expires_at = ? WHERE id = ?",
               (job.state.value, job.code, job.message, job.attempt, job.updated_at,
                job.expires_at, job.id))


def get(db: sqlite3.Connection, job_id: str) -> PrintJob | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM print_jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _job(row)


def unfinished(db: sqlite3.Connection) -> list[PrintJob]:
    """Jobs not final (uncertain ones included), in arrival order."""
    marks = ", ".join("?" * len(FINAL))
    rows = db.execute(f"SELECT {_COLUMNS} FROM print_jobs WHERE state NOT IN ({marks}) "
                      f"ORDER BY received_at, seq", [s.value for s in FINAL]).fetchall()
    return [_job(row) for row in rows]


def recent(db: sqlite3.Connection, states: list[str], limit: int) -> list[PrintJob]:
    """The newest jobs in ``states`` (all states when empty), newest first."""
    where = f"WHERE state IN ({', '.join('?' * len(states))})" if states else ""
    rows = db.execute(f"SELECT {_COLUMNS} FROM print_jobs {where} ORDER BY seq DESC LIMIT ?",
                      (*states, limit)).fetchall()
    return [_job(row) for row in rows]


def group_states(db: sqlite3.Connection, group_id: str) -> dict[int, tuple[str, JobState]]:
    """``group_seq -> (job id, state)`` of a group's members received so far."""
    rows = db.execute("SELECT group_seq, id, state FROM print_jobs WHERE group_id = ?",
                      (group_id,)).fetchall()
    return {row[0]: (row[1], JobState(row[2])) for row in rows}


def data(db: sqlite3.Connection, job_id: str) -> bytes | None:
    row = db.execute("SELECT data FROM print_jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None or row[0] is None else bytes(row[0])


def has_data(db: sqlite3.Connection, job_id: str) -> bool:
    row = db.execute("SELECT data IS NOT NULL FROM print_jobs WHERE id = ?", (job_id,))
    return bool(row.fetchone() == (1,))


def prune(db: sqlite3.Connection, drop_data_before: float, forget_before: float) -> int:
    """Drop finished jobs' bytes after ``keep_data_s`` and their rows after ``retention_s``."""
    marks = ", ".join("?" * len(FINAL))
    finals = [s.value for s in FINAL]
    db.execute(f"UPDATE print_jobs SET data = NULL WHERE data IS NOT NULL AND "
               f"state IN ({marks}) AND updated_at < ?", (*finals, drop_data_before))
    cursor = db.execute(f"DELETE FROM print_jobs WHERE state IN ({marks}) AND updated_at < ?",
                        (*finals, forget_before))
    return cursor.rowcount
