"""Checking a submission: the contract's validation rules, each with its own error.

Everything a client can get wrong is answered here as an :class:`InputError`
carrying the HTTP status, a machine code and a sentence, before anything is queued.
The photo that passes is checked from its structure and stripped of its metadata losslessly
(:mod:`s2s.photo_intake`: no pixel is decoded here); the worker decodes it (:mod:`s2s.photo_prep`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from attrs import frozen

from s2s import photo_intake
from s2s.catalog import Catalog
from s2s.job_requests import NewJob

FORMATS = (photo_intake.JPEG, photo_intake.PNG, photo_intake.WEBP)
_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)(?P<params>(;[\w.+-]+=[\w.+-]+)*);base64,", re.I)
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
MAX_HERO_NAME = 64


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
class Photo:
    """The child's photo as kept: the upload stripped of its metadata (s2s.photo_intake), of its own type."""

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
    """Check the uploaded photo and make the one copy of it that is kept.

    A data URL or bare base64 of a whole JPEG/PNG/WebP of the declared type, refused with its own
    error otherwise (a truncated file, one over ``max_pixels`` from its header); kept with its pixels as
    uploaded and none of its metadata (:mod:`s2s.photo_intake`): no EXIF (GPS, camera, time) beyond
    the orientation, no XMP, comments or text chunks are stored.
    """
    data, declared = _payload(value, max_bytes=max_bytes)
    try:
        kept = photo_intake.strip(data, max_pixels)
    except photo_intake.BadPhoto as exc:
        if exc.code == "image_too_many_pixels":
            raise InputError(400, exc.code, f"{exc.reason[0].upper()}{exc.reason[1:]}.",
                             {"field": "originalImageBase64", "maxPixels": max_pixels}) from None
        raise _field_error("originalImageBase64", exc.reason, code=exc.code) from None
    if declared and declared != kept.content_type:
        raise _field_error("originalImageBase64", f"declared as {declared} but the bytes are {kept.content_type}",
                           code="image_type_mismatch")
    return Photo(kept.data, kept.content_type)


def read_job(chunks: list[bytes], catalog: Catalog, *, max_bytes: int, max_pixels: int) -> NewJob:
    """The body as the job to queue: JSON, the cheap checks, the photo decoded from base64, checked and
    stripped. The chunks are emptied, so the body is let go once parsed (callers run this off the
    IOLoop: 2 MB of JSON and base64 is several ms). Raises :class:`InputError`."""
    data = parse_body(b"".join(chunks))
    chunks.clear()
    hero, theme, style, kind, image = check_fields(data, catalog)
    webhook_url = data.get("webhookUrl")
    if webhook_url is not None and not isinstance(webhook_url, str):
        raise _field_error("webhookUrl", "must be a string (a URL)")
    data.clear()
    photo = prepare_photo(image, max_bytes=max_bytes, max_pixels=max_pixels)
    return NewJob(hero_name=hero, theme_id=theme, style_key=style, kind=kind, photo=photo.data,
                  photo_type=photo.content_type, webhook_url=webhook_url)


def _payload(value: str, *, max_bytes: int) -> tuple[bytes, str | None]:
    """The bytes of a data URL or bare base64, and the type a data URL declares."""
    declared = None
    value = value.strip()
    match = _DATA_URL.match(value)
    if match:
        declared = _ALIASES.get(match["type"].lower(), match["type"].lower())
        if declared not in FORMATS:
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
