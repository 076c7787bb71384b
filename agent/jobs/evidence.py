"""Evidence: one record per parcel, kept on the bench, found by order id or waybill.

A record is the pack (or returns) result the flow reports (``docs/pack-flow.md``): orders,
waybill, packer, every scan, the weights, the verdict, overrides, photos, print jobs. It
is stored in ``agent.db`` (table ``evidence``, with ``evidence_keys`` mapping every order
id and waybill number to it) in the same transaction as the ``pack.result`` event, so
customer service finds it by waybill in milliseconds, years later if need be.

Photos are JPEG files under ``photo_dir``, one folder per day
(``2026-12-03/<evidence id>-<moment>.jpg``). Their names are made here from checked
parts only (no path from outside is ever used), so nothing can be written or read
outside that folder. Retention: photos older than ``photo_max_age_days`` go first, then
the oldest until the folder is under ``photo_quota_mb``; records stay
``record_retention_days`` (a record is a few kilobytes; the photos are the bulk).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uuid6

from agent.errors import AgentError, StorageError
from agent.outbox import iso_time
from agent.store import Store

log = logging.getLogger("agent.jobs.evidence")

_SAFE_PART = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


_TMP_MAX_AGE_S = 3600.0
"""A photo's temporary file older than this was never finished: removed by retention."""


@dataclass(frozen=True)
class EvidenceLimits:
    """Retention of evidence (``[jobs.evidence]``)."""

    photo_max_age_days: float = 180.0
    photo_quota_mb: float = 4096.0
    record_retention_days: float = 3 * 365.0
    photo_min_free_mb: float = 512.0
    """No photo is written when its disk has less free: the results keep their room."""


def new_evidence_id() -> str:
    return str(uuid6.uuid7())


def keys_of(record: dict[str, Any]) -> set[str]:
    """The order ids and waybill numbers a record is found by."""
    keys = {str(order_id) for order_id in record.get("order_ids", [])}
    for order in record.get("orders", []):
        if isinstance(order, dict) and order.get("order_id"):
            keys.add(str(order["order_id"]))
    for field in ("waybill", "return_waybill"):
        if record.get(field):
            keys.add(str(record[field]))
    keys.update(str(w) for w in record.get("waybills", []) if w)
    return keys


def insert_record(db: sqlite3.Connection, evidence_id: str, record: dict[str, Any]) -> None:
    """Store ``record`` (store thread; inside the caller's transaction when there is one)."""
    db.execute("INSERT INTO evidence (id, kind, verdict, created_at, body) VALUES "
               "(?, ?, ?, ?, ?)",
               (evidence_id, record.get("kind", "pack"), record.get("verdict", "unknown"),
                time.time(), json.dumps(record, ensure_ascii=False)))
    db.executemany("INSERT OR IGNORE INTO evidence_keys (key, evidence_id) VALUES (?, ?)",
                   [(key, evidence_id) for key in sorted(keys_of(record))])


def journal(db: sqlite3.Connection, evidence_id: str, record: dict[str, Any]) -> None:
    """Keep a finished parcel's record until its ``pack.result`` is stored: a crash or a
    power cut in between cannot lose it (the record is reported at the next start)."""
    db.execute("INSERT OR REPLACE INTO pending_results (evidence_id, body, created_at) "
               "VALUES (?, ?, ?)", (evidence_id, json.dumps(record, ensure_ascii=False),
                                    time.time()))


def unjournal(db: sqlite3.Connection, evidence_id: str) -> None:
    """Inside the transaction that stores the parcel's ``pack.result``."""
    db.execute("DELETE FROM pending_results WHERE evidence_id = ?", (evidence_id,))


def journaled(db: sqlite3.Connection) -> list[tuple[str, dict[str, Any]]]:
    """The parcels finished but not stored when the agent stopped, oldest first."""
    rows = db.execute("SELECT evidence_id, body FROM pending_results ORDER BY rowid"
                      ).fetchall()
    return [(row[0], json.loads(row[1])) for row in rows]


