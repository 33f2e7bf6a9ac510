"""The photo a provider receives, made by the worker right before the call.

The API keeps the upload as :mod:`s2s.photo_intake` stripped it: checked from its structure, its
metadata gone, its pixels as uploaded. Here it is decoded and made what both providers want: upright
(its EXIF orientation applied), in sRGB (an embedded ICC profile converted, e.g. an iPhone's Display
P3), alpha flattened onto white, the long side at most :data:`PHOTO_MAX_SIDE` (at least
``shrinking.PHOTO_MIN_SIDE`` when it was bigger; :mod:`s2s.shrinking`), re-encoded as a JPEG with no
metadata at all. A photo that does not decode (corrupt image data behind a sound structure) fails
its job before any upstream call.

Decoding runs in a thread (Pillow releases the GIL while it decodes, shrinks and encodes), within a
per-process byte budget (``S2S_DECODE_MEMORY_MB``) reserved from the header before any pixel is decoded:
fifty slots each holding a 36 MP PNG decode a few at a time, not all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import io
import logging

from attrs import frozen
from PIL import Image, ImageCms

from s2s import photo_intake, shrinking
from s2s.byte_budget import ByteBudget

FORMATS = ["JPEG", "PNG", "WEBP"]
#: One format for every prepared photo: JPEG suits photographs, both providers take it, and it is a
#: fraction of a PNG's size; a portrait's transparency means nothing to them, so it is flattened.
PHOTO_TYPE = "image/jpeg"
PHOTO_JPEG_QUALITY = 90
PHOTO_MAX_SIDE = shrinking.PHOTO_MAX_SIDE
#: A photo this small to decode is prepared on the loop: a thread's hop would cost more than it.
INLINE_COST = 1024 * 1024
#: The longest a job waits for decode room before it is given back to the queue (retryable).
ROOM_WAIT_S = 300.0
_SRGB = ImageCms.createProfile("sRGB")
#: glibc's mallopt parameter for the size from which an allocation is its own mmap.
_M_MMAP_THRESHOLD = -3

#: EXIF Orientation -> the turn that shows the photo upright. ImageOps.exif_transpose has the same
#: table but also rewrites the EXIF block, which fails on corrupt blocks; the block is dropped anyway.
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}

log = logging.getLogger("s2s.photo_prep")


class PrepFailed(Exception):
    """The photo could not be prepared: what the job's failure says (``code``, ``message`` for a parent,
    ``detail`` for operators) and whether another attempt may do better."""

    code = "internal_error"
    message = "Something went wrong while preparing the photo."
    retryable = True

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class UnreadablePhoto(PrepFailed):
    """The stored photo cannot be decoded: the job fails without an upstream call (the same bytes fail again)."""

    code = "invalid_image"
    message = "The photo could not be read; please upload it again or choose another."
    retryable = False


class NoRoom(PrepFailed):
    """No decode room came within ROOM_WAIT_S: the job goes back to the queue."""

    code = "worker_busy"
    message = "The worker is busy preparing other photos."


@frozen
class Prepared:
    data: bytes
    content_type: str


class PhotoPrep:
    """One per worker process: prepares each job's photo within the process's decode budget."""

    def __init__(self, memory_bytes: int, max_pixels: int, wait_s: float = ROOM_WAIT_S):
        self.budget = ByteBudget(memory_bytes)
        self.max_pixels = max_pixels
        self.wait_s = wait_s
        _big_blocks_mapped()

    async def prepare(self, data: bytes) -> Prepared:
        """``data`` (JPEG, PNG or WebP) as the provider gets it. Raises :class:`UnreadablePhoto` or :class:`NoRoom`."""
        with _reading():
            cost = decode_cost(data, self.max_pixels)
        if cost <= INLINE_COST:
            return prepare_now(data, self.max_pixels)
        try:
            taken = await self.budget.take(cost, self.wait_s)
        except TimeoutError:
            raise NoRoom(f"no room to decode the photo within {self.wait_s:.0f} s") from None
        decoding = asyncio.ensure_future(asyncio.to_thread(prepare_now, data, self.max_pixels))
        # the room is given back when the thread is done, even if the job is cancelled before (a thread runs on)
        decoding.add_done_callback(lambda done: (self.budget.give_back(taken), done.cancelled() or done.exception()))
        return await asyncio.shield(decoding)


def _big_blocks_mapped() -> None:
    """Pillow's image blocks (16 MB) each their own mmap, so a decode's memory goes back to the system when
    it ends. Otherwise glibc raises its mmap threshold after the first such block is freed, later blocks
    come from the arena of whichever thread decoded them, and each thread's arena keeps its last picture:
    two threads held 316 MB where one picture needs 160 (tests/test_upload_memory.py). A no-op off glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1024 * 1024)
    except (OSError, AttributeError):
        pass


