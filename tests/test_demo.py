"""The README's demo command works end to end, and the CLI's small commands answer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from agent import __version__
from tests.harness import ROOT


def test_the_demo_brings_a_bench_online_answers_commands_and_stops_cleanly(
        tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulators.demo", "--dir", str(tmp_path), "--duration", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[central] status online (session 1" in out
    assert "reply to status.get" in out and "reply to state.resend" in out
    for device, kind in (("scale", "scale"), ("scanner", "scanner"), ("label", "printer"),
                         ("slip", "printer"), ("camera", "camera")):
        assert f"[central] device {device} ({kind}) ready" in out
    assert "[central] device label (printer) faulted paper_out" in out
    assert re.search(r"pack result pass for (SO-\d+-1) waybill SF\d+01: 4 scans, weight "
                     r"1085.0 g \(expected 1080.0 g \+/- 54.0 g\), 2 photos", out), out
    assert re.search(r"pack result pass_with_override for SO-\d+-2 waybill SF\d+02: .*"
                     r"'supervisor': 'SUP-3', 'reason': 'RSN-PACKAGING-VARIANCE'", out)
    assert re.search(r"pack intercept: .*'state': 'held', 'reason': 'buyer changed the "
                     r"address'", out)
    assert re.search(r"pack result abandoned for SO-\d+-3 .*reason: intercepted", out)
    assert re.search(r"pack result pass for SO-\d+-4, SO-\d+-5 waybill SF\d+04", out)
    assert re.search(r"customer service looks up waybill SF\d+02: pass_with_override, "
                     r"packed by EMP-7, 1300.0 g, photos \['\d{4}-\d\d-\d\d/", out)
    assert "bench weight_mismatch:" in out and "bench intercepted:" in out
    light = re.search(r"\[demo\] the stack light showed: (.*)", out)
    assert light and {"green", "red", "red + buzzer"} <= set(light[1].split(", ")), out
    held = re.search(r"print job (SF\d{12})-waybill on label held paper_out", out)
    assert held, out
    waybill = held[1]
    assert f"print job {waybill}-slip on slip held waiting_for_group" in out
    assert out.index(f"{waybill}-waybill on label printed") < out.index(
        f"{waybill}-slip on slip printing")
    assert f"print job {waybill}-slip on slip sent" in out
    assert "[central] device scale (scale) disconnected disconnected" in out
    assert ("devices.list: scale ready, scanner ready, label ready, slip ready, light ready, "
            "camera ready") in out
    assert "scanner: scan '4006381333931' (EAN-13" in result.stderr + out
    assert "scale: settled at 1234.5 g" in result.stderr + out
    assert "[central] status offline (session 1, reason shutdown" in out
    assert "agent exited with 0" in out


def test_version_prints_the_agent_version() -> None:
    result = subprocess.run([sys.executable, "-m", "agent.cli", "version", "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"version": __version__}


def test_discover_prints_every_hardware_group_as_json() -> None:
    result = subprocess.run([sys.executable, "-m", "agent.cli", "discover", "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert set(found) == {"serial", "usb", "input", "video"}
    for entry in (e for group in found.values() for e in group):
        assert entry["connection"] and "what" in entry
