"""The child's photo as it leaves intake and as it reaches the provider.

A phone photo carries its camera's EXIF (GPS position, time, device), XMP, comments and an
orientation flag; a PNG carries text chunks. The API keeps only what s2s.photo_intake strips the upload
to (its pixels as uploaded, no metadata but the orientation); the worker makes what the provider gets
(s2s.photo_prep): upright, sRGB, at most PHOTO_MAX_SIDE a side, a fresh JPEG. Each test submits through a
real API process (real redis-server, or the S3 fixture) and reads the photo where the queue keeps it and
where the fake upstream received it.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from PIL import ExifTags, Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from s2s.photo_prep import PHOTO_MAX_SIDE
from s2s.storage import job_blob
from tests.api_client import job, submit, wait_ended
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import data_url, http_json
from tests.test_job_blobs import storage_env
from tests.test_storage import s3_backend

PROVIDER_MAX_BYTES = 10 * 1024 * 1024  # DashScope's input limit, the smaller of the two providers'
SECRET = "52 31 12 N, Mia's school"  # written into every metadata block of the test photos
RED, BLUE = (230, 20, 20), (30, 60, 200)


# ---- photos as phones and editors write them -------------------------------------------------

def gps_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "PhoneCo"
    exif[ExifTags.Base.ImageDescription] = SECRET
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (13.0, 24.0, 36.0)
    return exif


def xmp() -> bytes:
    return (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description>' + SECRET.encode()
            + b"</dc:description></rdf:Description></rdf:RDF></x:xmpmeta>")


def marked(size: tuple[int, int]) -> Image.Image:
    """Blue, with a red block in the stored top-left corner: where it ends up shows the rotation."""
    img = Image.new("RGB", size, BLUE)
    ImageDraw.Draw(img).rectangle((0, 0, size[0] // 5, size[1] // 5), fill=RED)
    return img


def phone_jpeg(size: tuple[int, int] = (2400, 1800), orientation: int = 6) -> bytes:
    """Stored landscape with EXIF Orientation 6 (turn 90 degrees clockwise to view), GPS, XMP and a comment."""
    buf = io.BytesIO()
    marked(size).save(buf, format="JPEG", quality=95, exif=gps_exif(orientation), xmp=xmp(),
                      comment=SECRET.encode())
    return buf.getvalue()


def jpeg_with_corrupt_gps() -> bytes:
    """EXIF that Pillow reads but cannot write back: GPSLatitude's rationals filed under
    GPSDestLatitudeRef, an ASCII tag (as a buggy phone app might)."""
    raw = gps_exif(orientation=6).tobytes()
    order = ">" if raw[6:8] == b"MM" else "<"
    latitude, mislabelled = (struct.pack(f"{order}HHI", tag, 5, 3) for tag in (2, 19))  # type RATIONAL, count 3
    assert raw.count(latitude) == 1
    buf = io.BytesIO()
    marked((2400, 1800)).save(buf, format="JPEG", exif=raw.replace(latitude, mislabelled))
    return buf.getvalue()


def tagged_png() -> bytes:
    """RGBA with a transparent band, tEXt, zTXt and iTXt chunks and an eXIf chunk with GPS."""
    img = marked((600, 400)).convert("RGBA")
    ImageDraw.Draw(img).rectangle((0, 300, 599, 399), fill=(0, 0, 0, 0))
    info = PngInfo()
    info.add_text("Comment", SECRET)
    info.add_text("Location", SECRET, zip=True)
    info.add_itxt("XML:com.adobe.xmp", xmp().decode())
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, exif=gps_exif())
    return buf.getvalue()


def swapped_primaries_icc() -> bytes:
    """An ICC v2 RGB matrix/TRC profile whose red and green primaries are sRGB's green and red:
    a pixel stored as pure red in it is green to the eye, so dropping the profile would show."""

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + s15(x) + s15(y) + s15(z)

    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", 8) + b"swapped\0" + b"\0" * 8 + b"\0\0\0" + b"\0" * 67
    desc += b"\0" * (-len(desc) % 4)
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(0.3851, 0.7169, 0.0971)), (b"gXYZ", xyz(0.4361, 0.2225, 0.0139)),
            (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for sig, body in tags:
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"\0\0\0\0" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + xyz(0.9642, 1.0, 0.8249)[8:]
              + b"\0" * 48)
    assert len(header) == 128
    return header + table + data


def red_jpeg_in(icc: bytes) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(buf, format="JPEG", quality=95, icc_profile=icc)
    return buf.getvalue()


def tagged_webp() -> bytes:
    """An extended WebP (VP8X) with EXIF (GPS, Orientation 6) and XMP chunks."""
    buf = io.BytesIO()
    marked((640, 480)).save(buf, format="WEBP", exif=gps_exif(orientation=6), xmp=xmp())
    return buf.getvalue()


def turned_png() -> bytes:
    """An RGB PNG with an eXIf chunk saying Orientation 6 (and GPS), and a text chunk."""
    info = PngInfo()
    info.add_text("Comment", SECRET)
    buf = io.BytesIO()
    marked((640, 480)).save(buf, format="PNG", pnginfo=info, exif=gps_exif(orientation=6))
    return buf.getvalue()


def xmp_turned_jpeg() -> bytes:
    """No EXIF at all: the orientation (6) is in the XMP packet only, as some editors write it."""
    packet = xmp().replace(b"<rdf:Description ", b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
                                                 b'tiff:Orientation="6" ')
    buf = io.BytesIO()
    marked((800, 600)).save(buf, format="JPEG", quality=95, xmp=packet)
    return buf.getvalue()


def jpeg_with_broken_scan() -> bytes:
    """Every segment sound and whole, but the scan asks for Huffman tables the file never defines: only a
    decoder finds out."""
    data = bytearray(phone_jpeg((640, 480), orientation=1))
    sos = data.index(b"\xff\xda")
    for i in range(data[sos + 4]):
        data[sos + 6 + 2 * i] = 0x33
    return bytes(data)


# ---- reading what was kept and sent ----------------------------------------------------------

def stored_photo(stack, job_id: str) -> bytes:
    """The photo where the queue keeps it for the worker."""
    data = stack.redis.get(stack.keys.blob(job_blob(job_id, "photo")))  # Redis storage, the default
    assert data, f"no photo stored for job {job_id}"
    return data


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every segment before the image data: where APPn and COM blocks live."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    segments, pos = [], 2
    while True:
        assert data[pos] == 0xFF, f"no marker at {pos}"
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        segments.append((marker, data[pos + 4:pos + 2 + length]))
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return segments
        pos += 2 + length


def png_chunks(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        kinds.append(kind)
        pos += 12 + length
    return kinds


def webp_chunks(data: bytes) -> list[bytes]:
    kinds, pos = [], 12
    while pos < len(data):
        kind, length = struct.unpack("<4sI", data[pos:pos + 8])
        kinds.append(kind)
        pos += 8 + length + (length & 1)
    return kinds


def assert_stripped(data: bytes, mime: str, orientation: int = 1) -> Image.Image:
    """The kept photo: of the uploaded type, none of its metadata (no GPS, camera, XMP, comment or text),
    and an EXIF block with nothing but the orientation when that is not 1."""
    assert SECRET.encode() not in data and b"PhoneCo" not in data and b"xmpmeta" not in data
    img = Image.open(io.BytesIO(data))
    assert img.get_format_mimetype() == mime
    exif = img.getexif()
    assert dict(exif) == ({ExifTags.Base.Orientation: orientation} if orientation != 1 else {}), dict(exif)
    assert not exif.get_ifd(ExifTags.IFD.GPSInfo)
    if mime == "image/jpeg":
        app = [(m, p[:5]) for m, p in jpeg_segments(data) if 0xE0 <= m <= 0xEF or m == 0xFE]
        assert {a for a in app if a[0] != 0xE2} <= {(0xE0, b"JFIF\0"), (0xE1, b"Exif\0")}, app
    elif mime == "image/png":
        assert not {b"tEXt", b"zTXt", b"iTXt", b"tIME"} & set(png_chunks(data)), png_chunks(data)
    else:
        assert b"XMP " not in webp_chunks(data), webp_chunks(data)
    img.load()  # the pixels are all there
    return img


def assert_bare_jpeg(data: bytes) -> Image.Image:
    """A JPEG with nothing but pixels: JFIF APP0 is its only APPn segment, no COM, nothing Pillow reads as
    metadata; small enough for every provider."""
    segments = jpeg_segments(data)
    app = [(m, p[:5]) for m, p in segments if 0xE0 <= m <= 0xEF]
    assert app == [(0xE0, b"JFIF\0")], f"APPn segments left: {app}"
    assert 0xFE not in [m for m, _ in segments], "a JPEG comment was left"
    assert SECRET.encode() not in data and b"PhoneCo" not in data
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.mode == "RGB"
    assert not img.getexif() and not img.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert not {"exif", "xmp", "comment", "icc_profile", "adobe"} & img.info.keys(), img.info.keys()
    assert max(img.size) <= PHOTO_MAX_SIDE and len(data) <= PROVIDER_MAX_BYTES
    return img


def near(pixel, colour, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def assert_upright_and_shrunk(img: Image.Image) -> None:
    """The 2400x1800 photo shown turned clockwise is 1800x2400: 900x1200 once halved (the provider's copy's
    long side within PHOTO_MIN_SIDE..PHOTO_MAX_SIDE), its red corner top right."""
    assert img.size == (900, 1200), img.size
    w, h = img.size
    assert near(img.getpixel((w - 20, 20)), RED), img.getpixel((w - 20, 20))
    assert near(img.getpixel((20, 20)), BLUE) and near(img.getpixel((w - 20, h - 20)), BLUE)


def assert_upright(img: Image.Image, size: tuple[int, int]) -> None:
    """A photo stored landscape (red corner top left) and flagged Orientation 6 arrives portrait, red top right."""
    assert img.size == size, img.size
    assert near(img.getpixel((size[0] - 10, 10)), RED) and near(img.getpixel((10, 10)), BLUE)


def through_openai(stack, photo: bytes, mime: str, *, expect: str = "completed", **api_env) -> tuple[bytes, bytes]:
    """Submit, read the stored photo before any worker runs, then let a worker take it to the fake upstream:
    (stored, what the upstream received)."""
    with FakeOpenAI() as fake:
        url = stack.api(S2S_PROVIDER="openai", **api_env)
        job_id = submit(url, photo, mime)
        stored = stored_photo(stack, job_id)
        stack.worker(S2S_PROVIDER="openai", OPENAI_API_KEY=fake.key, OPENAI_BASE_URL=fake.base_url, **api_env)
        ended = wait_ended(url, job_id, timeout=60)
        assert ended["status"] == expect, ended
    (sent,) = fake.requests
    name, content_type, data = sent.files["image"]
    assert (name, content_type) == ("hero.jpg", "image/jpeg")
    return stored, data


# ---- the tests -------------------------------------------------------------------------------

def test_a_phone_photo_is_stored_without_gps_and_arrives_upstream_upright_small_and_bare(stack):
    """Stored as uploaded minus its metadata (the very same image data, still turned, flagged Orientation 6);
    the provider gets the worker's copy: upright, halved, a fresh JPEG."""
    photo = phone_jpeg()
    stored, sent = through_openai(stack, photo, "image/jpeg")
    assert assert_stripped(stored, "image/jpeg", orientation=6).size == (2400, 1800)
    scan = photo.index(b"\xff\xda")
    assert stored[stored.index(b"\xff\xda"):] == photo[scan:], "the pixels are kept losslessly"
    assert_upright_and_shrunk(assert_bare_jpeg(sent))


