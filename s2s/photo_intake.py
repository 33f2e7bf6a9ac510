"""The uploaded photo checked from its structure and stripped of its metadata, without decoding a pixel.

Decoding a 4000x3000 phone JPEG costs 20-30 ms of CPU even at 1/8 scale (libjpeg must still read all
of its entropy-coded data), far too much for an API process meant to take 40 submits a second; the
worker decodes it (:mod:`s2s.photo_prep`) right before the provider call. What must hold at intake is
the privacy guarantee, and that is a matter of structure: the file is walked block by block (JPEG
segments, PNG chunks, WebP RIFF chunks; each length checked against the file, a PNG chunk's CRC
checked, a truncated file refused) and rebuilt from the blocks that carry pixels and colour only. EXIF
(GPS, camera, time), XMP, comments, text chunks and anything after the end of the image are dropped;
the EXIF orientation, when it is not 1, is written back as an EXIF block holding only that tag, so the
kept file still shows upright. Pixels are left exactly as uploaded: nothing is re-encoded.
"""

from __future__ import annotations

import logging
import re
import struct
import zlib

from attrs import frozen
from PIL import ExifTags, Image

log = logging.getLogger("s2s.photo_intake")

JPEG, PNG, WEBP = "image/jpeg", "image/png", "image/webp"


class BadPhoto(ValueError):
    """The upload is not a whole JPEG, PNG or WebP (``code`` ``invalid_image``) or is over the pixel cap
    (``image_too_many_pixels``); ``reason`` completes "originalImageBase64 ..."."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@frozen
class Stripped:
    """The photo as kept: the uploaded image data with only its pixel and colour blocks."""

    data: bytes
    content_type: str
    width: int
    height: int


def strip(data: bytes, max_pixels: int) -> Stripped:
    """``data`` checked and stripped (:class:`BadPhoto` if it is not a whole JPEG, PNG or WebP, or
    has more than ``max_pixels`` pixels)."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data, max_pixels)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png(data, max_pixels)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data, max_pixels)
    raise _unreadable()


def _unreadable(why: str = "") -> BadPhoto:
    if why:
        log.debug("photo refused", extra={"reason": why})
    return BadPhoto("invalid_image", "is not a readable JPEG, PNG or WebP image")


