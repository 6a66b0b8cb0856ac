"""Synthetic scenes: one coloured shape on a background, with captions.

They train the tiny CLIP model shipped in `models/tiny-clip`, fill the demo
library (`make demo`) and give the tests a photo library whose right answers
are known. Drawing is deterministic for a given `random.Random` state.
"""

from __future__ import annotations

import io
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
        return rotated([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                        (-a, -b), (-b, -b)])
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


# -- a library with known duplicates, for dedupe's tests and scripts/eval_dedupe.py --------------

# How a file relates to its family's original: near-identical renditions of the same picture...
NEAR_KINDS = ("exact", "resized", "jpeg50", "jpeg95", "png", "webp", "stripped", "rotated", "crop", "brighter")
# Two generated photos this alike would be the same picture; the library never holds such a pair.
_DISTINCT = 0.12
# ...and things that are not the same picture: a greyscale conversion (an edit, see README) and
# burst frames (the subject moved a little).
OTHER_KINDS = ("grey", "burst")


@dataclass(frozen=True)
class LibraryFile:
    path: Path
    family: int  # files of one family show the same scene; -1 for unrelated photos
    kind: str  # "original", a NEAR_KINDS or OTHER_KINDS entry, "unrelated", "lookalike", "raw", "raw-jpeg"


def _camera_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "clipsearch"  # Make
    exif[0x0110] = "Scene Camera"  # Model
    exif[0x0132] = "2024:06:01 12:00:00"  # DateTime
    return exif


