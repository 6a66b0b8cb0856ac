"""Generated photos with known words on them: the OCR tests, scripts/eval_ocr.py and scripts/bench_ocr.py.

A picture is one of scenes.py's (a shape on a gradient) with words rendered on
it in the system's fonts (whatever /usr/share/fonts holds, and Pillow's own),
in a size, a colour, sometimes on a sign-like plate, turned a few degrees. The
words come from a fixed list in which none is a prefix of another, so a search
for one word matches only the photos that show it. Drawing is deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from . import scenes

# Plain words a photo might show, 4 to 10 letters; none is a prefix of another.
_WORD_LIST = """
parking bakery harbour library station museum pharmacy theatre garden market bridge castle
window kitchen ticket coffee pizza hotel bicycle tunnel airport garage school temple river
mountain forest island beach village square palace tower church stadium cinema office bank
factory bottle candle mirror pillow blanket jacket helmet camera laptop guitar violin piano
orchard meadow valley canyon desert glacier volcano harvest winter summer autumn spring
monday friday sunday morning evening midnight yellow purple orange silver golden marble
copper timber cotton velvet leather crystal engine rocket planet comet galaxy dragon tiger
zebra giraffe monkey rabbit falcon parrot salmon lobster oyster walnut almond cherry lemon
mango banana tomato potato carrot pepper ginger cinnamon vanilla butter cheese yogurt
noodle dumpling waffle pancake muffin cookie biscuit pretzel burger sandwich salad soup
"""
WORDS = tuple(_WORD_LIST.split())
# Words with accents, for searches that ignore them (`cafe` finds `Café`).
ACCENTED = ("Café", "Crème", "Entrée", "Señor", "Déjà", "Über", "Forêt", "Garçon")
FONT_FOLDER = Path("/usr/share/fonts")
DEFAULT_FONT = "pillow-default"  # ImageFont.load_default at a size
INK = {"black": (18, 18, 18), "white": (248, 248, 248), "red": (200, 30, 30), "blue": (25, 55, 170),
       "yellow": (250, 220, 40)}


def fonts() -> list[str]:
    """The fonts to draw with: every TrueType/OpenType font installed (symbol fonts left out), then Pillow's."""
    found = sorted(str(p) for p in FONT_FOLDER.rglob("*") if p.suffix.lower() in (".ttf", ".otf")
                   and "math" not in p.name.lower() and "symbol" not in p.name.lower())
    return [*found, DEFAULT_FONT]


def load_font(font: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if font == DEFAULT_FONT:
        return ImageFont.load_default(size)
    return ImageFont.truetype(font, size)


@dataclass(frozen=True)
class PlacedWord:
    text: str  # as drawn (case and accents as on the photo)
    height: int  # font size in pixels: the line's height from ascender to descender
    font: str
    ink: str
    plate: bool  # drawn on a plain rectangle, like a sign
    angle: float  # degrees


@dataclass(frozen=True)
class TextPhoto:
    path: Path
    words: tuple[PlacedWord, ...]


def _contrasting_ink(rng: random.Random, background: str, plate: bool) -> str:
    if plate:
        return rng.choice(["black", "white", "red", "blue"])
    dark = background in ("night", "grass")
    return rng.choice(["white", "yellow"] if dark else ["black", "blue", "red", "white"] if background == "sky"
                      else ["black", "blue", "red"])


def _word_image(word: PlacedWord) -> Image.Image:
    """The word alone on a transparent layer (on its plate when it has one), turned by its angle."""
    font = load_font(word.font, word.height)
    left, top, right, bottom = font.getbbox(word.text)
    pad = word.height // 3 if word.plate else 2
    layer = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    drawing = ImageDraw.Draw(layer)
    if word.plate:
        plate = (245, 245, 240) if word.ink in ("black", "blue", "red") else (30, 60, 120)
        drawing.rectangle((0, 0, layer.width - 1, layer.height - 1), fill=(*plate, 255))
    drawing.text((pad - left, pad - top), word.text, font=font, fill=(*INK[word.ink], 255))
    return layer.rotate(word.angle, resample=Image.Resampling.BICUBIC, expand=True)


def draw_text_photo(rng: random.Random, texts: list[str], size: tuple[int, int], heights: list[int],
                    max_angle: float = 6.0, font_choices: list[str] | None = None,
                    scene: scenes.Scene | None = None) -> tuple[Image.Image, list[PlacedWord]]:
    """A scene (`scene`, else a random one) with each of `texts` drawn once at the matching height, in random
    fonts, inks and places, never overlapping each other, nor the shape unless on a plate (black ink on a black
    shape would be no text at all). A word that finds no free place is left out, and not listed."""
    scene = scene or scenes.random_scene(rng, *size)
    image = scenes.draw(scene)
    taken: list[tuple[int, int, int, int]] = []
    radius = scene.radius * min(scene.width, scene.height)
    shape = (round(scene.cx * scene.width - radius), round(scene.cy * scene.height - radius),
             round(scene.cx * scene.width + radius), round(scene.cy * scene.height + radius))
    placed = []
    for text, height in zip(texts, heights):
        plate = rng.random() < 0.4
        word = PlacedWord(text, height, rng.choice(font_choices or fonts()),
                          _contrasting_ink(rng, scene.background, plate), plate,
                          round(rng.uniform(-max_angle, max_angle), 1))
        layer = _word_image(word)
        if layer.width >= image.width or layer.height >= image.height:
            continue
        for _ in range(50):
            x, y = rng.randrange(image.width - layer.width), rng.randrange(image.height - layer.height)
            box = (x - 8, y - 8, x + layer.width + 8, y + layer.height + 8)
            others = taken if word.plate else [*taken, shape]
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in others):
                image.paste(layer, (x, y), layer)
                taken.append(box)
                placed.append(word)
                break
    return image, placed


def write_text_library(folder: str | Path, count: int, seed: int = 0, size: tuple[int, int] = (1600, 1200),
                       heights: tuple[int, ...] = (16, 24, 32, 48, 72), words_per_photo: int = 3,
                       vocabulary: tuple[str, ...] = WORDS, quality: int = 90) -> list[TextPhoto]:
    """`count` JPEG photos with words on them; each word of `vocabulary` is used at most once in the library
    (so a search for it has one right answer) until the vocabulary runs out, then again."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pool: list[str] = []
    written = []
    for i in range(count):
        texts = []
        for _ in range(words_per_photo):
            if not pool:
                pool = list(vocabulary)
                rng.shuffle(pool)
            word = pool.pop()
            texts.append(rng.choice([word, word.capitalize(), word.upper()]))
        image, placed = draw_text_photo(rng, texts, size, [rng.choice(heights) for _ in texts])
        path = folder / f"text-{i:04d}.jpg"
        image.save(path, quality=quality)
        written.append(TextPhoto(path, tuple(placed)))
    return written
