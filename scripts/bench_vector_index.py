"""The candidates for the approximate index, measured alike: build time, query time, memory, recall@10.

    python scripts/bench_vector_index.py [--images 1000000] [--kind clustered] [--skip hnsw usearch]

On synthetic 512-d unit vectors (bench_search.synthetic: clustered like CLIP's, or uniform), each
candidate is built in this process and asked 100 held-out queries one at a time, as `find` does:

- faiss IVF-SQ8 (what clipsearch uses, store/ann.py): about sqrt(N) cells, 8-bit codes, DEFAULT_PROBES
  cells searched, the best RERANK candidates ranked again exactly from the float16 rows;
- faiss IVF-Flat: the same cells with float32 rows (4x the memory), no re-ranking needed;
- faiss HNSW-Flat (M=32, efConstruction 40, efSearch 128);
- usearch (HNSW, f16 storage, inner product, default connectivity and expansions).

Recall@10 is against exact ranking of the same vectors; memory is the growth of this process's
resident set while building (the index as held in memory). One line per candidate.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_search import synthetic

from clipsearch.store import ann, vector_index


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def timed_queries(search, queries: np.ndarray) -> tuple[list[np.ndarray], float]:
    found, times = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(search(query))
        times.append(time.perf_counter() - started)
    return found, statistics.median(times) * 1000


def faiss_ivf(data: np.ndarray, half: np.ndarray, queries: np.ndarray, flat: bool):
    import faiss

    dim = data.shape[1]
    cells = ann.cells_for(len(data))
    quantizer = faiss.IndexFlatIP(dim)
    if flat:
        index = faiss.IndexIVFFlat(quantizer, dim, cells, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, cells, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    rng = np.random.default_rng(0)
    index.train(data[rng.choice(len(data), min(len(data), cells * ann.TRAIN_PER_CELL), replace=False)])
    index.add(data)
    index.nprobe = min(ann.DEFAULT_PROBES, cells)

    def search(query: np.ndarray) -> np.ndarray:
        if flat:
            return index.search(query[None], 10)[1][0]
        candidates = index.search(query[None], vector_index.RERANK)[1][0]
        candidates = candidates[candidates >= 0]
        scores = half[candidates].astype(np.float32) @ query
        return candidates[np.argsort(-scores)[:10]]

    return index, search, f"{cells} cells, {index.nprobe} probed" + ("" if flat else f", top {vector_index.RERANK} "
                                                                                          "re-ranked from float16")


def faiss_hnsw(data: np.ndarray, half: np.ndarray, queries: np.ndarray):
    import faiss

    index = faiss.IndexHNSWFlat(data.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 40
    index.add(data)
    index.hnsw.efSearch = 128
    return index, lambda query: index.search(query[None], 10)[1][0], "M 32, efConstruction 40, efSearch 128"


def usearch_hnsw(data: np.ndarray, half: np.ndarray, queries: np.ndarray):
    from usearch.index import Index

    index = Index(ndim=data.shape[1], metric="ip", dtype="f16")
    index.add(np.arange(len(data)), data)
    return index, lambda query: np.asarray(index.search(query, 10).keys), "defaults (connectivity 16), f16"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--kind", default="clustered", choices=["clustered", "uniform"])
    parser.add_argument("--skip", nargs="*", default=[], choices=["ivf-sq8", "ivf-flat", "hnsw", "usearch"])
    args = parser.parse_args()
    import faiss

    dim = 512
    data = np.concatenate([synthetic(args.kind, start, min(50_000, args.images - start), dim, args.images)
                           for start in range(0, args.images, 50_000)])
    half = data.astype(np.float16)
    queries = synthetic(args.kind, 10 * args.images, 100, dim, args.images)
    exact = faiss.IndexFlatIP(dim)
    exact.add(half.astype(np.float32))
    truth = exact.search(queries, 10)[1]
    del exact
    print(f"{args.images:,} {args.kind} vectors, {dim}-d; {faiss.omp_get_max_threads()} threads")
    candidates = {
        "ivf-sq8": ("faiss IVF-SQ8 + re-rank", lambda: faiss_ivf(data, half, queries, flat=False)),
        "ivf-flat": ("faiss IVF-Flat", lambda: faiss_ivf(data, half, queries, flat=True)),
        "hnsw": ("faiss HNSW-Flat", lambda: faiss_hnsw(data, half, queries)),
        "usearch": ("usearch HNSW", lambda: usearch_hnsw(data, half, queries)),
    }
    for key, (name, make) in candidates.items():
        if key in args.skip:
            continue
        gc.collect()
        before, started = rss_mb(), time.perf_counter()
        index, search, settings = make()
        built = time.perf_counter() - started
        memory = rss_mb() - before
        found, per_query = timed_queries(search, queries)
        print(f"{name:26}: build {built:7.1f} s, query {per_query:6.2f} ms, memory {memory:7.0f} MB, "
              f"recall@10 {recall(found, truth):.3f} ({settings})", flush=True)
        del index, search
        gc.collect()


if __name__ == "__main__":
    main()
