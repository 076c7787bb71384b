"""Evidence records found by order id or waybill; photos kept inside their folder, pruned."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.errors import AgentError
from agent.jobs.evidence import EvidenceLimits, EvidenceStore
from agent.store import Store


def run(tmp: Path, body: Callable[[EvidenceStore], Awaitable[Any]],
        limits: EvidenceLimits | None = None) -> Any:
    async def main() -> Any:
        store = Store(tmp / "agent.db")
        await store.open()
        evidence = EvidenceStore(store, tmp / "photos", limits or EvidenceLimits())
        await evidence.open()
        try:
            return await body(evidence)
        finally:
            await store.close()

    return asyncio.run(asyncio.wait_for(main(), 30))


def record(order_ids: list[str], waybill: str, verdict: str = "pass") -> dict[str, Any]:
    return {"kind": "pack", "verdict": verdict, "order_ids": order_ids, "waybill": waybill,
            "packer": "EMP-7", "weight": {"stable_g": 1234.0, "expected_g": 1200.0}}


def test_a_record_is_found_by_each_order_id_and_by_its_waybill(tmp_path: Path) -> None:
    async def body(evidence: EvidenceStore) -> None:
        first = await evidence.save(record(["SO-1", "SO-2"], "SF100"))
        await evidence.save(record(["SO-3"], "SF200"))
        later = await evidence.save(record(["SO-1"], "SF101", verdict="abandoned"))
        by_waybill = await evidence.find("SF100")
        assert [r["evidence_id"] for r in by_waybill] == [first]
        assert by_waybill[0]["order_ids"] == ["SO-1", "SO-2"]
        assert by_waybill[0]["weight"] == {"stable_g": 1234.0, "expected_g": 1200.0}
        assert [r["evidence_id"] for r in await evidence.find("SO-1")] == [later, first]
        assert [r["verdict"] for r in await evidence.find("SO-2")] == ["pass"]
        assert await evidence.find("SO-404") == []

    run(tmp_path, body)


def test_photo_paths_stay_inside_the_photo_folder(tmp_path: Path) -> None:
    async def body(evidence: EvidenceStore) -> None:
        at = time.mktime((2026, 12, 3, 12, 0, 0, 0, 0, 0))
        path = evidence.photo_path("0193a1b2-c3d4", "closed", at)
        assert path.parent.parent == tmp_path / "photos"
        assert path.name == "0193a1b2-c3d4-closed.jpg"
        for bad in ("../etc", "a/b", "", "x" * 65, "closed.jpg"):
            with pytest.raises(AgentError) as error:
                evidence.photo_path("0193a1b2", bad)
            assert error.value.code == "invalid_name"
        with pytest.raises(AgentError):
            await evidence.write_photo(tmp_path / "elsewhere.jpg", b"\xff\xd8")
        written = await evidence.write_photo(path, b"\xff\xd8\xff\xe0JPEG")
        assert written.read_bytes() == b"\xff\xd8\xff\xe0JPEG"
        assert not list(written.parent.glob("*.tmp"))

    run(tmp_path, body)


async def aged_photos(evidence: EvidenceStore, now: float) -> list[Path]:
    """Four 800-byte photos taken 40, 10, 5 and 1 days before ``now``."""
    paths = []
    for n, age_days in enumerate((40, 10, 5, 1)):
        at = now - age_days * 86400
        path = await evidence.write_photo(evidence.photo_path(f"e{n}", "open", at),
                                          b"x" * 800)
        os.utime(path, (at, at))
        paths.append(path)
    return paths


def test_retention_removes_old_photos_then_the_oldest_over_quota_then_old_records(
        tmp_path: Path) -> None:
    limits = EvidenceLimits(photo_max_age_days=30, photo_quota_mb=0.002,  # about 2 kB
                            record_retention_days=365)

    async def body(evidence: EvidenceStore) -> None:
        now = time.time()
        paths = await aged_photos(evidence, now)
        kept = await evidence.save(record(["SO-9"], "SF9"))
        gone = await evidence.prune(now)
        # 40 days: too old; then 3 x 800 B > 2 kB: the oldest of the rest goes too.
        assert gone == {"photos": 2, "bytes": 1600, "records": 0}
        assert [p.exists() for p in paths] == [False, False, True, True]
        assert not (paths[0].parent).exists(), "an emptied day folder is removed"
        later = await evidence.prune(now + 400 * 86400)
        assert later["records"] == 1
        assert await evidence.find("SF9") == [] and kept

    run(tmp_path, body, limits)


def test_a_link_planted_in_the_photo_folder_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.jpg").write_bytes(b"keep")

    async def body(evidence: EvidenceStore) -> None:
        (tmp_path / "photos" / "2000-01-01").symlink_to(outside)
        result = await evidence.prune(time.time())
        assert result["photos"] == 0

    run(tmp_path, body, EvidenceLimits(photo_max_age_days=0, photo_quota_mb=0))
    assert (outside / "keep.jpg").read_bytes() == b"keep"


def test_after_a_forward_clock_jump_only_the_quota_removes_photos(tmp_path: Path) -> None:
    limits = EvidenceLimits(photo_max_age_days=30, photo_quota_mb=0.002,
                            record_retention_days=365)

    async def body(evidence: EvidenceStore) -> None:
        now = time.time()
        paths = await aged_photos(evidence, now)
        await evidence.save(record(["SO-9"], "SF9"))
        # "Now" is years ahead: by age everything would go; by quota only the oldest.
        gone = await evidence.prune(now + 5 * 365 * 86400, by_age=False)
        assert gone == {"photos": 2, "bytes": 1600, "records": 0}
        assert [p.exists() for p in paths] == [False, False, True, True]
        assert [r["waybill"] for r in await evidence.find("SF9")] == ["SF9"]

    run(tmp_path, body, limits)


def test_photos_stop_before_the_disk_is_full_so_results_keep_their_room(
        tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free / (1 << 20)

    async def body(evidence: EvidenceStore) -> None:
        with pytest.raises(AgentError) as refused:
            await evidence.write_photo(evidence.photo_path("e1", "open"), b"x" * 800)
        assert refused.value.code == "disk_full"
        assert "photo_min_free_mb" in refused.value.message
        assert list(evidence.photo_dir.rglob("*.jpg")) == []
        assert await evidence.save(record(["SO-9"], "SF9"))  # a result still goes in

    run(tmp_path, body, EvidenceLimits(photo_min_free_mb=free_mb + 100))
