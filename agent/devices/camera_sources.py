"""Where a camera's frames come from: OpenCV captures and image sequences.

:class:`VideoSource` wraps ``cv2.VideoCapture`` for V4L2 devices, video files and network
streams; :class:`ImageSequence` reads numbered image files itself (OpenCV's own sequence
reader stops for good at the first file it cannot decode; this one skips it and says
so). Both are used only from the camera's grabber thread (:mod:`agent.devices.camera`).
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from agent.devices.connection import Connection
from agent.errors import DeviceError

FILE_FPS = 10.0
"""Playback rate of a file or image sequence when neither ``fps`` nor the file gives one."""
LIVE_READ_FAILURES = 3
"""Failed reads in a row after which a live camera or stream is gone. A single failure is
a frame the camera garbled (a corrupt JPEG in an MJPEG stream): skipped and reported."""
BAD_FRAME_REPORT_S = 10.0
"""Unreadable frames of a live source are reported at most this often, with their count."""
V4L2_BUFFERS = 2
"""Driver buffers asked of a V4L2 camera: the grabber drains them anyway, fewer means a
fresher first frame after a stall."""
V4L2_FOURCC = "MJPG"
"""Pixel format asked of a V4L2 camera above 640x480: USB 2.0 UVC cameras deliver 720p
and 1080p at full rate only compressed (uncompressed YUYV 1080p runs at about 5 fps)."""


def source_kind(connection: Connection) -> str:
    """``device`` (V4L2), ``file``, ``images`` (a sequence) or ``stream`` (network)."""
    if connection.params.get("sequence") == "1":
        return "images"
    if "index" in connection.params or connection.path.startswith("/dev/"):
        return "device"
    if "://" in connection.path:
        return "stream"
    return "file"


class FrameSource(Protocol):
    """What the grabber reads: an OpenCV capture or an image sequence."""

    bad_frames: list[str]
    """Reports of frames thrown away, said in words, since the grabber last took them."""
    skipped: int
    """Frames thrown away since the source was opened."""
    pace_s: float
    """Seconds between frames the grabber waits itself (files); 0 for live sources."""

    def read(self) -> npt.NDArray[np.uint8] | None:
        """The next frame, or ``None`` when one was skipped; raises :class:`DeviceError`."""

    def release(self) -> None: ...


class VideoSource:
    """A ``cv2.VideoCapture`` of a device, a file or a stream. Used by one thread only."""

    def __init__(self, connection: Connection, kind: str, *, width: int | None,
                 height: int | None, fps: float | None, open_timeout_ms: int,
                 read_timeout_ms: int) -> None:
        self.bad_frames: list[str] = []
        self.skipped = 0
        self._unreported = 0
        self._reported_at = -BAD_FRAME_REPORT_S
        self._connection = connection
        self._kind = kind
        self._mode = (width, height, fps)
        self._timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_timeout_ms,
                          cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_timeout_ms]
        self._capture = self._open()
        self._failed_reads = 0
        self.pace_s = 0.0
        if kind == "file":  # played at the configured rate, else the file's own
            declared = self._capture.get(cv2.CAP_PROP_FPS)
            self.pace_s = 1.0 / (fps or (declared if 0 < declared <= 240 else FILE_FPS))

    def _open(self) -> cv2.VideoCapture:
        describe = self._connection.describe()
        target: str | int = self._connection.path
        if self._kind == "device":
            index = self._connection.params.get("index")
            node = f"/dev/video{index}" if index is not None else self._connection.path
            if index is not None:
                target = int(index)
            _check_path(node, describe, "video device", os.R_OK | os.W_OK)
            capture = cv2.VideoCapture(target, cv2.CAP_V4L2)
        elif self._kind == "file":
            _check_path(self._connection.path, describe, "file", os.R_OK)
            capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG)
        else:  # network streams: FFmpeg, with timeouts so a dead camera cannot hang a read
            capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, self._timeouts)
        if not capture.isOpened():
            capture.release()
            if self._kind == "file":
                raise DeviceError(f"OpenCV cannot read {describe} as video or image",
                                  code="protocol_error")
            raise DeviceError(f"OpenCV could not open {describe}", code="not_found")
        if self._kind == "device":
            width, height, fps = self._mode
            if width and height and width * height > 640 * 480:
                capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*V4L2_FOURCC))
            for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width),
                                (cv2.CAP_PROP_FRAME_HEIGHT, height), (cv2.CAP_PROP_FPS, fps)):
                if value:
                    capture.set(prop, float(value))
            capture.set(cv2.CAP_PROP_BUFFERSIZE, V4L2_BUFFERS)
        return capture

    def read(self) -> npt.NDArray[np.uint8] | None:
        ok, image = self._capture.read()
        if ok and image is not None:
            if self._failed_reads:  # the source recovered: the failures were bad frames
                self.skipped += self._failed_reads
                self._unreported += self._failed_reads
                self._failed_reads = 0
                if time.monotonic() - self._reported_at >= BAD_FRAME_REPORT_S:
                    self._reported_at = time.monotonic()
                    self.bad_frames.append(f"{self._unreported} frame(s) from "
                                           f"{self._connection.describe()} could not be "
                                           "read; skipped")
                    self._unreported = 0
            return np.asarray(image, dtype=np.uint8)
        if self._kind != "file":
            self._failed_reads += 1
            if self._failed_reads < LIVE_READ_FAILURES:
                return None
            raise DeviceError(f"{self._connection.describe()} stopped delivering frames",
                              code="disconnected")
        # The end of a file: play it again from a fresh open, which fails if it is gone.
        self._capture.release()
        self._capture = self._open()
        ok, image = self._capture.read()
        if not ok or image is None:
            raise DeviceError(f"{self._connection.describe()} has no frame OpenCV can read",
                              code="protocol_error")
        return np.asarray(image, dtype=np.uint8)

    def release(self) -> None:
        self._capture.release()


class ImageSequence:
    """The files of a folder matching a ``printf`` pattern (``frame_%03d.png``), by number.

    Read with ``cv2.imread`` rather than OpenCV's image-sequence capture, which stops
    for good at the first file it cannot decode: here an unreadable file is skipped
    and reported once, and the folder is listed again at every pass, so frames a
    simulator adds or replaces are seen.
    """

    def __init__(self, pattern: str, fps: float | None) -> None:
        self.bad_frames: list[str] = []
        self.skipped = 0
        self.pace_s = 1.0 / (fps or FILE_FPS)
        self._pattern = pattern
        self._folder, name = os.path.split(pattern)
        parts = re.split(r"%(0?)(\d*)d", name)
        if len(parts) != 4:
            raise DeviceError(f"{pattern}: an image sequence needs one %d or %0Nd in the "
                              "file name, such as frame_%03d.png", code="not_found")
        prefix, zero, width, suffix = parts
        digits = rf"(\d{{{width},}})" if zero and width else r"(\d+)"
        self._name = re.compile(re.escape(prefix) + digits + re.escape(suffix))
        self._queue: deque[str] = deque()
        self._files = self._bad = 0
        self._reported: set[tuple[str, float, int]] = set()
        self._queue.extend(self._list())

    def _list(self) -> list[str]:
        try:
            names = os.listdir(self._folder or ".")
        except FileNotFoundError:
            raise DeviceError(f"the folder {self._folder} is not there", code="not_found") from None
        except PermissionError as exc:
            raise DeviceError(f"may not read {self._folder}: {exc}",
                              code="permission_denied") from exc
        except OSError as exc:
            raise DeviceError(f"cannot list {self._folder}: {exc}", code="not_found") from exc
        numbered = sorted((int(m[1]), n) for n in names if (m := self._name.fullmatch(n)))
        if not numbered:
            raise DeviceError(f"no file in {self._folder} matches "
                              f"{os.path.basename(self._pattern)}", code="not_found")
        self._files, self._bad = len(numbered), 0
        return [os.path.join(self._folder, n) for _, n in numbered]

    def read(self) -> npt.NDArray[np.uint8] | None:
        if not self._queue:
            if self._files and self._bad == self._files:
                raise DeviceError(f"none of the {self._files} files matching {self._pattern} "
                                  "is an image OpenCV can read", code="protocol_error")
            self._queue.extend(self._list())
        path = self._queue.popleft()
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is not None:
            return np.asarray(image, dtype=np.uint8)
        try:
            stat = os.stat(path)
        except OSError:
            return None  # replaced or removed since the folder was listed
        self._bad += 1
        self.skipped += 1
        key = (path, stat.st_mtime, stat.st_size)
        if key not in self._reported:
            self._reported.add(key)
            self.bad_frames.append(f"{path} ({stat.st_size} bytes) is not an image OpenCV "
                                   "can read; skipped")
        return None

    def release(self) -> None:
        self._queue.clear()


def _check_path(path: str, describe: str, what: str, mode: int) -> None:
    if not os.path.exists(path):
        raise DeviceError(f"no {what} at {describe}", code="not_found")
    if not os.access(path, mode):
        raise DeviceError(f"the agent may not open {describe} (for a camera: is its user in "
                          "the video group?)", code="permission_denied")
