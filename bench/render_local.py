"""Time the offline renderer: each style x kind once, on a synthetic photo; write the PNGs to --out.

    python bench/render_local.py [--out DIR] [--theme adventure] [--name Mia]

No network, no Redis; one process, one core. Prints milliseconds per render.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s2s.catalog import Catalog  # noqa: E402
from s2s.providers.local import render  # noqa: E402


def synthetic_photo(width: int = 1200, height: int = 1600) -> bytes:
    """A face-like JPEG: a sky-to-grass backdrop, a shirt, a face with hair, eyes and a smile."""
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(120 + 100 * t), int(180 - 40 * t), int(230 - 150 * t)))
    cx, cy, r = width // 2, height * 2 // 5, width // 4
    draw.ellipse((cx - 2 * r, cy + r, cx + 2 * r, cy + 4 * r), fill=(220, 60, 60))
    draw.ellipse((cx - r * 1.1, cy - r * 1.25, cx + r * 1.1, cy + r * 0.6), fill=(90, 55, 30))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r * 1.2), fill=(236, 190, 150))
    for dx in (-r // 2.5, r // 2.5):
        draw.ellipse((cx + dx - r / 7, cy - r / 6, cx + dx + r / 7, cy + r / 10), fill=(255, 255, 255))
        draw.ellipse((cx + dx - r / 14, cy - r / 10, cx + dx + r / 14, cy + r / 20), fill=(50, 80, 140))
    draw.arc((cx - r / 2, cy + r / 5, cx + r / 2, cy + r * 0.8), 20, 160, fill=(170, 60, 60), width=max(2, r // 20))
    img = img.filter(ImageFilter.GaussianBlur(2))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="directory for the PNGs (default: a new temp dir)")
    parser.add_argument("--theme", default=None, help="theme id (default: every theme)")
    parser.add_argument("--name", default="Mia", help="hero name")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="s2s-render-"))
    out.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.load(Path(__file__).resolve().parent.parent / "config")
    themes = [catalog.themes[args.theme]] if args.theme else list(catalog.themes.values())
    photo = synthetic_photo()
    times = []
    for theme in themes:
        for style in catalog.styles.values():
            for kind in catalog.kinds.values():
                start = time.perf_counter()
                png = render(photo, hero_name=args.name, theme=theme, style=style, kind=kind)
                ms = (time.perf_counter() - start) * 1000
                times.append(ms)
                path = out / f"{theme.id}-{style.id}-{kind.id}.png"
                path.write_bytes(png)
                print(f"{theme.id:10} {style.id:10} {kind.id:6} {ms:7.1f} ms  {path}")
    times.sort()
    print(f"{len(times)} renders: median {times[len(times) // 2]:.1f} ms, max {times[-1]:.1f} ms -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
