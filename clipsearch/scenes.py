"""Synthetic scenes: one coloured shape on a background, with captions.

They train the tiny CLIP model shipped in `models/tiny-clip`, fill the demo
library (`make demo`) and give the tests a photo library whose right answers
are known. Drawing is deterministic for a given `random.Random` state.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (35, 75, 215),
    "yellow": (245, 215, 40),
    "purple": (135, 45, 175),
    "orange": (250, 135, 25),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
# Each background: name and two colours for a vertical gradient.
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "grey": ((128, 128, 128), (150, 150, 150)),
    "sky": ((120, 170, 235), (200, 225, 250)),
    "grass": ((70, 120, 45), (110, 160, 70)),
    "sand": ((220, 200, 150), (190, 165, 115)),
    "night": ((25, 25, 50), (55, 55, 85)),
    "pink": ((235, 170, 190), (245, 200, 215)),
}

# Shape colours that would vanish into a background are never drawn on it.
_LOW_CONTRAST = {("black", "night"), ("green", "grass"), ("white", "pink"), ("yellow", "sand")}

_TEMPLATES = (
    "a {c} {s}",
    "a {c} {s}",
    "a photo of a {c} {s}",
    "{c} {s}",
    "a picture of a {c} {s}",
    "a {c} {s} on a {b} background",
    "a {size} {c} {s}",
    "a {c} {s} in front of a {b} background",
)
_SINGLE_ATTRIBUTE_TEMPLATES = ("a {s}", "a photo of a {s}", "something {c}", "{c}", "a {c} thing")


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    width: int
    height: int
    cx: float  # centre of the shape, as fractions of width / height
    cy: float
    radius: float  # as a fraction of the short side
    angle: float  # degrees
    seed: int  # texture noise and colour jitter

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def size_word(self) -> str:
        return "big" if self.radius >= 0.29 else "small"


def random_scene(rng: random.Random, width: int = 256, height: int | None = None) -> Scene:
    """A random scene; the shape stays inside the centre square so a centre crop keeps it."""
    if height is None:
        height = width
    colour = rng.choice(list(COLOURS))
    background = rng.choice([b for b in BACKGROUNDS if (colour, b) not in _LOW_CONTRAST])
    radius = rng.uniform(0.2, 0.38)
    short = min(width, height)
    margin_x = (width - short) / 2 / width
    margin_y = (height - short) / 2 / height
    span_x = short / width
    span_y = short / height
    cx = margin_x + span_x * rng.uniform(radius + 0.02, 1 - radius - 0.02)
    cy = margin_y + span_y * rng.uniform(radius + 0.02, 1 - radius - 0.02)
    return Scene(
        colour=colour,
        shape=rng.choice(SHAPES),
        background=background,
        width=width,
        height=height,
        cx=cx,
        cy=cy,
        radius=radius,
        angle=rng.uniform(0, 360),
        seed=rng.randrange(2**31),
    )


def caption(scene: Scene, rng: random.Random) -> str:
    """A training caption; now and then one that names a single attribute."""
    if rng.random() < 0.12:
        template = rng.choice(_SINGLE_ATTRIBUTE_TEMPLATES)
    else:
        template = rng.choice(_TEMPLATES)
    return template.format(c=scene.colour, s=scene.shape, b=scene.background, size=scene.size_word)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def rotated(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        a = math.radians(angle)
        cos, sin = math.cos(a), math.sin(a)
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]

    if shape == "square":
        s = r * 0.85
        return rotated([(-s, -s), (s, -s), (s, s), (-s, s)])
    if shape == "triangle":
        return rotated([(r * math.cos(t), r * math.sin(t)) for t in (math.radians(d) for d in (-90, 30, 150))])
    if shape == "star":
        points = []
        for i in range(10):
            rr = r if i % 2 == 0 else r * 0.45
            t = math.radians(-90 + 36 * i)
            points.append((rr * math.cos(t), rr * math.sin(t)))
        return rotated(points)
    if shape == "cross":
        a, b = r, r * 0.33
        return rotated([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)])
    raise ValueError(f"unknown shape {shape!r}")


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def draw(scene: Scene) -> Image.Image:
    """Render a scene as an RGB image of scene.width x scene.height pixels."""
    rng = random.Random(scene.seed)
    top, bottom = BACKGROUNDS[scene.background]
    top, bottom = _jitter(top, rng, 12), _jitter(bottom, rng, 12)
    gradient = Image.linear_gradient("L").resize((scene.width, scene.height))
    image = Image.composite(Image.new("RGB", gradient.size, bottom), Image.new("RGB", gradient.size, top), gradient)
    # A little texture so the background is not a flat colour.
    small = (max(1, scene.height // 4), max(1, scene.width // 4))
    grain = np.random.default_rng(scene.seed).normal(128, 24, small).clip(0, 255).astype(np.uint8)
    noise = Image.fromarray(grain).resize(image.size)
    image = Image.blend(image, Image.merge("RGB", (noise, noise, noise)), 0.12)

    drawing = ImageDraw.Draw(image)
    short = min(scene.width, scene.height)
    cx, cy, r = scene.cx * scene.width, scene.cy * scene.height, scene.radius * short
    fill = _jitter(COLOURS[scene.colour], rng, 18)
    if scene.shape == "circle":
        drawing.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        drawing.polygon(_polygon(scene.shape, cx, cy, r, scene.angle), fill=fill)
    if short >= 128:
        image = image.filter(ImageFilter.GaussianBlur(radius=short / 400))
    return image


def write_library(folder: str | os.PathLike, count: int, seed: int = 0, size: tuple[int, int] = (320, 240),
                  quality: int = 90) -> list[tuple[Path, Scene]]:
    """Write `count` JPEG scenes into `folder` (named by label) and return what each one shows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = []
    for i in range(count):
        scene = random_scene(rng, *size)
        path = folder / f"{i:04d}-{scene.colour}-{scene.shape}.jpg"
        draw(scene).save(path, quality=quality)
        written.append((path, scene))
    return written
