"""Print documents: raw jobs checked, pictures and packing slips rendered to exact bytes.

Expected bytes are written out by hand from the formats' specifications (ZPL ^GF and its
compression, TSPL BITMAP, EPL GW, ESC/POS GS v 0), not computed by the code under test;
the simulators decode what they receive with their own decoders.
"""

from __future__ import annotations

import base64
import io
import socket
import zlib
from collections.abc import Iterator
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image

from agent.devices.settings import PrinterSettings
from agent.jobs import raster
from agent.jobs import slip as slip_module
from agent.jobs.documents import (
    DOCUMENT_ERROR_CODES,
    DOCUMENT_SCHEMA,
    DocumentError,
    Limits,
    render,
)
from simulators.printer import LabelPrinterSim, decode_zpl_graphic

ESC_AT = b"\x1b@"
CUT = b"\x1bd\x06\x1dV\x00"  # python-escpos cut(): ESC d 6 (feed 6 lines), GS V 0 (full cut)


def printer(language: str, **options: Any) -> PrinterSettings:
    return PrinterSettings(connection="tcp://127.0.0.1:9100", language=language, **options)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def picture(rows: bytes, width_bytes: int) -> Image.Image:
    """A gray image whose pixels are ``rows`` (1 bit = black, leftmost dot in bit 7)."""
    bits = np.unpackbits(np.frombuffer(rows, np.uint8)).reshape(-1, width_bytes * 8)
    return Image.fromarray(np.where(bits == 1, 0, 255).astype(np.uint8))


