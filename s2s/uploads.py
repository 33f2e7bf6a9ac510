"""Checking a submission: the contract's validation rules, each with its own error.

Everything a client can get wrong is answered here as an :class:`InputError`
carrying the HTTP status, a machine code and a sentence, before anything is queued.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re

from PIL import Image, UnidentifiedImageError

from s2s.catalog import Catalog
from s2s.queue import NewJob

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
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

    def to_json(self) -> dict:
        out = {"error": self.message, "code": self.code}
        if self.details:
            out["details"] = self.details
        return out


def _field_error(field: str, reason: str, code: str = "invalid_field", status: int = 400) -> InputError:
    return InputError(status, code, f"{field}: {reason}", {"field": field, "reason": reason})


def parse_body(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
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


def decode_image(value: str, *, max_bytes: int, max_pixels: int) -> tuple[bytes, str]:
    """Decode a data URL or bare base64 and prove it is a whole JPEG/PNG/WebP of the declared type."""
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
    compact = "".join(value.split())
    if len(compact) * 3 // 4 > max_bytes + 3:
        raise InputError(413, "image_too_large", f"The image is larger than {max_bytes} bytes.",
                         {"field": "originalImageBase64", "maxBytes": max_bytes})
    try:
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _field_error("originalImageBase64", "is not valid base64", code="invalid_base64") from None
    if len(data) > max_bytes:
        raise InputError(413, "image_too_large", f"The image is larger than {max_bytes} bytes.",
                         {"field": "originalImageBase64", "maxBytes": max_bytes})
    actual = _verify(data, max_pixels)
    if declared and declared != actual:
        raise _field_error("originalImageBase64", f"declared as {declared} but the bytes are {actual}",
                           code="image_type_mismatch")
    return data, actual


def _verify(data: bytes, max_pixels: int) -> str:
    try:
        with Image.open(io.BytesIO(data), formats=list(FORMATS)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(400, "image_too_many_pixels",
                                 f"The image is {width}x{height} pixels; at most {max_pixels} pixels are accepted.",
                                 {"field": "originalImageBase64", "maxPixels": max_pixels})
            kind = FORMATS[img.format]
            img.load()  # decode it all: a truncated or corrupt file fails here, not in a worker
    except InputError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit (2x MAX_IMAGE_PIXELS) fires before ours
        raise InputError(400, "image_too_many_pixels",
                         f"The image has far too many pixels; at most {max_pixels} pixels are accepted.",
                         {"field": "originalImageBase64", "maxPixels": max_pixels}) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise _field_error("originalImageBase64", "is not a readable JPEG, PNG or WebP image",
                           code="invalid_image") from None
    return kind


def build_job(data: dict, catalog: Catalog, *, max_bytes: int, max_pixels: int) -> NewJob:
    """All the rules, cheap ones first. Raises :class:`InputError`."""
    hero, theme, style, kind, image = check_fields(data, catalog)
    photo, photo_type = decode_image(image, max_bytes=max_bytes, max_pixels=max_pixels)
    return NewJob(hero_name=hero, theme_id=theme, style_key=style, kind=kind, photo=photo, photo_type=photo_type)
