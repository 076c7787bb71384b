"""A camera double: a packing bench with barcodes on labels, as files or a stream OpenCV opens.

The frames show a cardboard-like textured background with one white label per barcode
(EAN-13, UPC-A/E, EAN-8, Code 128, GS1-128, Code 39/93, Codabar, ITF, GS1 DataBar, QR,
DataMatrix, GS1 DataMatrix, PDF417, Aztec), each at a size that fits its place in a
grid, with optional rotation, Gaussian blur and sensor noise. The labels drift a few pixels from
frame to frame so consecutive frames differ, and the frame number is printed in a corner.
The barcodes are made by zxing-cpp's writer (``zxingcpp.create_barcode``).

Written as an image sequence (``frame_000.png`` ...; the driver's connection is then
``images:///DIR/frame_%03d.png``) or as an MJPG ``.avi`` (``file:///PATH.avi``), or
served as a network camera's MJPEG stream over HTTP (``--serve PORT``; connection
``http://127.0.0.1:PORT/stream.mjpg``). Files are replaced atomically, so a driver
reading them never sees half a frame.

Run it by hand (``python -m simulators.camera --out /tmp/cam --resolution 1280x720
--barcode ean13:4006381333931 --frames 30``); it writes the frames, prints the connection
string and then reads commands on stdin, one per line, until EOF or ``quit``:

``barcode FORMAT:CONTENT`` add a barcode, ``clear`` remove them all, ``rotate DEG``,
``blur SIGMA``, ``garbage N`` overwrite frame N with bytes no decoder reads, ``unplug``
(the folder or file disappears, the stream's port closes), ``replug``, ``freeze`` and
``thaw`` (a stream stays connected but sends nothing, like a hung camera). Every change
rewrites the frames.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import zxingcpp

from simulators.console import serve_stdin

Image = npt.NDArray[np.uint8]

_F = zxingcpp.BarcodeFormat
WRITERS: dict[str, tuple[zxingcpp.BarcodeFormat, bool]] = {
    "ean13": (_F.EAN13, False),
    "ean8": (_F.EAN8, False),
    "upca": (_F.UPCA, False),
    "upce": (_F.UPCE, False),
    "code128": (_F.Code128, False),
    "gs1-128": (_F.Code128, True),
    "code39": (_F.Code39, False),
    "code93": (_F.Code93, False),
    "codabar": (_F.Codabar, False),
    "itf": (_F.ITF, False),
    "databar": (_F.DataBar, False),
    "databar_expanded": (_F.DataBarExp, False),
    "qrcode": (_F.QRCode, False),
    "datamatrix": (_F.DataMatrix, False),
    "gs1-datamatrix": (_F.DataMatrix, True),
    "pdf417": (_F.PDF417, False),
    "aztec": (_F.Aztec, False),
}
"""Format names the simulator writes -> (zxing-cpp format, GS1 mode). GS1 contents (and
DataBar's) are written with parenthesised AIs: ``gs1-128:(01)09506000134352(10)ABC123``."""

DEFAULT_BARCODES = ("ean13:4006381333931", "gs1-128:(01)09506000134352(10)ABC123",
                    "qrcode:https://example.com/o/12345", "datamatrix:SN-0042-7731")
SEQUENCE_PATTERN = "frame_%03d.png"


@dataclass(frozen=True)
class BarcodeSpec:
    """One barcode to show: a simulator format name (see :data:`WRITERS`) and content."""

    format: str
    content: str

    @classmethod
    def parse(cls, text: str) -> BarcodeSpec:
        """``FORMAT:CONTENT`` -> spec; raises ValueError naming the known formats."""
        name, sep, content = text.partition(":")
        if not sep or not content or name not in WRITERS:
            raise ValueError(f"expected FORMAT:CONTENT with FORMAT one of "
                             f"{', '.join(WRITERS)}, got {text!r}")
        return cls(name, content)

    def symbol(self) -> Image:
        """The barcode alone, black on white, one pixel per module, with quiet zones."""
        zx_format, gs1 = WRITERS[self.format]
        try:
            barcode = zxingcpp.create_barcode(self.content, zx_format, gs1=gs1)
        except Exception as exc:
            raise ValueError(f"{self.format} cannot encode {self.content!r}: {exc}") from exc
        image = np.asarray(zxingcpp.write_barcode_to_image(barcode, scale=1), dtype=np.uint8)
        if zx_format in (_F.QRCode, _F.DataMatrix, _F.Aztec, _F.PDF417):
            return image
        # zxing-cpp draws 1D bars 50 modules tall; printed long labels (waybills, GS1-128)
        # have taller bars: here at least 30 % of the symbol's width.
        height = max(image.shape[0], int(image.shape[1] * 0.3))
        return cv2.resize(image, (image.shape[1], height), interpolation=cv2.INTER_NEAREST)


class CameraScene:
    """Renders frames showing ``barcodes``; deterministic for a given ``seed``.

    The frame is a grid with one cell per barcode; ``size`` is the largest share of its
    cell a label's symbol takes (the others are smaller, down to 80 % of that).
    """

    def __init__(self, barcodes: Iterable[BarcodeSpec], resolution: tuple[int, int] = (1280, 720),
                 *, size: float = 0.8, rotate_deg: float = 0.0, blur_sigma: float = 0.0,
                 noise: float = 6.0, seed: int = 0) -> None:
        self.barcodes = list(barcodes)
        self.width, self.height = resolution
        self.size = size
        self.rotate_deg = rotate_deg
        self.blur_sigma = blur_sigma
        self.noise = noise
        self.seed = seed
        rng = np.random.default_rng(seed)
        # Cardboard: brown, low-frequency blotches plus fine fibre noise.
        small = rng.normal(0, 1, (max(2, self.height // 40), max(2, self.width // 40)))
        blotch = cv2.resize(small.astype(np.float32), (self.width, self.height),
                            interpolation=cv2.INTER_CUBIC)
        fibre = rng.normal(0, 1, (self.height, self.width)).astype(np.float32)
        shade = 1.0 + 0.08 * blotch + 0.04 * fibre
        base = np.array([96, 140, 178], np.float32)  # BGR of kraft cardboard
        self._background = np.clip(shade[..., None] * base, 0, 255).astype(np.uint8)
        self._labels = [self._label(n, spec) for n, spec in enumerate(self.barcodes)]

    def _cells(self) -> list[tuple[int, int, int, int]]:
        count = max(1, len(self.barcodes))
        columns = math.ceil(math.sqrt(count))
        rows = math.ceil(count / columns)
        w, h = self.width // columns, self.height // rows
        return [((i % columns) * w, (i // columns) * h, w, h) for i in range(count)]

    def _label(self, number: int, spec: BarcodeSpec) -> Image:
        symbol = spec.symbol()
        cell_w, cell_h = self._cells()[0][2:]
        # Labels of one scene differ in size: between 80 % and 100 % of ``size``.
        share = self.size * (0.8 + 0.2 * ((number * 0.618 + 0.5) % 1.0))
        fit = min(cell_w * share / symbol.shape[1], cell_h * share / symbol.shape[0])
        size = (max(1, round(symbol.shape[1] * fit)), max(1, round(symbol.shape[0] * fit)))
        # Sharp modules at the next whole scale, then area-averaged down to the label's
        # size: edges anti-aliased as a focused lens draws them.
        whole = max(1, math.ceil(fit))
        sharp = cv2.resize(symbol, None, fx=whole, fy=whole, interpolation=cv2.INTER_NEAREST)
        return cv2.resize(sharp, size, interpolation=cv2.INTER_AREA)

    def frame(self, index: int) -> Image:
        """Frame ``index`` as a BGR image of the scene's resolution."""
        rng = np.random.default_rng((self.seed, index))
        image = self._background.copy()
        for number, (label, cell) in enumerate(zip(self._labels, self._cells(), strict=True)):
            angle = self.rotate_deg * math.sin(1.7 * number + 0.3 * index)
            patch, mask = _rotated(label, angle)
            x0, y0, cell_w, cell_h = cell
            drift_x = int(4 * math.sin(0.9 * index + number))
            drift_y = int(3 * math.cos(0.7 * index + number))
            x = x0 + max(0, (cell_w - patch.shape[1]) // 2) + drift_x
            y = y0 + max(0, (cell_h - patch.shape[0]) // 2) + drift_y
            _paste(image, patch, mask, x, y)
        cv2.putText(image, f"#{index}", (8, self.height - 10), cv2.FONT_HERSHEY_SIMPLEX,
                    0.6, (30, 30, 30), 1, cv2.LINE_AA)
        if self.blur_sigma > 0:
            image = cv2.GaussianBlur(image, (0, 0), self.blur_sigma)
        if self.noise > 0:
            noise = rng.normal(0, self.noise, image.shape).astype(np.float32)
            image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        return image

    def write_sequence(self, folder: Path, frames: int) -> str:
        """Write ``frames`` PNGs into ``folder``; returns the camera connection string."""
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("frame_*.png"):
            old.unlink()
        for index in range(frames):
            _write_atomically(folder / (SEQUENCE_PATTERN % index), self.frame(index))
        return f"images://{folder.resolve()}/{SEQUENCE_PATTERN}"

    def write_video(self, path: Path, frames: int, fps: float = 10.0) -> str:
        """Write an MJPG ``.avi`` of ``frames`` frames; returns the connection string."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), fps,
                                 (self.width, self.height))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write MJPG video to {tmp}")
        for index in range(frames):
            writer.write(self.frame(index))
        writer.release()
        tmp.replace(path)
        return f"file://{path.resolve()}"


def _rotated(label: Image, angle_deg: float) -> tuple[Image, Image]:
    """The label with a white margin, turned by ``angle_deg``, and its mask (255 = label)."""
    margin = max(8, label.shape[0] // 10)
    padded = cv2.copyMakeBorder(label, margin, margin, margin, margin, cv2.BORDER_CONSTANT,
                                value=255)
    mask = np.full_like(padded, 255)
    if abs(angle_deg) < 0.05:
        return padded, mask
    h, w = padded.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w, new_h = int(h * sin + w * cos), int(h * cos + w * sin)
    matrix[0, 2] += new_w / 2 - w / 2
    matrix[1, 2] += new_h / 2 - h / 2
    turned = cv2.warpAffine(padded, matrix, (new_w, new_h), flags=cv2.INTER_LINEAR,
                            borderValue=255)
    turned_mask = cv2.warpAffine(mask, matrix, (new_w, new_h), flags=cv2.INTER_NEAREST,
                                 borderValue=0)
    return turned, turned_mask


def _paste(image: Image, patch: Image, mask: Image, x: int, y: int) -> None:
    """Paste the grey ``patch`` where ``mask`` is set, at (x, y), clipped to the frame."""
    height, width = image.shape[:2]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + patch.shape[1], width), min(y + patch.shape[0], height)
    if x0 >= x1 or y0 >= y1:
        return
    part = patch[y0 - y:y1 - y, x0 - x:x1 - x]
    inside = mask[y0 - y:y1 - y, x0 - x:x1 - x] > 0
    image[y0:y1, x0:x1][inside] = part[inside][:, None]


def _write_atomically(path: Path, image: Image) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if not cv2.imwrite(str(tmp), image):
        raise OSError(f"OpenCV cannot write {tmp}")
    tmp.replace(path)


class CameraSimulator:
    """A scene written to disk that a technician or a test can change and unplug."""

    def __init__(self, out: Path, scene: CameraScene, *, frames: int = 30,
                 video: bool = False, fps: float = 10.0) -> None:
        self.out = out
        self.scene = scene
        self.frames = frames
        self.video = video
        self.fps = fps
        self.connection = self.write()

    @property
    def _away(self) -> Path:
        return self.out.with_name(self.out.name + ".unplugged")

    def write(self) -> str:
        """(Re)write every frame; returns the connection string."""
        if self.video:
            return self.scene.write_video(self.out, self.frames, self.fps)
        return self.scene.write_sequence(self.out, self.frames)

    def set_barcodes(self, barcodes: Iterable[BarcodeSpec]) -> None:
        self.scene = CameraScene(barcodes, (self.scene.width, self.scene.height),
                                 size=self.scene.size, rotate_deg=self.scene.rotate_deg,
                                 blur_sigma=self.scene.blur_sigma, noise=self.scene.noise,
                                 seed=self.scene.seed)
        self.write()

    def garbage(self, index: int) -> None:
        """Frame ``index`` of a sequence becomes bytes no image decoder accepts."""
        if self.video:
            raise ValueError("garbage frames apply to an image sequence only")
        path = self.out / (SEQUENCE_PATTERN % index)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
        tmp.replace(path)

    def freeze(self, frozen: bool) -> None:
        """A live camera that hangs: connected, but no frames (network streams only)."""
        raise ValueError("freeze applies to a network stream (--serve) only")

    def unplug(self) -> None:
        """The source disappears (the folder or file is moved away)."""
        if self.out.exists():
            if self._away.exists():
                shutil.rmtree(self._away) if self._away.is_dir() else self._away.unlink()
            self.out.rename(self._away)

    def replug(self) -> None:
        """The source comes back at the same path."""
        if self._away.exists() and not self.out.exists():
            self._away.rename(self.out)

    def command(self, line: str) -> str:
        """Apply one control line; returns what happened (for the operator)."""
        word, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if word == "barcode":
            self.set_barcodes([*self.scene.barcodes, BarcodeSpec.parse(arg)])
        elif word == "clear":
            self.set_barcodes([])
        elif word == "rotate":
            self.scene.rotate_deg = float(arg)
            self.write()
        elif word == "blur":
            self.scene.blur_sigma = float(arg)
            self.write()
        elif word == "garbage":
            self.garbage(int(arg))
        elif word in ("freeze", "thaw"):
            self.freeze(word == "freeze")
        elif word == "unplug":
            self.unplug()
        elif word == "replug":
            self.replug()
        elif word:
            raise ValueError(f"unknown command {word!r}; commands: barcode FORMAT:CONTENT, "
                             "clear, rotate DEG, blur SIGMA, garbage N, freeze, thaw, unplug, "
                             "replug, quit")
        return f"ok {line.strip()}"


class MjpegServer(CameraSimulator):
    """A network camera: the scene as an MJPEG stream over HTTP, the way many IP cameras
    serve one (``multipart/x-mixed-replace``, one JPEG per part), on
    ``http://HOST:PORT/stream.mjpg``. ``unplug`` closes the port and every open stream;
    ``freeze`` keeps the connections open but sends nothing, like a hung camera.
    """

    def __init__(self, scene: CameraScene, *, frames: int = 10, fps: float = 10.0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.frozen = False
        self._jpegs: list[bytes] = []
        self._server: ThreadingHTTPServer | None = None
        self._generation = 0
        super().__init__(Path(os.devnull), scene, frames=frames, fps=fps)
        self.replug()

    def write(self) -> str:
        self._jpegs = [cv2.imencode(".jpg", self.scene.frame(i))[1].tobytes()
                       for i in range(self.frames)]
        return self._url()

    def _url(self) -> str:
        host = "127.0.0.1" if self.host == "0.0.0.0" else self.host
        return f"http://{host}:{self.port}/stream.mjpg"

    def garbage(self, index: int) -> None:
        self._jpegs[index] = bytes(range(256)) * 4

    def freeze(self, frozen: bool) -> None:
        self.frozen = frozen

    def unplug(self) -> None:
        self._generation += 1  # open streams end at their next frame
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def replug(self) -> None:
        if self._server is not None:
            return
        simulator, generation = self, self._generation

        class Stream(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                index = 0
                with contextlib.suppress(OSError):
                    while simulator._generation == generation:
                        if not simulator.frozen:
                            jpeg = simulator._jpegs[index % len(simulator._jpegs)]
                            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                             b"Content-Length: %d\r\n\r\n" % len(jpeg)
                                             + jpeg + b"\r\n")
                            index += 1
                        time.sleep(1 / simulator.fps)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer((self.host, self.port), Stream)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self.connection = self._url()
        threading.Thread(target=server.serve_forever, args=(0.05,), name="camera-sim-http",
                         daemon=True).start()
        self._server = server


def _resolution(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path,
                        help="folder for an image sequence, or a .avi file for a video")
    target.add_argument("--serve", type=int, metavar="PORT",
                        help="serve an MJPEG stream over HTTP on this port (0: any free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the stream listens on (0.0.0.0: every interface)")
    parser.add_argument("--resolution", type=_resolution, default=(1280, 720))
    parser.add_argument("--barcode", action="append", type=BarcodeSpec.parse,
                        help=f"FORMAT:CONTENT, repeatable; formats: {', '.join(WRITERS)}")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--fps", type=float, default=10.0,
                        help="frame rate of a video or stream")
    parser.add_argument("--size", type=float, default=0.8,
                        help="largest share of its grid cell a barcode takes (0-1)")
    parser.add_argument("--rotate", type=float, default=0.0, help="largest label tilt, degrees")
    parser.add_argument("--blur", type=float, default=0.0, help="Gaussian blur sigma, pixels")
    parser.add_argument("--noise", type=float, default=6.0, help="sensor noise sigma, levels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-control", action="store_true",
                        help="write the frames and exit instead of reading stdin commands")
    args = parser.parse_args(argv)
    barcodes = args.barcode or [BarcodeSpec.parse(text) for text in DEFAULT_BARCODES]
    scene = CameraScene(barcodes, args.resolution, size=args.size, rotate_deg=args.rotate,
                        blur_sigma=args.blur, noise=args.noise, seed=args.seed)
    simulator: CameraSimulator
    if args.serve is not None:
        simulator = MjpegServer(scene, frames=args.frames, fps=args.fps, host=args.host,
                                port=args.serve)
    else:
        simulator = CameraSimulator(args.out, scene, frames=args.frames,
                                    video=args.out.suffix.lower() == ".avi", fps=args.fps)
    print(f"connection = {simulator.connection!r}", flush=True)
    if args.no_control:
        if args.serve is not None:
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
        return 0
    serve_stdin(simulator.command)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    sys.exit(main())