def doc(fmt: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"format": fmt, "data": b64(data), **extra}


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/CCITT, polynomial 0x1021, initial 0 (table-free, independent of the agent)."""
    crc = 0
    for byte in data:
        for bit in range(7, -1, -1):
            top = (crc >> 15) ^ ((byte >> bit) & 1)
            crc = ((crc << 1) & 0xFFFF) ^ (0x1021 if top else 0)
    return crc


def failure(document: dict[str, Any], settings: PrinterSettings, **kwargs: Any
            ) -> DocumentError:
    with pytest.raises(DocumentError) as caught:
        render(document, settings, **kwargs)
    assert caught.value.code in DOCUMENT_ERROR_CODES
    return caught.value


# 16 x 4 dots: row 0 left half black, rows 1-2 white, row 3 black.
PATTERN = png(picture(bytes.fromhex("FF00" "0000" "0000" "FFFF"), 2))
PATTERN_WIRE = b"\x00\xff" b"\xff\xff" b"\xff\xff" b"\x00\x00"  # TSPL/EPL: 0 bit = dot


# ------------------------------------------------------------ pictures, exact bytes
def test_png_to_zpl_plain_hex() -> None:
    """^GFA with total bytes twice, bytes per row, and the rows as uppercase hex."""
    rendered = render(doc("png", PATTERN), printer("zpl", zpl_graphics="hex"))
    assert rendered.data == b"^XA^FO0,0^GFA,8,8,2,FF0000000000FFFF^FS^PQ1^XZ"
    assert (rendered.labels, rendered.pages) == (1, 1)
    assert rendered.summary == "png, 1 image -> ZPL ^GF 16x4 dots (hex), 1 copy"


def test_png_to_zpl_ascii_compression_fills_and_repeats_rows() -> None:
    """acs (default): HF = FF, ',' zero-fills a row, ':' repeats it, '!' fills with F."""
    rendered = render(doc("png", PATTERN), printer("zpl"))
    assert rendered.data == b"^XA^FO0,0^GFA,8,8,2,HF,,:!^FS^PQ1^XZ"


def test_zpl_ascii_compression_repeat_counts() -> None:
    """G..Y count 1..19 and g..z 20..400, summed; ',' fills from a whole byte."""
    rows = bytes.fromhex("F" + "0" * 22 + "F" + "A" * 24 + "555" + "0" * 21)
    rendered = render(doc("png", png(picture(rows, 12))), printer("zpl"))
    # 22 zeros = g (20) + H (2); 24 A = g + J (4); 555 then 0 to end the byte, then ','.
    assert rendered.data == b"^XA^FO0,0^GFA,36,36,12,FgH0FgJAI50,^FS^PQ1^XZ"
    wide = raster.Bitmap(width=220 * 8, height=1, rows=b"\xbb" * 220)
    assert raster.acs(wide) == "zhB"  # 440 B: z (400) + h (40)


def test_png_to_zpl_z64_is_zlib_base64_and_crc_of_the_base64_text() -> None:
    rendered = render(doc("png", PATTERN), printer("zpl", zpl_graphics="z64"), copies=2)
    text = base64.b64encode(zlib.compress(bytes.fromhex("FF0000000000FFFF"))).decode()
    crc = crc16_xmodem(text.encode())
    assert rendered.data == f"^XA^FO0,0^GFA,8,8,2,:Z64:{text}:{crc:04X}^FS^PQ2^XZ".encode()
    assert crc16_xmodem(b"123456789") == 0x31C3  # the CRC-16/XMODEM check value
    assert rendered.labels == 2


def test_png_to_tspl_bitmap_with_inverted_rows() -> None:
    """TSPL: SIZE in mm (0.1 mm), CLS, BITMAP rows where 0 prints, PRINT 1,copies."""
    rendered = render(doc("png", PATTERN), printer("tspl"), copies=3)
    assert rendered.data == (b"SIZE 100.0 mm,0.5 mm\r\nCLS\r\nBITMAP 0,0,2,4,0,"
                             + PATTERN_WIRE + b"\r\nPRINT 1,3\r\n")
    assert rendered.labels == 3


def test_png_to_epl_gw_with_inverted_rows() -> None:
    rendered = render(doc("png", PATTERN), printer("epl"), copies=3)
    assert rendered.data == b"N\r\nGW0,0,2,4," + PATTERN_WIRE + b"\r\nP3\r\n"
    assert rendered.labels == 3


def test_png_to_escpos_raster_then_cut_repeated_for_copies() -> None:
    """ESC @, GS v 0 m=0 xL xH yL yH + rows (1 = dot), cut; all of it per copy."""
    rendered = render(doc("png", PATTERN), printer("escpos"), copies=2)
    one = (ESC_AT + b"\x1dv0\x00\x02\x00\x04\x00" + b"\xff\x00\x00\x00\x00\x00\xff\xff"
           + CUT)
    assert rendered.data == one + one
    assert (rendered.labels, rendered.summary) == (
        2, "png, 1 image -> ESC/POS GS v 0 16x4 dots, 2 copies")


def test_escpos_keeps_a_random_picture_bit_for_bit_and_splits_tall_ones() -> None:
    rows = np.random.default_rng(7).integers(0, 256, 5 * 1000, dtype=np.uint8).tobytes()
    rendered = render(doc("png", png(picture(rows, 5))), printer("escpos"))
    first = ESC_AT + b"\x1dv0\x00\x05\x00\xc0\x03" + rows[:5 * 960]  # 960 rows a block
    second = b"\x1dv0\x00\x05\x00\x28\x00" + rows[5 * 960:]
    assert rendered.data == first + second + CUT


def test_pdf_pages_render_at_the_printer_dpi_one_label_each() -> None:
    page = picture(bytes.fromhex("FF00") * 8, 2)
    out = io.BytesIO()
    page.save(out, "PDF", resolution=203.0, save_all=True, append_images=[page])
    rendered = render(doc("pdf", out.getvalue()), printer("zpl", zpl_graphics="hex"),
                      copies=2)
    one = b"^XA^FO0,0^GFA,16,16,2," + b"FF00" * 8 + b"^FS^PQ2^XZ"
    assert rendered.data == one + one
    assert (rendered.labels, rendered.pages) == (4, 2)
    assert rendered.summary == "pdf, 2 pages -> ZPL ^GF 16x8 dots (hex), 2 copies"


def test_a_wide_pdf_page_is_rendered_to_the_printer_width() -> None:
    out = io.BytesIO()
    Image.new("L", (1654, 100), 255).save(out, "PDF", resolution=200.0)  # 210 mm wide
    rendered = render(doc("pdf", out.getvalue()), printer("tspl", dpi=203, width_mm=50.0))
    # 50 mm at 203 dpi is 392 dots (whole bytes); 100 dots high at 200 dpi become 24.
    assert rendered.data.startswith(b"SIZE 50.0 mm,3.0 mm\r\nCLS\r\nBITMAP 0,0,49,24,0,")
    assert rendered.summary == "pdf, 1 page -> TSPL BITMAP 392x24 dots, 1 copy"


def test_too_wide_images_are_scaled_down_never_up() -> None:
    wide = Image.new("L", (32, 8), 255)
    wide.paste(0, (0, 0, 16, 8))  # left half black
    narrow = printer("zpl", zpl_graphics="hex", width_mm=2.1)  # 16 dots
    rendered = render(doc("png", png(wide)), narrow)
    assert rendered.data == b"^XA^FO0,0^GFA,8,8,2,FF00FF00FF00FF00^FS^PQ1^XZ"
    assert rendered.summary.endswith(", scaled down from 32x8")
    small = render(doc("png", PATTERN), printer("zpl", zpl_graphics="hex"))
    assert b"^GFA,8,8,2," in small.data  # 16x4 stays 16x4 on a 100 mm printer


def test_dither_and_threshold_differ_on_mid_gray() -> None:
    gray = png(Image.new("L", (64, 8), 150))
    thresholded = render(doc("png", gray), printer("zpl", zpl_graphics="hex"))
    assert thresholded.data == b"^XA^FO0,0^GFA,64,64,8," + b"00" * 64 + b"^FS^PQ1^XZ"
    darker = render(doc("png", gray, threshold=151), printer("zpl", zpl_graphics="hex"))
    assert darker.data == b"^XA^FO0,0^GFA,64,64,8," + b"FF" * 64 + b"^FS^PQ1^XZ"
    dithered = render(doc("png", gray, dither=True), printer("zpl", zpl_graphics="hex"))
    data = bytes.fromhex(dithered.data.split(b",")[5].split(b"^")[0].decode())
    black = sum(bin(byte).count("1") for byte in data)
    assert 0.3 < black / (64 * 8) < 0.55  # about (255 - 150) / 255 of the dots
    assert dithered.summary.endswith(", dithered")


def test_transparent_pixels_are_white_and_16_bit_gray_keeps_its_levels() -> None:
    rgba = Image.new("RGBA", (16, 1), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 1))  # left half: transparent black
    rendered = render(doc("png", png(rgba)), printer("zpl", zpl_graphics="hex"))
    assert rendered.data == b"^XA^FO0,0^GFA,2,2,2,00FF^FS^PQ1^XZ"
    deep = Image.fromarray(np.array([[0] * 8 + [40000] * 8], dtype=np.uint16))
    rendered = render(doc("png", png(deep)), printer("zpl", zpl_graphics="hex"))
    assert rendered.data == b"^XA^FO0,0^GFA,2,2,2,FF00^FS^PQ1^XZ"


# ------------------------------------------------------------ raw documents
def test_raw_zpl_passes_through_byte_for_byte_repeated_for_copies() -> None:
    job = b"^XA^FO50,50^A0N,40,40^FDSF1234567890^FS^PQ2^XZ"
    rendered = render(doc("zpl", job), printer("zpl"), copies=3)
    assert rendered.data == job + job + job
    assert (rendered.labels, rendered.pages) == (6, 1)
    assert rendered.summary == "zpl, 46 bytes, 2 labels each -> as sent, 3 copies"


def test_raw_tspl_epl_escpos_pass_through() -> None:
    tspl = b"SIZE 100 mm,150 mm\r\nCLS\r\nTEXT 10,10,\"3\",0,1,1,\"SF1\"\r\nPRINT 2,3\r\n"
    assert render(doc("tspl", tspl), printer("tspl")).labels == 6
    epl = b"\r\nN\r\nA50,50,0,4,1,1,N,\"SF1\"\r\nP2\r\n"
    rendered = render(doc("epl", epl), printer("epl"), copies=2)
    assert (rendered.data, rendered.labels) == (epl + epl, 4)
    receipt = b"\x1b@Hello\n\x1dV\x00"
    rendered = render(doc("escpos", receipt), printer("escpos"), copies=2)
    assert (rendered.data, rendered.labels) == (receipt + receipt, None)


def test_raw_document_in_another_language_is_refused() -> None:
    error = failure(doc("zpl", b"^XA^XZ"), printer("tspl"))
    assert error.code == "wrong_language"
    assert error.message == ("document is ZPL but the printer speaks TSPL (language = \"tspl\"); "
                             "send tspl or a PNG/PDF")


@pytest.mark.parametrize(("language", "job", "words"), [
    ("zpl", b"^XA^FDno end", "ZPL document has ^XA at byte 0 without a closing ^XZ"),
    ("zpl", b"^FDx^FS^XZ", "ZPL document has ^XZ at byte 7 without an opening ^XA"),
    ("zpl", b"^XA^FDa^XA^FDb^XZ", "ZPL document has ^XA at byte 0 without a closing ^XZ "
                                  "before the next ^XA at byte 7"),
    ("zpl", b"~HS", "ZPL document has no label format"),
    ("tspl", b"SIZE 50 mm,30 mm\r\nCLS\r\n", "TSPL document prints nothing: it has no PRINT"),
    ("epl", b"N\r\nA50,50,0,4,1,1,N,\"x\"\r\n", "EPL document prints nothing: it has no P<n>"),
    ("escpos", b"", "ESC/POS document is empty"),
])
def test_raw_documents_that_cannot_print_are_invalid(language: str, job: bytes,
                                                     words: str) -> None:
    error = failure(doc(language, job), printer(language))
    assert error.code == "invalid_document"
    assert error.message.startswith(words)


@pytest.mark.parametrize(("job", "command"), [
    (b"^XA^JUS^XZ", "^JU"), (b"^xa^jus^xz", "^JU"), (b"~JR", "~JR"),
    (b"^XA^CC+^XZ+XA+JUS+XZ", "^CC"), (b"^XA^NS,10.0.0.9^XZ", "^NS"),
    (b"^XA^IDR:*.GRF^FS^XZ", "^ID"), (b"~JD^XA^XZ", "~JD"),
])
def test_zpl_commands_that_reconfigure_the_printer_are_forbidden(job: bytes,
                                                                 command: str) -> None:
    error = failure(doc("zpl", job), printer("zpl"))
    assert error.code == "forbidden_command"
    assert error.message.startswith(f"ZPL document has {command} at byte ")
    assert "print jobs may not reconfigure the printer" in error.message


@pytest.mark.parametrize(("job", "what"), [
    (b"^XA\x1eJUS^XZ", "^JU"),              # RS is the printer's alternate caret
    (b"\x10JR^XA^FDx^FS^XZ", "~JR"),          # DLE its alternate tilde
    (b"^XA\x1eCC+^XZ", "^CC"),
    (b"~JI^XA^FDx^FS^XZ", "~JI"), (b"^XA^FDx^FS^XZ~PP", "~PP"),
    (b'^XA^FDx^FS^XZ\r\n! U1 setvar "ip.addr" "10.0.0.9"\r\n', "Set-Get-Do"),
    (b'! U1 do "device.reset" ""\r\n^XA^FDx^FS^XZ', "Set-Get-Do"),
    (b'{}{"device.reset":null}^XA^FDx^FS^XZ', "Set-Get-Do"),
])
def test_the_zpl_check_reads_the_job_as_the_printer_does(job: bytes, what: str) -> None:
    error = failure(doc("zpl", job), printer("zpl"))
    assert error.code == "forbidden_command", error.message
    assert what in error.message


def test_an_sgd_getvar_or_words_in_a_field_are_not_refused() -> None:
    job = b'^XA^FO10,10^FD! U1 getvar and {} are text here^FS^XZ'
    assert render(doc("zpl", job), printer("zpl")).data == job


def test_gb18030_slip_refuses_characters_outside_the_printers_chinese_font() -> None:
    lines = [{"sku": "P-1", "name": "Straße • 桃子", "quantity": 1}]
    error = failure(slip(lines=lines), printer("escpos", text_encoding="gb18030"))
    assert error.code == "unprintable_text"
    assert "'ß' (U+00DF) in fields.lines[0].name" in error.message
    assert "'•' (U+2022)" in error.message and "桃" not in error.message
    assert "four-byte codes" in error.message


def test_bad_base64_and_unknown_forms_are_refused() -> None:
    error = failure({"format": "zpl", "data": "^XA^XZ"}, printer("zpl"))
    assert error.code == "invalid_document"
    assert error.message.startswith("document.data is not valid base64")
    error = failure({"format": "zpl", "data": "XlhBXlha"[:-1]}, printer("zpl"))
    assert "not a multiple of 4" in error.message
    error = failure({"format": "bmp", "data": ""}, printer("zpl"))
    assert (error.code, error.message) == (
        "unsupported_document",
        "unknown document format 'bmp'; allowed: zpl, tspl, epl, escpos, png, pdf, slip")
    error = failure({**doc("zpl", b"^XA^XZ"), "copies": 2}, printer("zpl"))
    assert error.message == ("document has unknown keys ['copies'] for format 'zpl'; "
                             "allowed: format, data")
    # Line breaks in base64 (MIME style) are ignored: "XlhBXlha" is "^XA^XZ".
    assert render({"format": "zpl", "data": "XlhB\r\nXlha\n"}, printer("zpl")).data == \
        b"^XA^XZ"


def test_limits_bytes_pages_and_pixels() -> None:
    limits = Limits(max_bytes=100, max_pages=1, max_pixels=1_000_000)
    error = failure(doc("escpos", b"x" * 200), printer("escpos"), limits=limits)
    assert (error.code, error.message) == (
        "too_large", "document is 200 bytes after base64 decoding; the limit is 100 "
                     "(jobs.print.max_job_bytes)")
    error = failure(doc("escpos", b"x" * 60), printer("escpos"), copies=2, limits=limits)
    assert error.message == ("the rendered job is 120 bytes (2 copies of 60); the limit is "
                             "100 (jobs.print.max_job_bytes)")
    big = png(Image.new("1", (2000, 1000), 1))
    error = failure(doc("png", big), printer("zpl"), limits=Limits(max_pixels=1_000_000))
    assert (error.code, error.message) == (
        "too_large", "PNG is 2000x1000 = 2,000,000 pixels; the limit is 1,000,000 pixels "
                     "per image")
    page = Image.new("L", (8, 8), 255)
    out = io.BytesIO()
    page.save(out, "PDF", resolution=203.0, save_all=True, append_images=[page])
    error = failure(doc("pdf", out.getvalue()), printer("zpl"), limits=Limits(max_pages=1))
    assert (error.code, error.message) == (
        "too_large", "PDF has 2 pages; the limit is 1 (jobs.print.max_pages)")


def test_broken_pictures_are_invalid_with_the_reason() -> None:
    zpl = printer("zpl")
    noise = png(picture(np.random.default_rng(1).integers(0, 256, 4000, np.uint8).tobytes(), 40))
    assert failure(doc("png", noise[:len(noise) // 2]), zpl).message == (
        "PNG is corrupt or truncated: image file is truncated")
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, "JPEG")
    assert failure(doc("png", jpeg.getvalue()), zpl).message == (
        "document is not a PNG (it is a JPEG); send format \"png\" with a PNG file, or use "
        "\"pdf\"")
    error = failure(doc("pdf", b"%PDF-1.4 garbage"), zpl)
    assert error.code == "invalid_document"
    assert error.message.startswith("PDF cannot be read (Failed to load document")
    assert failure(doc("pdf", encrypted_pdf()), zpl).message == (
        "PDF is encrypted (it needs a password to open); send it without encryption")
    assert failure(doc("png", PATTERN, threshold=256), zpl).message == (
        "document.threshold must be a whole number from 0 to 255, got 256")


def encrypted_pdf() -> bytes:
    """A one-page PDF behind the standard security handler, with a user password."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 72 72] >>",
               b"<< /Filter /Standard /V 1 /R 2 /O <" + b"00" * 32 + b"> /U <" + b"11" * 32
               + b"> /P -4 >>"]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    file_id = "<00112233445566778899aabbccddeeff>"
    return out + (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Encrypt 4 0 R "
                  f"/ID [{file_id} {file_id}] >>\nstartxref\n{xref}\n%%EOF\n").encode()


