"""The scale driver against simulated scales over real pseudo-terminals (and pyusb).

Every serial protocol's production driver talks to its simulator on a pty: weights in
grams, motion, overload/underload/under zero never as weights, the exact bytes of zero,
tare and clear tare, junk on the line, a cable pulled and plugged back, a silent scale,
and the stability rule with real polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.bus import Bus, Subscription
from agent.devices import usb as agent_usb
from agent.devices.readings import (
    BadInput,
    DeviceState,
    StateChange,
    WeightCondition,
    WeightReading,
)
from agent.devices.scale import Scale, make_scale
from agent.devices.settings import ScaleSettings
from agent.errors import DeviceError
from simulators.scale import SIMULATORS, ScaleSimulator, hid_report, hid_weight_report
from simulators.usb_backend import SimBackend, SimUsbDevice

SERIAL = ["mt-sics", "toledo-8217", "scp-01", "continuous"]
POLLED = ["mt-sics", "toledo-8217", "scp-01"]
WEIGH = {"mt-sics": b"SI\r\n", "toledo-8217": b"W", "scp-01": b"W\r"}
W = WeightCondition


@dataclass
class Driven:
    """A running scale driver and what it put on the bus."""

    scale: Scale
    readings: Subscription[WeightReading]
    bad: Subscription[BadInput]
    states: Subscription[StateChange]

    async def reading(self, match: Callable[[WeightReading], bool],
                      timeout_s: float = 3.0) -> WeightReading:
        """The next reading that ``match``es (earlier ones are skipped)."""
        async with asyncio.timeout(timeout_s):
            while True:
                reading = await self.readings.get()
                if match(reading):
                    return reading

    async def state(self, state: DeviceState, timeout_s: float = 3.0) -> StateChange:
        async with asyncio.timeout(timeout_s):
            while True:
                change = await self.states.get()
                if change.state is state:
                    return change

    def drain(self) -> list[WeightReading]:
        items = []
        while (item := self.readings.get_nowait()) is not None:
            items.append(item)
        return items


@contextlib.asynccontextmanager
async def driven(connection: str, protocol: str, **options: Any) -> AsyncIterator[Driven]:
    """Run the production driver for ``protocol`` on ``connection`` until the block ends."""
    values: dict[str, Any] = {"poll_interval_ms": 20, "reply_timeout_ms": 150,
                              "reconnect_min_s": 0.05, "reconnect_max_s": 0.1,
                              "stable_count": 2, **options}
    settings = ScaleSettings(connection=connection, protocol=protocol, **values)
    bus = Bus()
    scale = make_scale("scale1", settings, bus)
    result = Driven(scale, bus.subscribe(WeightReading), bus.subscribe(BadInput),
                    bus.subscribe(StateChange))
    task = asyncio.create_task(scale.run())
    try:
        await asyncio.wait_for(scale.ready.wait(), 5)
        yield result
    finally:
        await stop(task)


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel the driver and wait until it ended."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1)


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[Callable[..., ScaleSimulator]]:
    sims: list[ScaleSimulator] = []

    def make(protocol: str, **options: Any) -> ScaleSimulator:
        sim = SIMULATORS[protocol](tmp_path / f"scale-{len(sims)}", **options)
        if protocol == "continuous":
            sim.interval_s = 0.02  # type: ignore[attr-defined]
        sims.append(sim)
        return sim.start()

    yield make
    for sim in sims:
        sim.stop()


def serial(sim: ScaleSimulator) -> str:
    return f"serial://{sim.path}"


# ---------------------------------------------------------------- weights and conditions
@pytest.mark.parametrize("protocol", SERIAL)
def test_scale_reports_a_stable_weight_in_grams(
        protocol: str, make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim(protocol)
    sim.set_weight(1250)

    async def go() -> None:
        async with driven(serial(sim), protocol) as bench:
            reading = await bench.reading(lambda r: r.grams == 1250.0)
            assert (reading.condition, reading.stable, reading.net) == (W.WEIGHT, True, False)
            assert reading.device == "scale1" and reading.raw
            fresh = await bench.scale.read_weight()
            assert fresh.grams == 1250.0 and fresh.monotonic > reading.monotonic
            details = bench.scale.details()
            assert details["protocol"] == protocol and details["bad_frames"] == 0
            assert details["last_reading"]["grams"] == 1250.0 and details["frames"] >= 2

    asyncio.run(go())
    if protocol in WEIGH:
        assert set(sim.requests) == {WEIGH[protocol]}  # exact bytes of every poll


@pytest.mark.parametrize("protocol", SERIAL)
def test_scale_in_motion_is_never_stable_nor_settled(
        protocol: str, make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim(protocol)
    sim.set_weight(800)
    sim.set_motion(True)

    async def go() -> None:
        async with driven(serial(sim), protocol) as bench:
            moving = [await bench.reading(lambda r: True) for _ in range(4)]
            assert all(r.condition is W.WEIGHT and not r.stable and not r.settled
                       for r in moving)
            if protocol != "toledo-8217":  # the 8217 sends no weight while moving
                assert {r.grams for r in moving} == {800.0}
            sim.set_motion(False)
            assert (await bench.reading(lambda r: r.settled)).grams == 800.0

    asyncio.run(go())


@pytest.mark.parametrize("protocol", SERIAL)
def test_scale_reports_overload_never_as_a_weight(
        protocol: str, make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim(protocol)
    sim.set_weight(1000)

    async def go() -> None:
        async with driven(serial(sim), protocol) as bench:
            await bench.reading(lambda r: r.grams == 1000.0)
            sim.overload()
            reading = await bench.reading(lambda r: r.condition is not W.WEIGHT)
            assert (reading.condition, reading.grams, reading.settled) == \
                (W.OVERLOAD, None, False)
            sim.set_weight(40_000)  # a real overload: past the 30 kg capacity
            assert (await bench.reading(lambda r: True)).condition is W.OVERLOAD

    asyncio.run(go())


@pytest.mark.parametrize("protocol", ["mt-sics", "scp-01", "continuous"])
def test_scale_reports_underload_never_as_a_weight(
        protocol: str, make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim(protocol)
    sim.underload()

    async def go() -> None:
        async with driven(serial(sim), protocol) as bench:
            reading = await bench.reading(lambda r: True)
            assert (reading.condition, reading.grams) == (W.UNDERLOAD, None)

    asyncio.run(go())


@pytest.mark.parametrize("protocol", SERIAL)
def test_scale_reports_under_zero_never_as_a_weight(
        protocol: str, make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim(protocol)
    sim.under_zero()

    async def go() -> None:
        async with driven(serial(sim), protocol) as bench:
            reading = await bench.reading(lambda r: True)
            assert (reading.condition, reading.grams) == (W.UNDER_ZERO, None)
            sim.set_weight(-35)  # a negative gross weight: the pan was zeroed loaded
            assert (await bench.reading(lambda r: True)).condition is W.UNDER_ZERO
            sim.set_weight(0)
            await bench.reading(lambda r: r.grams == 0.0)

    asyncio.run(go())


def test_scp01_scale_in_pounds_reports_grams(make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim("scp-01", unit="lb")
    sim.set_weight(1000)

    async def go() -> None:
        async with driven(serial(sim), "scp-01") as bench:
            reading = await bench.reading(lambda r: r.grams is not None)
            assert reading.raw.startswith(b"\n   2.20lb\r\n")
            assert reading.grams == 997.903  # 2.20 lb: the scale's own resolution

    asyncio.run(go())


def test_toledo_8217_with_units_in_its_records(make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim("toledo-8217", unit="lb", with_unit=True)
    sim.set_weight(453.59237)

    async def go() -> None:
        async with driven(serial(sim), "toledo-8217") as bench:
            reading = await bench.reading(lambda r: r.grams is not None)
            assert (reading.raw, reading.grams) == (b"\x0201.000lb\r", 453.592)

    asyncio.run(go())


# ---------------------------------------------------------------- commands
def test_mt_sics_zero_tare_and_clear_tare_send_exact_bytes(
        make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim("mt-sics")
    sim.set_weight(12)

    async def go() -> None:
        async with driven(serial(sim), "mt-sics") as bench:
            await bench.scale.zero()
            await bench.reading(lambda r: r.grams == 0.0)
            sim.set_weight(312)
            await bench.reading(lambda r: r.grams == 300.0)
            await bench.scale.tare()
            net = await bench.reading(lambda r: r.grams == 0.0)
            assert net.net
            sim.set_weight(1312)
            assert (await bench.reading(lambda r: r.grams == 1000.0)).net
            await bench.scale.clear_tare()
            gross = await bench.reading(lambda r: r.grams == 1300.0)
            assert not gross.net

    asyncio.run(go())
    commands = [r for r in sim.requests if r != b"SI\r\n"]
    assert commands == [b"Z\r\n", b"T\r\n", b"TAC\r\n"]


def test_mt_sics_refusals_are_command_failed(make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim("mt-sics")
    sim.set_weight(5000)

    async def go() -> None:
        async with driven(serial(sim), "mt-sics") as bench:
            with pytest.raises(DeviceError, match=r"Z \+") as caught:
                await bench.scale.zero()  # 5 kg is outside the zero range
            assert caught.value.code == "command_failed"
            sim.set_motion(True)
            for command, reply in ((bench.scale.zero, "Z I"), (bench.scale.tare, "T I")):
                with pytest.raises(DeviceError, match=reply) as caught:
                    await command()
                assert caught.value.code == "command_failed"
            assert bench.scale.state is DeviceState.READY

    asyncio.run(go())


def test_toledo_8217_zero_tare_clear_tare_send_single_characters(
        make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim("toledo-8217")
    sim.set_weight(10)

    async def go() -> None:
        async with driven(serial(sim), "toledo-8217") as bench:
            await bench.scale.zero()
            sim.set_weight(510)
            await bench.reading(lambda r: r.grams == 500.0)
            await bench.scale.tare()
            await bench.reading(lambda r: r.grams == 0.0)
            await bench.scale.clear_tare()
            await bench.reading(lambda r: r.grams == 500.0)
            sim.set_motion(True)
            with pytest.raises(DeviceError, match="motion") as caught:
                await bench.scale.zero()
            assert caught.value.code == "command_failed"

    asyncio.run(go())
    assert [r for r in sim.requests if r != b"W"] == [b"Z", b"T", b"C", b"Z"]


def test_scp01_zeroes_and_has_no_tare(make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim("scp-01")
    sim.set_weight(20)

    async def go() -> None:
        async with driven(serial(sim), "scp-01") as bench:
            await bench.scale.zero()
            await bench.reading(lambda r: r.grams == 0.0)
            for command in (bench.scale.tare, bench.scale.clear_tare):
                with pytest.raises(DeviceError) as caught:
                    await command()
                assert caught.value.code == "unsupported"

    asyncio.run(go())
    assert [r for r in sim.requests if r != b"W\r"] == [b"Z\r"]


def test_continuous_scale_has_no_commands(make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim("continuous")

    async def go() -> None:
        async with driven(serial(sim), "continuous") as bench:
            for command in (bench.scale.zero, bench.scale.tare, bench.scale.clear_tare):
                with pytest.raises(DeviceError) as caught:
                    await command()
                assert caught.value.code == "unsupported"

    asyncio.run(go())
    assert sim.requests == []


# ---------------------------------------------------------------- junk, unplug, silence
@pytest.mark.parametrize("protocol", SERIAL)
def test_garbage_bytes_are_reported_and_the_driver_keeps_running(
        protocol: str, make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim(protocol)
    sim.set_weight(700)

    async def go() -> None:
        async with driven(serial(sim), protocol) as bench:
            await bench.reading(lambda r: r.grams == 700.0)
            sim.inject(b"\x15\xfe#@!\r\n")
            async with asyncio.timeout(3):
                bad = await bench.bad.get()
            assert bad.code == "protocol_error" and "expected" in bad.message
            assert b"\xfe#@!" in bad.raw
            sim.set_weight(900)
            await bench.reading(lambda r: r.grams == 900.0)
            assert bench.scale.state is DeviceState.READY
            assert bench.scale.bad_frames >= 1
            # Kept running: no reconnect hid a crash.
            assert (bench.scale.connects, bench.scale.failures) == (1, 0)

    asyncio.run(go())


@pytest.mark.parametrize("protocol", SERIAL)
@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=5))
def test_a_driver_fed_random_bytes_reports_each_bad_frame_and_keeps_running(
        protocol: str, junk: list[bytes], make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim(protocol)
    sim.set_weight(450)

    async def go() -> None:
        async with driven(serial(sim), protocol) as bench:
            for blob in junk:
                sim.inject(blob)
            sim.inject(b"\r\n")  # end a line the junk may have left open
            await asyncio.sleep(0.05)
            sim.set_weight(451)
            await bench.reading(lambda r: r.grams == 451.0)
            assert bench.scale.state is DeviceState.READY
            assert (bench.scale.connects, bench.scale.failures) == (1, 0)
            reported = 0
            while bench.bad.get_nowait() is not None:
                reported += 1
            assert reported == bench.scale.bad_frames

    asyncio.run(go())
    sim.stop()


@pytest.mark.parametrize("protocol", SERIAL)
def test_unplugged_scale_is_disconnected_then_ready_again_after_replug(
        protocol: str, make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim(protocol)
    sim.set_weight(300)

    async def go() -> None:
        async with driven(serial(sim), protocol) as bench:
            await bench.reading(lambda r: r.grams == 300.0)
            sim.unplug()
            gone = await bench.state(DeviceState.DISCONNECTED)
            assert gone.code in ("disconnected", "not_found")
            with pytest.raises(DeviceError):
                await bench.scale.read_weight()
            await asyncio.sleep(0.2)  # a few reconnection attempts against a missing port
            sim.set_weight(2000)
            sim.replug()
            await bench.state(DeviceState.READY)
            await bench.reading(lambda r: r.grams == 2000.0)
            assert bench.scale.connects == 2

    asyncio.run(go())


@pytest.mark.parametrize("protocol", SERIAL)
def test_a_silent_scale_times_out_and_comes_back(
        protocol: str, make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim(protocol)
    sim.set_weight(300)
    # A pty takes 7E1 on its first open only (later opens fail with EINVAL) and this
    # driver reopens the same pty: 8N1 here; replug tests cover 7E1 on new ptys.
    line = "?bytesize=8&parity=N" if protocol in ("toledo-8217", "scp-01") else ""

    async def go() -> None:
        async with driven(serial(sim) + line, protocol, reply_timeout_ms=80) as bench:
            await bench.reading(lambda r: r.grams == 300.0)
            started = time.monotonic()
            sim.set_silent(True)
            change = await bench.state(DeviceState.DISCONNECTED)
            assert change.code == "timeout"
            assert time.monotonic() - started < 1.5  # 3 x 80 ms and a poll or two
            sim.set_silent(False)
            await bench.state(DeviceState.READY)

    asyncio.run(go())


def test_a_scale_that_never_answers_does_not_get_ready(
        make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim("mt-sics")
    sim.set_silent(True)

    async def go() -> None:
        bus = Bus()
        states = bus.subscribe(StateChange)
        settings = ScaleSettings(connection=serial(sim), protocol="mt-sics",
                                 reply_timeout_ms=60, reconnect_min_s=0.05)
        scale = make_scale("scale1", settings, bus)
        task = asyncio.create_task(scale.run())
        async with asyncio.timeout(3):
            change = await states.get()
        await stop(task)
        assert (change.state, change.code) == (DeviceState.DISCONNECTED, "timeout")
        assert "did not answer b'SI\\r\\n'" in str(change.message)

    asyncio.run(go())


# ---------------------------------------------------------------- the stability rule, live
@pytest.mark.parametrize("protocol", SERIAL)
def test_two_equal_parcels_in_a_row_give_two_settled_readings(
        protocol: str, make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim(protocol)

    async def go() -> None:
        async with driven(serial(sim), protocol, stable_count=3) as bench:
            settled: list[WeightReading] = []
            for _ in range(2):
                sim.set_weight(1250)
                settled.append(await bench.reading(lambda r: r.settled))
                await asyncio.sleep(0.15)  # the parcel stays on the pan a while
                sim.set_weight(0)
                await bench.reading(lambda r: r.grams == 0.0)
            rest = bench.drain()
            assert [r.grams for r in settled] == [1250.0, 1250.0]
            assert not any(r.settled for r in rest)
            assert bench.scale.last_settled == settled[-1]

    asyncio.run(go())


def test_a_parcel_left_on_the_pan_settles_once(make_sim: Callable[..., ScaleSimulator]) -> None:
    sim = make_sim("mt-sics")
    sim.set_weight(980)

    async def go() -> None:
        async with driven(serial(sim), "mt-sics", stable_count=2) as bench:
            await asyncio.sleep(0.5)
            readings = bench.drain()
            assert len(readings) > 10
            assert [r.grams for r in readings if r.settled] == [980.0]

    asyncio.run(go())


# ---------------------------------------------------------------- HID POS through pyusb
def test_hid_pos_scale_through_pyusb_reports_grams_and_survives_junk() -> None:
    device = SimUsbDevice(0x0922, 0x8003, product="DYMO M10", interface_class=0x03,
                          endpoint_type=3, has_out=False, max_packet=8)
    agent_usb.use_backend(SimBackend([device]))

    async def go() -> None:
        device.feed(hid_weight_report(0))
        async with driven("usb://0922:8003", "hid-pos") as bench:
            await bench.reading(lambda r: r.grams == 0.0)
            device.feed(hid_weight_report(1250, stable=False))
            device.feed(hid_report(4, 11, -1, 441))  # 44.1 oz
            settled = await bench.reading(lambda r: r.settled)
            assert settled.grams == 1250.214
            device.feed(b"\x15\x16\x17")
            async with asyncio.timeout(3):
                assert (await bench.bad.get()).code == "protocol_error"
            device.feed(hid_report(6, 2, 0, 0))
            assert (await bench.reading(lambda r: True)).condition is W.OVERLOAD
            # Reports come only on change: a quiet scale's last report is current.
            assert (await bench.scale.read_weight()).condition is W.OVERLOAD
            for command in (bench.scale.zero, bench.scale.tare, bench.scale.clear_tare):
                with pytest.raises(DeviceError) as caught:
                    await command()
                assert caught.value.code == "unsupported"
            device.unplug()
            await bench.state(DeviceState.DISCONNECTED)
            device.replug()
            await bench.state(DeviceState.READY)

    try:
        asyncio.run(go())
    finally:
        agent_usb.use_backend(None)


def test_random_order_of_scripted_events_never_stops_the_driver(
        make_sim: Callable[..., ScaleSimulator]) -> None:
    """A technician's session: weights, motion, junk, conditions, in a seeded random mix."""
    sim = make_sim("toledo-8217")
    rng = random.Random(8217)

    async def go() -> None:
        async with driven(serial(sim), "toledo-8217") as bench:
            for _ in range(25):
                rng.choice([lambda: sim.set_weight(rng.choice([0, 350, 1250])),
                            lambda: sim.set_motion(rng.random() < 0.5), sim.overload,
                            sim.under_zero, lambda: sim.inject(rng.randbytes(5))])()
                await asyncio.sleep(0.01)
            sim.set_motion(False)
            sim.set_weight(640)
            await bench.reading(lambda r: r.grams == 640.0)
            assert bench.scale.state is DeviceState.READY
            assert (bench.scale.connects, bench.scale.failures) == (1, 0)

    asyncio.run(go())


def test_simulator_runs_as_a_process_driven_from_stdin(tmp_path: Path) -> None:
    link = tmp_path / "scale-cli"
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.scale", "--protocol", "toledo-8217", "--link",
         str(link)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parent.parent)
    assert process.stdin is not None and process.stdout is not None
    try:
        assert "toledo-8217 on" in process.stdout.readline()
        process.stdin.write("weight 2750\n")
        process.stdin.flush()
        assert "shown 2750 g" in process.stdout.readline()

        async def go() -> None:
            async with driven(f"serial://{link}", "toledo-8217") as bench:
                reading = await bench.reading(lambda r: r.grams is not None)
                assert (reading.raw, reading.grams) == (b"\x0202.750\r", 2750.0)

        asyncio.run(go())
        process.stdin.write("quit\n")
        process.stdin.flush()
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