@pytest.mark.parametrize("photo, mime, orientation, upright", [
    (phone_jpeg((800, 600)), "image/jpeg", 6, (600, 800)),
    (tagged_png(), "image/png", 1, (600, 400)),
    (turned_png(), "image/png", 6, (480, 640)),
    (tagged_webp(), "image/webp", 6, (480, 640)),
    (xmp_turned_jpeg(), "image/jpeg", 6, (600, 800)),
], ids=["jpeg-exif-gps-xmp-comment", "png-text-chunks-exif-alpha", "png-exif-orientation", "webp-exif-xmp",
        "jpeg-xmp-orientation-only"])
def test_the_stored_photo_keeps_no_metadata_and_the_provider_gets_it_upright(stack, photo, mime, orientation,
                                                                             upright):
    assert SECRET.encode() in photo  # the upload really carries it (tEXt, EXIF and XMP are plain text)
    stored, sent = through_openai(stack, photo, mime)
    assert_stripped(stored, mime, orientation)
    img = assert_bare_jpeg(sent)
    if mime == "image/png" and orientation == 1:
        assert img.size == (600, 400), "a photo within the limit keeps its size"
        assert near(img.getpixel((20, 20)), RED) and near(img.getpixel((300, 200)), BLUE)
        assert near(img.getpixel((300, 380)), (255, 255, 255), 8), "transparency is flattened onto white"
    else:
        assert_upright(img, upright)


