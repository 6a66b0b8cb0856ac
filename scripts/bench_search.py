"""Query latency on a large index, without a model: load vectors from SQLite + rank.

    python scripts/bench_search.py [--images 200000] [--dim 512] [--queries 5]

Builds (once, cached in .bench/) an index of random unit vectors, then times
what every `find` / `similar` does after embedding its query: reading the
vectors of the index (or of one folder) and taking the top 10. Prints medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from clipsearch.search import top_k
from clipsearch.store import ImageRecord, Store, encode_vector

CACHE = Path(__file__).resolve().parent.parent / ".bench"


def build(path: Path, count: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    with Store.open(path) as store:
        if store.count() >= count:
            return
        store.set_model("bench/random", dim)
        for start in range(0, count, 5000):
            vectors = rng.normal(size=(5000, dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.write([
                ImageRecord(f"/photos/{(start + i) // 1000:04d}/IMG_{start + i:07d}.jpg", 3_000_000, 1,
                            f"{start + i:064x}", 4000, 3000, encode_vector(v))
                for i, v in enumerate(vectors)
            ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=5)
    args = parser.parse_args()
    path = CACHE / f"search-{args.images}-{args.dim}.db"
    path.parent.mkdir(exist_ok=True)
    started = time.perf_counter()
    build(path, args.images, args.dim)
    print(f"setup: {args.images} vectors of {args.dim} dims, {path.stat().st_size / 1e6:.0f} MB database "
          f"(built/checked in {time.perf_counter() - started:.1f}s)")
    query = np.random.default_rng(1).normal(size=args.dim).astype(np.float32)
    query /= np.linalg.norm(query)

    Path(f"{path}.vectors").unlink(missing_ok=True)
    with Store.open(path, create=False) as store:
        t0 = time.perf_counter()
        top_k(store.vectors().matrix, query, 10)
        print(f"no cache: read every row from SQLite (then write the cache): "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")

    for label, folder in (("whole index", None), ("one folder (--in, 1000 images)", "/photos/0042")):
        load, rank = [], []
        for _ in range(args.queries):
            with Store.open(path, create=False) as store:
                t0 = time.perf_counter()
                vectors = store.vectors(folder)
                t1 = time.perf_counter()
                top_k(vectors.matrix, query, 10)
                t2 = time.perf_counter()
            load.append(t1 - t0)
            rank.append(t2 - t1)
        print(f"{label}: load {statistics.median(load) * 1000:.0f} ms, rank {statistics.median(rank) * 1000:.1f} ms, "
              f"total {statistics.median(np.add(load, rank)) * 1000:.0f} ms (median of {args.queries})")


if __name__ == "__main__":
    main()
