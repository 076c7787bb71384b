"""How long decoding one camera frame takes, per resolution and decoder backend.

Run from the repository root::

    .venv/bin/python -m benchmarks.camera_decode [--frames N]

Frames come from the camera simulator (``simulators/camera.py``): the same scene at
640x480, 1280x720 and 1920x1080 (the same field of view, so the barcodes have three
times as many pixels across at 1080p as at 480p): an EAN-13, a Code 128 waybill number,
a QR code and a DataMatrix on cardboard, labels tilted up to 6 degrees, a slight blur
(sigma 0.6 px) and sensor noise. Every frame differs (labels drift, tilt and noise).

Each backend is timed through the driver's own :class:`BarcodeDecoder.decode` (the
grayscale conversion included), one frame at a time on one thread, after one warm-up
frame. Both read the same three formats (EAN-13, Code 128, QR); the ``+datamatrix``
rows add DataMatrix, which zbar cannot read, and the ``+inverted`` rows turn on
zxing-cpp's search for light-on-dark symbols, which the driver leaves off. The success
rate is the share of the expected barcodes found, over all frames. The JPEG row is
``snapshot_jpeg``'s encode at quality 90, for comparison.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version

import cv2
import numpy as np
import numpy.typing as npt

from agent.devices.decoders import BarcodeDecoder, PyzbarDecoder, ZxingDecoder
from simulators.camera import BarcodeSpec, CameraScene

RESOLUTIONS = ((640, 480), (1280, 720), (1920, 1080))
BARCODES = ("ean13:4006381333931", "code128:SF1234567890", "qrcode:https://example.com/o/12345",
            "datamatrix:SN-0042-7731")
EXPECTED = {"ean13": "4006381333931", "code128": "SF1234567890",
            "qrcode": "https://example.com/o/12345", "datamatrix": "SN-0042-7731"}
THREE = ("ean13", "code128", "qrcode")
BACKENDS: tuple[tuple[str, Callable[[], BarcodeDecoder]], ...] = (
    ("zxing", lambda: ZxingDecoder(THREE)),
    ("pyzbar", lambda: PyzbarDecoder(THREE)),
    ("zxing +datamatrix", lambda: ZxingDecoder((*THREE, "datamatrix"))),
    ("zxing +inverted", lambda: ZxingDecoder(THREE, try_invert=True)),
    ("zxing +datamatrix +inverted",
     lambda: ZxingDecoder((*THREE, "datamatrix"), try_invert=True)),
)
"""Row label and decoder. ``+inverted`` turns on zxing-cpp's search for light-on-dark
symbols (the library's default, off in the driver)."""


@dataclass
class Row:
    resolution: str
    backend: str
    times_ms: list[float]
    found: int
    expected: int

    def cells(self) -> list[str]:
        times = sorted(self.times_ms)
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        rate = f"{100 * self.found / self.expected:.0f} %" if self.expected else "-"
        return [self.resolution, self.backend, f"{statistics.fmean(times):.1f}",
                f"{statistics.median(times):.1f}", f"{p95:.1f}", rate]


def measure(frames: int) -> list[Row]:
    """Every backend on every frame, taking turns frame by frame (a load spike on the
    machine then costs all backends alike)."""
    rows = []
    params = [cv2.IMWRITE_JPEG_QUALITY, 90]
    for width, height in RESOLUTIONS:
        scene = CameraScene([BarcodeSpec.parse(b) for b in BARCODES], (width, height),
                            size=0.9, rotate_deg=6, blur_sigma=0.6, noise=6, seed=7)
        images: list[npt.NDArray[np.uint8]] = [scene.frame(i) for i in range(frames + 1)]
        resolution = f"{width}x{height}"
        decoders = [(label, build()) for label, build in BACKENDS]
        results = {label: Row(resolution, label, [], 0, frames * len(decoder.formats))
                   for label, decoder in decoders}
        jpeg = Row(resolution, "jpeg q90 encode", [], 0, 0)
        for _, decoder in decoders:
            decoder.decode(images[-1])  # warm-up: library loading, first allocations
        for image in images[:frames]:
            for label, decoder in decoders:
                started = time.perf_counter()
                texts = [d.text for d in decoder.decode(image)]
                results[label].times_ms.append((time.perf_counter() - started) * 1000)
                results[label].found += sum(EXPECTED[f] in texts for f in decoder.formats)
            started = time.perf_counter()
            cv2.imencode(".jpg", image, params)
            jpeg.times_ms.append((time.perf_counter() - started) * 1000)
        rows += [*results.values(), jpeg]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40, help="frames per resolution")
    args = parser.parse_args()
    started = time.monotonic()
    rows = measure(args.frames)
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"zxing-cpp {version('zxing-cpp')}, pyzbar {version('pyzbar')}, "
          f"OpenCV {cv2.__version__}; {args.frames} frames per resolution")
    header = ["resolution", "backend", "mean ms", "p50 ms", "p95 ms", "found"]
    table = [header] + [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    by_key = {(row.resolution, row.backend): statistics.fmean(row.times_ms) for row in rows}
    for width, height in RESOLUTIONS:
        key = f"{width}x{height}"
        ratio = by_key[(key, "pyzbar")] / by_key[(key, "zxing")]
        print(f"{key}: zxing-cpp is {ratio:.1f} times faster than pyzbar")
    print(f"total {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
