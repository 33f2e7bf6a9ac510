"""Checking a submission: the contract's validation rules, each with its own error.

Everything a client can get wrong is answered here as an :class:`InputError`
carrying the HTTP status, a machine code and a sentence, before anything is queued.
The photo that passes leaves as :func:`prepare_photo` made it: upright, shrunk, re-encoded and
stripped of every metadata block, so the uploaded bytes are never stored or forwarded.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import re

from attrs import frozen
from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError

from s2s import shrinking
from s2s.catalog import Catalog
from s2s.job_requests import NewJob

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)(?P<params>(;[\w.+-]+=[\w.+-]+)*);base64,", re.I)
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
MAX_HERO_NAME = 64

#: One format for every prepared photo: JPEG suits photographs, both providers take it, and it is a
#: fraction of a PNG's size; a portrait's transparency means nothing to them, so it is flattened.
PHOTO_TYPE = "image/jpeg"
PHOTO_JPEG_QUALITY = 90
PHOTO_MAX_SIDE = shrinking.PHOTO_MAX_SIDE
_SRGB = ImageCms.createProfile("sRGB")

#: EXIF Orientation -> the turn that shows the photo upright. ImageOps.exif_transpose has the same
#: table but also rewrites the EXIF block, which fails on corrupt blocks; the block is dropped anyway.
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}

log = logging.getLogger("s2s.uploads")


class InputError(Exception):
    """A request the contract refuses: ``status`` and ``code`` for the machine, ``message`` for people."""

    def __init__(self, status: int, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def __reduce__(self):  # raised in a decode process, answered by the API process
        return type(self), (self.status, self.code, self.message, self.details)

    def to_json(self) -> dict:
        out = {"error": self.message, "code": self.code}
        if self.details:
            out["details"] = self.details
        return out


@frozen
class Submission:
    """A submit whose fields passed and whose photo is bytes, not yet decoded."""

    hero_name: str
    theme_id: str
    style_key: str
    kind: str
    photo: bytes
    declared_type: str | None
    webhook_url: str | None = None  # shape only here: where it may point is checked by s2s.webhooks.destinations


@frozen
class Photo:
    """The prepared copy of the child's photo: the only one stored and sent upstream."""

    data: bytes
    content_type: str


def _field_error(field: str, reason: str, code: str = "invalid_field", status: int = 400) -> InputError:
    return InputError(status, code, f"{field}: {reason}", {"field": field, "reason": reason})


