"""Signal devices: the packer's stack light on a relay board, bytes checked at the board."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.bus import Bus
from agent.config import parse_config
from agent.devices.settings import SignalSettings
from agent.devices.signal import make_signal
from agent.errors import ConfigError
from simulators.signal import RelayBoardSim, lcus_frame


def settings(path: Path) -> SignalSettings:
    return SignalSettings.model_validate({
        "connection": f"serial://{path}",
        "good": {"on": "A0 01 01 A2", "off": "A0 01 00 A1", "ms": 150},
        "bad": {"on": lcus_frame(2, True).hex(" "), "off": lcus_frame(2, False).hex(" "),
                "ms": 400},
        "intercept": {"on": lcus_frame(3, True).hex(" "), "ms": 100},
    })


def test_each_signal_switches_its_relay_and_a_newer_one_cuts_the_last_short(
        tmp_path: Path) -> None:
    board = RelayBoardSim(tmp_path / "relay").start()

    async def main() -> None:
        device = make_signal("light", settings(board.path), Bus())
        task = asyncio.create_task(device.run())
        await asyncio.wait_for(device.ready.wait(), 5)
        device.show("good")
        await asyncio.to_thread(board.wait_for, 2)
        assert board.switched() == [(1, True), (1, False)]
        device.show("bad")
        await asyncio.sleep(0.1)
        device.show("intercept")  # the bad signal is still on: it goes off first
        device.show("party")  # not a signal: ignored
        await asyncio.to_thread(board.wait_for, 5)
        await asyncio.sleep(0.3)
        assert board.switched() == [(1, True), (1, False), (2, True), (2, False), (3, True)]
        assert board.relays[3] is True, "intercept has no off bytes: it stays on"
        assert device.details() == {"signals": ["good", "bad", "intercept"], "shown": 3,
                                    "last_signal": "intercept"}
        assert board.bad_frames == 0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(asyncio.wait_for(main(), 20))
    finally:
        board.close()


def test_a_pattern_that_is_not_hex_fails_the_config_naming_the_key(tmp_path: Path) -> None:
    raw = {"bench": {"site": "s", "id": "b"},
           "mqtt": {"host": "h", "tls": {"ca_file": "/dev/null"}},
           "storage": {"dir": str(tmp_path)},
           "devices": {"light": {"kind": "signal", "connection": "serial:///dev/ttyUSB9",
                                 "good": {"on": "A0 0G"}}}}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, source=tmp_path / "c.toml")
    assert "devices.light.good.on" in str(error.value) and "hex bytes" in str(error.value)