class EvidenceStore:
    """Records in ``agent.db``, photos under ``photo_dir``."""

    def __init__(self, store: Store, photo_dir: Path, limits: EvidenceLimits) -> None:
        self._store = store
        self.photo_dir = photo_dir
        self.limits = limits

    async def open(self) -> None:
        """Create the photo folder (the tables are in :mod:`agent.store`'s schema)."""
        try:
            await asyncio.to_thread(self.photo_dir.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.photo_dir}: cannot create the photo folder: {exc}"
                               ) from exc

    async def save(self, record: dict[str, Any], evidence_id: str | None = None) -> str:
        """Store a record on its own (the pack job stores it with its event instead)."""
        evidence_id = evidence_id or new_evidence_id()
        await self._store.run(insert_record, evidence_id, record)
        return evidence_id

    async def find(self, key: str, limit: int = 20) -> list[dict[str, Any]]:
        """Records of an order id or waybill number, newest first."""
        found: list[dict[str, Any]] = await self._store.run(query_records, key, limit)
        return found

    # ------------------------------------------------------------ photos
    def photo_path(self, evidence_id: str, moment: str, at: float | None = None) -> Path:
        """Where the photo of ``moment`` of a parcel goes; refuses unsafe parts.

        Raises:
            AgentError: ``invalid_name`` when a part is not 1-64 of ``A-Z a-z 0-9 _ -``.
        """
        for what, part in (("evidence id", evidence_id), ("photo moment", moment)):
            if not _SAFE_PART.match(part):
                raise AgentError(f"{what} {part!r} may hold only letters, digits, _ and - "
                                 f"(1 to 64)", code="invalid_name")
        day = datetime.fromtimestamp(at or time.time(), UTC).strftime("%Y-%m-%d")
        return self.photo_dir / day / f"{evidence_id}-{moment}.jpg"

    def find_photos(self, evidence_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with the photos still pending when it was journaled filled in from
        the files written since (blocking: globs the photo folder)."""
        photos = []
        for photo in record.get("photos", []):
            if (photo.get("path") is None and _SAFE_PART.match(evidence_id)
                    and _SAFE_PART.match(str(photo.get("moment", "")))):
                found = sorted(self.photo_dir.glob(f"*/{evidence_id}-{photo['moment']}.jpg"))
                if found:
                    photo = {"moment": photo["moment"],
                             "path": str(found[-1].relative_to(self.photo_dir)),
                             "at": iso_time(found[-1].stat().st_mtime)}
            photos.append(photo)
        return {**record, "photos": photos}

    async def write_photo(self, path: Path, jpeg: bytes) -> Path:
        """Write a JPEG made by :meth:`photo_path` (in a thread; fsync'ed: it is evidence)."""
        if path.parent.parent != self.photo_dir or not _DAY.match(path.parent.name):
            raise AgentError(f"{path} is not a photo path of {self.photo_dir}",
                             code="invalid_name")
        await asyncio.to_thread(self._write_if_room, path, jpeg)
        return path

    def _write_if_room(self, path: Path, jpeg: bytes) -> None:
        free = shutil.disk_usage(self.photo_dir).free
        if free - len(jpeg) < self.limits.photo_min_free_mb * (1 << 20):
            raise AgentError(f"disk nearly full ({free / (1 << 20):.0f} MB free): the photo "
                             f"was not kept, to leave room for results (photos stop below "
                             f"{self.limits.photo_min_free_mb:g} MB, "
                             f"jobs.pack.photo_min_free_mb)", code="disk_full")
        _write_synced(path, jpeg)

    async def prune(self, now: float | None = None, *, by_age: bool = True) -> dict[str, int]:
        """Apply the retention limits; returns what went (photos, bytes, records).

        ``by_age=False`` (the wall clock jumped forward: "old" may mean nothing) applies
        only the photo quota.
        """
        now = now or time.time()
        photos, freed = await asyncio.to_thread(self._prune_photos,
                                                now if by_age else float("-inf"))
        cutoff = now - self.limits.record_retention_days * 86400

        def _forget(db: sqlite3.Connection) -> int:
            db.execute("PRAGMA foreign_keys=ON")
            return db.execute("DELETE FROM evidence WHERE created_at < ?", (cutoff,)).rowcount

        records = await self._store.run(_forget) if by_age else 0
        if photos or records:
            log.info("evidence retention: %d photos (%d bytes) and %d records removed",
                     photos, freed, records)
        return {"photos": photos, "bytes": freed, "records": records}

    def _prune_photos(self, now: float) -> tuple[int, int]:
        files: list[tuple[float, int, Path]] = []
        for day in sorted(self.photo_dir.iterdir()) if self.photo_dir.is_dir() else []:
            if not (day.is_dir() and _DAY.match(day.name)) or day.is_symlink():
                continue  # only our own day folders, never a link out of the tree
            for photo in day.iterdir():
                if photo.suffix == ".jpg" and photo.is_file() and not photo.is_symlink():
                    stat = photo.stat()
                    files.append((stat.st_mtime, stat.st_size, photo))
                elif (photo.suffix == ".tmp" and photo.is_file() and not photo.is_symlink()
                      and time.time() - photo.stat().st_mtime > _TMP_MAX_AGE_S):
                    photo.unlink(missing_ok=True)  # a write cut by a crash or a full disk
        files.sort()
        total = sum(size for _, size, _ in files)
        quota = self.limits.photo_quota_mb * 1024 * 1024
        max_age_s = self.limits.photo_max_age_days * 86400
        removed = freed = 0
        for mtime, size, photo in files:
            if now - mtime <= max_age_s and total <= quota:
                break
            try:
                photo.unlink()
            except OSError as exc:
                log.warning("cannot remove old photo %s: %s", photo, exc)
                continue
            removed += 1
            freed += size
            total -= size
        for day in self.photo_dir.iterdir() if self.photo_dir.is_dir() else []:
            if day.is_dir() and _DAY.match(day.name) and not any(day.iterdir()):
                day.rmdir()
        return removed, freed


def read_records(db_path: Path, key: str, limit: int = 20) -> list[dict[str, Any]]:
    """Records of ``key`` read straight from the database, read-only (the CLI's lookup;
    SQLite in WAL mode lets it read while the daemon writes).

    Raises:
        StorageError: the database is missing or cannot be read.
    """
    if not db_path.is_file():
        raise StorageError(f"{db_path}: no agent database here (has the agent run with "
                           f"this config?)")
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            return query_records(db, key, limit)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StorageError(f"{db_path}: cannot read the evidence: {exc}") from exc


def query_records(db: sqlite3.Connection, key: str, limit: int) -> list[dict[str, Any]]:
    """The records of an order id or waybill number, newest first."""
    rows = db.execute(
        "SELECT e.id, e.created_at, e.body FROM evidence_keys k JOIN evidence e "
        "ON e.id = k.evidence_id WHERE k.key = ? ORDER BY e.created_at DESC LIMIT ?",
        (key, limit)).fetchall()
    return [{"evidence_id": r[0], "stored_at": r[1], **json.loads(r[2])} for r in rows]


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
