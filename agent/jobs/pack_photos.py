"""Evidence photos of the parcels: taken in tasks, filed under the parcel, waited for.

A photo takes a camera frame, a JPEG encode and a file write (tens to hundreds of ms):
it runs as a task while the packer goes on. Each answer goes back to the flow as a
``PhotoTaken`` or ``PhotoFailed`` event; the parcel's report, when it is ready before a
photo (the closed box photographed as its label is scanned), waits for it at most
``jobs.pack.photo_wait_s`` so the record names every picture taken.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.config import PackJobConfig
from agent.devices.camera import Camera
from agent.devices.manager import DeviceManager
from agent.errors import AgentError
from agent.jobs.evidence import EvidenceStore
from agent.jobs.pack_events import PhotoFailed, PhotoTaken
from agent.outbox import iso_time
from agent.tasks import spawn

log = logging.getLogger("agent.jobs.pack")

Outcome = PhotoTaken | PhotoFailed


class ParcelPhotos:
    """Takes the photos the flow asks for and completes the records with them."""

    def __init__(self, devices: DeviceManager, config: PackJobConfig,
                 evidence: EvidenceStore, answer: Callable[[Outcome], None]) -> None:
        self._devices, self._config, self._evidence = devices, config, evidence
        self._answer = answer
        self._tasks: dict[str, list[asyncio.Task[Outcome]]] = {}
        """Photos by the evidence id of their parcel, until its record is completed."""
        self.refused: tuple[float, str] | None = None
        """Since when, and why, photos are refused for want of disk space."""

    def take(self, moment: str, evidence_id: str, parcel: int) -> None:
        """Start the photo ``moment`` of the parcel to be recorded as ``evidence_id``."""
        task = spawn(self._photo(moment, evidence_id, parcel), name="pack.photo")
        self._tasks.setdefault(evidence_id, []).append(task)

    async def _photo(self, moment: str, evidence_id: str, parcel: int) -> Outcome:
        role = self._config.camera_role
        cameras = [d for d in self._devices.by_role(role, "camera") if isinstance(d, Camera)]
        outcome: Outcome
        if not cameras:
            outcome = PhotoFailed(moment, f"no camera has role {role!r}", time.time(), parcel)
        else:
            try:
                jpeg = await cameras[0].snapshot_jpeg()
                path = await self._evidence.write_photo(
                    self._evidence.photo_path(evidence_id, moment), jpeg)
                relative = str(path.relative_to(self._evidence.photo_dir))
                outcome = PhotoTaken(moment, relative, time.time(), parcel)
                self.refused = None
            except (AgentError, OSError) as exc:
                outcome = PhotoFailed(moment, str(exc), time.time(), parcel)
                if getattr(exc, "code", None) == "disk_full" and self.refused is None:
                    log.error("photos stop: %s", exc)
                    self.refused = (time.time(), str(exc))
            except Exception as exc:  # a camera bug must not cost the parcel its report
                log.exception("photo %s of parcel %s failed", moment, evidence_id)
                outcome = PhotoFailed(moment, f"{type(exc).__name__}: {exc}", time.time(),
                                      parcel)
        self._answer(outcome)
        return outcome

    async def complete(self, evidence: dict[str, Any], evidence_id: str) -> dict[str, Any]:
        """The record with the photos still being taken when the parcel finished: waited
        for, at most ``photo_wait_s``; one not answered by then keeps its error."""
        tasks = self._tasks.pop(evidence_id, [])
        pending = [t for t in tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=self._config.photo_wait_s)
        outcomes = {o.moment: o for t in tasks if t.done() and not t.cancelled()
                    and t.exception() is None and (o := t.result()) is not None}
        photos = []
        for photo in evidence.get("photos", []):
            outcome = outcomes.get(photo["moment"])
            if photo.get("path") is None and isinstance(outcome, PhotoTaken):
                photo = {"moment": outcome.moment, "path": outcome.path,
                         "at": iso_time(outcome.at)}
            elif photo.get("path") is None and isinstance(outcome, PhotoFailed):
                photo = {"moment": outcome.moment, "path": None, "at": iso_time(outcome.at),
                         "error": outcome.reason}
            photos.append(photo)
        return {**evidence, "photos": photos}