@pytest.mark.parametrize("photo, mime, orientation", [
    (phone_jpeg((800, 600)), "image/jpeg", 6), (tagged_png(), "image/png", 1), (tagged_webp(), "image/webp", 6),
], ids=["jpeg", "png", "webp"])
def test_the_photo_is_stripped_in_s3_storage_too(stack, s3_server, settings, photo, mime, orientation):
    backend = s3_backend(settings, s3_server)
    url = stack.api(**storage_env(backend))
    job_id = submit(url, photo, mime)
    stored = backend.run(lambda store: store.get(f"jobs/{job_id}/photo"))
    assert_stripped(stored, mime, orientation)
    assert job(url, job_id)["status"] == "queued"


def test_a_local_provider_draws_from_the_prepared_photo(stack):
    url = stack.api()
    job_id = submit(url, tagged_png(), "image/png")
    stack.worker(S2S_PROVIDER="local")
    assert wait_ended(url, job_id, timeout=60)["status"] == "completed"


def test_a_photo_with_a_corrupt_exif_block_is_accepted_and_arrives_upright(stack):
    stored, sent = through_openai(stack, jpeg_with_corrupt_gps(), "image/jpeg")
    assert_stripped(stored, "image/jpeg", orientation=6)
    assert_upright_and_shrunk(assert_bare_jpeg(sent))


