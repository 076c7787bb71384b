"""Cameras: any source OpenCV opens, a grabber thread keeping the newest frame, snapshots
as JPEG and barcode decoding of frames.

Sources, by connection (see ``docs/cameras.md``): a V4L2 device (``/dev/video0``,
``/dev/v4l/by-id/...``, ``video:0``), a video file (``file:///srv/clip.avi``), an image
sequence (``images:///srv/frames/frame_%03d.png``) and network streams (``rtsp://``,
``http(s)://``, through FFmpeg). Files and sequences are played in a loop at the
configured ``fps`` (or the file's own rate): they are the demo's and the tests' cameras.

One thread per connection, ``bench-camera-NAME``, owns the capture: it opens it, reads
frames as fast as the source delivers them and keeps only the newest (a camera's own
queue would otherwise hand out frames seconds old), and releases it. The loop never
calls OpenCV capture functions. JPEG encoding, decoding and the wait for a grabber to
end run in the camera's worker thread ``bench-camera-NAME-work``. A source that fails to
read, or delivers no new frame for ``frame_timeout_ms``, is ``disconnected``; the
supervisor opens it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import cv2
import numpy as np
import numpy.typing as npt

from agent.bus import Bus
from agent.devices.base import Device
from agent.devices.camera_sources import FrameSource, ImageSequence, VideoSource, source_kind
from agent.devices.decoders import DECODERS, BarcodeDecoder, make_decoder
from agent.devices.readings import BadInput, Scan
from agent.devices.scanners.symbology import parse_gs1
from agent.devices.settings import CameraSettings
from agent.errors import DeviceError

T = TypeVar("T")

OPEN_TIMEOUT_S = 10.0
"""Longest wait for a source to open (FFmpeg's own open timeout for network streams)."""
CLOSE_WAIT_S = 2.0
"""How long closing waits for the grabber thread; a read blocked in a driver or a
network stream may take longer, and the thread then releases the capture on its own."""
SERVE_POLL_S = 0.25
"""How often the frame timeout is checked."""
FPS_WINDOW = 30
"""Frames over which the delivered frame rate is measured."""
FFMPEG_OPTIONS = "rtsp_transport;tcp"
"""FFmpeg options for network streams unless ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` is set:
RTSP over TCP, as RTSP over UDP loses packets on busy warehouse Wi-Fi and smears frames."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame. ``image`` is BGR ``uint8`` (H x W x 3) and read-only.

    ``monotonic`` and ``at`` are when the grabber got it (``time.monotonic()``,
    ``time.time()``); ``sequence`` counts the frames of the connection from 1.
    """

    image: npt.NDArray[np.uint8]
    monotonic: float
    at: float
    sequence: int

    @property
    def resolution(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


class _Grabber:
    """The thread that owns one opened source: open, read continuously, keep the newest."""

    def __init__(self, name: str, open_source: Callable[[], FrameSource],
                 notify: Callable[[], None]) -> None:
        self.thread = threading.Thread(target=self._run, name=f"bench-camera-{name}",
                                       daemon=True)
        self.latest: Frame | None = None
        self.error: DeviceError | None = None
        self.bad_frames: deque[str] = deque(maxlen=100)
        self.skipped = 0
        self.times: deque[float] = deque(maxlen=FPS_WINDOW)
        self._open_source = open_source
        self._notify = notify
        self._stop = threading.Event()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        source: FrameSource | None = None
        try:
            source = self._open_source()
            self._grab(source)
        except DeviceError as exc:
            self.error = exc
        except Exception as exc:  # an OpenCV failure must end this connection, not hang it
            self.error = DeviceError(f"capture failed: {exc!r}", code="disconnected")
        finally:
            if source is not None:
                source.release()
            self._notify()

    def _grab(self, source: FrameSource) -> None:
        sequence = 0
        due = time.monotonic()
        while not self._stop.is_set():
            image = source.read()
            self.skipped = source.skipped
            if source.bad_frames:
                self.bad_frames.extend(source.bad_frames)
                source.bad_frames.clear()
                self._notify()
            if image is None:
                continue
            image.flags.writeable = False
            sequence += 1
            now = time.monotonic()
            self.latest = Frame(image, now, time.time(), sequence)
            self.times.append(now)
            if sequence == 1:
                self._notify()
            if source.pace_s > 0:
                due = max(due + source.pace_s, now)
                self._stop.wait(max(0.0, due - time.monotonic()))

    def fps(self) -> float | None:
        times = list(self.times)
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])