def _save_variant(original: Image.Image, kind: str, path: Path, quality: int) -> Path:
    """Write one rendition of `original`; returns the path written (its extension may change)."""
    width, height = original.size
    if kind == "resized":
        original.resize((width // 2, height // 2), Image.Resampling.LANCZOS).save(path, quality=85)
    elif kind in ("jpeg50", "jpeg95"):
        original.save(path, quality=int(kind[4:]))
    elif kind == "png":
        path = path.with_suffix(".png")
        original.save(path)
    elif kind == "webp":
        path = path.with_suffix(".webp")
        original.save(path, quality=80)
    elif kind == "stripped":  # same encoder settings, no EXIF block: same pixels, other bytes
        original.save(path, quality=quality)
    elif kind == "rotated":  # pixels stored sideways, the orientation tag turns them upright
        exif = _camera_exif()
        exif[0x0112] = 6
        original.transpose(Image.Transpose.ROTATE_90).save(path, quality=quality, exif=exif)
    elif kind == "crop":  # 2% off every side
        dx, dy = round(width * 0.02), round(height * 0.02)
        original.crop((dx, dy, width - dx, height - dy)).save(path, quality=quality)
    elif kind == "brighter":
        array = np.asarray(original, dtype=np.float32) * 1.05 + 3
        Image.fromarray(array.clip(0, 255).astype(np.uint8)).save(path, quality=quality)
    elif kind == "grey":
        original.convert("L").convert("RGB").save(path, quality=quality)
    else:
        raise ValueError(f"unknown variant {kind!r}")
    return path


def _burst_frame(scene: Scene, rng: random.Random, frame: int) -> Image.Image:
    """The same scene `frame` moments later: the subject moved and turned, fresh sensor noise."""
    step = random.Random(scene.seed)  # one direction of motion per scene, towards the middle
    dx = step.uniform(0.06, 0.08) * (1 if scene.cx < 0.5 else -1)
    dy = step.uniform(0.04, 0.06) * (1 if scene.cy < 0.5 else -1)
    moved = Scene(**{**scene.__dict__, "cx": scene.cx + frame * dx, "cy": scene.cy + frame * dy,
                     "angle": scene.angle + frame * rng.uniform(8, 15)})
    array = np.asarray(draw(moved), dtype=np.float32)
    array += np.random.default_rng(scene.seed + frame).normal(0, 3, array.shape)
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


def fake_raw(preview: Image.Image) -> bytes:
    """A TIFF-structured file with a JPEG preview inside, laid out like a camera RAW."""
    header, jpeg = io.BytesIO(), io.BytesIO()
    preview.resize((160, 120)).save(header, "TIFF")
    preview.save(jpeg, "JPEG", quality=97)
    return header.getvalue() + bytes(64) + jpeg.getvalue() + bytes(1024)


def _alike(a: Scene, b: Scene) -> bool:
    return (a.colour, a.shape, a.background) == (b.colour, b.shape, b.background) and \
        abs(a.cx - b.cx) + abs(a.cy - b.cy) + abs(a.radius - b.radius) < _DISTINCT * 3


def write_duplicate_library(folder: str | os.PathLike, families: int = 12, unrelated: int = 30,
                            raw_pairs: int = 4, seed: int = 11, size: tuple[int, int] = (640, 480),
                            quality: int = 90) -> list[LibraryFile]:
    """A photo library whose duplicates are known.

    Each family has an original (in `originals/`), one file of every NEAR_KINDS
    and OTHER_KINDS variant (in `copies/`, `exports/` and `burst/`) and a
    lookalike: another photo of the same colour, shape and background. Then
    `unrelated` photos and `raw_pairs` RAW+JPEG pairs from one camera.
    """
    folder = Path(folder)
    for sub in ("originals", "copies", "exports", "burst", "other", "camera"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files: list[LibraryFile] = []
    drawn: list[Scene] = []

    def new_scene(like: Scene | None = None) -> Scene:
        """A random scene (with `like`'s colour, shape and background) unlike every scene drawn so far."""
        while True:
            scene = random_scene(rng, *size)
            if like is not None:
                scene = Scene(**{**scene.__dict__, "colour": like.colour, "shape": like.shape,
                                 "background": like.background})
            if not any(_alike(scene, other) for other in drawn):
                drawn.append(scene)
                return scene

    for family in range(families):
        scene = new_scene()
        original = draw(scene)
        name = f"f{family:02d}-{scene.colour}-{scene.shape}"
        path = folder / "originals" / f"{name}.jpg"
        original.save(path, quality=quality, exif=_camera_exif())
        files.append(LibraryFile(path, family, "original"))
        copy = folder / "copies" / f"{name}.jpg"
        copy.write_bytes(path.read_bytes())
        files.append(LibraryFile(copy, family, "exact"))
        for kind in (*NEAR_KINDS[1:], "grey"):
            written = _save_variant(original, kind, folder / "exports" / f"{name}-{kind}.jpg", quality)
            files.append(LibraryFile(written, family, kind))
        for frame in (1, 2):
            path = folder / "burst" / f"{name}-burst{frame}.jpg"
            _burst_frame(scene, rng, frame).save(path, quality=quality)
            files.append(LibraryFile(path, family, "burst"))
        lookalike = new_scene(like=scene)
        path = folder / "other" / f"{name}-lookalike.jpg"
        draw(lookalike).save(path, quality=quality)
        files.append(LibraryFile(path, -1, "lookalike"))
    for number in range(unrelated):
        scene = new_scene()
        path = folder / "other" / f"u{number:03d}-{scene.colour}-{scene.shape}.jpg"
        draw(scene).save(path, quality=quality)
        files.append(LibraryFile(path, -1, "unrelated"))
    for number in range(raw_pairs):
        picture = draw(new_scene())
        stem = folder / "camera" / f"IMG_{number + 1:04d}"
        stem.with_suffix(".CR2").write_bytes(fake_raw(picture))
        picture.save(stem.with_suffix(".JPG"), quality=quality, exif=_camera_exif())
        files.append(LibraryFile(stem.with_suffix(".CR2"), -1, "raw"))
        files.append(LibraryFile(stem.with_suffix(".JPG"), -1, "raw-jpeg"))
    return files


# -- a tag vocabulary for generated scenes, for the tagging tests and scripts/eval_tags.py -------------

# Tags the scenes never show: automatic tagging must keep them off.
UNRELATED_TAGS = {
    "dog": "a photo of a dog | a puppy",
    "car": "a photo of a car",
    "sunset": "a sunset | an orange evening sky",
    "receipt": "a receipt | a shopping receipt",
    "people": "a group of people",
}


def tag_vocabulary() -> str:
    """A vocabulary file's text: every colour and shape (prompts the tiny model knows) plus UNRELATED_TAGS."""
    lines = [f"{c}: {c} | something {c} | {'an' if c[0] in 'aeiou' else 'a'} {c} thing" for c in COLOURS]
    lines += [f"{s}: a {s} | a photo of a {s}" for s in SHAPES]
    lines += [f"{tag}: {prompts}" for tag, prompts in UNRELATED_TAGS.items()]
    return "\n".join(lines) + "\n"
