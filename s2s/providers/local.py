"""The offline provider: Pillow paints the child's photo into a storybook picture, no network, no model.

The theme's palette and motif become a scene, the photo sits in an oval frame, the whole picture goes
through the style's filter chain, then a cover gets its title. All randomness is seeded from the inputs,
so every attempt at a job paints the same picture and tests can compare pixels.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import os
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from PIL import Image, ImageChops, ImageColor, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from s2s.catalog import Kind, Style, Theme
from s2s.providers.base import GeneratedImage, GenerationRequest, ProviderError, Report
from s2s.providers.lettering import drawable, write_title

#: Painted and returned at half the kind's canvas (512x768 for a cover): bench/render_local.py measures
#: 0.12-0.18 s a render on one core, against 0.4-0.6 s at full size, and the soft, filtered styles gain
#: nothing a parent would notice from the extra pixels.
RENDER_SCALE = 0.5

Progress = Callable[[int, str], None]
RGB = tuple[int, int, int]
_LANCZOS = Image.Resampling.LANCZOS
_BICUBIC = Image.Resampling.BICUBIC


def render(photo: bytes, *, hero_name: str, theme: Theme, style: Style, kind: Kind,
           progress: Progress | None = None) -> bytes:
    """Return PNG bytes of the picture; ``progress(percent, message)`` is called at each real step."""
    effect = _EFFECTS.get(style.effect)
    if effect is None:
        raise ValueError(f"unknown style effect {style.effect!r} (style {style.id!r}); known: {sorted(_EFFECTS)}")
    say, cover = progress or (lambda percent, message: None), kind.id == "cover"
    size = w, h = (max(64, round(kind.width * RENDER_SCALE)), max(64, round(kind.height * RENDER_SCALE)))
    # The hero's name only changes the text, never the scene: same photo, theme and style, same painting.
    seed = hashlib.sha256(b"\0".join([hashlib.sha256(photo).digest(), theme.id.encode(), style.id.encode(),
                                      kind.id.encode()])).digest()
    rng = random.Random(int.from_bytes(seed[:8], "big"))
    pal = [ImageColor.getrgb(c)[:3] for c in theme.palette] or [(240, 230, 210)]
    pal = (pal * 4)[:max(4, len(pal))]

    say(3, "Reading your photo")
    picture = _load_photo(photo, longest=max(w, h))

    say(20, f"Composing the {kind.name.lower()}")
    dark = sum(pal[0]) < 300  # a night sky fades towards the palette's light accent, a day sky towards its ink
    scene = Image.composite(Image.new("RGB", size, _mix(pal[0], pal[3] if dark else pal[1], 0.25)),
                            Image.new("RGB", size, pal[0]), Image.linear_gradient("L").resize(size, _BICUBIC))
    _MOTIFS.get(theme.motif, _stars)(ImageDraw.Draw(scene), w, h, pal, rng)
    if cover:
        hero_box = (round(w * 0.13), round(h * 0.31), round(w * 0.87), round(h * 0.83))
        banner = (round(w * 0.05), round(h * 0.025), round(w * 0.95), round(h * 0.25))
    else:
        hero_box = (round(w * 0.3), round(h * 0.08), round(w * 0.7), round(h * 0.82))
        banner = (round(w * 0.33), round(h * 0.86), round(w * 0.67), round(h * 0.97))
    _frame_photo(scene, picture, hero_box, pal)
    draw = ImageDraw.Draw(scene)
    ribbon = pal[1] if cover else pal[2]
    draw.rounded_rectangle(banner, radius=(banner[3] - banner[1]) // 4, fill=ribbon,
                           outline=_mix(ribbon, (0, 0, 0), 0.35), width=max(2, w // 160))

    say(45, f"Painting in {style.name.lower()}")
    scene = effect(scene, rng)

    say(80, "Adding the title" if cover else "Adding the caption")
    hero = drawable(hero_name) or "Our hero"
    if cover:  # str.replace, never str.format: the name is user input
        write_title(scene, banner, drawable(theme.title.replace("{hero}", hero)),
                    drawable(theme.tagline or theme.name))
    else:
        write_title(scene, banner, hero, "")

    say(92, "Saving the picture")
    out = io.BytesIO()
    scene.save(out, format="PNG", compress_level=3)
    say(100, f"Your {kind.name.lower()} is ready")
    return out.getvalue()


# ---- photo ------------------------------------------------------------------------------------
def _load_photo(data: bytes, *, longest: int) -> Image.Image:
    """Decode, upright (EXIF), flatten onto white and shrink early: every later step costs per pixel."""
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            img.draft("RGB", (longest, longest))  # decode at 1/2..1/8 scale straight from the DCT
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            img = img.convert("F").point(lambda v: v / 256).convert("L")
        if img.has_transparency_data:
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("RGB")
    img.thumbnail((longest, longest), _LANCZOS)
    return img


def _frame_photo(scene: Image.Image, picture: Image.Image, box: tuple[int, int, int, int], pal: list[RGB]) -> None:
    """Crop the photo into an oval (faces sit a little above centre) and ring it in palette colours."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    fitted = ImageOps.fit(picture, (bw, bh), _LANCZOS, centering=(0.5, 0.4))
    mask = Image.new("L", (bw * 2, bh * 2), 0)
    ImageDraw.Draw(mask).ellipse((0, 0, bw * 2 - 1, bh * 2 - 1), fill=255)
    scene.paste(fitted, box[:2], mask.resize((bw, bh), _LANCZOS))
    ring = max(3, bw // 30)
    draw = ImageDraw.Draw(scene)
    draw.ellipse(box, outline=pal[3], width=ring)
    draw.ellipse((box[0] - ring, box[1] - ring, box[2] + ring, box[3] + ring), outline=pal[1], width=ring)


# ---- scene ------------------------------------------------------------------------------------
def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB, points: int = 5,
          inner: float = 0.45, turn: float = 0.0) -> None:
    pts = [(cx + r * (1 if i % 2 == 0 else inner) * math.sin(turn + math.pi * i / points),
            cy - r * (1 if i % 2 == 0 else inner) * math.cos(turn + math.pi * i / points)) for i in range(2 * points)]
    draw.polygon(pts, fill=fill)