def test_an_embedded_colour_profile_is_kept_then_converted_to_srgb_not_dropped(stack):
    """Stored red in a profile whose red is sRGB's green: the provider's copy shows green."""
    stored, sent = through_openai(stack, red_jpeg_in(swapped_primaries_icc()), "image/jpeg")
    assert Image.open(io.BytesIO(stored)).info.get("icc_profile") == swapped_primaries_icc()
    r, g, b = assert_bare_jpeg(sent).getpixel((32, 24))
    assert g > 200 and r < 80 and b < 80, (r, g, b)


def test_a_photo_with_nothing_to_strip_is_stored_as_it_is_and_re_encoded_for_the_provider(stack):
    source = io.BytesIO()
    marked((320, 400)).save(source, format="WEBP")
    stored, sent = through_openai(stack, source.getvalue(), "image/webp")
    assert stored == source.getvalue()
    img = assert_bare_jpeg(sent)
    assert img.size == (320, 400) and near(img.getpixel((10, 10)), RED)


def test_a_photo_that_does_not_decode_fails_its_job_without_an_upstream_call(stack):
    """Sound in structure (so taken at submit) but unreadable to a decoder: the worker finds out before the
    provider is called, and the job fails for good with what went wrong; no paid picture is asked for."""
    with FakeOpenAI() as fake:
        url = stack.api(S2S_PROVIDER="openai")
        job_id = submit(url, jpeg_with_broken_scan())
        stack.worker(S2S_PROVIDER="openai", OPENAI_API_KEY=fake.key, OPENAI_BASE_URL=fake.base_url)
        ended = wait_ended(url, job_id)
    assert (ended["status"], ended["errorCode"]) == ("failed", "invalid_image"), ended
    assert "could not be read" in ended["error"]
    assert ended["upstreamCalls"] == 0 and ended["attempts"] == 1, ended
    assert fake.requests == []