def prepare_now(data: bytes, max_pixels: int) -> Prepared:
    """Decode ``data`` and make the provider's copy (see the module docstring), in the calling thread."""
    with _reading():
        picture, orientation = _decode(data, max_pixels)
    return _clean_copy(picture, orientation)


@contextlib.contextmanager
def _reading():
    """Pillow's errors (a truncated or corrupt image, its own pixel limit) as :class:`UnreadablePhoto`."""
    try:
        yield
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadablePhoto(f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The image with only its header read; its pixel count checked (again: intake did) against ``max_pixels``."""
    img = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ValueError(f"{width}x{height} pixels, over {max_pixels}")
    return img


def decode_cost(data: bytes, max_pixels: int) -> int:
    """The bytes :func:`prepare_now` holds at most while decoding ``data``, from its header alone: the
    decoded picture (a JPEG at its draft scale; Pillow keeps RGB in 4 bytes a pixel), a strip's
    conversions, and the small copies (reduced, resized, upright, sRGB, the JPEG written: at most
    PHOTO_MAX_SIDE a side)."""
    with _open(data, max_pixels) as img:
        shrinking.draft(img)  # JPEG: the scale it will be decoded at; no effect for PNG and WebP
        width, height = img.size
        per_pixel = 1 if img.mode in ("1", "L", "P") else 2 if img.mode.startswith("I;16") else 4
        factor = shrinking.reduction((width, height))
        averaged = img.mode in shrinking.AVERAGED and not img.has_transparency_data  # reduced as it is
        strip = 0 if factor == 1 or averaged else width * shrinking.STRIP_ROWS * factor * 16
    small_w, small_h = shrinking.reduced_size((width, height))
    return width * height * per_pixel + strip + small_w * small_h * 4 * (5 if factor == 1 else 4)


def _decode(data: bytes, max_pixels: int) -> tuple[Image.Image, int]:
    """Decode it all and shrink it (:mod:`s2s.shrinking`: a JPEG at 1/2..1/8 scale from the DCT, so never
    held at full size): (the picture opaque and at most PHOTO_MAX_SIDE, its EXIF orientation)."""
    with _open(data, max_pixels) as img:
        shrinking.draft(img)
        img.load()
        orientation = _orientation(img)
        return shrinking.shrink(img, _opaque), orientation


def _opaque(picture: Image.Image) -> Image.Image:
    """L, RGB or CMYK: 16-bit grey scaled to 8 (Pillow clips), transparency flattened onto white."""
    if picture.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        picture = picture.convert("F").point(lambda v: v / 256).convert("L")
    if picture.has_transparency_data:
        rgba = picture.convert("RGBA")
        picture = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return picture if picture.mode in ("L", "RGB", "CMYK") else picture.convert("RGB")


def _clean_copy(picture: Image.Image, orientation: int) -> Prepared:
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
    return Prepared(data=out.getvalue(), content_type=PHOTO_TYPE)


def _orientation(picture: Image.Image) -> int:
    """The stored photo's Orientation, read as intake read it (:func:`s2s.photo_intake.orientation`: intake
    kept it as an EXIF block holding only that tag)."""
    return photo_intake.orientation(picture.info.get("exif"), None)


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
