"""Shrinking an uploaded photo to the kept size cheaply, holding the full-size picture once at most.

The kept copy's long side lands anywhere between :data:`PHOTO_MIN_SIDE` and :data:`PHOTO_MAX_SIDE`:
that room lets the shrink be an integer factor, which is nearly free. A JPEG is decoded at 1/2, 1/4
or 1/8 scale straight from its DCT (``draft``: a 4000x3000 phone photo decodes at 1000x750 in a few
ms, against 27 ms at 1/2 plus 40 ms of LANCZOS to 1536 px); any other picture is box-averaged by an
integer factor (``Image.reduce``), strip by strip, with every mode conversion (palette, 16 bit,
transparency onto white) done on a strip, so no second full-size copy is ever made. A resize is left
only for a photo between the two sides' worth of factor (at most 1.25x, cheap at that size).
"""

from __future__ import annotations

from PIL import Image

#: The long side of the photo that is kept and sent upstream, at most. The providers draw at most 1536 px
#: a side (OpenAI 1024x1536, Qwen's configured 1536*1024) and accept up to 3072 (Qwen) and 10 MB: more
#: input pixels only cost memory, Redis and upload time.
PHOTO_MAX_SIDE = 1536
#: ... and at least, when the photo is bigger: Qwen takes 384-3072 px a side; OpenAI's image models read an
#: input image in 512 px tiles at about 1024 px, and the local renderer frames it in a 512x768 canvas.
#: A phone's 4000x3000 or 4032x3024 photo lands at 1000x750 or 1008x756 (JPEG at 1/4 scale).
PHOTO_MIN_SIDE = 960
#: Rows of the full-size picture converted and reduced at once (times the factor): a few MB a strip.
STRIP_ROWS = 16
_BICUBIC = Image.Resampling.BICUBIC
#: Modes Image.reduce averages as they are (no transparency to weigh, no palette indices).
AVERAGED = {"L", "RGB", "CMYK"}


def reduction(size: tuple[int, int]) -> int:
    """The integer factor a photo of ``size`` is shrunk by first: the largest that keeps its long side at
    least PHOTO_MIN_SIDE; 1 when it is small enough as it is."""
    longest = max(size)
    return 1 if longest <= PHOTO_MAX_SIDE else max(1, longest // PHOTO_MIN_SIDE)


def fitted(size: tuple[int, int]) -> tuple[int, int] | None:
    """The size a picture of ``size`` is resized to at the end, or None when its long side is within bounds."""
    width, height = size
    scale = PHOTO_MAX_SIDE / max(width, height)
    return None if scale >= 1 else (max(1, round(width * scale)), max(1, round(height * scale)))


def draft(img: Image.Image) -> None:
    """A JPEG's decode scale set (header only, before any pixel is decoded): the largest of 1/2, 1/4, 1/8
    within :func:`reduction`. No effect on PNG and WebP."""
    factor = reduction(img.size)
    if factor > 1:
        width, height = img.size
        img.draft(None, (max(1, width // factor), max(1, height // factor)))


def reduced_size(size: tuple[int, int]) -> tuple[int, int]:
    factor = reduction(size)
    return -(-size[0] // factor), -(-size[1] // factor)


def shrink(img: Image.Image, normalise) -> Image.Image:
    """``img`` (decoded, JPEG already at its draft scale) normalised by ``normalise`` (a picture -> an L,
    RGB or CMYK one, or as it is) and shrunk to at most PHOTO_MAX_SIDE. Of its ``info`` only the colour
    profile is kept, for the sRGB conversion that follows."""
    factor = reduction(img.size)
    if factor == 1:
        small = normalise(img)
    elif img.mode in AVERAGED and not img.has_transparency_data:  # nothing to convert (an RGB tRNS key is)
        small = img.reduce(factor)
    else:
        small = _reduce_in_strips(img, factor, normalise)
    size = fitted(small.size)
    if size is not None:
        small = small.resize(size, _BICUBIC)
    small.info = {"icc_profile": img.info["icc_profile"]} if img.info.get("icc_profile") else {}
    return small


def _reduce_in_strips(img: Image.Image, factor: int, normalise) -> Image.Image:
    rows = STRIP_ROWS * factor
    width, height = img.size
    out = None
    for top in range(0, height, rows):
        strip = normalise(img.crop((0, top, width, min(height, top + rows))))
        small = strip.reduce(factor) if strip.mode in AVERAGED else strip.resize(
            (-(-width // factor), -(-strip.height // factor)), Image.Resampling.BOX)
        if out is None:
            out = Image.new(small.mode, reduced_size(img.size))
        out.paste(small, (0, top // factor))
    return out
