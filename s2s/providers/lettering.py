"""The cover's title, lettered by Pillow's built-in font: folded to what it can draw, wrapped, fitted.

Apart from the painting (:mod:`s2s.providers.local`) because it is about text, not pictures: a
hero's name may hold any character a parent types, and the title must still fit its box.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont, ImageStat

# ---- text -------------------------------------------------------------------------------------
_FOLD = str.maketrans({"ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d",
                       "Đ": "D", "œ": "oe", "Œ": "OE", "ı": "i", "þ": "th", "Þ": "Th"})


@lru_cache(maxsize=4096)
def _has_glyph(ch: str) -> bool:
    font = ImageFont.load_default(size=20)
    return bytes(font.getmask(ch)) != bytes(font.getmask("\U0010fffd"))


def drawable(text: str) -> str:
    """What the built-in font (ASCII only) can draw: controls and joiners go, accents fold (Zoë -> Zoe);
    letters with no ASCII fallback (CJK, emoji) stay and are drawn as boxes, keeping the name's shape."""
    out = []
    for ch in unicodedata.normalize("NFC", text):
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif _has_glyph(ch):
            out.append(ch)
        elif unicodedata.category(ch) not in ("Cf", "Cs", "Co", "Cn", "Mn", "Me"):
            folded = "".join(c for c in unicodedata.normalize("NFKD", ch.translate(_FOLD))
                             if not unicodedata.combining(c))
            out.append(folded if folded and all(_has_glyph(c) for c in folded) else ch)
    return " ".join("".join(out).split())


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy word wrap; a word wider than the line (a 64-letter name) is cut between letters."""
    lines: list[str] = []
    for word in text.split():
        while font.getlength(word) > width and len(word) > 1:
            cut = max(1, next((i for i in range(len(word), 0, -1) if font.getlength(word[:i]) <= width), 1))
            lines.append(word[:cut])
            word = word[cut:]
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _fit(text: str, width: float, height: float, largest: int, max_lines: int):
    """The largest font size (shrinking) at which ``text`` wraps into the box."""
    size = largest
    while True:
        font = ImageFont.load_default(size=size)
        lines = _wrap(text, font, width)
        if (len(lines) <= max_lines and len(lines) * size * 1.15 <= height) or size <= 10:
            return font, lines[:max_lines - 1] + [lines[max_lines - 1] + "\u2026"] if len(lines) > max_lines else lines
        size = max(10, int(size * 0.9))


def write_title(img: Image.Image, box: tuple[int, int, int, int], title: str, subtitle: str) -> None:
    """Centre the title (and a smaller subtitle under it) in ``box``, in ink that contrasts with it."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    dark = ImageStat.Stat(img.crop(box).convert("L")).mean[0] < 140
    ink, edge = ((255, 251, 240), (40, 28, 30)) if dark else ((40, 28, 30), (255, 251, 240))
    sub_h = bh * 0.2 if subtitle else 0
    font, lines = _fit(title, bw * 0.88, bh * 0.82 - sub_h, max(12, round(bh * (0.36 if subtitle else 0.6))), 4)
    step = font.size * 1.15
    y = y0 + (bh - sub_h - step * len(lines)) / 2 + step * 0.08
    draw = ImageDraw.Draw(img)
    for line in lines:
        draw.text(((x0 + x1) / 2, y), line, font=font, fill=ink, anchor="ma",
                  stroke_width=max(1, font.size // 16), stroke_fill=edge)
        y += step
    if subtitle:
        small, sub = _fit(subtitle, bw * 0.8, sub_h, max(10, min(font.size, round(sub_h * 0.8))), 1)
        draw.text(((x0 + x1) / 2, y1 - sub_h * 1.05), sub[0], font=small, fill=ink, anchor="ma",
                  stroke_width=1, stroke_fill=edge)


# ---- provider ---------------------------------------------------------------------------------