def parse_body(body: bytes) -> dict:
    """The body as a JSON object; anything else, however malformed, is a 400 ``invalid_json``.

    Nesting too deep for the parser raises RecursionError (at about a thousand levels, from both the C
    and the pure-Python decoder), and an integer too long to convert raises ValueError: both are bad
    input, not a server error.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InputError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InputError(400, "invalid_json", "The request body must be a JSON object.")
    return data


def _choice(data: dict, field: str, options, default: str) -> str:
    value = data.get(field)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _field_error(field, "must be a string")
    if value not in options:
        raise _field_error(field, f"unknown value {value[:64]!r}; choose one of {', '.join(sorted(options))}",
                           code=f"unknown_{field}")
    return value


def check_fields(data: dict, catalog: Catalog) -> tuple[str, str, str, str, str]:
    """The cheap checks: (hero name, theme, style, kind, raw image string)."""
    hero = data.get("heroName")
    if hero is None:
        raise _field_error("heroName", "is required", code="missing_field")
    if not isinstance(hero, str):
        raise _field_error("heroName", "must be a string")
    hero = hero.strip()
    if not hero:
        raise _field_error("heroName", "must not be empty", code="missing_field")
    if len(hero) > MAX_HERO_NAME:
        raise _field_error("heroName", f"must be at most {MAX_HERO_NAME} characters")
    if any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 for c in hero):
        raise _field_error("heroName", "must not contain control characters")
    image = data.get("originalImageBase64")
    if image is None:
        raise _field_error("originalImageBase64", "is required", code="missing_field")
    if not isinstance(image, str):
        raise _field_error("originalImageBase64", "must be a string")
    if not image.strip():
        raise _field_error("originalImageBase64", "must not be empty", code="missing_field")
    theme = _choice(data, "themeId", catalog.themes, catalog.default_theme)
    style = _choice(data, "styleKey", catalog.styles, catalog.default_style)
    kind = _choice(data, "kind", catalog.kinds, catalog.default_kind)
    return hero, theme, style, kind, image


def prepare_photo(value: str, *, max_bytes: int, max_pixels: int) -> Photo:
    """Check the uploaded photo and make the one copy of it that is kept and sent upstream.

    A data URL or bare base64 of a whole JPEG/PNG/WebP of the declared type, refused with its own
    error otherwise; then upright (EXIF orientation applied), in sRGB (an embedded ICC profile
    converted, e.g. an iPhone's Display P3), alpha flattened onto white, the long side at most
    :data:`PHOTO_MAX_SIDE` (at least ``shrinking.PHOTO_MIN_SIDE`` when it was bigger), and re-encoded
    as a JPEG with no metadata at all: no EXIF (GPS,
    camera, time), XMP, ICC, comments or text chunks leave the API.
    """
    data, declared = _payload(value, max_bytes=max_bytes)
    return _photo(data, declared, max_pixels)


def _photo(data: bytes, declared: str | None, max_pixels: int) -> Photo:
    picture, actual, orientation = _decode(data, max_pixels)
    if declared and declared != actual:
        raise _field_error("originalImageBase64", f"declared as {declared} but the bytes are {actual}",
                           code="image_type_mismatch")
    return _clean_copy(picture, orientation)


def read_submission(chunks: list[bytes], catalog: Catalog, *, max_bytes: int) -> Submission:
    """The body as a :class:`Submission`: JSON, the cheap checks, the base64 decoded. The chunks are
    emptied, so the body is let go once parsed (callers run this off the IOLoop: 2 MB of JSON and
    base64 is several ms)."""
    data = parse_body(b"".join(chunks))
    chunks.clear()
    hero, theme, style, kind, image = check_fields(data, catalog)
    webhook_url = data.get("webhookUrl")
    if webhook_url is not None and not isinstance(webhook_url, str):
        raise _field_error("webhookUrl", "must be a string (a URL)")
    data.clear()
    photo, declared = _payload(image, max_bytes=max_bytes)
    return Submission(hero, theme, style, kind, photo, declared, webhook_url)


def decode_cost(data: bytes, max_pixels: int) -> int:
    """The bytes :func:`finish_job` will hold at most while decoding ``data``, from its header alone
    (no pixel is decoded; a photo over ``max_pixels`` is refused here): the decoded picture (a JPEG at
    its draft scale; Pillow keeps RGB in 4 bytes a pixel), a strip's conversions, and the small copies
    (reduced, resized, upright, sRGB, the JPEG written: at most PHOTO_MAX_SIDE a side)."""
    with _reading(max_pixels), _open(data, max_pixels) as img:
        shrinking.draft(img)  # JPEG: the scale it will be decoded at; no effect for PNG and WebP
        width, height = img.size
        per_pixel = 1 if img.mode in ("1", "L", "P") else 2 if img.mode.startswith("I;16") else 4
        factor = shrinking.reduction((width, height))
        averaged = img.mode in shrinking.AVERAGED and not img.has_transparency_data  # reduced as it is
        strip = 0 if factor == 1 or averaged else width * shrinking.STRIP_ROWS * factor * 16
    small_w, small_h = shrinking.reduced_size((width, height))
    return width * height * per_pixel + strip + small_w * small_h * 4 * (5 if factor == 1 else 4)


def read_and_prepare(chunks: list[bytes], catalog: Catalog, *, max_bytes: int, max_pixels: int,
                     room: int) -> NewJob | tuple[Submission, int]:
    """One trip to a decode process for the usual photo: read the body and, when decoding its photo
    needs at most ``room`` bytes (:func:`decode_cost`), the job; otherwise the submission and that cost,
    for the caller to find the room and :func:`finish_job` it."""
    submission = read_submission(chunks, catalog, max_bytes=max_bytes)
    cost = decode_cost(submission.photo, max_pixels)
    if cost > room:
        return submission, cost
    return finish_job(submission, max_pixels=max_pixels)


def finish_job(submission: Submission, *, max_pixels: int) -> NewJob:
    """Decode and prepare the photo of a read submission: the job to queue. Raises :class:`InputError`."""
    photo = _photo(submission.photo, submission.declared_type, max_pixels)
    return NewJob(hero_name=submission.hero_name, theme_id=submission.theme_id, style_key=submission.style_key,
                  kind=submission.kind, photo=photo.data, photo_type=photo.content_type,
                  webhook_url=submission.webhook_url)


def _payload(value: str, *, max_bytes: int) -> tuple[bytes, str | None]:
    """The bytes of a data URL or bare base64, and the type a data URL declares."""
    declared = None
    value = value.strip()
    match = _DATA_URL.match(value)
    if match:
        declared = _ALIASES.get(match["type"].lower(), match["type"].lower())
        if declared not in FORMATS.values():
            raise _field_error("originalImageBase64", f"type {declared} is not accepted; send JPEG, PNG or WebP",
                               code="unsupported_image_type")
        value = value[match.end():]
    elif value.startswith("data:"):
        raise _field_error("originalImageBase64", "a data URL must look like data:image/png;base64,...",
                           code="invalid_base64")
    too_large = InputError(413, "image_too_large", f"The image is larger than {max_bytes} bytes.",
                           {"field": "originalImageBase64", "maxBytes": max_bytes})
    if len(value) * 3 // 4 > max_bytes + 3 and len(value := "".join(value.split())) * 3 // 4 > max_bytes + 3:
        raise too_large
    try:  # the usual base64 has no whitespace: decoded as it is (a search for whitespace first costs 7 ms)
        data = _b64decode(value)
    except (binascii.Error, ValueError):
        try:  # line breaks (MIME) or spaces in it
            data = _b64decode("".join(value.split()))
        except (binascii.Error, ValueError):
            raise _field_error("originalImageBase64", "is not valid base64", code="invalid_base64") from None
    if len(data) > max_bytes:
        raise too_large
    return data, declared


def _b64decode(value: str) -> bytes:
    """Strict base64 (padding may be left off): binascii.Error or ValueError (not ASCII) otherwise."""
    return base64.b64decode(value.encode("ascii") + b"=" * (-len(value) % 4), validate=True)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The image with only its header read; its pixel count checked against ``max_pixels``."""
    img = Image.open(io.BytesIO(data), formats=list(FORMATS))
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise InputError(400, "image_too_many_pixels",
                         f"The image is {width}x{height} pixels; at most {max_pixels} pixels are accepted.",
                         {"field": "originalImageBase64", "maxPixels": max_pixels})
    return img


@contextlib.contextmanager
def _reading(max_pixels: int):
    """Pillow's errors as the contract's."""
    try:
        yield
    except InputError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit (2x MAX_IMAGE_PIXELS) fires before ours
        raise InputError(400, "image_too_many_pixels",
                         f"The image has far too many pixels; at most {max_pixels} pixels are accepted.",
                         {"field": "originalImageBase64", "maxPixels": max_pixels}) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise _field_error("originalImageBase64", "is not a readable JPEG, PNG or WebP image",
                           code="invalid_image") from None


def _decode(data: bytes, max_pixels: int) -> tuple[Image.Image, str, int]:
    """Decode it all (a truncated or corrupt file fails here, not in a worker) and shrink it
    (:mod:`s2s.shrinking`: a JPEG at 1/2..1/8 scale from the DCT, so never held at full size):
    (the picture opaque and at most PHOTO_MAX_SIDE, its format, its EXIF orientation)."""
    with _reading(max_pixels), _open(data, max_pixels) as img:
        kind = FORMATS[img.format]
        shrinking.draft(img)
        img.load()
        orientation = _orientation(img)
        return shrinking.shrink(img, _opaque), kind, orientation


def _opaque(picture: Image.Image) -> Image.Image:
    """L, RGB or CMYK: 16-bit grey scaled to 8 (Pillow clips), transparency flattened onto white."""
    if picture.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        picture = picture.convert("F").point(lambda v: v / 256).convert("L")
    if picture.has_transparency_data:
        rgba = picture.convert("RGBA")
        picture = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return picture if picture.mode in ("L", "RGB", "CMYK") else picture.convert("RGB")


def _clean_copy(picture: Image.Image, orientation: int) -> Photo:
    """Upright, sRGB, RGB, then a JPEG written from the pixels alone (``info`` emptied: Pillow would
    otherwise carry a JPEG comment over into the new file). Not ``optimize``d: that costs as much
    again as the encode for 8% fewer bytes."""
    turn = _UPRIGHT.get(orientation)
    info = picture.info
    picture = picture if turn is None else picture.transpose(turn)
    picture.info = info
    picture = _in_srgb(picture).convert("RGB")
    picture.info = {}
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=PHOTO_JPEG_QUALITY)
    return Photo(data=out.getvalue(), content_type=PHOTO_TYPE)


def _orientation(picture: Image.Image) -> int:
    """The EXIF (or XMP tiff:) Orientation. A block too corrupt to read shows the photo as stored,
    as most viewers do, rather than refusing it."""
    try:
        value = picture.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as exc:  # Pillow's EXIF parser raises struct, type and value errors alike
        log.info("photo EXIF unreadable, orientation ignored", extra={"error": repr(exc)[:200]})
        return 1
    return value if isinstance(value, int) else 1


def _in_srgb(picture: Image.Image) -> Image.Image:
    """Colours as the camera meant them: an embedded ICC profile converted to sRGB, which is what
    the providers assume once the profile is gone. A profile lcms cannot use is left out, noted."""
    icc = picture.info.get("icc_profile")
    if not icc:
        return picture
    try:  # the picture is L, RGB or CMYK (_opaque): a palette's colours were made RGB in that profile
        return ImageCms.profileToProfile(picture, ImageCms.ImageCmsProfile(io.BytesIO(icc)), _SRGB,
                                         outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        log.warning("photo colour profile unusable, colours kept as they are",
                    extra={"mode": picture.mode, "error": str(exc)})
        return picture