@hypothesis_settings(max_examples=300, deadline=None)
@given(fmt=st.sampled_from(["zpl", "tspl", "epl", "png", "pdf"]), head=st.integers(0, 80),
       tail=st.binary(max_size=300))
def test_random_documents_render_or_fail_with_a_document_error(fmt: str, head: int,
                                                               tail: bytes) -> None:
    """Damaged PNG/PDF files and random raw jobs: a result or a DocumentError, nothing else."""
    language = fmt if fmt in ("zpl", "tspl", "epl") else "zpl"
    start = {"png": PATTERN, "pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n"}
    data = start.get(fmt, b"^XA^FO10,10^FDx^FS^XZ")[:head] + tail
    try:
        render(doc(fmt, data), printer(language))
    except DocumentError as exc:
        assert exc.code in DOCUMENT_ERROR_CODES


@hypothesis_settings(max_examples=200, deadline=None)
@given(width_bytes=st.integers(1, 12), rows=st.lists(st.sampled_from(
    [b"\x00", b"\xff", b"\x0f", b"\xf0", b"\xa5"]), min_size=1, max_size=400),
       encoding=st.sampled_from(["hex", "acs", "z64"]))
def test_zpl_graphic_data_decodes_back_to_the_same_rows(width_bytes: int, rows: list[bytes],
                                                        encoding: str) -> None:
    """The simulator's own ^GF decoder reads every encoding back to the exact rows."""
    data = b"".join(rows)
    data = data[:len(data) // width_bytes * width_bytes] or b"\x00" * width_bytes
    bitmap = raster.Bitmap(width_bytes * 8, len(data) // width_bytes, data)
    encoded = raster.zpl_graphic_data(bitmap, encoding).encode()
    assert decode_zpl_graphic(encoded, len(data), width_bytes) == data


# ------------------------------------------------------------ through the simulators
@pytest.fixture
def label_sim() -> Iterator[Any]:
    started: list[LabelPrinterSim] = []

    def start(language: str) -> LabelPrinterSim:
        sim = LabelPrinterSim(language)
        started.append(sim)
        sim.start()
        return sim

    yield start
    for sim in started:
        sim.stop()


def send(sim: LabelPrinterSim, data: bytes) -> None:
    with socket.create_connection((sim.host, sim.port), timeout=5) as conn:
        conn.sendall(data)


# Wire bytes (0 = dot) with LF, CR, <ESC>!? and ^ee inside: one BITMAP/GW of 4 x 3 bytes.
TRICKY_WIRE = b"\x1b!?\r" b"\n^ee" b"\r\n\x1b!"
TRICKY_ROWS = bytes(255 - byte for byte in TRICKY_WIRE)


@pytest.mark.parametrize(("language", "command"), [("tspl", "BITMAP"), ("epl", "GW")])
def test_binary_rows_with_line_breaks_and_status_bytes_are_one_job(
        label_sim: Any, language: str, command: str) -> None:
    sim = label_sim(language)
    job = render(doc("png", png(picture(TRICKY_ROWS, 4))), printer(language)).data
    assert TRICKY_WIRE in job
    send(sim, job + job)
    assert sim.wait_for(lambda: len(sim.jobs) == 2)
    assert sim.jobs == [job, job]
    assert sim.status_requests == 0  # no <ESC>!? or ^ee inside the rows was answered
    assert [(g.width, g.height, g.rows, g.command) for g in sim.graphics] == [
        (32, 3, TRICKY_ROWS, command)] * 2
    assert sim.printed() == 2


@pytest.mark.parametrize("language", ["tspl", "epl"])
def test_binary_rows_arriving_byte_by_byte_still_make_one_job(language: str) -> None:
    """Headers and rows split anywhere; a status request after the job is answered."""
    sim = LabelPrinterSim(language)
    job = render(doc("png", png(picture(TRICKY_ROWS, 4))), printer(language)).data
    replies = b"".join(sim.receive(job[index:index + 1]) for index in range(len(job)))
    assert (replies, sim.jobs, sim.status_requests) == (b"", [job], 0)
    assert sim.graphics[0].rows == TRICKY_ROWS
    request = b"\x1b!?" if language == "tspl" else b"^ee\r\n"
    assert sim.receive(request) in (b"\x20", b"\x00", b"00\r\n")
    assert sim.status_requests == 1


@pytest.mark.parametrize("encoding", ["hex", "acs", "z64"])
def test_zpl_pictures_decoded_by_the_simulator_are_the_pictures_sent(
        label_sim: Any, encoding: str) -> None:
    rows = (bytes.fromhex("FF00FF00F0") + b"\x00" * 5 + b"\x00" * 5 + b"\xff" * 5
            + np.random.default_rng(3).integers(0, 256, 5 * 20, dtype=np.uint8).tobytes())
    sim = label_sim("zpl")
    send(sim, render(doc("png", png(picture(rows, 5))),
                     printer("zpl", zpl_graphics=encoding), copies=2).data)
    assert sim.wait_for(lambda: len(sim.jobs) == 1)
    assert not sim.graphic_errors
    assert [(g.width, g.height, g.rows) for g in sim.graphics] == [(40, 24, rows)]
    assert sim.printed() == 2


# ------------------------------------------------------------ packing slips
def slip(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"order_ids": ["A1"],
                            "lines": [{"sku": "P-1", "name": "桃子 12个", "quantity": 2}]}
    return {"format": "slip", "template": "packing_slip", "fields": {**base, **fields}}


def test_gb18030_slip_sends_chinese_mode_then_exact_gb18030_bytes() -> None:
    rendered = render(slip(), printer("escpos", width_mm=48.1, text_encoding="gb18030"))
    assert rendered.data == (
        ESC_AT + b"\x1c&"                              # FS &: Chinese character mode
        + b"\x1ba\x01"                                 # centered
        + b"\x1d!\x11\x1bE\x01Packing slip\n"          # double width and height, bold
        + b"\x1d!\x00\x1bE\x00\x1ba\x00"               # normal size, not bold, left
        + b"\nOrder: A1\n" + b"-" * 32 + b"\n"
        + b"2 x P-1  \xcc\xd2\xd7\xd3 12\xb8\xf6\n"   # 桃 CCD2 子 D7D3 个 B8F6
        + b"-" * 32 + b"\n1 line, 2 items\n" + CUT)
    assert (rendered.labels, rendered.pages) == (1, 1)
    assert rendered.summary == ("packing slip, order A1, 1 line (2 items) -> ESC/POS 32 "
                                "columns (gb18030), 1 copy")


def test_chinese_text_without_a_chinese_font_is_unprintable_not_question_marks() -> None:
    error = failure(slip(), printer("escpos"))
    assert error.code == "unprintable_text"
    assert error.message == (
        "slip text has characters the printer cannot print: '桃' (U+6843) in "
        "fields.lines[0].name, '子' (U+5B50) in fields.lines[0].name, '个' (U+4E2A) in "
        "fields.lines[0].name; no code page of the printer's python-escpos profile (Default) "
        "has them; set text_encoding = \"gb18030\" on the printer if it has a Chinese font")


def test_full_slip_with_code_page_text_barcode_qr_gift_and_copies() -> None:
    fields = {"shop": "Shop", "order_ids": ["A1", "A2"], "waybill": "SF1", "gift": True,
              "gift_message": "Hi", "note": "Fragile", "barcode": "SF{1", "qr": "Q",
              "footer": "Thanks",
              "lines": [{"sku": "S", "name": "Café", "quantity": 1, "note": "wrap"}]}
    rendered = render(slip(**fields), printer("escpos", width_mm=72.1,
                                              escpos_profile="TM-T20II"), copies=2)
    one = (ESC_AT + b"\x1ba\x01\x1bE\x01" + b"\x1bt\x00Shop\n" + b"\x1bE\x00"
           + b"\x1d!\x11\x1bE\x01Packing slip\n\x1d!\x00\x1bE\x00\x1ba\x00"
           + b"\nOrders: A1, A2\nWaybill: SF1\n" + b"-" * 48 + b"\n"
           + b"1 x S  Caf\x82\n    - wrap\n"              # CP437: é is 0x82
           + b"-" * 48 + b"\n1 line, 1 item\n"
           + b"\n\x1d!\x11\x1bE\x01\x1ba\x01GIFT\n\x1d!\x00\x1bE\x00Hi\n\x1ba\x00"
           + b"\nNote: Fragile\n"
           # GS k CODE128: centered, height 80, module 3, HRI font A below, {B + data ({{ = {)
           + b"\n\x1ba\x01\x1dhP\x1dw\x03\x1df\x00\x1dH\x02\x1dkI\x07{BSF{{1\x1ba\x00"
           # GS ( k: model 2, module 6, error correction M, store "Q", print
           + b"\n\x1ba\x01\x1d(k\x04\x001A2\x00\x1d(k\x03\x001C\x06\x1d(k\x03\x001E1"
           + b"\x1d(k\x04\x001P0Q\x1d(k\x03\x001Q0\n\x1ba\x00"
           + b"\n\x1ba\x01Thanks\n\x1ba\x00" + CUT)
    assert rendered.data == one + one
    assert rendered.labels == 2


def test_slip_wraps_long_names_counting_wide_characters_twice() -> None:
    name = "Fresh peaches from the orchard, hand picked 桃子桃子桃子桃子"
    rendered = render(slip(lines=[{"sku": "P-1", "name": name, "quantity": 12}]),
                      printer("escpos", width_mm=48.1, text_encoding="gb18030"))
    text = rendered.data.split(b"-" * 32 + b"\n")[1].decode("gb18030")
    assert text == ("12 x P-1  Fresh peaches from the\n"
                    "          orchard, hand picked\n"
                    "          桃子桃子桃子桃子\n")


@hypothesis_settings(max_examples=300, deadline=None)
@given(text=st.text(st.sampled_from("ab 桃子,\n"), max_size=80), first=st.integers(1, 20),
       rest=st.integers(2, 20), chinese=st.booleans())
def test_wrapped_lines_fit_and_keep_every_character(text: str, first: int, rest: int,
                                                    chinese: bool) -> None:
    writer = slip_module.SlipWriter(None, 32, 384, chinese)  # type: ignore[arg-type]
    lines = writer.wrap(text, first, rest)
    for index, line in enumerate(lines):
        assert writer.width(line) <= max(first if index == 0 else rest, 2)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "").replace("\n", "")


@pytest.mark.parametrize(("fields", "words"), [
    ({"lines": None}, "fields.lines is required: a list with at least one entry"),
    ({"lines": []}, "fields.lines is required: a list with at least one entry, got []"),
    ({"order_ids": ["A1", 7]}, "fields.order_ids[1] must be a string, got 7"),
    ({"lines": [{"sku": "S", "name": "n", "quantity": 0}]},
     "fields.lines[0].quantity must be a whole number of at least 1, got 0"),
    ({"buyer": "Bob\x1b@"}, "fields.buyer has control characters U+001B"),
    ({"barcode": "条码"}, "fields.barcode must be printable ASCII"),
    ({"barcode": "X" * 30}, "fields.barcode is 30 characters; at most 21 fit"),
    ({"colour": "red"}, "fields ['colour'] are not packing_slip fields"),
])
def test_slip_fields_that_do_not_match_are_invalid_naming_the_field(
        fields: dict[str, Any], words: str) -> None:
    document = slip(**fields)
    document["fields"] = {k: v for k, v in document["fields"].items() if v is not None}
    error = failure(document, printer("escpos", width_mm=72.1, text_encoding="gb18030"))
    assert error.code == "invalid_document"
    assert error.message.startswith(words)


def test_profiles_without_native_qr_or_code128(capsys: pytest.CaptureFixture[str]) -> None:
    """POS-5890: the QR code goes as a raster image; a CODE128 bar code is refused."""
    cheap = printer("escpos", width_mm=48.1, escpos_profile="POS-5890")
    rendered = render(slip(lines=[{"sku": "S", "name": "n", "quantity": 1}], qr="Q"), cheap)
    assert b"\x1dv0" in rendered.data and b"\x1d(k" not in rendered.data
    error = failure(slip(lines=[{"sku": "S", "name": "n", "quantity": 1}], barcode="SF1"),
                    cheap)
    assert (error.code, error.message) == (
        "unsupported_document", "fields.barcode: the printer's python-escpos profile "
                                "'POS5890 Series' has no CODE128 (GS k function B); leave "
                                "the barcode out")
    render(doc("png", PATTERN), printer("escpos"))  # a profile without a known width
    assert capsys.readouterr().out == ""  # python-escpos print()ed nothing


def test_slips_need_an_escpos_printer_and_a_known_template() -> None:
    error = failure(slip(), printer("zpl"))
    assert (error.code, error.message) == (
        "unsupported_document", "packing slips print on ESC/POS receipt printers; this "
                                "printer speaks ZPL: send the slip as a PDF or PNG instead")
    error = failure({**slip(), "template": "invoice"}, printer("escpos"))
    assert (error.code, error.message) == (
        "unsupported_document", "unknown slip template 'invoice'; known: packing_slip")


# ------------------------------------------------------------ schema
def test_document_schema_accepts_each_form_and_explains_what_it_refuses() -> None:
    validator = jsonschema.Draft202012Validator(DOCUMENT_SCHEMA)
    jsonschema.Draft202012Validator.check_schema(DOCUMENT_SCHEMA)
    for document in (doc("zpl", b"^XA^XZ"), doc("escpos", b"x"),
                     doc("png", PATTERN, threshold=0, dither=True), doc("pdf", b"%PDF"),
                     slip()):
        assert list(validator.iter_errors(document)) == []

    def refused(document: dict[str, Any]) -> str:
        error = jsonschema.exceptions.best_match(validator.iter_errors(document))
        assert error is not None
        return str(error.message)

    assert refused({"format": "bmp", "data": ""}) == (
        "'bmp' is not one of ['zpl', 'tspl', 'epl', 'escpos', 'png', 'pdf', 'slip']")
    assert refused({"format": "zpl"}) == "'data' is a required property"
    assert refused(doc("png", PATTERN, threshold=300)) == "300 is greater than the maximum of 255"
    assert refused({**doc("zpl", b"x"), "dither": True}) == (
        "Additional properties are not allowed ('dither' was unexpected)")
    assert refused({"format": "slip", "template": "packing_slip"}) == (
        "'fields' is a required property")


def test_a_pdf_without_pages_is_refused_in_words() -> None:
    import pypdfium2

    out = io.BytesIO()
    pypdfium2.PdfDocument.new().save(out)  # a valid PDF with an empty page tree
    error = failure(doc("pdf", out.getvalue()), printer("zpl"))
    assert error.code == "invalid_document"
    assert error.message.startswith("PDF has no pages")
