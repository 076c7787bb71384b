"""The long benchmarks, run tiny, so they cannot rot: they finish, print their numbers and
lose nothing. Their real runs are by hand (``docs/scaling.md``)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.harness import ROOT

NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def run_benchmark(module: str, *args: str, timeout_s: float = 60) -> str:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout_s)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_fleet_benchmark_delivers_every_event_of_three_benches_once_and_prints_its_numbers(
        ) -> None:
    """Three real daemons, one broker, a shared-subscription consumer, 4 s: every stored
    event id arrives, none twice, and rate, latency, CPU and memory are printed."""
    out = run_benchmark("benchmarks.fleet", "--benches", "3", "--seconds", "4", "--rate", "15",
                        "--workers", "1", "--consumers", "1")
    assert re.search(r"parcels: 3 packed \(schedule 3\), failed 0", out), out
    assert re.search(rf"= {NUMBER} events/s; latency p50 {NUMBER} ms, p99 {NUMBER} ms", out), out
    assert re.search(rf"print_job +\d+ .* p99 +{NUMBER} ms", out), out
    losses = re.search(r"losses: (\d+) events stored in all .*, missing (\d+), delivered more "
                       r"than once (\d+) .*unknown ids (\d+); outboxes not drained (\d+)", out)
    assert losses is not None, out
    stored, missing, twice, unknown, undrained = map(int, losses.groups())
    assert stored > 3 and (missing, twice, unknown, undrained) == (0, 0, 0, 0), out
    assert re.search(r"commands: .*; refused none", out), out
    assert re.search(rf"CPU during the run .*benches {NUMBER}%.*broker {NUMBER}%", out), out
    assert re.search(rf"memory: {NUMBER} MB RSS per bench", out), out


def test_soak_benchmark_packs_every_parcel_once_prunes_and_prints_memory_growth() -> None:
    """60 parcels through the real packing job: each stored once, its order packed, one
    record each; retention ran; memory, database and photo growth are printed."""
    out = run_benchmark("benchmarks.soak", "--parcels", "60", "--every", "20")
    assert "pack.result once for 60 of 60 parcels (missing 0, more than once 0)" in out, out
    assert "orders marked packed 60; evidence records 60" in out, out
    assert "waybills printed 60, slips sent 60, jobs failed or uncertain 0" in out, out
    assert "events out of seq order 0; outbox left 0" in out, out
    assert "CHECK FAILED" not in out, out
    for what in ("RSS", "traced", "database", "photos"):
        assert re.search(rf"{what} +first {NUMBER} MB, last {NUMBER} MB, growth [+-]\d+ KB "
                         rf"per 10k parcels", out), out
    assert re.search(r"retention removed \{'orders': [1-9]\d*, 'print_jobs': [1-9]", out), out
    assert re.search(rf"parcels: 60 in {NUMBER} s = {NUMBER} parcels/s", out), out
    assert "agent log: 0 warnings or errors" in out, out
