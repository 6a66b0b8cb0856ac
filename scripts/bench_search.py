"""Query latency on large indexes: whole `clipsearch find` processes, the ranking inside them, recall and upkeep.

    python scripts/bench_search.py [--images 100000 1000000 10000000] [--kind clustered uniform]
                                   [--model DIR] [--runs 5] [--delete]

For each size and kind of vectors, builds (once, cached in .bench/) an index of synthetic unit
vectors (`synthetic`: clustered like CLIP's, or uniform random, the hardest case for an approximate
index) recorded as made by --model (default: the random-weight ViT-B/32 that ../shared/bench sets
up in ~/.cache/clipsearch-bench/vit-b32, else the shipped tiny model). Rows are written straight
into SQLite in million-row transactions with the journal off (a scratch file: `index` itself
writes through store.write). Then, timing what a user waits for:

- the vector files: the float16 vector file, and above the switch-over size the faiss IVF
  (vector_index.refresh, built here in this process rather than in the background);
- cold find: a new `clipsearch find` process with a text the index has never seen (the ONNX text
  encoder runs), and repeated find (a remembered text), wall time and peak RSS (/usr/bin/time), medians;
- in one process: ranking alone, approximate and exact (--exact), and recall@10 of the approximate
  index against exact ranking over 100 queries drawn like the library's vectors (medians, one query at a time);
- an incremental `index`-like run that adds 10,000 photos (store.write + refresh): its time, and
  that the IVF file was not rebuilt; the photos are then removed again, so every run measures the same library;
- the disk used. --delete removes each index and its files when done (10M: ~26 GB).
Prints one line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from clipsearch.models import onnx_text as textencoder
from clipsearch.store import ImageRecord, Store, ann, encode_vector, vector_index

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".bench"
BENCH_MODEL = Path.home() / ".cache" / "clipsearch-bench" / "vit-b32"
CLIPSEARCH = Path(sys.executable).with_name("clipsearch")
ADDED = "/photos/new"  # where add_photos puts its photos


def model_dim(model: Path) -> int:
    config = json.loads((model / "config.json").read_text())
    return int(config.get("projection_dim") or config["text_config"]["hidden_size"])


def synthetic(kind: str, start: int, count: int, dim: int, total: int) -> np.ndarray:
    """Rows start..start+count of a synthetic library of `total` unit vectors, the same whatever the chunking.

    uniform: random directions (no structure: the hardest case for an approximate index).
    clustered: like CLIP's image vectors, which share a common direction and gather around topics
    (cosine ~0.5 between unrelated photos, 0.7-0.9 within a topic): one topic per 2,000 photos.
    """
    rng = np.random.default_rng([start, total])
    if kind == "uniform":
        rows = rng.standard_normal((count, dim), dtype=np.float32)
    else:
        topics = np.random.default_rng([dim, total]).standard_normal((max(64, total // 2000), dim), dtype=np.float32)
        topics /= np.linalg.norm(topics, axis=1, keepdims=True)
        common = topics[0]
        noise = rng.standard_normal((count, dim), dtype=np.float32) / np.sqrt(dim)
        spread = rng.uniform(0.5, 1.0, size=(count, 1)).astype(np.float32)
        rows = 0.6 * common + topics[rng.integers(1, len(topics), count)] + spread * noise
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def build(path: Path, count: int, model: Path, dim: int, kind: str) -> None:
    """Write `count` synthetic images straight into a new index, a million rows per transaction, journal off."""
    import sqlite3

    with Store.open(path) as store:
        if store.count() >= count:
            return
        store.set_model(str(model), dim)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    have = conn.execute("SELECT count(*) FROM images").fetchone()[0] // 50_000 * 50_000
    for start in range(have, count, 50_000):
        if start % 1_000_000 == 0 or start == have:
            conn.execute("BEGIN")
        vectors = synthetic(kind, start, min(50_000, count - start), dim, count).astype(np.float16)
        conn.executemany("INSERT OR IGNORE INTO images (path, size, mtime_ns, hash, width, height, vector) "
                         "VALUES (?, 3000000, 1, ?, 4000, 3000, ?)",
                         ((f"/photos/{(start + i) // 1000:05d}/IMG_{start + i:08d}.jpg", f"{start + i:064x}",
                           v.tobytes()) for i, v in enumerate(vectors)))
        if (start + len(vectors)) % 1_000_000 == 0 or start + len(vectors) == count:
            conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    with Store.open(path) as store:
        store.write([])  # a new change token, as after any index run


def run_find(db: Path, text: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `clipsearch find` process, measured by /usr/bin/time as
    ../shared/bench/vs-rclip.sh does (a child's own rusage would include this process's memory)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(["/usr/bin/time", "-f", "%e %M", str(CLIPSEARCH), "find", text, "--db", str(db),
                             "--top", "10"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            check=False)
    if result.returncode != 0:
        raise SystemExit(f"find failed: {result.stderr}")
    wall, peak_kb = result.stderr.split()[-2:]
    return float(wall), float(peak_kb) / 1024


def files_mb(path: Path) -> dict[str, float]:
    return {p.name[len(path.name):] or ".db": p.stat().st_size / 1e6 for p in path.parent.glob(path.name + "*")}


def recall_at_10(path: Path, kind: str, dim: int, count: int, queries: int) -> tuple[float, float, float]:
    """Mean recall@10 of the index's ranking against exact ranking (`--exact`: every live row, the photos
    removed since left out); ms per query of each, one query at a time as `find` asks (in one process)."""
    held_out = synthetic(kind, 10 * count, queries, dim, count)  # drawn like the library, not in it
    found, exact, fast, slow = [], [], [], []
    with Store.open(path, create=False) as store:
        index = vector_index.open_index(store)
        for query in held_out:
            started = time.perf_counter()
            found.append({i for i, _ in index.search(query, 10)})
            fast.append(time.perf_counter() - started)
            started = time.perf_counter()
            exact.append({i for i, _ in index.search(query, 10, exact=True)})
            slow.append(time.perf_counter() - started)
    recall = float(np.mean([len(f & e) / 10 for f, e in zip(found, exact)]))
    return recall, statistics.median(fast) * 1000, statistics.median(slow) * 1000


def add_photos(path: Path, kind: str, dim: int, count: int, added: int = 10_000) -> tuple[float, bool]:
    """An index run's writing and upkeep for `added` new photos: seconds, and whether the IVF file was rewritten.
    The photos are removed again afterwards (`remove_added`), so every run measures the same library."""
    ivf = ann.ann_path(path)
    before = ivf.stat().st_mtime_ns if ivf.exists() else None
    vectors = synthetic(kind, 20 * count, added, dim, count)
    started = time.perf_counter()
    with Store.open(path, create=False) as store, store.writer():
        for start in range(0, added, 1000):
            store.write([ImageRecord(f"{ADDED}/{uuid.uuid4().hex}.jpg", 3_000_000, 1, uuid.uuid4().hex, 4000,
                                     3000, encode_vector(v)) for v in vectors[start:start + 1000]])
        vector_index.refresh(store, background=False)
    seconds = time.perf_counter() - started
    rewritten = (ivf.stat().st_mtime_ns if ivf.exists() else None) != before
    remove_added(path)
    return seconds, rewritten


def remove_added(path: Path) -> None:
    """Take out the photos add_photos wrote (as `index` does for deleted files): their rows in the vector file
    become dead ones, which the IVF never held."""
    with Store.open(path, create=False) as store, store.writer():
        added = store.paths(ADDED)
        if added:
            store.remove(added)
            vector_index.refresh(store, background=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kind", nargs="+", default=["clustered"], choices=["clustered", "uniform"])
    parser.add_argument("--model", type=Path,
                        default=BENCH_MODEL if BENCH_MODEL.is_dir() else REPO / "models/tiny-clip")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delete", action="store_true", help="delete each index and its files when done")
    args = parser.parse_args()
    model = args.model.resolve()
    dim = model_dim(model)
    CACHE.mkdir(exist_ok=True)
    print(f"model: {model} ({dim} dims); machine: {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}; "
          f"approximate from {vector_index.approximate_from():,} images")
    for count in args.images:
        for kind in args.kind:
            path = CACHE / f"search-{kind}-{count}-{model.name}-{dim}.db"
            label = f"{count:>10,} {kind}"
            started = time.perf_counter()
            build(path, count, model, dim, kind)
            remove_added(path)  # left by an earlier run that was interrupted (or by one before this was done)
            print(f"{label}: rows written/checked in {time.perf_counter() - started:.0f} s", flush=True)
            with Store.open(path, create=False) as store, store.writer():
                started = time.perf_counter()
                vector_index.sync(store)
                synced = time.perf_counter() - started
                needed = vector_index.maintain(store, background=False)
                built = time.perf_counter() - started - synced
            print(f"{label}: vector file {synced:.0f} s, IVF ({needed or 'up to date'}) {built:.0f} s; "
                  f"files MB {json.dumps({k: round(v) for k, v in files_mb(path).items()})}", flush=True)
            run_find(path, "a warm-up query")  # exports the text encoder if needed; warms the page cache
            export = textencoder.export_dir(str(model))
            if export is not None and (export / "settings.json").exists() and count == args.images[0]:
                settings = json.loads((export / "settings.json").read_text())
                print(f"text encoder in use: {settings['auto']}")
            cold = [run_find(path, f"a photo of {uuid.uuid4().hex[:8]}") for _ in range(args.runs)]
            repeated = [run_find(path, "a warm-up query") for _ in range(args.runs)]
            for what, runs in (("cold find (new text)", cold), ("repeated find (remembered)", repeated)):
                walls, peaks = zip(*runs)
                print(f"{label}: {what}: {statistics.median(walls):.3f} s "
                      f"(runs {', '.join(f'{w:.2f}' for w in walls)}), peak RSS {statistics.median(peaks):.0f} MB",
                      flush=True)
            queries = 100
            recall, fast, slow = recall_at_10(path, kind, dim, count, queries)
            with Store.open(path, create=False) as store:
                used = vector_index.describe(store)["kind"]
            print(f"{label}: ranking in-process: {used} {fast:.1f} ms, --exact {slow:.1f} ms; "
                  f"recall@10 vs exact {recall:.3f} ({queries} queries)", flush=True)
            seconds, rebuilt = add_photos(path, kind, dim, count)
            print(f"{label}: adding 10,000 photos (write + vector upkeep): {seconds:.1f} s, IVF "
                  f"{'rewritten' if rebuilt else 'untouched (new rows ranked exactly until extended)'}", flush=True)
            total = sum(files_mb(path).values())
            print(f"{label}: disk used {total / 1000:.1f} GB", flush=True)
            if args.delete:
                for file in path.parent.glob(path.name + "*"):
                    file.unlink()


if __name__ == "__main__":
    main()
