"""Fault injection on a simulated bench, each case bounded in time: the agent killed with
kill -9 at random points of a run of parcels, the broker down during a run, the disk
filling up, devices unplugged and replugged mid-parcel, the wall clock jumping, a corrupt
database. Real mosquitto, the device simulators, the agent as a subprocess.

What must hold: no result lost, none reported twice under two evidence ids, no label
printed again without the packer asking, and every fault said plainly.
"""

from __future__ import annotations

import base64
import os
import random
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.broker import Broker
from simulators.central import CentralSystem, Received
from tests.harness import AgentProcess, wait_until
from tests.test_pack_bench import BENCH, PREFIX, SITE, Bench
from tests.test_pack_cases import STATE, in_state, line, scan, state_after

RESULT = f"{PREFIX}/events/pack.result"
TEA = "6920000000017"
View = dict[str, Any]


def tea_order(order_id: str) -> dict[str, Any]:
    """One 200 g unit, no box; the waybill (its number in the ZPL) and a slip attached."""
    waybill = f"SF{order_id}"
    zpl = f"^XA^FO40,40^BCN,120,Y^FD{waybill}^FS^XZ".encode()
    return {"order_id": order_id, "waybills": [waybill],
            "lines": [line("TEA", TEA, 1, 200.0)],
            "print_jobs": [{"role": "label", "document": {
                "format": "zpl", "data": base64.b64encode(zpl).decode()}}]}


def started(broker: Broker, central: CentralSystem,
            agent_factory: Callable[..., AgentProcess], bench: Bench, orders: list[str],
            **overrides: Any) -> AgentProcess:
    central.subscribe(STATE)
    agent = agent_factory(broker, devices=bench.devices(), **overrides).start()
    ready(central, time.monotonic() - 60)
    pushed = central.request(SITE, BENCH, "order.push",
                             {"orders": [tea_order(o) for o in orders]})
    assert pushed["ok"] is True, pushed
    return agent


def ready(central: CentralSystem, since: float) -> None:
    """The scanner, scale and label printer said ready after ``since`` (monotonic)."""
    for device in ("scanner", "scale", "label"):
        central.wait_for(lambda m, d=device: m.at >= since
                         and m.topic.endswith("/events/device_state")
                         and m.json["data"]["device"] == d
                         and m.json["data"]["state"] == "ready", 30)


def results(central: CentralSystem, order_id: str) -> list[Received]:
    return central.matching(lambda m: m.topic == RESULT
                            and order_id in m.json["data"]["order_ids"])


def pack(central: CentralSystem, bench: Bench, order_id: str) -> View:
    """One parcel from the order scan to the label scanned back; the pan emptied."""
    scan(central, bench, order_id, in_state("packing"))
    scan(central, bench, TEA, in_state("weighing"))
    t0 = time.monotonic()
    bench.scale.set_weight(200.0)
    state_after(central, t0, in_state("verify_label"), 20)
    done = scan(central, bench, f"SF{order_id}", in_state("idle"))
    empty_pan(bench)
    return done


def empty_pan(bench: Bench) -> None:
    """The parcel leaves the scale, long enough for the scale to report the empty pan
    (the next parcel's weight settles only after a change)."""
    bench.scale.set_weight(0.0)
    time.sleep(0.5)


def labels_of(bench: Bench, order_id: str) -> int:
    return sum(1 for job in bench.label.jobs if f"^FDSF{order_id}^FS".encode() in job)


# ---------------------------------------------------------------- kill -9