def _checked(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise _unreadable("no size")
    if width * height > max_pixels:
        raise BadPhoto("image_too_many_pixels",
                       f"the image is {width}x{height} pixels; at most {max_pixels} pixels are accepted")


# ---- orientation ---------------------------------------------------------------------------------

_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(?:="|>)([0-9])')


def orientation(exif: bytes | None, xmp: bytes | None) -> int:
    """The EXIF Orientation (1-8), else XMP's tiff:Orientation, as Pillow's ``getexif`` reads them; 1 when
    neither says, or the EXIF block is too corrupt to read (the photo shown as stored, as most viewers do)."""
    if exif:
        try:
            value = Image.Exif()
            value.load(exif)
            found = value.get(ExifTags.Base.Orientation)
        except Exception as exc:  # Pillow's EXIF parser raises struct, type and value errors alike
            log.info("photo EXIF unreadable, orientation ignored", extra={"error": repr(exc)[:200]})
            found = None
        if isinstance(found, int):
            return found if 1 <= found <= 8 else 1
    match = _XMP_ORIENTATION.search(xmp) if xmp else None
    return int(match[1]) if match and 1 <= int(match[1]) <= 8 else 1


def orientation_exif(value: int) -> bytes:
    """A TIFF/EXIF block holding only Orientation (no ``Exif\\0\\0`` prefix: as PNG eXIf and WebP EXIF keep it)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = value
    return exif.tobytes()[6:]


# ---- JPEG (ITU T.81, table B.1) ------------------------------------------------------------------

#: Frame types Pillow (libjpeg) decodes: baseline, extended sequential and progressive, Huffman-coded.
_SOF_KEPT = {0xC0, 0xC1, 0xC2}
#: Lossless, hierarchical (differential) and arithmetic-coded frames, and hierarchical-only markers: refused.
_SOF_REFUSED = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xDE, 0xDF}
#: Table and restart-interval segments, kept wherever they are (progressive scans bring their own DHT).
_TABLES = {0xC4, 0xCC, 0xDB, 0xDD}
#: A marker inside entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart marker nor fill.
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _segment(data: bytes, pos: int) -> tuple[int, int]:
    """(marker, end) of the length-prefixed segment whose marker's 0xFF is at ``pos``."""
    if pos + 4 > len(data):
        raise _unreadable("jpeg truncated in a segment header")
    length = struct.unpack_from(">H", data, pos + 2)[0]
    end = pos + 2 + length
    if length < 2 or end > len(data):
        raise _unreadable("jpeg segment past the end")
    return data[pos + 1], end


def _jpeg(data: bytes, max_pixels: int) -> Stripped:
    kept = [b"\xff\xd8"]
    exif = xmp = None
    size = None
    pos = 2
    while True:  # the header: SOI up to the first SOS
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 1 >= len(data) or data[pos] != 0xFF:
            raise _unreadable("jpeg header without a marker")
        marker, end = _segment(data, pos)
        payload = data[pos + 4:end]
        if marker in _SOF_KEPT:
            if size is not None or len(payload) < 6:
                raise _unreadable("jpeg frame header repeated or short")
            height, width, components = struct.unpack_from(">HHB", payload, 1)
            if components not in (1, 3, 4):
                raise _unreadable("jpeg component count")
            _checked(width, height, max_pixels)  # height 0 (given later by DNL) is refused too
            size = (width, height)
            kept.append(data[pos:end])
        elif marker in _SOF_REFUSED or marker in (0xD8, 0xD9, 0x01) or 0xD0 <= marker <= 0xD7:
            raise _unreadable("jpeg frame type Pillow cannot decode, or a misplaced marker")
        elif marker == 0xDA:
            if size is None:
                raise _unreadable("jpeg scan before its frame header")
            kept.append(data[pos:end])
            pos = end
            break
        elif marker == 0xE1 and payload.startswith(b"Exif\0\0") and exif is None:
            exif = payload[6:]
        elif marker == 0xE1 and payload.startswith(b"http://ns.adobe.com/xap/1.0/\0") and xmp is None:
            xmp = payload
        elif marker == 0xE0 and payload.startswith(b"JFIF\0") and len(payload) >= 12:
            kept.append(b"\xff\xe0\x00\x10" + payload[:12] + b"\0\0")  # its fields; no thumbnail
        elif marker == 0xEE and payload.startswith(b"Adobe") and len(payload) >= 12:
            kept.append(b"\xff\xee\x00\x0e" + payload[:12])  # version, flags and colour transform only
        elif marker in _TABLES or (marker == 0xE2 and payload.startswith(b"ICC_PROFILE\0")):
            kept.append(data[pos:end])
        # every other APPn, COM, and any marker T.81 reserves: dropped
        pos = end
    turn = orientation(exif, xmp)
    if turn != 1:  # after JFIF APP0 if there is one, which must come first
        at = 2 if not kept[1].startswith(b"\xff\xe0") else 3
        block = b"Exif\0\0" + orientation_exif(turn)
        kept[at:at] = [b"\xff\xe1" + struct.pack(">H", len(block) + 2) + block]
    while True:  # entropy-coded data; between scans (progressive) more tables and SOS segments
        found = _MARKER.search(data, pos)
        if found is None:
            raise _unreadable("jpeg truncated: no end of image")
        at = found.start()
        marker = data[at + 1]
        if marker == 0xD9:
            kept.append(data[pos:at + 2])  # anything after EOI (a phone's trailer, a second picture) is dropped
            break
        kept.append(data[pos:at])
        marker, end = _segment(data, at)
        if marker == 0xDA or marker in _TABLES or marker == 0xDC:
            kept.append(data[at:end])
        elif not (0xE0 <= marker <= 0xEF or marker == 0xFE):
            raise _unreadable("jpeg marker not allowed between scans")
        pos = end
    return Stripped(b"".join(kept), JPEG, *size)


# ---- PNG (ISO/IEC 15948, W3C PNG 3rd edition) ----------------------------------------------------

#: The chunks that draw the picture and give its colours; everything else (tEXt, zTXt, iTXt, eXIf, tIME,
#: pHYs, APNG frames, private chunks) is dropped. An APNG keeps its default image, as Pillow shows it.
_PNG_KEPT = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"bKGD"}
#: Bit depths each colour type allows.
_PNG_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}


