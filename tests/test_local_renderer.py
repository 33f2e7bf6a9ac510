"""The offline renderer, judged by what a parent would see in the picture it returns."""

from __future__ import annotations

import asyncio
import io
import itertools
import threading
from functools import cache
from pathlib import Path

import attrs
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps, ImageStat

from s2s.catalog import Catalog
from s2s.providers.base import GenerationRequest, ProviderError
from s2s.providers.local import RENDER_SCALE, LocalProvider, render

CATALOG = Catalog.load(Path(__file__).parent.parent / "config")
STYLES = ("watercolor", "cartoon", "sketch", "storybook")
LONG_NAME = ("Zoë-Amélie 小明 🦄🚀 Ñandú Øyvind Łucja ẞtraße Ǆemal 👩‍🚀 Émile Ångström")[:64]


# ---- test photos ------------------------------------------------------------------------------
def face(*, skin=(236, 190, 150), shirt=(220, 60, 60), hair=(90, 55, 30), sky=((120, 180, 230), (220, 140, 80)),
         size=(900, 1200), tall_hair=False) -> Image.Image:
    """A child-ish portrait: gradient backdrop, shirt, hair, face, eyes, smile, slightly soft like a photo."""
    w, h = size
    img = Image.linear_gradient("L").resize(size)
    img = Image.composite(Image.new("RGB", size, sky[1]), Image.new("RGB", size, sky[0]), img)
    draw = ImageDraw.Draw(img)
    cx, cy, r = w / 2, h * 0.42, w / 4
    draw.ellipse((cx - 2 * r, cy + r, cx + 2 * r, cy + 4 * r), fill=shirt)
    draw.ellipse((cx - r * 1.15, cy - r * (1.9 if tall_hair else 1.25), cx + r * 1.15, cy + r * 0.6), fill=hair)
    draw.ellipse((cx - r, cy - r, cx + r, cy + r * 1.2), fill=skin)
    for dx in (-r / 2.5, r / 2.5):
        draw.ellipse((cx + dx - r / 7, cy - r / 6, cx + dx + r / 7, cy + r / 10), fill=(255, 255, 255))
        draw.ellipse((cx + dx - r / 14, cy - r / 10, cx + dx + r / 14, cy + r / 20), fill=(40, 70, 130))
    draw.arc((cx - r / 2, cy + r / 5, cx + r / 2, cy + r * 0.8), 20, 160, fill=(170, 60, 60), width=int(r / 18))
    return img.filter(ImageFilter.GaussianBlur(1.5))


def encode(img: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **params)
    return out.getvalue()


PHOTO = encode(face())
OTHER_PHOTO = encode(face(skin=(120, 80, 55), shirt=(40, 90, 200), hair=(20, 20, 20),
                          sky=((60, 160, 90), (230, 230, 120)), tall_hair=True))


@cache
def draw_picture(style: str = "watercolor", kind: str = "cover", theme: str = "adventure", name: str = "Mia",
                 photo: bytes = PHOTO) -> Image.Image:
    png = render(photo, hero_name=name, theme=CATALOG.themes[theme], style=CATALOG.styles[style],
                 kind=CATALOG.kinds[kind])
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    img.load()
    return img