def half_transparent_png(size: tuple[int, int]) -> bytes:
    """RGBA: red on the left half, fully transparent (with black behind it) on the right."""
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle((0, 0, size[0] // 2 - 1, size[1]), fill=(*RED, 255))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("photo, mime, size", [
    (phone_jpeg((4032, 3024), orientation=1), "image/jpeg", (1008, 756)),  # a phone's 12 MP: decoded at 1/4
    (half_transparent_png((5000, 2500)), "image/png", (1000, 500)),  # box-averaged by 5, strip by strip
    (phone_jpeg((1700, 1000), orientation=1), "image/jpeg", (1536, 904)),  # too small to halve: resized
], ids=["jpeg-12mp", "png-rgba-12mp", "jpeg-1700px"])
def test_a_big_photo_reaches_the_provider_between_the_min_and_max_side(stack, photo, mime, size):
    """The provider's copy's long side lands within PHOTO_MIN_SIDE..PHOTO_MAX_SIDE, so the shrink is an
    integer factor (cheap) wherever one fits; colours and transparency (flattened onto white) survive it."""
    _, sent = through_openai(stack, photo, mime)
    img = assert_bare_jpeg(sent)
    assert img.size == size
    w, h = img.size
    assert near(img.getpixel((20, 20)), RED)
    colour = (255, 255, 255) if mime == "image/png" else BLUE
    assert near(img.getpixel((w - 20, h - 20)), colour, 8 if mime == "image/png" else 40)
    assert near(img.getpixel((w // 2 - 3, h // 2)), RED if mime == "image/png" else BLUE), "no dark seam at the edge"


def webp_photo() -> bytes:
    buf = io.BytesIO()
    marked((640, 480)).save(buf, format="WEBP", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("photo, mime", [
    (phone_jpeg((800, 600)), "image/jpeg"), (tagged_png(), "image/png"), (webp_photo(), "image/webp"),
    (tagged_webp(), "image/webp")], ids=["jpeg", "png", "webp", "webp-extended"])
@pytest.mark.parametrize("keep", [0.5, 0.98], ids=["half", "all-but-the-end"])
def test_a_truncated_photo_is_refused_at_submit_and_nothing_is_queued(stack, photo, mime, keep):
    url = stack.api()
    body = json.dumps({"heroName": "Mia", "originalImageBase64": data_url(photo[:int(len(photo) * keep)], mime)})
    status, _, raw = http_json("POST", url + "/api/jobs/generate-image", body.encode(),
                               {"Content-Type": "application/json"})
    answer = json.loads(raw)
    assert (status, answer["code"], answer["details"]["field"]) == (400, "invalid_image", "originalImageBase64")
    assert answer["error"] == "originalImageBase64: is not a readable JPEG, PNG or WebP image"
    assert stack.redis.llen(stack.keys.waiting) == 0


def progressive_jpeg_with_hidden_text() -> bytes:
    """A progressive JPEG (tables and scans between scans) with a comment and an APP1 block slipped in
    after its first scan, and a trailer after its end (phones append a second picture or their own data)."""
    buf = io.BytesIO()
    marked((640, 480)).save(buf, format="JPEG", progressive=True)
    data = buf.getvalue()
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    comment = b"\xff\xfe" + struct.pack(">H", len(SECRET) + 2) + SECRET.encode()
    app1 = b"\xff\xe1" + struct.pack(">H", len(SECRET) + 8) + b"Exif\0\0" + SECRET.encode()
    return data[:second_scan] + comment + app1 + data[second_scan:] + SECRET.encode() * 4


def test_blocks_between_scans_and_after_the_end_are_dropped_and_the_scans_kept(stack):
    photo = progressive_jpeg_with_hidden_text()
    stored, sent = through_openai(stack, photo, "image/jpeg")
    assert SECRET.encode() not in stored
    assert stored.count(b"\xff\xda") == photo.count(b"\xff\xda") > 2, "every scan of the progressive JPEG kept"
    assert stored.endswith(b"\xff\xd9")
    assert assert_stripped(stored, "image/jpeg").size == (640, 480)
    img = assert_bare_jpeg(sent)
    assert img.size == (640, 480) and near(img.getpixel((10, 10)), RED) and near(img.getpixel((630, 470)), BLUE)


def _edited(data: bytes, at: bytes, offset: int, new: bytes) -> bytes:
    """``data`` with ``new`` written ``offset`` bytes after the first ``at``."""
    pos = data.index(at) + offset
    return data[:pos] + new + data[pos + len(new):]


def _small_jpeg() -> bytes:
    return phone_jpeg((64, 48), orientation=1)


def _small_png() -> bytes:
    buf = io.BytesIO()
    marked((64, 48)).save(buf, format="PNG")
    return buf.getvalue()


def _png_with_chunk(kind: bytes) -> bytes:
    data = _small_png()
    body = b"x" * 8
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    at = data.index(b"IDAT") - 4
    return data[:at] + chunk + data[at:]


REFUSED = [  # (id, bytes, type, code): each refused from its structure or header alone, nothing decoded
    ("jpeg-arithmetic-coded", _edited(_small_jpeg(), b"\xff\xc0", 1, b"\xc9"), "image/jpeg", "invalid_image"),
    ("jpeg-lossless", _edited(_small_jpeg(), b"\xff\xc0", 1, b"\xc3"), "image/jpeg", "invalid_image"),
    ("jpeg-segment-past-the-end", _edited(_small_jpeg(), b"\xff\xdb", 2, b"\xff\xf0"), "image/jpeg",
     "invalid_image"),
    ("jpeg-no-frame-header", _edited(_small_jpeg(), b"\xff\xc0", 1, b"\xfe"), "image/jpeg", "invalid_image"),
    ("jpeg-8000x8000-by-its-header", _edited(_small_jpeg(), b"\xff\xc0", 5, struct.pack(">HH", 8000, 8000)),
     "image/jpeg", "image_too_many_pixels"),
    ("png-bad-crc", _edited(_small_png(), b"IDAT", 6, b"\x00\x00"), "image/png", "invalid_image"),
    ("png-unknown-critical-chunk", _png_with_chunk(b"ABCD"), "image/png", "invalid_image"),
    ("png-bad-bit-depth", _edited(_small_png(), b"IHDR", 12, b"\x03"), "image/png", "invalid_image"),
    ("webp-riff-size-past-the-end", _edited(tagged_webp(), b"RIFF", 4, b"\xff\xff\xff\x00"), "image/webp",
     "invalid_image"),
    ("webp-8000x8000-by-its-header", _edited(tagged_webp(), b"VP8X", 12, (7999).to_bytes(3, "little") * 2),
     "image/webp", "image_too_many_pixels"),
]


@pytest.mark.parametrize("photo, mime, code", [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_a_photo_broken_in_structure_or_too_big_by_its_header_is_refused_at_submit(stack, photo, mime, code):
    url = stack.api()
    body = json.dumps({"heroName": "Mia", "originalImageBase64": data_url(photo, mime)})
    status, _, raw = http_json("POST", url + "/api/jobs/generate-image", body.encode(),
                               {"Content-Type": "application/json"})
    answer = json.loads(raw)
    assert (status, answer["code"], answer["details"]["field"]) == (400, code, "originalImageBase64"), answer
    assert stack.redis.llen(stack.keys.waiting) == 0
