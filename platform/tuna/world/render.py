"""Draw a :class:`~tuna.world.scene.Scene` into an RGB image: textured background, shapes, patterns, marks."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

from tuna.world.scene import Background, ObjectInstance, Scene
from tuna.world.taxonomy import COLOURS


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    """Outline points of a filled shape (shapes with holes are handled in :func:`_shape_mask`)."""
    def ring(n: int, radius: float, phase: float = -90.0, rx: float = 1.0, ry: float = 1.0) -> list[tuple[float, float]]:
        return [(math.cos(math.radians(phase + 360 * k / n)) * radius * rx,
                 math.sin(math.radians(phase + 360 * k / n)) * radius * ry) for k in range(n)]

    if shape in ("circle", "ring", "crescent"):
        pts = ring(36, r)
    elif shape == "square":
        pts = ring(4, r * 1.05, 45)
    elif shape == "triangle":
        pts = [(x, y + 0.2 * r) for x, y in ring(3, r * 1.15)]
    elif shape == "diamond":
        pts = ring(4, r, -90, 0.75, 1.0)
    elif shape == "hexagon":
        pts = ring(6, r)
    elif shape == "pentagon":
        pts = ring(5, r)
    elif shape == "octagon":
        pts = ring(8, r, -67.5)
    elif shape == "star":
        pts = [p for k in range(5) for p in (ring(5, r)[k], ring(5, r * 0.45, -54)[k])]
    elif shape == "cross":
        a, b = r, r * 0.38
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
    elif shape == "heart":
        pts = [(r * 0.95 * math.sin(t) ** 3,
                -r * (0.8 * math.cos(t) - 0.3 * math.cos(2 * t) - 0.12 * math.cos(3 * t) - 0.05 * math.cos(4 * t)) + 0.1 * r)
               for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
    elif shape == "ellipse":
        pts = ring(36, r, -90, 1.0, 0.6)
    elif shape == "trapezoid":
        pts = [(-0.55 * r, -0.7 * r), (0.55 * r, -0.7 * r), (r, 0.7 * r), (-r, 0.7 * r)]
    elif shape == "arrow":
        pts = [(-r, -0.3 * r), (0.1 * r, -0.3 * r), (0.1 * r, -0.8 * r), (r, 0), (0.1 * r, 0.8 * r), (0.1 * r, 0.3 * r), (-r, 0.3 * r)]
    elif shape == "parallelogram":
        pts = [(-0.5 * r, -0.65 * r), (r, -0.65 * r), (0.5 * r, 0.65 * r), (-r, 0.65 * r)]
    elif shape == "semicircle":
        pts = [(math.cos(t) * r, -math.sin(t) * r + 0.35 * r) for t in np.linspace(0, math.pi, 24)]
    elif shape == "capsule":
        half = [(0.45 * r + math.cos(t) * 0.5 * r, math.sin(t) * 0.5 * r) for t in np.linspace(-math.pi / 2, math.pi / 2, 12)]
        pts = half + [(-x, -y) for x, y in half]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _shape_mask(size: int, obj: ObjectInstance) -> np.ndarray:
    """(H, W) bool mask of the object's shape."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    shape, cx, cy, r = obj.cls.shape, obj.cx, obj.cy, obj.r
    draw.polygon(_polygon(shape, cx, cy, r, obj.rotation), fill=255)
    if shape == "ring":
        draw.ellipse([cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r], fill=0)
    elif shape == "crescent":
        ox = cx + 0.45 * r * math.cos(math.radians(obj.rotation))
        oy = cy + 0.45 * r * math.sin(math.radians(obj.rotation))
        draw.ellipse([ox - 0.8 * r, oy - 0.8 * r, ox + 0.8 * r, oy + 0.8 * r], fill=0)
    return np.asarray(img) > 127