def _png(data: bytes, max_pixels: int) -> Stripped:
    chunks: list[tuple[bytes, int, int]] = []  # (type, start, end) of every chunk, checked
    pos = 8
    while not chunks or chunks[-1][0] != b"IEND":  # anything after IEND is dropped
        if pos + 12 > len(data):
            raise _unreadable("png truncated: no IEND")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            raise _unreadable("png chunk past the end")
        if zlib.crc32(memoryview(data)[pos + 4:end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise _unreadable("png chunk CRC")
        if (kind == b"IHDR") != (not chunks):
            raise _unreadable("png without IHDR first, or with two")
        if not kind[0] & 0x20 and kind not in _PNG_KEPT:  # an unknown critical chunk: unreadable by spec
            raise _unreadable("png critical chunk unknown")
        chunks.append((kind, pos, end))
        pos = end
    _, start, _ = chunks[0]
    if struct.unpack_from(">I", data, start)[0] != 13:
        raise _unreadable("png IHDR of the wrong length")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", data, start + 8)
    if depth not in _PNG_DEPTHS.get(colour, ()) or compression or filtering or interlace > 1:
        raise _unreadable("png IHDR values")
    _checked(width, height, max_pixels)
    if not any(kind == b"IDAT" for kind, _, _ in chunks):
        raise _unreadable("png without image data")
    exif = next((data[start + 8:end - 4] for kind, start, end in chunks if kind == b"eXIf"), None)
    xmp = next((data[start + 8:end - 4] for kind, start, end in chunks
                if kind == b"iTXt" and data.startswith(b"XML:com.adobe.xmp\0", start + 8)), None)
    turn = orientation(exif, xmp)
    kept = [data[:8]]
    for kind, start, end in chunks:
        if kind == b"IDAT" and turn != 1:  # before the image data, where Pillow reads it at open
            kept.append(_png_chunk(b"eXIf", orientation_exif(turn)))
            turn = 1
        if kind in _PNG_KEPT:
            kept.append(data[start:end])
    return Stripped(b"".join(kept), PNG, width, height)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# ---- WebP (RIFF container, Google's WebP container specification) -------------------------------

#: VP8X flag bits (byte 0 of its payload) of the two metadata chunks.
_EXIF, _XMP = 0x08, 0x04
#: Chunks that carry the picture: image data, alpha, colour profile, animation. EXIF, XMP and unknown
#: chunks are dropped.
_WEBP_KEPT = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ICCP", b"ANIM", b"ANMF"}


def _webp(data: bytes, max_pixels: int) -> Stripped:
    riff = struct.unpack_from("<I", data, 4)[0]
    if riff + 8 > len(data) or riff < 4 + 8:
        raise _unreadable("webp truncated: RIFF size past the end")
    data = data[:riff + 8]  # anything after the RIFF chunk is not part of the file
    chunks: list[tuple[bytes, bytes]] = []
    pos = 12
    while pos < len(data):
        if pos + 8 > len(data):
            raise _unreadable("webp chunk header past the end")
        kind, length = struct.unpack_from("<4sI", data, pos)
        end = pos + 8 + length
        if end > len(data):
            raise _unreadable("webp chunk past the end")
        chunks.append((kind, data[pos + 8:end]))
        pos = end + (length & 1)
    if not chunks:
        raise _unreadable("webp without chunks")
    first, body = chunks[0]
    if first == b"VP8X":
        if len(body) < 10:
            raise _unreadable("webp VP8X short")
        width = 1 + int.from_bytes(body[4:7], "little")
        height = 1 + int.from_bytes(body[7:10], "little")
        if not any(kind in (b"VP8 ", b"VP8L", b"ANMF") for kind, _ in chunks):
            raise _unreadable("webp without image data")
    elif first == b"VP8 ":
        if len(body) < 10 or body[3:6] != b"\x9d\x01\x2a":
            raise _unreadable("webp VP8 frame header")
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", body, 6))
    elif first == b"VP8L":
        if len(body) < 5 or body[0] != 0x2F:
            raise _unreadable("webp VP8L header")
        bits = int.from_bytes(body[1:5], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    else:
        raise _unreadable("webp first chunk")
    _checked(width, height, max_pixels)
    if first != b"VP8X":  # a simple file has no metadata chunks to drop
        return Stripped(data, WEBP, width, height)
    exif = next((body for kind, body in chunks if kind == b"EXIF"), None)
    xmp = next((body for kind, body in chunks if kind == b"XMP "), None)
    turn = orientation(exif.removeprefix(b"Exif\0\0") if exif else None, xmp)
    flags = chunks[0][1][0] & ~(_EXIF | _XMP)
    out = [(kind, body) for kind, body in chunks[1:] if kind in _WEBP_KEPT and kind != b"VP8X"]
    if turn != 1:
        out.append((b"EXIF", orientation_exif(turn)))
        flags |= _EXIF
    vp8x = bytes([flags]) + chunks[0][1][1:]
    parts = [b"WEBP"] + [kind + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)
                         for kind, body in [(b"VP8X", vp8x), *out]]
    payload = b"".join(parts)
    return Stripped(b"RIFF" + struct.pack("<I", len(payload)) + payload, WEBP, width, height)
