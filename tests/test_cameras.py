"""Cameras: the production driver on the simulator's image sequences, video files and MJPEG
stream; the barcode decoders on its frames."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from agent.bus import Bus
from agent.devices.camera import Camera, make_camera
from agent.devices.camera_sources import ImageSequence
from agent.devices.decoders import PyzbarDecoder, ZxingDecoder, make_decoder, upce_to_upca
from agent.devices.readings import BadInput, DeviceState, StateChange
from agent.devices.settings import CameraSettings
from agent.errors import ConfigError, DeviceError, ProtocolError
from simulators.camera import BarcodeSpec, CameraScene, CameraSimulator, MjpegServer

ROOT = Path(__file__).resolve().parents[1]
GS1_128 = "gs1-128:(01)09506000134352(10)ABC123(17)261231"
SCENE = ("ean13:4006381333931", GS1_128, "qrcode:https://example.com/o/12345",
         "datamatrix:SN-0042-7731")
EXPECTED = {
    "EAN-13": ("4006381333931", "]E0"),
    "GS1-128": ("0109506000134352" "10ABC123\x1d" "17261231", "]C1"),
    "QR Code": ("https://example.com/o/12345", "]Q1"),
    "Data Matrix": ("SN-0042-7731", "]d1"),
}


def run(coro: Coroutine[Any, Any, Any], timeout_s: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def scene(barcodes: tuple[str, ...] = SCENE, resolution: tuple[int, int] = (1280, 720),
          **options: Any) -> CameraScene:
    return CameraScene([BarcodeSpec.parse(b) for b in barcodes], resolution, **options)


def camera(connection: str, bus: Bus | None = None, **options: Any) -> Camera:
    values: dict[str, Any] = {"connection": connection, "fps": 50.0, "frame_timeout_ms": 400,
                              "reconnect_min_s": 0.05, "reconnect_max_s": 0.1, **options}
    return make_camera("cam", CameraSettings(**values), bus or Bus())


@contextlib.asynccontextmanager
async def running(device: Camera, *, ready: bool = True) -> AsyncIterator[Camera]:
    task = asyncio.create_task(device.run())
    try:
        if ready:
            await asyncio.wait_for(device.ready.wait(), 5)
        yield device
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "the camera's supervisor did not stop when cancelled"


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def barcode_sequence(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three 1280x720 frames showing an EAN-13, a GS1-128, a QR code and a DataMatrix."""
    return scene(size=0.95, rotate_deg=4).write_sequence(
        tmp_path_factory.mktemp("cam") / "seq", 3)