def _mountains(draw, w, h, pal, rng):
    draw.ellipse((w * 0.72, h * 0.27, w * 0.9, h * 0.27 + w * 0.18), fill=pal[2])
    for _ in range(4):
        x, y, r = rng.uniform(0, w), rng.uniform(0.28, 0.55) * h, w * rng.uniform(0.04, 0.07)
        for dx, dy, k in ((-1.1, 0.2, 0.7), (0, 0, 1), (1.1, 0.25, 0.65)):
            draw.ellipse((x + dx * r - r * k, y + dy * r - r * k * 0.7, x + dx * r + r * k, y + dy * r + r * k * 0.7),
                         fill=_mix((255, 255, 255), pal[0], 0.2))
    for base, peak, t in ((0.72, 0.3, 0.6), (0.82, 0.22, 0.3), (0.93, 0.14, 0.0)):  # far, pale ranges first
        xs = [w * (i + rng.uniform(-0.25, 0.25)) / 5 for i in range(-1, 7)]
        tops = [(x, h * (base - (peak if i % 2 else peak * 0.35) * rng.uniform(0.7, 1.1))) for i, x in enumerate(xs)]
        draw.polygon([(-w * 0.2, h), *tops, (w * 1.2, h)], fill=_mix(pal[1], pal[0], t))
        for x, y in tops[1::2] if t > 0.5 else ():  # snow on the far peaks
            c = h * peak * 0.22
            draw.polygon([(x, y), (x - c * 0.8, y + c), (x, y + c * 0.75), (x + c * 0.8, y + c)], fill=(250, 250, 245))
    draw.polygon([(w * 0.42, h), (w * 0.5, h * 0.9), (w * 0.62, h * 0.86), (w * 0.58, h * 0.9), (w * 0.52, h)],
                 fill=pal[3])  # a river