# ---- measures ---------------------------------------------------------------------------------
def region(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = img.size
    return img.crop((round(w * left), round(h * top), round(w * right), round(h * bottom)))


def hero_area(img: Image.Image) -> Image.Image:
    """Well inside the oval photo frame, for either kind."""
    return region(img, 0.3, 0.42, 0.7, 0.75) if img.height > img.width else region(img, 0.38, 0.2, 0.62, 0.7)


def diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel, 0-255."""
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def saturation(img: Image.Image) -> float:
    return ImageStat.Stat(img.convert("HSV").getchannel("S")).mean[0]


def edge_energy(img: Image.Image) -> float:
    """Mean edge strength in the hero area, once paper grain (finer than a pixel or two) is blurred away."""
    return ImageStat.Stat(hero_area(img.convert("L").filter(ImageFilter.GaussianBlur(1.5))
                                    .filter(ImageFilter.FIND_EDGES))).mean[0]


def lightness(img: Image.Image) -> float:
    return ImageStat.Stat(img.convert("L")).mean[0]


def share_of_top_colours(img: Image.Image, n: int = 12) -> float:
    colours = sorted(img.getcolors(maxcolors=img.width * img.height), reverse=True)
    return sum(count for count, _ in colours[:n]) / (img.width * img.height)


# ---- the picture ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cover", "page"])
def test_output_is_a_png_in_the_kinds_shape(kind):
    spec = CATALOG.kinds[kind]
    img = draw_picture(kind=kind)
    assert img.size == (round(spec.width * RENDER_SCALE), round(spec.height * RENDER_SCALE))
    assert img.mode == "RGB"
    assert img.width / img.height == pytest.approx(spec.width / spec.height, rel=0.01)
    assert (img.height > img.width) == (kind == "cover")


def test_same_input_gives_the_same_picture():
    first = render(PHOTO, hero_name="Mia", theme=CATALOG.themes["ocean"], style=CATALOG.styles["cartoon"],
                   kind=CATALOG.kinds["page"])
    again = render(PHOTO, hero_name="Mia", theme=CATALOG.themes["ocean"], style=CATALOG.styles["cartoon"],
                   kind=CATALOG.kinds["page"])
    assert first == again


@pytest.mark.parametrize("kind", ["cover", "page"])
def test_every_style_looks_different(kind):
    pictures = {style: draw_picture(style, kind) for style in STYLES}
    for a, b in itertools.combinations(STYLES, 2):
        assert diff(pictures[a], pictures[b]) > 15, (a, b)
        assert diff(hero_area(pictures[a]), hero_area(pictures[b])) > 10, (a, b)


def test_sketch_is_pencil_grey_and_cartoon_is_saturated():
    for kind in ("cover", "page"):
        assert saturation(hero_area(draw_picture("sketch", kind))) < 25
        assert saturation(draw_picture("sketch", kind)) < 25  # the whole page, banner and all
        assert saturation(hero_area(draw_picture("cartoon", kind))) > 110
        assert saturation(hero_area(draw_picture("cartoon", kind))) > saturation(hero_area(draw_picture("watercolor",
                                                                                                         kind)))


@pytest.mark.parametrize("kind", ["cover", "page"])
def test_watercolor_is_soft_and_cartoon_is_flat_and_inked(kind):
    watercolor, cartoon = draw_picture("watercolor", kind), draw_picture("cartoon", kind)
    assert edge_energy(watercolor) * 1.6 < edge_energy(cartoon)
    assert lightness(hero_area(cartoon).filter(ImageFilter.MinFilter(3))) < lightness(hero_area(watercolor)) - 30
    assert ImageStat.Stat(hero_area(cartoon).convert("L")).extrema[0][0] < 50  # outlines are near black
    assert share_of_top_colours(hero_area(cartoon)) > 0.7  # a few flat paints
    assert share_of_top_colours(hero_area(watercolor)) < 0.2  # washes, blooms and paper grain


@pytest.mark.parametrize("kind", ["cover", "page"])
@pytest.mark.parametrize("theme", ["adventure", "ocean"])
def test_storybook_is_warm_and_darker_at_the_corners(theme, kind):
    def corners(img):
        return sum(lightness(region(img, x, y, x + 0.06, y + 0.06)) for x in (0, 0.94) for y in (0, 0.94)) / 4

    for style in STYLES:
        img = draw_picture(style, kind, theme)
        falloff = corners(img) / lightness(hero_area(img))
        assert falloff < 0.7 if style == "storybook" else falloff > 0.9, style
    red, _, blue = ImageStat.Stat(draw_picture("storybook", kind, theme)).mean
    assert red > blue + 20  # even under the sea: the glow is golden


@pytest.mark.parametrize("theme", sorted(CATALOG.themes))
def test_each_theme_paints_its_own_scene(theme):
    pictures = {t: draw_picture("storybook", "page", t) for t in CATALOG.themes}
    for other in pictures:
        if other != theme:
            assert diff(region(pictures[theme], 0, 0, 0.3, 1), region(pictures[other], 0, 0, 0.3, 1)) > 10


def test_unknown_motif_falls_back_to_stars():
    space = CATALOG.themes["space"]
    kwargs = dict(hero_name="Mia", style=CATALOG.styles["cartoon"], kind=CATALOG.kinds["page"])
    dragons = render(PHOTO, theme=attrs.evolve(space, motif="dragons"), **kwargs)
    assert dragons == render(PHOTO, theme=attrs.evolve(space, motif="stars"), **kwargs)


def test_unknown_effect_is_an_error_naming_it():
    with pytest.raises(ValueError, match="oil-paint"):
        render(PHOTO, hero_name="Mia", theme=CATALOG.themes["space"],
               style=attrs.evolve(CATALOG.styles["cartoon"], effect="oil-paint"), kind=CATALOG.kinds["cover"])


# ---- the photo --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cover", "page"])
def test_the_photo_is_what_fills_the_frame(kind):
    mine = draw_picture("storybook", kind, photo=PHOTO)
    theirs = draw_picture("storybook", kind, photo=OTHER_PHOTO)
    assert diff(hero_area(mine), hero_area(theirs)) > 25
    # the blue-shirted, green-backed photo shows through: more blue and green than red in its frame
    red, green, blue = ImageStat.Stat(hero_area(draw_picture("watercolor", kind, photo=OTHER_PHOTO))).mean
    assert green > red - 40 and blue > 60


@pytest.mark.parametrize("fmt,params", [("PNG", {}), ("WEBP", {"quality": 90}), ("JPEG", {"quality": 95})])
def test_png_webp_and_jpeg_photos_paint_alike(fmt, params):
    reference = draw_picture("storybook", "page", photo=encode(face(), "PNG"))
    img = draw_picture("storybook", "page", photo=encode(face(), fmt, **params))
    assert diff(hero_area(img), hero_area(reference)) < 4
    assert diff(hero_area(draw_picture("storybook", "page", photo=OTHER_PHOTO)), hero_area(reference)) > 40


def test_transparent_and_sixteen_bit_photos_are_flattened():
    rgba = face().convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 0).resize(rgba.size))  # fully transparent: a white page
    clear = draw_picture("cartoon", photo=encode(rgba, "PNG"))
    assert ImageStat.Stat(hero_area(clear).convert("L")).mean[0] > 200
    grey16 = face().convert("L").point(lambda v: v).convert("I").point(lambda v: v * 256)
    photo16 = encode(grey16.convert("I;16"), "PNG")
    assert Image.open(io.BytesIO(photo16)).mode == "I;16"
    img = draw_picture("cartoon", photo=photo16)
    assert 40 < ImageStat.Stat(hero_area(img).convert("L")).mean[0] < 230  # not blown out to white


def test_exif_rotated_jpeg_is_turned_upright():
    upright = face(size=(600, 900))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the pixels lie on their side
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    photo = encode(sideways, "JPEG", quality=95, exif=exif.tobytes())
    assert ImageOps.exif_transpose(Image.open(io.BytesIO(photo))).size == upright.size
    want = draw_picture("cartoon", photo=encode(upright, "JPEG", quality=95))
    got = draw_picture("cartoon", photo=photo)
    ignored = draw_picture("cartoon", photo=encode(sideways, "JPEG", quality=95))
    assert diff(hero_area(got), hero_area(want)) < 8
    assert diff(hero_area(ignored), hero_area(want)) > 4 * diff(hero_area(got), hero_area(want))


def test_a_huge_photo_is_shrunk_not_slow():
    big = encode(face(size=(3000, 4000)), "JPEG", quality=85)
    img = draw_picture("sketch", "page", photo=big)
    assert img.size == (768, 512)


# ---- the words --------------------------------------------------------------------------------
BANNER = (0.05, 0.02, 0.95, 0.25)  # cover title banner; on a page this is just sky


def test_cover_has_a_title_banner_that_shows_the_name():
    mia, alexander = draw_picture(name="Mia"), draw_picture(name="Alexander the Brave")
    assert diff(region(mia, *BANNER), region(alexander, *BANNER)) > 3
    assert diff(hero_area(mia), hero_area(alexander)) == 0  # the name changes the words, not the painting


def test_page_has_no_title_only_a_caption():
    mia, alexander = draw_picture(kind="page", name="Mia"), draw_picture(kind="page", name="Alexander the Brave")
    assert diff(region(mia, *BANNER), region(alexander, *BANNER)) == 0
    assert diff(region(mia, 0.3, 0.85, 0.7, 1), region(alexander, 0.3, 0.85, 0.7, 1)) > 1


def test_long_unicode_name_fits_on_the_cover():
    assert len(LONG_NAME) == 64
    for kind in ("cover", "page"):
        img = draw_picture("storybook", kind, name=LONG_NAME)
        assert img.size == draw_picture("storybook", kind).size
    unbroken = "W" * 64
    img = draw_picture(name=unbroken)
    assert diff(region(img, *BANNER), region(draw_picture(), *BANNER)) > 3
    # the banner's text stays inside the banner: the strip of sky under it is untouched by the name
    assert diff(region(img, 0, 0.26, 1, 0.3), region(draw_picture(), 0, 0.26, 1, 0.3)) == 0


def test_accents_fold_to_letters_the_font_has():
    assert diff(draw_picture(name="Zoë Ångström"), draw_picture(name="Zoe Angstrom")) == 0


@pytest.mark.parametrize("name", ["{0}", "{__class__}", "{hero.__class__.__mro__}", "%s {} {{x}}"])
def test_names_that_look_like_templates_are_drawn_literally(name):
    theme = CATALOG.themes["adventure"]
    img = draw_picture(name=name)
    # the very same words given as a fixed title (no {hero} left for a name to fill) paint the same cover
    fixed = attrs.evolve(theme, title=theme.title.replace("{hero}", name))
    same = Image.open(io.BytesIO(render(PHOTO, hero_name="unused", theme=fixed, style=CATALOG.styles["watercolor"],
                                        kind=CATALOG.kinds["cover"])))
    assert diff(img, same) == 0
    assert diff(region(img, *BANNER), region(draw_picture(name="Mia"), *BANNER)) > 1


def test_a_name_of_placeholder_is_not_substituted_again():
    img = draw_picture(name="{hero}")
    assert diff(region(img, *BANNER), region(draw_picture(name="Mia"), *BANNER)) > 1
    assert diff(region(img, *BANNER), region(draw_picture(name="{hero} {hero}"), *BANNER)) > 1


# ---- progress ---------------------------------------------------------------------------------
def test_progress_climbs_through_the_real_steps():
    calls: list[tuple[int, str]] = []
    render(PHOTO, hero_name="Mia", theme=CATALOG.themes["forest"], style=CATALOG.styles["sketch"],
           kind=CATALOG.kinds["cover"], progress=lambda p, m: calls.append((p, m)))
    percents = [p for p, _ in calls]
    assert len(calls) >= 5
    assert percents == sorted(percents) and percents[0] <= 10 and percents[-1] == 100
    assert all(isinstance(m, str) and m.strip() and m[0].isupper() for _, m in calls)
    text = " | ".join(m for _, m in calls)
    assert "Reading your photo" in text and "pencil sketch" in text and "title" in text


# ---- the provider -----------------------------------------------------------------------------
def request(style: str = "cartoon", **changes) -> GenerationRequest:
    fields = dict(job_id="job-1", hero_name="Mia", theme=CATALOG.themes["space"], style=CATALOG.styles[style],
                  kind=CATALOG.kinds["page"], photo=PHOTO, photo_content_type="image/jpeg")
    return GenerationRequest(**{**fields, **changes})


def test_provider_generates_off_the_loop_and_reports_on_it():
    calls: list[tuple[int, str, int]] = []

    async def main():
        provider = LocalProvider(max_workers=2)
        loop_thread = threading.get_ident()

        async def report(percent: int, message: str) -> None:
            calls.append((percent, message, threading.get_ident()))
            await asyncio.sleep(0)  # a real report awaits Redis; order must survive that

        try:
            return await provider.generate(request(), report), loop_thread
        finally:
            await provider.close()

    image, loop_thread = asyncio.run(main())
    assert image.content_type == "image/png"
    assert Image.open(io.BytesIO(image.data)).size == (768, 512)
    assert image.data == render(PHOTO, hero_name="Mia", theme=CATALOG.themes["space"],
                                style=CATALOG.styles["cartoon"], kind=CATALOG.kinds["page"])
    percents = [p for p, _, _ in calls]
    assert len(calls) >= 5 and percents == sorted(percents) and percents[-1] == 100
    assert all(thread == loop_thread for _, _, thread in calls)  # never called from the render thread
    assert all(m.strip() for _, m, _ in calls)


def test_provider_runs_jobs_side_by_side(monkeypatch):
    """Four jobs on a pool of two: two renders at once (they meet inside render), never three, each its own."""
    lock = threading.Lock()
    entered, in_flight, peak = 0, 0, 0
    first_two_meet = threading.Barrier(2, timeout=10)  # broken, and the render fails, if they run one by one

    def counted(*args, **kwargs):
        nonlocal entered, in_flight, peak
        with lock:
            entered += 1
            in_flight += 1
            peak = max(peak, in_flight)
            meet = entered <= 2
        try:
            if meet:
                first_two_meet.wait()
            return render(*args, **kwargs)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr("s2s.providers.local.render", counted)

    async def main():
        provider = LocalProvider(max_workers=2)

        async def report(percent: int, message: str) -> None:
            pass

        try:
            return await asyncio.gather(*(provider.generate(request(style), report) for style in STYLES))
        finally:
            await provider.close()

    images = asyncio.run(main())
    assert (entered, peak) == (len(STYLES), 2)
    for style, image in zip(STYLES, images, strict=True):  # no job got another's picture, nor a mix of two
        got = Image.open(io.BytesIO(image.data))
        assert got.tobytes() == draw_picture(style, "page", "space").tobytes(), style


def test_provider_stops_when_the_report_fails():
    class LeaseLost(Exception):
        pass

    async def main():
        provider = LocalProvider(max_workers=1)

        async def report(percent: int, message: str) -> None:
            if percent >= 20:
                raise LeaseLost()

        try:
            await provider.generate(request(), report)
        finally:
            await provider.close()

    with pytest.raises(LeaseLost):
        asyncio.run(main())


def test_provider_refuses_an_unknown_style_and_an_unreadable_photo():
    async def main(req):
        provider = LocalProvider(max_workers=1)

        async def report(percent: int, message: str) -> None:
            pass

        try:
            await provider.generate(req, report)
        finally:
            await provider.close()

    odd = attrs.evolve(CATALOG.styles["cartoon"], effect="oil-paint")
    with pytest.raises(ProviderError) as unknown:
        asyncio.run(main(attrs.evolve(request(), style=odd)))
    assert not unknown.value.retryable
    with pytest.raises(ProviderError) as broken:
        asyncio.run(main(request(photo=PHOTO[: len(PHOTO) // 3] + b"\0" * 10)))
    assert not broken.value.retryable and broken.value.code == "unreadable_photo"