def _pattern_mask(size: int, obj: ObjectInstance) -> np.ndarray:
    """(H, W) bool mask where the accent colour shows, in the object's rotated frame."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c, s = math.cos(math.radians(obj.rotation)), math.sin(math.radians(obj.rotation))
    u = (xx - obj.cx) * c + (yy - obj.cy) * s
    v = -(xx - obj.cx) * s + (yy - obj.cy) * c
    period = max(4.0, obj.r / 2.2)
    kind = obj.cls.pattern
    if kind == "plain":
        return np.zeros((size, size), bool)
    if kind == "striped":
        return np.mod(u + v, period) < period * 0.45
    if kind == "dotted":
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        return du * du + dv * dv < (period * 0.28) ** 2
    if kind == "checkered":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    if kind == "wavy":
        return np.mod(v + 0.25 * period * np.sin(u * 2 * math.pi / period), period) < period * 0.4
    if kind == "crosshatched":
        return (np.mod(u + v, period) < period * 0.25) | (np.mod(u - v, period) < period * 0.25)
    if kind == "ringed":
        return np.mod(np.sqrt(u * u + v * v), period) < period * 0.4
    raise ValueError(f"unknown pattern {kind!r}")


def _draw_mark(draw: ImageDraw.ImageDraw, obj: ObjectInstance, accent: tuple[int, int, int]) -> None:
    cx, cy, r, mark = obj.cx, obj.cy, obj.r, obj.cls.mark
    dark = (15, 15, 15) if sum(COLOURS[obj.colour]) > 200 else (240, 240, 240)
    if mark == "dot":
        q = max(2.0, 0.22 * r)
        draw.ellipse([cx - q, cy - q, cx + q, cy + q], fill=dark)
    elif mark == "bar":
        draw.rectangle([cx - 0.6 * r, cy - max(1.0, 0.1 * r), cx + 0.6 * r, cy + max(1.0, 0.1 * r)], fill=dark)
    elif mark == "cross":
        q = 0.35 * r
        w = max(1, round(0.09 * r))
        draw.line([cx - q, cy - q, cx + q, cy + q], fill=dark, width=w)
        draw.line([cx - q, cy + q, cx + q, cy - q], fill=dark, width=w)
    elif mark == "notch":
        draw.polygon([(cx + 0.1 * r, cy - 0.55 * r), (cx + 0.55 * r, cy - 0.55 * r), (cx + 0.55 * r, cy - 0.1 * r)], fill=dark)
    elif mark == "halo":
        draw.line(_polygon(obj.cls.shape, cx, cy, r, obj.rotation) + [_polygon(obj.cls.shape, cx, cy, r, obj.rotation)[0]],
                  fill=accent, width=max(1, round(0.12 * r)))


def _background(size: int, bg: Background, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 textured background."""
    base = np.array(bg.base, np.float32)
    other = np.array(bg.other, np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if bg.kind == "gradient":
        t = (xx * math.cos(bg.param * 6.28) + yy * math.sin(bg.param * 6.28)) * 0.5 + 0.5
    elif bg.kind == "grid":
        step = 6 + int(bg.param * 10)
        t = (((np.arange(size)[:, None] % step) == 0) | ((np.arange(size)[None, :] % step) == 0)).astype(np.float32) * 0.6
    elif bg.kind == "speckle":
        t = (rng.random((size, size)) < 0.08 + 0.1 * bg.param).astype(np.float32)
    elif bg.kind == "stripes":
        t = (np.sin((xx + yy) * (8 + 12 * bg.param) * math.pi) > 0).astype(np.float32) * 0.35
    elif bg.kind == "blotch":
        coarse = rng.random((6, 6)).astype(np.float32)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32) / 255
    else:  # noise
        t = np.zeros((size, size), np.float32)
    img = base[None, None, :] * (1 - t[..., None]) + other[None, None, :] * t[..., None]
    img += rng.normal(0, 6, (size, size, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Render ``scene``; ``rng`` only adds texture noise, so the same scene and RNG give the same pixels."""
    size = scene.size
    canvas = _background(size, scene.background, rng)
    for obj in scene.objects:
        main = np.array(COLOURS[obj.colour], np.uint8)
        accent = np.array(COLOURS[obj.cls.accent], np.uint8)
        shape = _shape_mask(size, obj)
        pattern = _pattern_mask(size, obj)
        canvas[shape] = main
        canvas[shape & pattern] = accent
        img = Image.fromarray(canvas)
        _draw_mark(ImageDraw.Draw(img), obj, tuple(int(v) for v in accent))  # type: ignore[arg-type]
        canvas = np.asarray(img).copy()
    return Image.fromarray(canvas)


def encode(image: Image.Image, fmt: str) -> bytes:
    """Encode to PNG or JPEG bytes, deterministically (no timestamps or random metadata)."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", optimize=False, compress_level=6)
    elif fmt == "jpg":
        image.save(buf, format="JPEG", quality=95, subsampling=0)
    else:
        raise ValueError(f"unknown image format {fmt!r}; use png or jpg")
    return buf.getvalue()
