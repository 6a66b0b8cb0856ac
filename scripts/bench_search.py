"""Query latency on large indexes: whole `clipsearch find` processes, and the ranking inside them.

    python scripts/bench_search.py [--images 100000 1000000] [--model DIR] [--runs 5]

For each size, builds (once, cached in .bench/) an index of random unit vectors
recorded as made by --model (default: the random-weight ViT-B/32 that
../shared/bench sets up in ~/.cache/clipsearch-bench/vit-b32, else the shipped
tiny model), then times, as new processes (wall time and peak RSS, medians):

- cold find: a text the index has never seen, so the ONNX text encoder runs;
- repeated find: a text asked before, answered from the index's remembered vectors;

and, in one process, what every query does after embedding: load the vectors
(memory-mapped cache) and take the top 10. Prints one line per figure.
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
from clipsearch.search import top_k
from clipsearch.store import ImageRecord, Store, encode_vector

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".bench"
BENCH_MODEL = Path.home() / ".cache" / "clipsearch-bench" / "vit-b32"
CLIPSEARCH = Path(sys.executable).with_name("clipsearch")


def model_dim(model: Path) -> int:
    config = json.loads((model / "config.json").read_text())
    return int(config.get("projection_dim") or config["text_config"]["hidden_size"])


def build(path: Path, count: int, model: Path, dim: int) -> None:
    rng = np.random.default_rng(0)
    with Store.open(path) as store:
        if store.count() >= count:
            return
        store.set_model(str(model), dim)
        for start in range(store.count(), count, 10_000):
            vectors = rng.normal(size=(min(10_000, count - start), dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.write([
                ImageRecord(f"/photos/{(start + i) // 1000:04d}/IMG_{start + i:07d}.jpg", 3_000_000, 1,
                            f"{start + i:064x}", 4000, 3000, encode_vector(v))
                for i, v in enumerate(vectors)
            ])
        store.refresh_vector_cache()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--model", type=Path,
                        default=BENCH_MODEL if BENCH_MODEL.is_dir() else REPO / "models/tiny-clip")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    model = args.model.resolve()
    dim = model_dim(model)
    CACHE.mkdir(exist_ok=True)
    print(f"model: {model} ({dim} dims); machine: {os.cpu_count()} cores")
    for count in args.images:
        path = CACHE / f"search-{count}-{model.name}-{dim}.db"
        started = time.perf_counter()
        build(path, count, model, dim)
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6
        print(f"{count:>9,} images: index + cache {size:,.0f} MB "
              f"(built/checked in {time.perf_counter() - started:.1f}s)")
        run_find(path, "a warm-up query")  # exports the text encoder if needed; warms the page cache
        export = textencoder.export_dir(str(model))
        if count == args.images[0] and export is not None and (export / "settings.json").exists():
            settings = json.loads((export / "settings.json").read_text())
            print(f"text encoder vs torch on {len(textencoder.AGREEMENT_PROMPTS)} prompts: min cosine fp32 "
                  f"{settings['fp32_min_cosine']:.6f}, int8 {settings['int8_min_cosine']:.6f}; "
                  f"in use: {settings['auto']}")

        cold = [run_find(path, f"a photo of {uuid.uuid4().hex[:8]}") for _ in range(args.runs)]
        repeated = [run_find(path, "a warm-up query") for _ in range(args.runs)]
        for label, runs in (("cold find (new text)", cold), ("repeated find (remembered)", repeated)):
            walls, peaks = zip(*runs)
            print(f"{count:>9,} images: {label}: {statistics.median(walls):.3f} s "
                  f"(runs {', '.join(f'{w:.2f}' for w in walls)}), peak RSS {statistics.median(peaks):.0f} MB")

        query = np.random.default_rng(1).normal(size=dim).astype(np.float32)
        query /= np.linalg.norm(query)
        load, rank = [], []
        for _ in range(args.runs):
            with Store.open(path, create=False) as store:
                t0 = time.perf_counter()
                vectors = store.vectors()
                t1 = time.perf_counter()
                top_k(vectors.matrix, query, 10)
                load.append(t1 - t0)
                rank.append(time.perf_counter() - t1)
        print(f"{count:>9,} images: in-process load {statistics.median(load) * 1000:.0f} ms, "
              f"rank {statistics.median(rank) * 1000:.0f} ms (median of {args.runs})")


if __name__ == "__main__":
    main()