def test_killed_at_random_points_of_a_run_no_result_is_lost_or_doubled_nothing_reprinted(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    seed = int(os.environ.get("FAULT_SEED", time.time()))
    rng = random.Random(seed)
    print(f"FAULT_SEED={seed}")  # shown on failure: run again with it
    orders = [f"K{n}" for n in range(1, 5)]
    agent = started(broker, central, agent_factory, bench, orders)
    scan(central, bench, "EMP-7", in_state("idle"))
    stages = ["opened", "weighing", "verify_label", "label_scanned", None]
    for order_id in orders:
        where = rng.choice(stages)
        if where is not None:
            scan(central, bench, order_id, in_state("packing"))
        if where in ("weighing", "verify_label", "label_scanned"):
            scan(central, bench, TEA, in_state("weighing"))
        if where in ("verify_label", "label_scanned"):
            t0 = time.monotonic()
            bench.scale.set_weight(200.0)
            state_after(central, t0, in_state("verify_label"), 20)
        if where == "label_scanned":
            bench.scanner.scan(f"SF{order_id}")  # and the power goes at once
            time.sleep(rng.uniform(0.0, 0.05))
        if where is not None:
            agent.kill9()
            empty_pan(bench)
            t0 = time.monotonic()
            agent.start()
            ready(central, t0)
            scan(central, bench, "EMP-7", in_state("idle"))
            if where == "label_scanned" and wait_for_result(central, order_id):
                continue  # it was finished and stored (or journaled) before the kill
        pack(central, bench, order_id)
    assert agent.stop() == 0
    for order_id in orders:
        passing = {m.json["data"]["evidence_id"] for m in results(central, order_id)
                   if m.json["data"]["verdict"] == "pass"}
        assert len(passing) == 1, (order_id, passing, f"FAULT_SEED={seed}")
        assert labels_of(bench, order_id) == 1, (order_id, f"FAULT_SEED={seed}")
    # At least once: an event acknowledged just before a kill is sent again after the
    # restart, under the same id with the same data and flagged replayed.
    copies: dict[str, list[View]] = {}
    for m in central.matching(lambda m: m.topic == RESULT):
        copies.setdefault(m.json["id"], []).append(m.json)
    for same in copies.values():
        assert all(c["data"] == same[0]["data"] and c["seq"] == same[0]["seq"] for c in same)
        assert all(c["replayed"] for c in same[1:])


def wait_for_result(central: CentralSystem, order_id: str, timeout_s: float = 5.0) -> bool:
    try:
        central.wait_for(lambda m: m.topic == RESULT
                         and order_id in m.json["data"]["order_ids"], timeout_s)
    except AssertionError:
        return False
    return True


# ---------------------------------------------------------------- broker outage


def test_the_broker_down_during_a_run_of_parcels_loses_nothing_and_keeps_the_order(
        broker: Broker, central: CentralSystem, central_factory: Callable[..., CentralSystem],
        agent_factory: Callable[..., AgentProcess], bench: Bench) -> None:
    oms = central_factory(broker, client_id="oms-persistent", session_expiry_s=600)
    oms.subscribe(f"{PREFIX}/events/#")
    orders = ["B1", "B2", "B3", "B4"]
    agent = started(broker, central, agent_factory, bench, orders)
    scan(central, bench, "EMP-7", in_state("idle"))
    pack(central, bench, "B1")
    broker.stop()
    wait_until(lambda: "disconnected from broker" in agent.output(), 15, "the agent noticed")
    for n, order_id in enumerate(("B2", "B3"), start=2):
        pack_offline(agent, bench, order_id, n)
    t_up = time.monotonic()
    broker.start()
    oms.connect()
    central.wait_for(lambda m: m.at >= t_up and m.topic == STATE, 30)  # both back
    pack(central, bench, "B4")
    got = oms.wait_for(lambda m: m.topic == RESULT, 30, count=4)
    data = [m.json for m in got]
    assert [d["data"]["order_ids"][0] for d in data] == orders, "in the order packed"
    seqs = [d["seq"] for d in data]
    assert seqs == sorted(seqs) and len({d["id"] for d in data}) == 4
    assert [d["replayed"] for d in data] == [False, True, True, False]
    assert all(d["data"]["verdict"] == "pass" for d in data)
    assert agent.stop() == 0


def pack_offline(agent: AgentProcess, bench: Bench, order_id: str, nth: int) -> None:
    """A parcel with no broker: nothing to watch but the agent's log."""
    def logged(text: str, count: int = 1) -> None:
        wait_until(lambda: agent.output().count(text) >= count, 15, f"{count} x {text!r}")

    bench.scanner.scan(order_id)
    time.sleep(0.3)  # the lookup is local and takes milliseconds; nothing to watch offline
    goods = agent.output().count("signal: good")
    bench.scanner.scan(TEA)
    logged("signal: good", goods + 1)
    bench.scale.set_weight(200.0)
    logged(f"{order_id}-waybill on label: printing -> printed")
    time.sleep(0.2)
    bench.scanner.scan(f"SF{order_id}")
    logged("parcel ", nth)
    empty_pan(bench)


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs for the agent's storage: a disk that fills up for real (ENOSPC)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                   check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Take the disk's space but about ``leave_bytes`` (the agent writes meanwhile: the
    file grows in steps until the disk has no more than that left, or is full)."""
    filler = disk / f"filler-{time.monotonic_ns()}"
    chunk = b"\0" * (256 * 1024)
    with open(filler, "wb") as out:
        while True:
            stats = os.statvfs(disk)
            free = stats.f_bavail * stats.f_frsize
            if free <= leave_bytes:
                break
            try:
                out.write(chunk[:max(4096, min(len(chunk), free - leave_bytes))])
                out.flush()
            except OSError:  # ENOSPC: full, which is all that was asked for
                break
    return filler


def test_a_filling_disk_stops_photos_first_keeps_results_and_says_so(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench, small_disk: Path) -> None:
    agent = started(broker, central, agent_factory, bench, ["D1", "D2"],
                    storage={"dir": str(small_disk), "min_free_mb": 14},
                    jobs={"pack": {"photo_min_free_mb": 12}})
    scan(central, bench, "EMP-7", in_state("idle"))
    # 8 MB left: below the photo reserve, room for the database (its WAL grows to 4 MB
    # between checkpoints).
    filler = fill(small_disk, 8 << 20)
    pack(central, bench, "D1")
    assert wait_for_result(central, "D1")
    [first] = [m.json["data"] for m in results(central, "D1")]
    assert first["verdict"] == "pass"
    assert all(p["path"] is None and "disk nearly full" in p["error"]
               for p in first["photos"]), first["photos"]
    status = central.request(SITE, BENCH, "status.get")["result"]
    codes = {a["code"] for a in status["alarms"]}
    assert {"photos_refused", "disk_low"} <= codes, status["alarms"]
    # The label is out, then nothing at all is left: the result waits, loudly, for room.
    scan(central, bench, "D2", in_state("packing"))
    scan(central, bench, TEA, in_state("weighing"))
    t0 = time.monotonic()
    bench.scale.set_weight(200.0)
    state_after(central, t0, in_state("verify_label"), 20)
    fill(small_disk, 0)
    waiting = scan(central, bench, "SFD2", lambda s: s["alert"] is not None)
    assert "results are waiting to be stored" in waiting["alert"]
    assert results(central, "D2") == []
    # Commands cannot be recorded now (they wait for redelivery); the status still goes.
    central.subscribe(f"{PREFIX}/status")
    central.wait_for(lambda m: m.topic == f"{PREFIX}/status" and "disk_full" in {
        a["code"] for a in m.json["alarms"]}, 15)
    for path in small_disk.glob("filler-*"):
        path.unlink()
    assert filler not in small_disk.iterdir()
    wait_for_result(central, "D2", 15)
    [second] = [m.json["data"] for m in results(central, "D2")]
    assert second["verdict"] == "pass" and second["waybill"] == "SFD2"
    assert agent.stop() == 0


# ---------------------------------------------------------------- devices


def test_scanner_and_scale_unplugged_and_replugged_mid_parcel(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench) -> None:
    agent = started(broker, central, agent_factory, bench, ["U1"])
    scan(central, bench, "EMP-7", in_state("idle"))
    scan(central, bench, "U1", in_state("packing"))
    t0 = time.monotonic()
    bench.scanner.unplug()
    central.wait_for(lambda m: m.at >= t0 and m.topic.endswith("/events/device_state")
                     and m.json["data"]["device"] == "scanner"
                     and m.json["data"]["state"] == "disconnected", 20)
    bench.scanner.replug()
    central.wait_for(lambda m: m.at >= t0 and m.topic.endswith("/events/device_state")
                     and m.json["data"]["device"] == "scanner"
                     and m.json["data"]["state"] == "ready", 30)
    scan(central, bench, TEA, in_state("weighing"))
    t1 = time.monotonic()
    bench.scale.unplug()
    central.wait_for(lambda m: m.at >= t1 and m.topic.endswith("/events/device_state")
                     and m.json["data"]["device"] == "scale"
                     and m.json["data"]["state"] == "disconnected", 20)
    bench.scale.set_weight(200.0)
    bench.scale.replug()
    state_after(central, t1, in_state("verify_label"), 30)
    scan(central, bench, "SFU1", in_state("idle"))
    assert wait_for_result(central, "U1")
    [result] = [m.json["data"] for m in results(central, "U1")]
    assert result["verdict"] == "pass" and result["stable_weight_g"] == pytest.approx(200.0)
    assert agent.stop() == 0


# ---------------------------------------------------------------- the wall clock


def _faketime_library() -> str:
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    assert found, "libfaketime is missing: scripts/bootstrap.sh installs it (libfaketime)"
    return str(found[0])


def test_the_wall_clock_jumping_ahead_abandons_nothing_and_is_reported(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        bench: Bench, tmp_path: Path) -> None:
    offset = tmp_path / "faketime.rc"
    offset.write_text("+0\n")
    env = {"LD_PRELOAD": _faketime_library(), "FAKETIME_TIMESTAMP_FILE": str(offset),
           "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
           "FAKETIME_DONT_RESET": "1"}
    agent = started(broker, central, agent_factory, bench, ["C1"], env=env,
                    jobs={"pack": {"flow": {"abandon_after_s": 600,
                                            "logout_after_s": 900}}})
    scan(central, bench, "EMP-7", in_state("idle"))
    opened = scan(central, bench, "C1", in_state("packing"))
    offset.write_text("+2h\n")  # NTP steps the clock two hours ahead
    wait_until(lambda: "the wall clock jumped" in agent.output(), 10, "the jump noticed")
    time.sleep(1.5)  # ticks pass: no timer may fire
    status = central.request(SITE, BENCH, "status.get")["result"]
    [jumped] = [a for a in status["alarms"] if a["code"] == "clock_jumped"]
    assert "retention" in jumped["message"]
    done = pack_rest(central, bench, "C1")
    assert done["packer"] == "EMP-7"
    assert wait_for_result(central, "C1")
    [result] = [m.json["data"] for m in results(central, "C1")]
    assert result["verdict"] == "pass", result["reason"]
    started_at = time.mktime(time.strptime(opened["state_since"][:19], "%Y-%m-%dT%H:%M:%S"))
    finished_at = time.mktime(time.strptime(result["finished_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert 7000 < finished_at - started_at < 7400, "records carry the new wall time"
    assert agent.stop() == 0
    assert "Traceback" not in agent.output()


def pack_rest(central: CentralSystem, bench: Bench, order_id: str) -> View:
    scan(central, bench, TEA, in_state("weighing"))
    t0 = time.monotonic()
    bench.scale.set_weight(200.0)
    state_after(central, t0, in_state("verify_label"), 20)
    return scan(central, bench, f"SF{order_id}", in_state("idle"))


# ---------------------------------------------------------------- a corrupt database


def test_a_corrupt_database_is_set_aside_and_the_agent_starts_clean_and_says_so(
        broker: Broker, central: CentralSystem, agent_factory: Callable[..., AgentProcess],
        tmp_path: Path) -> None:
    agent = agent_factory(broker)
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    with sqlite3.connect(state / "agent.db") as db:  # a real database, then damaged
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 200)
    data = bytearray((state / "agent.db").read_bytes())
    data[4096:8192] = os.urandom(4096)  # a page of garbage, as a power cut can leave
    data[0:16] = b"not a database!!"
    (state / "agent.db").write_bytes(bytes(data))
    central.subscribe(f"{PREFIX}/status")
    agent.start()
    status = central.wait_for(lambda m: m.topic == f"{PREFIX}/status"
                              and m.json["state"] == "online", 30)[-1].json
    [reset] = [a for a in status["alarms"] if a["code"] == "store_reset"]
    aside = [p for p in state.iterdir() if p.name.startswith("agent.db.corrupt-")]
    assert len(aside) == 1 and aside[0].name in reset["message"]
    assert "CRITICAL" in agent.output() and "corrupt" in agent.output()
    reply = central.request(SITE, BENCH, "order.push", {"orders": [tea_order("X1")]})
    assert reply["ok"] is True, "the new database works"
    assert agent.stop() == 0