class Camera(Device[CameraSettings]):
    """A camera driver: the newest frame, JPEG snapshots and barcode decoding on demand."""

    kind = "camera"

    def __init__(self, name: str, settings: CameraSettings, bus: Bus) -> None:
        super().__init__(name, settings, bus)
        formats = settings.formats
        if "formats" not in settings.model_fields_set:  # the default: what the decoder reads
            formats = tuple(f for f in formats if f not in DECODERS[settings.decoder].unsupported)
        self.decoder: BarcodeDecoder = make_decoder(settings.decoder, formats)
        self.source = source_kind(self.connection)
        self._grabber: _Grabber | None = None
        self._wake = asyncio.Event()
        self._frames_before = self._skipped_before = 0
        self._worker: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------ public API
    def latest_frame(self) -> Frame | None:
        """The newest frame of the current connection, or ``None`` when there is none."""
        grabber = self._grabber
        if grabber is None or grabber.error is not None:
            return None
        return grabber.latest

    async def snapshot_jpeg(self, frame: Frame | None = None) -> bytes:
        """The newest frame (or ``frame``) as JPEG at ``jpeg_quality``.

        Raises:
            DeviceError: ``timeout`` when no frame newer than ``frame_timeout_ms`` comes
                within that time; ``device_error`` when OpenCV cannot encode it.
        """
        if frame is None:
            frame = await self._fresh_frame()
        params = [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality]

        def encode() -> bytes:
            ok, buffer = cv2.imencode(".jpg", frame.image, params)
            if not ok:
                raise DeviceError(f"OpenCV could not encode a {frame.resolution} frame as JPEG",
                                  code="device_error")
            return buffer.tobytes()

        return await self._in_worker(encode)

    async def decode(self, frame: Frame | npt.NDArray[np.uint8] | None = None) -> list[Scan]:
        """The barcodes in the newest frame (or ``frame``), of the configured formats.

        Each is a :class:`Scan` stamped with the frame's capture time. Nothing is
        published: the caller decides what a barcode in view means.

        Raises:
            DeviceError: ``timeout`` when there is no fresh frame (see :meth:`snapshot_jpeg`).
            ProtocolError: the given image is not an 8-bit grey or colour picture.
        """
        if frame is None:
            frame = await self._fresh_frame()
        if isinstance(frame, Frame):
            image, at, monotonic = frame.image, frame.at, frame.monotonic
        else:
            image, at, monotonic = frame, time.time(), time.monotonic()
        found = await self._in_worker(lambda: self.decoder.decode(image))
        scans = []
        for item in found:
            # The same GS1 fields as a scanner's read of the same label.
            gs1 = parse_gs1(item.text, item.symbology_id)
            scans.append(Scan(self.name, item.text, item.symbology_id, item.symbology_name,
                              gs1=gs1.fields, gs1_error=gs1.error, raw=item.raw, at=at,
                              monotonic=monotonic))
        return scans

    def details(self) -> dict[str, Any]:
        grabber = self._grabber
        frame = self.latest_frame()
        fps = grabber.fps() if grabber is not None and frame is not None else None
        requested = None
        if self.settings.width and self.settings.height:
            requested = [self.settings.width, self.settings.height]
        return {
            "source": self.source,
            "resolution": list(frame.resolution) if frame else None,
            "requested_resolution": requested,
            "fps": round(fps, 1) if fps is not None else None,
            "frames": self._frames_before + (frame.sequence if frame else 0),
            "frames_skipped": self._skipped_before + (grabber.skipped if grabber else 0),
            "decoder": self.decoder.name,
            "formats": list(self.decoder.formats),
        }

    # ------------------------------------------------------------ driver
    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()

        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(wake.set)

        grabber = _Grabber(self.name, self._open_source, notify)
        self._grabber = grabber
        grabber.start()
        wait_s = OPEN_TIMEOUT_S + self.settings.frame_timeout_ms / 1000
        deadline = loop.time() + wait_s
        while grabber.latest is None and grabber.error is None:
            wake.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeviceError(f"{self.connection.describe()} delivered no frame within "
                                  f"{wait_s:.0f} s", code="timeout")
            await _wait(wake, remaining)
        self._publish_bad_frames(grabber)
        if grabber.error is not None:
            raise grabber.error
        if grabber.latest is not None:
            width, height = grabber.latest.resolution
            wanted = (self.settings.width, self.settings.height)
            if all(wanted) and wanted != (width, height):
                self.log.warning("%s delivers %dx%d, not the configured %dx%d", self.name,
                                 width, height, *wanted)

    async def _serve(self) -> None:
        grabber = self._grabber
        assert grabber is not None
        timeout_s = self.settings.frame_timeout_ms / 1000
        poll_s = min(SERVE_POLL_S, timeout_s / 4)
        last_sequence = 0
        while True:
            self._wake.clear()
            await _wait(self._wake, poll_s)
            self._publish_bad_frames(grabber)
            if grabber.error is not None:
                raise grabber.error
            frame = grabber.latest
            if frame is not None and frame.sequence != last_sequence:
                last_sequence = frame.sequence
                self.seen()
            age_s = time.monotonic() - frame.monotonic if frame else timeout_s + 1
            if age_s > timeout_s:
                raise DeviceError(f"no new frame from {self.connection.describe()} for "
                                  f"{age_s * 1000:.0f} ms", code="disconnected")

    async def _close(self) -> None:
        grabber, self._grabber = self._grabber, None
        if grabber is None:
            return
        self._skipped_before += grabber.skipped
        if grabber.latest is not None:
            self._frames_before += grabber.latest.sequence
        grabber.stop()
        if grabber.thread.is_alive():
            await self._in_worker(lambda: grabber.thread.join(CLOSE_WAIT_S))
        if grabber.thread.is_alive():
            self.log.warning("%s: the capture thread is still blocked in a read; it releases "
                             "the camera when the read returns", self.name)

    # ------------------------------------------------------------ helpers
    def _open_source(self) -> FrameSource:
        """Runs in the grabber thread."""
        settings = self.settings
        if self.source == "images":
            return ImageSequence(self.connection.path, settings.fps)
        return VideoSource(self.connection, self.source, width=settings.width,
                           height=settings.height, fps=settings.fps,
                           open_timeout_ms=int(OPEN_TIMEOUT_S * 1000),
                           read_timeout_ms=settings.frame_timeout_ms)

    async def _fresh_frame(self) -> Frame:
        timeout_s = self.settings.frame_timeout_ms / 1000
        frame = self.latest_frame()
        if frame is None:
            await _wait(self.ready, timeout_s)
            frame = self.latest_frame()
        if frame is None:
            raise DeviceError(f"camera {self.name} has no frame ({self.state.value}: "
                              f"{self.message or 'no frame yet'})", code="timeout")
        age_s = time.monotonic() - frame.monotonic
        if age_s > timeout_s:
            raise DeviceError(f"the newest frame of camera {self.name} is {age_s:.1f} s old",
                              code="timeout")
        return frame

    async def _in_worker(self, work: Callable[[], T]) -> T:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(
                1, thread_name_prefix=f"bench-camera-{self.name}-work")
        return await asyncio.get_running_loop().run_in_executor(self._worker, work)

    def _publish_bad_frames(self, grabber: _Grabber) -> None:
        while grabber.bad_frames:
            message = grabber.bad_frames.popleft()
            self.log.warning("%s: %s", self.name, message)
            self.bus.publish(BadInput(self.name, "protocol_error", message))


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Until ``event`` is set or ``timeout_s`` passed. ``asyncio.timeout``, not ``wait_for``:
    Python 3.11's ``wait_for`` loses a cancellation that arrives as the event is set, and
    the supervisor's task would then not stop."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


def make_camera(name: str, settings: CameraSettings, bus: Bus) -> Camera:
    """The camera driver for ``[devices.NAME]`` (the device manager's builder).

    Without ``formats`` in the config, the decoder reads the default formats it can
    (pyzbar: all but ``datamatrix``).

    Raises:
        ConfigError: the decoder cannot read a configured format (pyzbar and
            ``datamatrix``, ``aztec`` or ``pdf417``).
    """
    # OpenCV prints a warning for every failed open; the driver logs its own message.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", FFMPEG_OPTIONS)
    return Camera(name, settings, bus)