def _stars(draw, w, h, pal, rng):
    for _ in range(60):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.012, 0.028) * w
        _star(draw, x, y, r, rng.choice((pal[1], pal[3], _mix(pal[1], pal[3], 0.5))), turn=rng.uniform(0, 1))
    mx, my, mr = w * 0.12, h * 0.33, w * 0.08
    draw.ellipse((mx - mr, my - mr, mx + mr, my + mr), fill=pal[1])  # a full moon with craters
    for cx, cy, cr in ((-0.35, -0.3, 0.22), (0.3, 0.1, 0.28), (-0.15, 0.45, 0.15)):
        draw.ellipse((mx + (cx - cr) * mr, my + (cy - cr) * mr, mx + (cx + cr) * mr, my + (cy + cr) * mr),
                     fill=_mix(pal[1], pal[0], 0.25))
    px, py, pr = w * 0.84, h * 0.86, w * 0.11
    draw.ellipse((px - pr, py - pr, px + pr, py + pr), fill=pal[2])
    draw.ellipse((px - pr * 1.8, py - pr * 0.35, px + pr * 1.8, py + pr * 0.35), outline=pal[3], width=max(2, w // 120))


def _waves(draw, w, h, pal, rng):
    for k, (base, t) in enumerate(((0.6, 0.7), (0.7, 0.45), (0.8, 0.2), (0.9, 0.0))):
        amp, phase, freq = h * 0.025, rng.uniform(0, 6.3), rng.uniform(2.5, 4) * math.pi / w
        crest = [(x, h * base + amp * math.sin(x * freq + phase)) for x in range(-10, w + 20, 12)]
        draw.polygon([(-10, h), *crest, (w + 20, h)], fill=_mix(pal[1 + k % 2], pal[0], t))
    for _ in range(6):
        x, y, r = rng.uniform(0.05, 0.95) * w, rng.uniform(0.62, 0.95) * h, w * rng.uniform(0.03, 0.05)
        draw.ellipse((x - r, y - r * 0.6, x + r, y + r * 0.6), fill=pal[3])
        draw.polygon([(x + r * 0.8, y), (x + r * 1.6, y - r * 0.6), (x + r * 1.6, y + r * 0.6)], fill=pal[3])
    for _ in range(25):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h * 0.9), w * rng.uniform(0.006, 0.02)
        draw.ellipse((x - r, y - r, x + r, y + r), outline=(255, 255, 255), width=max(1, w // 300))


def _hearts(draw, w, h, pal, rng):
    for _ in range(22):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h * 0.85), w * rng.uniform(0.02, 0.05)
        draw.polygon([(x + r * (16 * math.sin(t) ** 3) / 17,
                       y - r * (13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17)
                      for t in (i * math.pi / 24 for i in range(48))],
                     fill=_mix(rng.choice((pal[1], pal[3])), pal[0], rng.uniform(0.2, 0.6)))
    for _ in range(20):
        _star(draw, rng.uniform(0, w), rng.uniform(0, h), w * rng.uniform(0.008, 0.02), pal[2], points=4, inner=0.3)
    stone, cx, ground, u = _mix(pal[3], (255, 255, 255), 0.45), w * 0.8, h * 0.93, min(w, h) * 0.05
    draw.ellipse((w * 0.45, h * 0.9, w * 1.3, h * 1.2), fill=_mix(pal[3], pal[0], 0.6))  # the castle's hill
    draw.rectangle((cx - 2.5 * u, ground - 2.2 * u, cx + 2.5 * u, ground), fill=stone)
    for dx, top in ((-2.6, 4.2), (2.6, 4.2), (0, 5.2)):
        x0, x1, y = cx + (dx - 0.8) * u, cx + (dx + 0.8) * u, ground - top * u
        draw.rectangle((x0, y, x1, ground), fill=stone)
        draw.polygon([(x0 - 0.3 * u, y), (cx + dx * u, y - 2 * u), (x1 + 0.3 * u, y)], fill=pal[1])
        draw.rectangle((cx + (dx - 0.2) * u, y + 1.2 * u, cx + (dx + 0.2) * u, y + 2 * u), fill=pal[2])
    draw.rounded_rectangle((cx - 0.8 * u, ground - 2 * u, cx + 0.8 * u, ground), radius=0.8 * u, fill=pal[3])


def _trees(draw, w, h, pal, rng):
    draw.ellipse((-w * 0.3, h * 0.8, w * 1.3, h * 1.4), fill=_mix(pal[1], pal[0], 0.4))
    for row, (y0, scale, t) in enumerate(((0.84, 0.7, 0.5), (0.95, 1.0, 0.0))):
        x = -w * 0.05 + rng.uniform(0, w * 0.08)
        while x < w * 1.05:
            th, tw = h * 0.2 * scale * rng.uniform(0.8, 1.2), w * 0.09 * scale
            draw.rectangle((x - tw * 0.1, h * y0 - th * 0.25, x + tw * 0.1, h * y0), fill=pal[2])
            if (row + int(x)) % 3:
                for k in range(3):
                    top, bot = h * y0 - th * (1 - k * 0.22), h * y0 - th * (0.45 - k * 0.15)
                    draw.polygon([(x, top), (x - tw * (0.5 + k * 0.12), bot), (x + tw * (0.5 + k * 0.12), bot)],
                                 fill=_mix(_mix(pal[1], (0, 0, 0), 0.15 * k), pal[0], t))
            else:
                draw.ellipse((x - tw * 0.6, h * y0 - th, x + tw * 0.6, h * y0 - th * 0.3), fill=_mix(pal[1], pal[0], t))
            x += tw * rng.uniform(0.9, 1.4)
    for _ in range(30):
        x, y, r = rng.uniform(0, w), rng.uniform(h * 0.3, h * 0.9), w * rng.uniform(0.004, 0.01)
        draw.ellipse((x - r * 2, y - r * 2, x + r * 2, y + r * 2), fill=_mix(pal[3], pal[0], 0.6))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=pal[3])


_MOTIFS = {"mountains": _mountains, "stars": _stars, "waves": _waves, "hearts": _hearts, "trees": _trees}


# ---- styles -----------------------------------------------------------------------------------
def _noise(rng: random.Random, size: tuple[int, int], lo: int, hi: int, grain: int = 1) -> Image.Image:
    """Seeded noise (Image.effect_noise is not seedable); ``grain`` > 1 gives soft blotches."""
    sw, sh = max(1, size[0] // grain), max(1, size[1] // grain)
    img = Image.frombytes("L", (sw, sh), rng.randbytes(sw * sh))
    img = img.resize(size, _BICUBIC) if grain > 1 else img
    return img.point(lambda v: lo + v * (hi - lo) // 255)


def _multiply(img: Image.Image, layer: Image.Image) -> Image.Image:
    return ImageChops.multiply(img, Image.merge("RGB", (layer, layer, layer)))


def _watercolor(img: Image.Image, rng: random.Random) -> Image.Image:
    """Wet washes: few colours that bleed softly, paler blooms where the water pooled, darker
    rims, a pencil underdrawing the paint does not quite follow, and grainy paper."""
    paper = Image.new("RGB", img.size, (255, 252, 244))
    washes = img.reduce(2).filter(ImageFilter.MedianFilter(3))
    washes = washes.quantize(24, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB")
    washes = washes.resize(img.size, _BICUBIC).filter(ImageFilter.GaussianBlur(2.2))
    pools = washes.convert("L").filter(ImageFilter.FIND_EDGES).filter(ImageFilter.GaussianBlur(1))
    washes = _multiply(washes, pools.point(lambda v: 255 - min(90, max(0, v - 2) * 7)))
    washes = Image.blend(ImageEnhance.Color(washes).enhance(1.25), paper, 0.18)
    washes = Image.composite(paper, washes, _noise(rng, img.size, 0, 130, grain=36))  # blooms
    paper.paste(washes, (max(1, img.width // 200), max(1, img.width // 250)))  # paint misses the lines a bit
    washes = paper
    pencil = img.convert("L").filter(ImageFilter.GaussianBlur(1)).filter(ImageFilter.FIND_EDGES)
    washes = _multiply(washes, pencil.point(lambda v: 255 - min(32, max(0, v - 8) * 2)))
    return _multiply(washes, _noise(rng, img.size, 232, 255).filter(ImageFilter.GaussianBlur(0.7)))  # paper


def _cartoon(img: Image.Image, rng: random.Random) -> Image.Image:
    """Cel paint: a few flat, saturated colours inside bold dark outlines."""
    smooth = img.reduce(2).filter(ImageFilter.MedianFilter(5)).resize(img.size, _BICUBIC)
    flat = ImageEnhance.Color(ImageEnhance.Contrast(smooth).enhance(1.15)).enhance(1.8)
    flat = flat.quantize(20, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB")
    grey = smooth.convert("L").filter(ImageFilter.GaussianBlur(1))
    lines = grey.filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 10 else 0).filter(ImageFilter.MaxFilter(3))
    flat.paste((30, 22, 35), mask=lines.filter(ImageFilter.GaussianBlur(0.7)))  # inked, not pixel-stepped
    return flat


def _sketch(img: Image.Image, rng: random.Random) -> Image.Image:
    """Graphite on cream paper: colour-dodge lines, cross-hatched shadows, no colour at all."""
    grey = img.convert("L")
    soft = grey.filter(ImageFilter.GaussianBlur(6))
    # colour dodge, grey / blur(grey), as a scaled difference (ImageMath.lambda_eval needs Pillow 10.3)
    pencil = ImageChops.invert(ImageChops.subtract(soft, grey, scale=0.3)).point(lambda v: round(255 * (v / 255) ** 2))
    tone = grey.filter(ImageFilter.GaussianBlur(2))
    pencil = ImageChops.multiply(pencil, tone.point(lambda v: 175 + v * 80 // 255))
    for limit, spacing, slope in ((150, 6, 1), (90, 5, -1)):  # hatch the shadows, cross-hatch the darkest
        pen = ImageDraw.Draw(hatch := Image.new("L", img.size, 255))
        for x in range(-img.height, img.width + img.height, spacing):
            x += rng.uniform(-1.5, 1.5)
            pen.line([(x, 0), (x + slope * img.height, img.height)], fill=rng.randint(120, 175))
        shade = tone.point(lambda v, limit=limit: 255 if v < limit else 0).filter(ImageFilter.GaussianBlur(2))
        pencil = Image.composite(ImageChops.multiply(pencil, hatch), pencil, shade)
    pencil = ImageChops.multiply(pencil, _noise(rng, img.size, 230, 255).filter(ImageFilter.GaussianBlur(0.6)))
    return ImageOps.colorize(pencil, black=(48, 45, 44), white=(248, 243, 230))


def _storybook(img: Image.Image, rng: random.Random) -> Image.Image:
    """Gouache in an old book: softened, gently posterised, warm, glowing, darker at the edges."""
    paint = ImageOps.posterize(img.filter(ImageFilter.SMOOTH_MORE).filter(ImageFilter.SMOOTH_MORE), 4)
    warm = Image.new("RGB", img.size, (255, 226, 180))
    paint = ImageChops.multiply(paint.filter(ImageFilter.GaussianBlur(0.8)), warm)
    paint = ImageEnhance.Color(paint).enhance(1.2)
    paint = Image.blend(paint, ImageChops.screen(paint, paint.filter(ImageFilter.GaussianBlur(12))), 0.4)
    edge = Image.radial_gradient("L").resize(img.size, _BICUBIC).point(lambda v: min(170, max(0, v - 110) * 2))
    paint = Image.composite(Image.new("RGB", img.size, (70, 38, 18)), paint, edge)
    return _multiply(paint, _noise(rng, img.size, 236, 255).filter(ImageFilter.GaussianBlur(0.8)))  # canvas


_EFFECTS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "watercolor": _watercolor, "cartoon": _cartoon, "sketch": _sketch, "storybook": _storybook}


class _Stopped(Exception):
    """Raised inside the render thread once nobody wants the picture any more."""


class LocalProvider:
    """Runs :func:`render` on a small thread pool (Pillow drops the GIL in its filters)."""

    name = "local"

    def __init__(self, *, max_workers: int | None = None):
        workers = max_workers or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s2s-render")

    async def generate(self, request: GenerationRequest, report: Report) -> GeneratedImage:
        if request.style.effect not in _EFFECTS:
            raise ProviderError(f"The {request.style.name} style cannot be painted offline yet.", retryable=False,
                                code="unknown_style")
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
        stop = threading.Event()

        def progress(percent: int, message: str) -> None:  # render thread
            if stop.is_set():
                raise _Stopped()
            loop.call_soon_threadsafe(updates.put_nowait, (percent, message))

        async def pump() -> None:  # one at a time, in order, on the loop
            last = 0
            while (update := await updates.get()) is not None:
                last = max(last, update[0])
                await report(last, update[1])

        reporter = asyncio.ensure_future(pump())
        work = loop.run_in_executor(self._pool, partial(
            render, request.photo, hero_name=request.hero_name, theme=request.theme, style=request.style,
            kind=request.kind, progress=progress))
        work.add_done_callback(lambda f: f.cancelled() or f.exception())  # a stopped render is not news
        try:
            await asyncio.wait({work, reporter}, return_when=asyncio.FIRST_COMPLETED)
            if reporter.done():
                reporter.result()  # report raised (the lease was lost, say): stop painting, pass it on
            try:
                data = await work
            except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
                raise ProviderError("We could not read the photo.", retryable=False, code="unreadable_photo") from exc
            updates.put_nowait(None)  # every progress update was queued before the result arrived
            await reporter
        finally:
            stop.set()
            if not reporter.done():
                reporter.cancel()
            elif not reporter.cancelled():
                reporter.exception()  # retrieved, even when the render's own error is the one raised
        return GeneratedImage(data=data, content_type="image/png")

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