@pytest.fixture(scope="module")
def barcode_video(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An MJPG .avi of eight 640x480 frames."""
    barcodes = ("ean13:4006381333931", "qrcode:ORDER-7731")
    return scene(barcodes, (640, 480)).write_video(
        tmp_path_factory.mktemp("cam") / "clip.avi", 8, fps=25)


@pytest.fixture
def small_sequence(tmp_path: Path) -> CameraSimulator:
    return CameraSimulator(tmp_path / "seq", scene(("qrcode:BOX-1",), (320, 240)), frames=4)


# ------------------------------------------------------------------ capture
def test_camera_plays_an_image_sequence_keeping_only_the_newest_frame(
        barcode_sequence: str) -> None:
    """Frames keep coming (the sequence loops) and latest_frame() is always the newest."""
    async def main() -> None:
        bus = Bus()
        states = bus.subscribe(StateChange)
        async with running(camera(barcode_sequence, bus, width=1280, height=720)) as cam:
            assert (await states.get()).state is DeviceState.READY
            first = cam.latest_frame()
            assert first is not None and first.resolution == (1280, 720)
            await until(lambda: (f := cam.latest_frame()) is not None and f.sequence > 8)
            newest = cam.latest_frame()
            assert newest is not None and newest.sequence > first.sequence
            assert newest.monotonic > first.monotonic
            assert time.monotonic() - newest.monotonic < 0.2  # paced at 50 fps
            assert not newest.image.flags.writeable
            details = cam.status()
            assert details["state"] == "ready" and details["source"] == "images"
            assert details["resolution"] == [1280, 720] and details["decoder"] == "zxing"
            assert 10 < details["fps"] < 80 and details["frames"] >= 8
            assert "bench-camera-cam" in {t.name for t in threading.enumerate()}
        assert "bench-camera-cam" not in {t.name for t in threading.enumerate()}
    run(main())


def test_camera_plays_a_video_file_in_a_loop(barcode_video: str) -> None:
    """An eight-frame clip keeps delivering frames past its end, at the configured fps."""
    async def main() -> None:
        async with running(camera(barcode_video)) as cam:
            await until(lambda: (f := cam.latest_frame()) is not None and f.sequence > 20)
            assert cam.state is DeviceState.READY
            assert cam.status()["source"] == "file"
    run(main())


def test_video_file_without_configured_fps_plays_at_its_own_rate(barcode_video: str) -> None:
    """The clip declares 25 fps: about 25 frames a second arrive, not as many as decode."""
    async def main() -> None:
        async with running(camera(barcode_video, fps=None)) as cam:
            await asyncio.sleep(0.6)
            fps = cam.status()["fps"]
            assert fps is not None and 18 < fps < 30
    run(main())


def test_snapshot_jpeg_decodes_back_at_the_configured_size(barcode_sequence: str) -> None:
    """The JPEG is the newest frame at 1280x720; a lower quality gives a smaller file."""
    async def main() -> tuple[bytes, bytes]:
        async with running(camera(barcode_sequence, width=1280, height=720,
                                  jpeg_quality=95)) as cam:
            fine = await cam.snapshot_jpeg()
        async with running(camera(barcode_sequence, jpeg_quality=30)) as cam:
            frame = cam.latest_frame()
            assert frame is not None
            coarse = await cam.snapshot_jpeg(frame)
        return fine, coarse

    fine, coarse = run(main())
    assert fine[:3] == b"\xff\xd8\xff" and fine[-2:] == b"\xff\xd9"
    image = cv2.imdecode(np.frombuffer(fine, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (720, 1280, 3)
    assert len(coarse) < len(fine) / 2


def test_snapshot_without_a_frame_is_a_timeout(tmp_path: Path) -> None:
    """No source, no frame: snapshot_jpeg() and decode() fail with code timeout in time."""
    async def main() -> None:
        cam = camera(f"images://{tmp_path}/none/frame_%03d.png", frame_timeout_ms=150)
        async with running(cam, ready=False):
            started = time.monotonic()
            with pytest.raises(DeviceError) as error:
                await cam.snapshot_jpeg()
            assert error.value.code == "timeout"
            with pytest.raises(DeviceError):
                await cam.decode()
            assert time.monotonic() - started < 1.0
    run(main())


# ------------------------------------------------------------------ decoding
@pytest.mark.parametrize("decoder", ["zxing", "pyzbar"])
def test_camera_decodes_the_barcodes_in_view(barcode_sequence: str, decoder: str) -> None:
    """Both backends find the EAN-13, GS1-128 and QR code; only zxing reads DataMatrix."""
    formats = ["ean13", "code128", "qrcode"] + (["datamatrix"] if decoder == "zxing" else [])

    async def main() -> None:
        async with running(camera(barcode_sequence, decoder=decoder, formats=formats)) as cam:
            frame = cam.latest_frame()
            assert frame is not None
            scans = await cam.decode(frame)
            assert all(s.device == "cam" and s.at == frame.at for s in scans)
            if decoder == "zxing":
                got = {s.symbology_name: (s.data, s.symbology) for s in scans}
                assert got == EXPECTED
                gs1 = next(s for s in scans if s.symbology == "]C1").gs1 or {}
                # The same fields a scanner's read of this label gives.
                assert (gs1["01"], gs1["10"], gs1["17"]) == ("09506000134352", "ABC123",
                                                             "261231")
            else:  # zbar gives no AIM identifier and loses the GS1 flag
                got = {s.symbology_name: (s.data, s.symbology) for s in scans}
                assert got == {
                    "EAN-13": ("4006381333931", None),
                    "Code 128": (EXPECTED["GS1-128"][0], None),
                    "QR Code": (EXPECTED["QR Code"][0], None),
                }
            assert all(s.raw == s.data.encode() for s in scans)
    run(main())


def test_camera_reports_only_the_configured_formats(barcode_sequence: str) -> None:
    """A code128-only camera does not report the QR code, EAN-13 or DataMatrix in view."""
    async def main() -> None:
        for decoder in ("zxing", "pyzbar"):
            async with running(camera(barcode_sequence, decoder=decoder,
                                      formats=["code128"])) as cam:
                scans = await cam.decode()
                assert [s.data for s in scans] == [EXPECTED["GS1-128"][0]]
    run(main())


def test_pyzbar_with_datamatrix_fails_at_construction_naming_the_format() -> None:
    """zbar has no DataMatrix reader: the config is refused before the camera ever runs."""
    with pytest.raises(ValidationError, match="decoder pyzbar cannot read datamatrix"):
        camera("video:0", decoder="pyzbar", formats=["ean13", "datamatrix"])
    # Not configured, the default formats are those the decoder reads.
    assert camera("video:0", decoder="pyzbar").decoder.formats == (
        "ean13", "ean8", "upca", "upce", "code128", "qrcode")
    assert "datamatrix" in camera("video:0").decoder.formats
    with pytest.raises(ConfigError, match="aztec, pdf417"):
        make_decoder("pyzbar", ["aztec", "pdf417"])
    with pytest.raises(ConfigError, match="unknown barcode decoder 'zbar'"):
        make_decoder("zbar", ["ean13"])


def test_decode_takes_a_plain_grayscale_array() -> None:
    """decode() accepts any 8-bit image, here one grey frame made by hand."""
    gray = cv2.cvtColor(scene(("code128:SF1234567890",), (640, 480)).frame(0),
                        cv2.COLOR_BGR2GRAY)

    async def main() -> None:
        cam = camera("video:0", formats=["code128"])
        scans = await cam.decode(gray)
        assert [(s.data, s.symbology, s.symbology_name) for s in scans] == [
            ("SF1234567890", "]C0", "Code 128")]
    run(main())


@pytest.mark.parametrize("decoder", ["zxing", "pyzbar"])
def test_upc_a_and_upc_e_read_alike_on_both_decoders(decoder: str) -> None:
    """UPC-A and UPC-E come as the 13 digits of their EAN-13 form, named as themselves."""
    image = scene(("upca:036000291452", "upce:01234565", "ean13:4006381333931"),
                  (1280, 720), noise=2).frame(0)
    found = make_decoder(decoder, ["ean13", "upca", "upce"]).decode(image)
    assert sorted((d.format, d.text) for d in found) == [
        ("ean13", "4006381333931"), ("upca", "0036000291452"), ("upce", "0012345000065")]
    only_upca = make_decoder(decoder, ["upca"]).decode(image)
    assert [(d.format, d.text) for d in only_upca] == [("upca", "0036000291452")]
    only_ean13 = make_decoder(decoder, ["ean13"]).decode(image)
    assert sorted((d.format, d.text) for d in only_ean13) == [
        ("ean13", "0036000291452"), ("ean13", "4006381333931")]


@pytest.mark.parametrize(("barcode", "data", "name", "aim"), [
    ("ean8:96385074", "96385074", "EAN-8", "]E4"),
    ("code39:BOX 42-A", "BOX 42-A", "Code 39", "]A0"),
    ("code93:PARCEL93", "PARCEL93", "Code 93", "]G0"),
    ("codabar:A40156B", "A40156B", "Codabar", "]F0"),
    ("itf:10012345000017", "10012345000017", "ITF", "]I1"),
    ("databar:(01)09506000134352", "0109506000134352", "GS1 DataBar", "]e0"),
    ("databar_expanded:(01)09506000134352(10)AB12", "010950600013435210AB12",
     "GS1 DataBar Expanded", "]e0"),
    ("pdf417:WAYBILL SF1234567890", "WAYBILL SF1234567890", "PDF417", "]L2"),
    ("aztec:TICKET-77", "TICKET-77", "Aztec", "]z0"),
    ("gs1-datamatrix:(01)09506000134352(21)X7", "010950600013435221X7", "GS1 DataMatrix",
     "]d2"),
])
def test_every_format_is_read_and_named(barcode: str, data: str, name: str, aim: str) -> None:
    """Each config format name reaches the right reader of each library that has one."""
    image = scene((barcode,), (640, 480), noise=2).frame(0)
    fmt = barcode.split(":")[0].removeprefix("gs1-")
    found = make_decoder("zxing", [fmt]).decode(image)
    assert [(d.format, d.text, d.symbology_name, d.symbology_id) for d in found] == [
        (fmt, data, name, aim)]
    if fmt in PyzbarDecoder.unsupported:
        return
    found = make_decoder("pyzbar", [fmt]).decode(image)
    assert [(d.format, d.text, d.symbology_name) for d in found] == [(fmt, data, name)]


def test_upce_expands_to_its_upc_a() -> None:
    """The four UPC-E compression rules, by the last of its six digits."""
    assert upce_to_upca("01234565") == "012345000065"
    assert upce_to_upca("01234505") == "012000003455"
    assert upce_to_upca("01234535") == "012300000455"
    assert upce_to_upca("01234545") == "012340000055"


_SIDES = (st.integers(1, 240), st.integers(1, 320))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(noise=hnp.arrays(np.uint8, st.one_of(st.tuples(*_SIDES),
                                            st.tuples(*_SIDES, st.sampled_from([1, 3, 4])))))
def test_decoders_find_nothing_in_random_noise(noise: np.ndarray) -> None:
    """Random pixels, any size, grey or with 1, 3 or 4 channels: no crash and no barcode."""
    for decoder in (ZxingDecoder(["ean13", "upca", "code128", "qrcode", "datamatrix"]),
                    PyzbarDecoder(["ean13", "upca", "code128", "qrcode"])):
        assert decoder.decode(noise) == []


@settings(max_examples=40, deadline=None)
@given(image=st.one_of(
    hnp.arrays(st.sampled_from([np.float32, np.uint16, np.int8, np.bool_]),
               hnp.array_shapes(min_dims=2, max_dims=3, max_side=40)),
    hnp.arrays(np.uint8, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6)),
    st.binary(max_size=64), st.none(), st.integers()))
def test_decoders_reject_what_is_not_an_image_with_protocol_error(image: Any) -> None:
    """Anything but a grey/BGR/BGRA uint8 picture is a ProtocolError, never another error."""
    for decoder in (make_decoder("zxing", ["qrcode"]), make_decoder("pyzbar", ["qrcode"])):
        try:
            assert decoder.decode(image) == []
        except ProtocolError as exc:
            assert "expected" in str(exc)


@settings(max_examples=30, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=2048))
def test_image_sequence_reader_survives_any_bytes_as_a_frame(tmp_path: Path,
                                                             junk: bytes) -> None:
    """Random bytes as one frame file: the reader skips and reports it, never raises."""
    folder = tmp_path / "seq"
    folder.mkdir(exist_ok=True)
    cv2.imwrite(str(folder / "frame_000.png"), np.zeros((8, 8, 3), np.uint8))
    (folder / "frame_001.png").write_bytes(junk)
    reader = ImageSequence(f"{folder}/frame_%03d.png", fps=None)
    frames = [reader.read() for _ in range(6)]
    assert sum(f is not None for f in frames) >= 3
    assert reader.bad_frames == ([] if frames[1] is not None else [
        f"{folder}/frame_001.png ({len(junk)} bytes) is not an image OpenCV can read; skipped"])


# ------------------------------------------------------------------ coming and going
def test_sequence_folder_that_disappears_is_disconnected_then_ready_again(
        small_sequence: CameraSimulator) -> None:
    """The folder moved away: disconnected, code not_found; moved back: ready, same driver."""
    async def main() -> None:
        bus = Bus()
        states = bus.subscribe(StateChange)
        async with running(camera(small_sequence.connection, bus)) as cam:
            small_sequence.unplug()
            await until(lambda: cam.state is DeviceState.DISCONNECTED)
            assert cam.latest_frame() is None
            small_sequence.replug()
            await until(lambda: cam.state is DeviceState.READY)
            assert cam.connects == 2
        seen = []
        while (change := states.get_nowait()) is not None:
            seen.append((change.state.value, change.code))
        assert seen[0] == ("ready", None) and seen[-1] == ("ready", None)
        assert ("disconnected", "not_found") in seen
    run(main())


def test_video_file_that_disappears_is_disconnected_then_ready_again(tmp_path: Path) -> None:
    """The clip renamed: at its end it cannot be opened again; renamed back: ready."""
    clip = CameraSimulator(tmp_path / "clip.avi", scene(("qrcode:BOX-1",), (320, 240)),
                           frames=4, video=True)

    async def main() -> None:
        async with running(camera(clip.connection)) as cam:
            clip.unplug()
            await until(lambda: cam.state is DeviceState.DISCONNECTED)
            assert cam.code == "not_found" and "no file at" in (cam.message or "")
            clip.replug()
            await until(lambda: cam.state is DeviceState.READY)
            assert cam.latest_frame() is not None
    run(main())


def test_source_missing_at_start_becomes_ready_when_it_appears(tmp_path: Path) -> None:
    """A camera configured before its folder exists connects as soon as frames are there."""
    async def main() -> None:
        cam = camera(f"images://{tmp_path}/later/frame_%03d.png")
        async with running(cam, ready=False):
            await until(lambda: cam.state is DeviceState.DISCONNECTED)
            assert cam.code == "not_found"
            CameraSimulator(tmp_path / "later", scene(("qrcode:X",), (320, 240)), frames=2)
            await asyncio.wait_for(cam.ready.wait(), 5)
    run(main())


def test_no_new_frame_within_frame_timeout_is_disconnected(
        small_sequence: CameraSimulator) -> None:
    """A source slower than frame_timeout_ms (here 0.5 fps against 200 ms) is gone."""
    async def main() -> None:
        cam = camera(small_sequence.connection, fps=0.5, frame_timeout_ms=200)
        async with running(cam):
            await until(lambda: cam.state is DeviceState.DISCONNECTED)
            assert cam.code == "disconnected" and "no new frame" in (cam.message or "")
    run(main())


def test_garbage_files_in_a_sequence_are_skipped_and_reported_once(
        small_sequence: CameraSimulator) -> None:
    """A frame file that is not an image: one BadInput, the camera stays ready."""
    async def main() -> None:
        bus = Bus()
        bad = bus.subscribe(BadInput)
        small_sequence.garbage(1)
        async with running(camera(small_sequence.connection, bus)) as cam:
            await until(lambda: (f := cam.latest_frame()) is not None and f.sequence > 12)
            assert cam.state is DeviceState.READY
            item = await asyncio.wait_for(bad.get(), 1)
            assert item.device == "cam" and item.code == "protocol_error"
            assert "frame_001.png" in item.message and "not an image" in item.message
            assert bad.get_nowait() is None  # the loop passed it again, silently
            assert cam.status()["frames_skipped"] >= 3
    run(main())


def test_a_sequence_of_only_garbage_is_a_protocol_error(small_sequence: CameraSimulator) -> None:
    """No file decodes: faulted protocol_error, and the driver keeps retrying."""
    async def main() -> None:
        for index in range(4):
            small_sequence.garbage(index)
        cam = camera(small_sequence.connection)
        async with running(cam, ready=False):
            await until(lambda: cam.state is DeviceState.FAULTED)
            assert cam.code == "protocol_error"
            small_sequence.write()
            await asyncio.wait_for(cam.ready.wait(), 5)
    run(main())


@pytest.mark.parametrize(("connection", "code"), [
    ("video:63", "not_found"),
    ("/dev/video63", "not_found"),
    ("file:///nonexistent/clip.avi", "not_found"),
    ("rtsp://packer:s3cret@127.0.0.1:1/stream1", "not_found"),
])
def test_unreachable_sources_are_disconnected_with_a_stable_code(connection: str,
                                                                 code: str) -> None:
    """Missing devices, files and refused streams; no credentials in the message."""
    async def main() -> None:
        cam = camera(connection)
        async with running(cam, ready=False):
            await until(lambda: cam.state is DeviceState.DISCONNECTED)
            assert cam.code == code
            assert "s3cret" not in (cam.message or "") and "s3cret" not in cam.status()[
                "connection"]
    run(main())


def test_a_file_that_is_not_a_video_is_a_protocol_error(tmp_path: Path) -> None:
    """Random bytes named .avi: faulted protocol_error, not a crash."""
    path = tmp_path / "junk.avi"
    path.write_bytes(os.urandom(4096))

    async def main() -> None:
        cam = camera(f"file://{path}")
        async with running(cam, ready=False):
            await until(lambda: cam.state is DeviceState.FAULTED)
            assert cam.code == "protocol_error"
    run(main())


@pytest.fixture
def stream() -> Any:
    server = MjpegServer(scene(("qrcode:PARCEL-42",), (320, 240)), frames=4, fps=25)
    yield server
    server.unplug()


def test_network_stream_is_read_and_comes_back_after_the_camera_restarts(
        stream: MjpegServer) -> None:
    """An MJPEG-over-HTTP camera: decoded; its port closed: disconnected; back: ready."""
    async def main() -> None:
        async with running(camera(stream.connection)) as cam:
            assert cam.status()["source"] == "stream"
            assert [s.data for s in await cam.decode()] == ["PARCEL-42"]
            stream.unplug()
            await until(lambda: cam.state is DeviceState.DISCONNECTED)
            assert cam.code in ("disconnected", "not_found")
            stream.replug()
            await until(lambda: cam.state is DeviceState.READY)
            assert [s.data for s in await cam.decode()] == ["PARCEL-42"]
    run(main())


def test_a_hung_stream_is_disconnected_within_the_frame_timeout(stream: MjpegServer) -> None:
    """Connected but silent: disconnected about frame_timeout_ms later; talking again: ready."""
    async def main() -> None:
        async with running(camera(stream.connection, frame_timeout_ms=300)) as cam:
            stream.freeze(True)
            started = time.monotonic()
            await until(lambda: cam.state is DeviceState.DISCONNECTED)
            assert time.monotonic() - started < 1.5
            assert cam.code == "disconnected"
            stream.freeze(False)
            await until(lambda: cam.state is DeviceState.READY)
    run(main())


def test_a_corrupt_frame_in_a_stream_is_skipped_and_reported(stream: MjpegServer) -> None:
    """One garbled JPEG in the stream: a BadInput, and the camera stays ready."""
    async def main() -> None:
        bus = Bus()
        bad = bus.subscribe(BadInput)
        stream.garbage(1)
        async with running(camera(stream.connection, bus)) as cam:
            item = await asyncio.wait_for(bad.get(), 2)
            assert item.code == "protocol_error"
            assert item.message == f"1 frame(s) from {stream.connection} could not be read; skipped"
            await until(lambda: cam.status()["frames_skipped"] >= 3)  # it comes every 4 frames
            assert cam.state is DeviceState.READY and cam.connects == 1
            assert bad.get_nowait() is None  # reported once per 10 s
    run(main())


# ------------------------------------------------------------------ simulator
def test_simulator_cli_writes_frames_and_obeys_stdin_commands(tmp_path: Path) -> None:
    """python -m simulators.camera: frames, then garbage, unplug and replug on stdin."""
    out = tmp_path / "cam"
    process = subprocess.run(
        [sys.executable, "-m", "simulators.camera", "--out", str(out), "--resolution",
         "320x240", "--barcode", "ean13:4006381333931", "--frames", "3"],
        input="garbage 2\nunplug\nreplug\nbogus\nquit\n", capture_output=True, text=True,
        cwd=ROOT, timeout=60, check=True)
    lines = process.stdout.splitlines()
    assert lines[0] == f"connection = 'images://{out}/frame_%03d.png'"
    assert lines[1:4] == ["ok garbage 2", "ok unplug", "ok replug"]
    assert lines[4].startswith("error: unknown command 'bogus'")
    assert sorted(p.name for p in out.iterdir()) == [f"frame_00{i}.png" for i in range(3)]
    assert cv2.imread(str(out / "frame_002.png")) is None
    frame = cv2.imread(str(out / "frame_000.png"))
    assert frame.shape == (240, 320, 3)
    assert [d.text for d in make_decoder("zxing", ["ean13"]).decode(frame)] == ["4006381333931"]
