"""What reading text in photos costs on this machine.

    python scripts/bench_ocr.py [--photos ~/.cache/clipsearch-bench/photos200] [--repeat 5] [--workers 1,2]

Prints one line per figure:
- seconds per picture (median of --repeat, one reading thread with one onnxruntime thread) for a 12 MP
  photo without text (the first of --photos), a 12 MP photo with text (generated: signs of 60-160 px) and
  a 2560x1440 screenshot (generated: 40 lines of 18-22 px text), and the stages of the first: decode for
  detection, detection, and, for the others, the sharper decode and recognition;
- photos/s of the whole OCR pass (`Library.ocr`) over --photos, indexed first into a temporary index with
  the shipped tiny model, for each --workers (threads of one onnxruntime thread each) and for one thread
  with two onnxruntime threads, each on a fresh index; and how many photos it found text in.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # clipsearch_dev: not installed

from clipsearch import Library
from clipsearch.indexing import images
from clipsearch.ocr import engine
from clipsearch.ocr.job import read_text
from clipsearch_dev import text_scenes

TINY_MODEL = str(Path(__file__).resolve().parent.parent / "models" / "tiny-clip")
BENCH_PHOTOS = Path("~/.cache/clipsearch-bench/photos200").expanduser()


def photo_with_text(path: Path) -> None:
    rng = random.Random(1)
    words = ["PARKING", "Bakery", "Station Road", "Open 9-18", "Exit", "Museum of Art"]
    image, _ = text_scenes.draw_text_photo(rng, words, (4032, 3024), [60, 80, 100, 120, 140, 160])
    image.save(path, quality=90)


def screenshot(path: Path) -> None:
    rng = random.Random(2)
    image = Image.new("RGB", (2560, 1440), (250, 250, 250))
    drawing = ImageDraw.Draw(image)
    drawing.rectangle((0, 0, 2560, 60), fill=(40, 44, 52))
    for row in range(40):
        size = rng.choice([18, 20, 22])
        words = " ".join(rng.choice(text_scenes.WORDS) for _ in range(rng.randint(4, 12)))
        x = 40 if row % 2 else 1320
        drawing.text((x, 80 + (row // 2) * 66 + (row % 2) * 8), words, fill=(30, 30, 30),
                     font=text_scenes.load_font(text_scenes.fonts()[0], size))
    image.save(path)


def per_picture(reader: engine.Reader, path: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        reader.read_file(path)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def stages(reader: engine.Reader, path: Path, repeat: int) -> dict[str, float]:
    """Median seconds of each step `read_file` takes on `path` (the sharper decode and recognition always)."""
    from rapidocr.utils.process_img import get_rotate_crop_image

    found: dict[str, list[float]] = {}
    for _ in range(repeat):
        data = images.read_bytes(str(path))
        clock = time.perf_counter()

        def tick(name: str) -> None:
            nonlocal clock
            found.setdefault(name, []).append(time.perf_counter() - clock)
            clock = time.perf_counter()

        small = np.asarray(engine._fit(images.open_oriented(data, engine.DETECT_SHORT_SIDE)[0],
                                       engine.DETECT_SIDE * 2))
        tick("decode for detection")
        boxes = reader.detect(small)
        tick("detection")
        big = np.asarray(engine._fit(images.open_oriented(data, engine.READ_SIDE * 3 // 4)[0], engine.READ_SIDE))
        tick("sharper decode")
        scale = big.shape[1] / small.shape[1]
        crops = [get_rotate_crop_image(big, box * scale) for box in boxes]
        if crops:
            reader.recognise(crops)
        tick(f"recognition of {len(crops)} boxes")
    return {name: statistics.median(times) for name, times in found.items()}


def whole_pass(photos: Path, workers: int, threads: int) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as workdir, Library(Path(workdir) / "index.db", TINY_MODEL, "cpu") as lib:
        lib.index(photos)
        reader = engine.Reader(threads)  # loaded before the clock starts, as in any run longer than a few photos
        started = time.perf_counter()
        report = read_text(lib.store, None, None, workers, lambda: reader)
        return report.read / (time.perf_counter() - started), report.read, report.with_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=BENCH_PHOTOS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    print(f"cpus: {len(os.sched_getaffinity(0))}, load: {os.getloadavg()[0]:.2f}; OCR {engine.model_version()}")
    reader = engine.Reader(1)
    plain = sorted(args.photos.glob("*.jpg"))[0]
    with tempfile.TemporaryDirectory() as workdir:
        texty, screen = Path(workdir) / "signs.jpg", Path(workdir) / "screenshot.png"
        photo_with_text(texty)
        screenshot(screen)
        for name, path in (("12 MP photo without text", plain), ("12 MP photo with text", texty),
                           ("2560x1440 screenshot", screen)):
            reader.read_file(path)  # warm
            seconds = per_picture(reader, path, args.repeat)
            lines = len(reader.read_file(path))
            print(f"{name}: {seconds:.3f} s ({1 / seconds:.1f}/s on one core), {lines} lines")
        for name, path in (("12 MP photo without text", plain), ("2560x1440 screenshot", screen)):
            parts = ", ".join(f"{step} {seconds * 1000:.0f} ms" for step, seconds in stages(reader, path,
                                                                                             args.repeat).items())
            print(f"  stages, {name}: {parts}")
    for workers in (int(w) for w in args.workers.split(",")):
        rate, read, with_text = whole_pass(args.photos, workers, 1)
        print(f"ocr pass over {read} photos, {workers} thread(s) x 1 onnxruntime thread: {rate:.2f} photos/s "
              f"({with_text} with text found)")
    rate, read, _ = whole_pass(args.photos, 1, 2)
    print(f"ocr pass over {read} photos, 1 thread x 2 onnxruntime threads: {rate:.2f} photos/s")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
