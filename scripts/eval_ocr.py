"""How well `find --text WORD` finds photos by the words on them: recall by word height, and precision.

    python scripts/eval_ocr.py [--photos 150] [--size 1600x1200] [--heights 12,16,24,32,48,72] [--seed 0]

Writes generated photos (clipsearch_dev/text_scenes.py: a scene with three words each, in every font
installed under /usr/share/fonts and Pillow's own, in black, white, red, blue or yellow, 40 % of them on a
sign-like plate, turned up to 6 degrees, at a height drawn from --heights: the font size in pixels, the
line from ascender to descender), indexes them with the shipped tiny model, runs the OCR pass, then asks
`find --text WORD` (through the library) for every word drawn. A word counts as found in a photo when the
photo is among the results; precision is the share of results that show the word. Prints one line per
figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # clipsearch_dev: not installed

from clipsearch import Library
from clipsearch.ocr import engine
from clipsearch_dev import text_scenes

TINY_MODEL = str(Path(__file__).resolve().parent.parent / "models" / "tiny-clip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=150)
    parser.add_argument("--size", default="1600x1200")
    parser.add_argument("--heights", default="12,16,24,32,48,72")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    heights = tuple(int(h) for h in args.heights.split(","))

    with tempfile.TemporaryDirectory() as workdir:
        photos = text_scenes.write_text_library(Path(workdir) / "photos", args.photos, args.seed, (width, height),
                                                heights)
        with Library(Path(workdir) / "index.db", TINY_MODEL, "cpu") as library:
            library.index(Path(workdir) / "photos")
            started = time.perf_counter()
            report = library.ocr()
            seconds = time.perf_counter() - started
            where: dict[str, set[str]] = {}  # word (lower case) -> photos showing it
            for photo in photos:
                for word in photo.words:
                    where.setdefault(word.text.lower(), set()).add(str(photo.path))
            found = {word: {hit.path for hit in library.find(text=word, top=10_000)} for word in where}

    print(f"photos: {args.photos} at {width}x{height}, {sum(len(p.words) for p in photos)} words, "
          f"{len(text_scenes.fonts())} fonts; OCR {engine.model_version()}")
    print(f"ocr pass: {report.read} photos in {seconds:.1f} s ({report.read / seconds:.2f} photos/s), "
          f"{report.with_text} with text, {report.lines} lines")
    hits, totals = Counter[int](), Counter[int]()
    for photo in photos:
        for word in photo.words:
            totals[word.height] += 1
            hits[word.height] += str(photo.path) in found[word.text.lower()]
    for size in sorted(totals):
        print(f"recall at {size:3d} px ({size / max(width, height) * 100:.1f} % of the long side): "
              f"{hits[size] / totals[size]:.3f} ({hits[size]}/{totals[size]})")
    big = [h for h in totals if h >= 24]
    print(f"recall at >= 24 px: {sum(hits[h] for h in big) / sum(totals[h] for h in big):.3f}")
    returned = sum(len(paths) for paths in found.values())
    right = sum(len(paths & where[word]) for word, paths in found.items())
    print(f"precision of find --text WORD: {right / returned if returned else 1:.3f} ({right}/{returned} results "
          f"over {len(found)} words)")


if __name__ == "__main__":
    main()
