"""What photo metadata costs: reading EXIF during decode, and date/camera filters on a large index.

    python scripts/bench_metadata.py [--photos 6] [--images 200000] [--repeats 5]

1. Decode of 12 MP camera JPEGs (with EXIF) as the indexer does it, and the EXIF read alone on the
   same opened files: the share of the decode that metadata adds.
2. `find` after embedding its query over an index of random vectors with dates and cameras (built
   once, cached in .bench/): load + rank unfiltered, and with --after/--before/--camera. Prints medians.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clipsearch.indexing import images, metadata
from clipsearch.search import Filters, _filtered, _load_vectors
from clipsearch.store import ImageRecord, Store, encode_vector
from clipsearch_dev import scenes

CACHE = Path(__file__).resolve().parent.parent / ".bench"
CAMERAS = [("Canon", "Canon EOS R5"), ("NIKON CORPORATION", "NIKON Z 6"), ("Apple", "iPhone 15"),
           ("Google", "Pixel 8"), ("SONY", "ILCE-7M4")]


def camera_jpeg(seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = CAMERAS[seed % len(CAMERAS)]
    exif.get_ifd(0x8769)[0x9003] = "2024:06:15 10:30:00"
    buffer = io.BytesIO()
    scenes.draw(scenes.random_scene(random.Random(seed), 4000, 3000)).save(buffer, "JPEG", quality=92, exif=exif)
    return buffer.getvalue()


def bench_decode(count: int, repeats: int) -> None:
    photos = [camera_jpeg(seed) for seed in range(count)]
    prep = images.Preprocess()
    decode, exif = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for data in photos:
            images.decode(data, prep)
        t1 = time.perf_counter()
        for data in photos:
            metadata.from_image(Image.open(io.BytesIO(data)))
        t2 = time.perf_counter()
        decode.append((t1 - t0) / count)
        exif.append((t2 - t1) / count)
    d, e = statistics.median(decode), statistics.median(exif)
    print(f"decode a 12 MP camera JPEG (draft mode, with EXIF read): {d * 1000:.1f} ms; "
          f"open + EXIF read alone: {e * 1000:.2f} ms ({e / d:.1%} of the decode; median of {repeats})")


def build(path: Path, count: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    with Store.open(path) as store:
        if store.count() >= count:
            return
        store.set_model("bench/random", dim)
        for start in range(0, count, 5000):
            vectors = rng.normal(size=(5000, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            days = rng.integers(0, 3650, 5000)
            store.write([
                ImageRecord(f"/photos/{(start + i) // 1000:04d}/IMG_{start + i:07d}.jpg", 3_000_000, 1,
                            f"{start + i:064x}", 4000, 3000, encode_vector(v),
                            taken=f"{2015 + int(days[i]) // 365:04d}-{int(days[i]) % 365 // 31 + 1:02d}-"
                                  f"{int(days[i]) % 28 + 1:02d}T12:00:00",
                            taken_source="exif", camera_make=CAMERAS[(start + i) % 5][0],
                            camera_model=CAMERAS[(start + i) % 5][1])
                for i, v in enumerate(vectors)
            ])


def bench_filters(count: int, dim: int, repeats: int) -> None:
    path = CACHE / f"metadata-{count}-{dim}.db"
    path.parent.mkdir(exist_ok=True)
    build(path, count, dim)
    query = np.random.default_rng(1).normal(size=dim).astype(np.float32)
    query /= np.linalg.norm(query)
    cases = {"no filter": Filters(), "--after 2024 (10%)": Filters.parse("2024"),
             "--after 2020-06 --before 2020-08": Filters.parse("2020-06", "2020-08"),
             "--camera canon (20%)": Filters.parse(camera="canon")}
    for label, filters in cases.items():
        times, kept = [], 0
        for _ in range(repeats):
            with Store.open(path, create=False) as store:
                t0 = time.perf_counter()
                vectors = _filtered(store, _load_vectors(store, None), filters, None)
                vectors.search(query, 10)
                times.append(time.perf_counter() - t0)
                kept = len(vectors)
        print(f"find over {count} images, {label}: {statistics.median(times) * 1000:.0f} ms "
              f"({kept} images searched; median of {repeats})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bench_decode(args.photos, args.repeats)
    bench_filters(args.images, args.dim, args.repeats)


if __name__ == "__main__":
    main()
