"""Drawing each emoji to a square RGB PNG on white: PNG files, the Noto colour font, SVG files and
SVG markup, in worker processes."""
from __future__ import annotations

import io
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor

from ...io import atomic_write
from .sources import NOTO_FONT_SIZE


def flatten(im, size: int):
    """Any PIL image → RGB ``size``×``size`` on white."""
    from PIL import Image

    im = im.convert("RGBA")
    if im.size != (size, size):
        if im.width != im.height:  # pad to a centred square first, keeping relative sizes
            side = max(im.size)
            square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
            square.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
            im = square
        im = im.resize((size, size), Image.LANCZOS)
    background = Image.new("RGBA", im.size, (255, 255, 255, 255))
    background.alpha_composite(im)
    return background.convert("RGB")


_FONT_CACHE: dict = {}


def _noto_font(path: str):
    from PIL import ImageFont

    if path not in _FONT_CACHE:
        font = ImageFont.truetype(path, NOTO_FONT_SIZE)
        _FONT_CACHE[path] = (font, font.getlength("\U0001F600"))
    return _FONT_CACHE[path]


def render_noto(text: str, font_path: str, size: int):
    """One emoji with the Noto colour font → RGB image, or None when the font has no single glyph for it
    (missing glyph, or a ZWJ sequence / flag it cannot join)."""
    from PIL import Image, ImageDraw

    font, reference = _noto_font(font_path)
    if font.getlength(text) > 1.25 * reference:  # several glyphs: the sequence is not supported
        return None
    box = 128  # the glyphs are 136x128 with 4 px side bearings: a 128 square is the art's em box
    canvas = Image.new("RGBA", (box, box), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((box / 2, box / 2), text, font=font, embedded_color=True, anchor="mm")
    if canvas.getbbox() is None:
        return None
    return flatten(canvas, size)


# A gradient sheared by a right angle (Fluent colour's umbrellas shade with `skewY(-90)`) is stretched
# without bound: browsers paint it as its last stop far away (there, transparent); cairo refuses the
# whole drawing with CAIRO_STATUS_NO_MEMORY. Such a gradient paints nothing here.
_GRADIENT_TAG = re.compile(r"<(?:linear|radial)Gradient\b[^>]*>")
_RIGHT_ANGLE_SKEW = re.compile(r"skew[XY]\(\s*[-+]?(?:90|270)(?:\.0*)?\s*\)")
_ID = re.compile(r"""\bid\s*=\s*["']([^"']+)["']""")


def without_right_angle_gradients(markup: str) -> str:
    """``markup`` with every fill or stroke painted by a right-angle-sheared gradient set to ``none``."""
    for tag in _GRADIENT_TAG.findall(markup):
        transform = re.search(r"""gradientTransform\s*=\s*["']([^"']*)["']""", tag)
        name = _ID.search(tag)
        if transform and name and _RIGHT_ANGLE_SKEW.search(transform.group(1)):
            markup = re.sub(rf"url\(\s*#{re.escape(name.group(1))}\s*\)", "none", markup)
    return markup


def render_svg(size: int, *, path: str | None = None, markup: str | None = None):
    """An SVG file (``path``) or SVG text (``markup``) → RGB image."""
    import cairosvg
    from PIL import Image

    if path is not None:
        with open(path, "rb") as f:
            markup = f.read().decode("utf-8", "surrogateescape")
    data = without_right_angle_gradients(markup).encode("utf-8", "surrogateescape")
    png = cairosvg.svg2png(bytestring=data, url=None if path is None else str(path), output_width=size,
                           output_height=size)
    return flatten(Image.open(io.BytesIO(png)), size)


def render_job(job: tuple) -> str:
    """Worker: ``(kind, input, out_path, size, font_path)`` → "ok" or why it was skipped."""
    kind, src, out_path, size, font_path = job
    try:
        if kind == "png":
            from PIL import Image

            with Image.open(src) as im:
                im.load()
                rgb = flatten(im, size)
        elif kind == "font":
            rgb = render_noto(src, font_path, size)
            if rgb is None:
                return "no glyph in the font"
        elif kind == "svg-file":
            rgb = render_svg(size, path=src)
        else:
            rgb = render_svg(size, markup=src)
        atomic_write(out_path, lambda tmp: rgb.save(tmp, format="PNG"))
        return "ok"
    except Exception as e:  # a broken input file skips that image, not the build
        return f"error: {type(e).__name__}: {e}"


def default_jobs() -> int:
    """Rendering processes when not told: the CPU count, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def run_jobs(jobs_list: list, jobs: int, progress: bool) -> list[str]:
    """:func:`render_job` over ``jobs_list`` in ``jobs`` processes, results in order."""
    total = len(jobs_list)
    results: list[str] = []
    step = max(1, total // 10)

    def report(done: int) -> None:
        if progress and (done % step == 0 or done == total):
            print(f"  {done}/{total}", file=sys.stderr, flush=True)

    if jobs <= 1 or total < 200:
        for job in jobs_list:
            results.append(render_job(job))
            report(len(results))
        return results
    # Items are sorted by emoji, so each chunk mixes slow (SVG) and fast (PNG, font) jobs.
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for result in pool.map(render_job, jobs_list, chunksize=32):
            results.append(result)
            report(len(results))
    return results

