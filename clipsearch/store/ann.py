"""The approximate index for large libraries: a faiss inverted file (IVF) over the vector file's rows.

Above a size (vector_index.APPROXIMATE_FROM) ranking every row costs too much: 10 million float16
rows are 10 GB to read per query. faiss's IndexIVFScalarQuantizer splits the rows into cells
around k-means centroids, keeps each row as 8-bit codes of its offset from its centroid (a quarter
of float32), and a query scans only the cells nearest to it; vector_index.py then ranks the best
candidates again exactly from the float16 rows. IVF, not HNSW: on 2 cores an HNSW graph of 200,000
vectors took ~270 s to build, an IVF of a million a minute (scripts/bench_vector_index.py).

The file `index.db.ivf` is the faiss index as faiss serialises it, followed by a 4 KB JSON trailer
(format, the vector file's id, how many of its rows the index covers, how many it was trained on),
which faiss ignores; a query has faiss memory-map it (IO_FLAG_MMAP: 1 ms at 10 million rows, where
reading it through a ZeroCopyIOReader took 1 s), so its cells are paged in on demand, never loaded
whole. Its ids are row numbers of the vector file, whose rows never change
(vectors.py only appends and marks rows dead), so an index made for one vector file stays right
for it: rows appended since are ranked exactly by the caller until the index is extended, and dead
rows are masked. An index for another vector file (another index, or one rewritten) is never used.

Building runs in a child process started by the writer that changed the index (`start_build`),
at low priority, so `index` returns at once and queries use exact ranking of the rows not yet
covered meanwhile.

How many cells a query scans is measured, not assumed (`calibrate`): when the index is built, a
sample of the library's own vectors is ranked exactly and through the index, and the fewest cells
that find RECALL_TARGET of the exact ten best are written in the trailer. Vectors that gather
around topics, as photos' do, need few (4 of 2,048 at ten million synthetic clustered vectors, measured
recall 0.997);
where no number up to a quarter of the cells reaches the target (uniform random vectors: no
neighbourhoods to find), the trailer says 0 and queries rank every row exactly, which is slower
but right.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .vectors import VectorFile, as_float32, load_faiss

FORMAT = "clipsearch-ivf-1"
TRAILER_BYTES = 4096
# Extend the index (add the rows appended since) when they pass this share of the rows it covers;
# build it again (new centroids) when the rows it was trained on are less than half of those it covers.
EXTEND_AFTER = 0.05
RETRAIN_AFTER = 2.0
TRAIN_PER_CELL = 40  # training rows per cell (faiss warns below 39)
CHUNK = 65536
DEFAULT_PROBES = 32  # cells scanned per query by an index written before calibration
# calibrate: library rows used as queries, the share of their exact ten best the index must find, the
# candidates it is asked for (vector_index ranks them again exactly: the same number), the cell counts tried.
CALIBRATION_QUERIES = 100
RECALL_TARGET = 0.97
CALIBRATION_CANDIDATES = 200
PROBE_STEPS = (4, 8, 16, 32, 64, 128, 256, 512)


def ann_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".ivf")


def cells_for(rows: int) -> int:
    """The power of two at or below sqrt(rows): 512 cells at a million rows, 2,048 at ten million.

    Fewer cells than faiss's usual 4-16 x sqrt(N): adding ten million rows compares each with every
    centroid, which on 2 cores takes ~7 minutes with 2,048 and twice that with 4,096; a query then
    scans more rows per cell, which the same share of the rows costs alike."""
    return int(2 ** math.floor(math.log2(max(64.0, math.sqrt(max(rows, 1))))))


@dataclass
class Ann:
    """An open approximate index: faiss's IndexIVFScalarQuantizer over rows [0, rows) of one vector file."""

    path: Path
    file_id: str  # the vector file it indexes
    rows: int  # rows of that file it covers
    trained_rows: int
    index: Any  # faiss.IndexIVFScalarQuantizer; its ids are row numbers
    probes: int = DEFAULT_PROBES  # cells a query scans (calibrate); 0: the index misses too much, rank exactly
    recall: float | None = None  # recall@10 calibrate measured at `probes` (at a quarter of the cells if 0)

    @property
    def cells(self) -> int:
        return int(self.index.nlist)

    def needs(self, vectors: VectorFile) -> str | None:
        """"extend" when many rows were appended since, "build" when the cells no longer fit the data."""
        if self.file_id != vectors.file_id or self.trained_rows * RETRAIN_AFTER < vectors.rows - vectors.dead:
            return "build"
        if vectors.rows - self.rows > max(1000, EXTEND_AFTER * self.rows):
            return "extend"
        if self.recall is None:  # written before calibration: measure how many cells to scan
            return "calibrate"
        return None


def read(path: Path, vectors: VectorFile) -> Ann | None:
    """The index file if it was made for exactly this vector file, else None (missing, another file's, damaged)."""
    try:
        faiss = load_faiss()
        with open(path, "rb") as handle:
            handle.seek(-TRAILER_BYTES, os.SEEK_END)
            header = json.loads(handle.read(TRAILER_BYTES).decode().strip())
        if header.get("format") != FORMAT or header.get("file_id") != vectors.file_id:
            return None
        if not 0 < int(header["rows"]) <= vectors.rows:
            return None
        index = faiss.read_index(os.fspath(path), faiss.IO_FLAG_MMAP)
        if index.d != vectors.dim or not isinstance(index, faiss.IndexIVFScalarQuantizer):
            return None
        return Ann(path, vectors.file_id, int(header["rows"]), int(header["trained_rows"]), index,
                   int(header.get("probes", DEFAULT_PROBES)), header.get("recall"))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, RuntimeError):
        return None


def build(vectors: VectorFile, path: Path, cells: int | None = None, seed: int = 0) -> Ann:
    """Train new cells on a sample of the live rows and add every live row; write the file."""
    faiss = load_faiss()
    live = np.flatnonzero(vectors.live)
    cells = cells or cells_for(len(live))
    cells = max(1, min(cells, len(live) // TRAIN_PER_CELL or 1))
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(live, min(len(live), cells * TRAIN_PER_CELL), replace=False))
    quantizer = faiss.IndexFlatIP(vectors.dim)  # a graph (HNSW) of the centroids assigned rows 6x slower here
    index = faiss.IndexIVFScalarQuantizer(quantizer, vectors.dim, cells, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    index.cp.seed = seed
    index.train(as_float32(vectors.matrix[sample]))
    _add(index, vectors, 0)
    probes, recall = calibrate(index, vectors, seed)
    ann = Ann(path, vectors.file_id, vectors.rows, len(live), index, probes, recall)
    _write(ann)
    return ann


def extend(ann: Ann, vectors: VectorFile) -> Ann:
    """Add the rows appended to the vector file since the index was written, keeping its cells (and the number
    of them a query scans: the library has grown by at most RETRAIN_AFTER since they were measured)."""
    faiss = load_faiss()
    index = faiss.read_index(os.fspath(ann.path))  # into memory: the memory-mapped index cannot grow
    _add(index, vectors, ann.rows)
    grown = Ann(ann.path, vectors.file_id, vectors.rows, ann.trained_rows, index, ann.probes, ann.recall)
    _write(grown)
    return grown


def recalibrate(ann: Ann, vectors: VectorFile) -> Ann:
    """Measure the cells to scan for an index written before calibration, and rewrite its trailer in place
    (the index itself, gigabytes at ten million rows, is left as it is)."""
    probes, recall = calibrate(ann.index, vectors)
    measured = Ann(ann.path, ann.file_id, ann.rows, ann.trained_rows, ann.index, probes, recall)
    with open(ann.path, "r+b") as handle:
        handle.seek(-TRAILER_BYTES, os.SEEK_END)
        handle.write(_trailer(measured))
    return measured


def calibrate(index: Any, vectors: VectorFile, seed: int = 0) -> tuple[int, float]:
    """(cells a query should scan, the recall@10 measured there): the fewest of PROBE_STEPS, up to a quarter of
    the cells, at which the index's CALIBRATION_CANDIDATES best hold RECALL_TARGET of the exact ten best, for
    CALIBRATION_QUERIES of the library's own rows as queries (each row's own match left out). (0, the recall at
    a quarter of the cells) when none does: scanning more than that costs about what exact ranking does.

    The exact answers come from one pass over the rows, a block at a time, all queries at once (a matrix
    product): ~2 s a million rows on 2 cores, a small part of building the index."""
    faiss = load_faiss()
    live = np.flatnonzero(vectors.live)
    rng = np.random.default_rng(seed + 1)
    chosen = np.sort(rng.choice(live, min(len(live), CALIBRATION_QUERIES), replace=False))
    queries = as_float32(vectors.matrix[chosen])
    exact = _exact_top(vectors, queries, chosen, 10)
    quarter = max(1, index.nlist // 4)
    steps = [p for p in PROBE_STEPS if p < quarter] + [quarter]
    recall = 0.0
    for probes in steps:
        _, found = index.search(queries, CALIBRATION_CANDIDATES + 1, params=faiss.SearchParametersIVF(nprobe=probes))
        recall = float(np.mean([len(set(f.tolist()) & set(e.tolist())) / len(e)
                                for f, e in zip(found, exact) if len(e)]))
        if recall >= RECALL_TARGET:
            return probes, round(recall, 4)
    return 0, round(recall, 4)


def _exact_top(vectors: VectorFile, queries: np.ndarray, own: np.ndarray, k: int) -> list[np.ndarray]:
    """For each query, the rows of its k best live rows by exact inner product, its own row `own[q]` left out."""
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for begin in range(0, vectors.rows, CHUNK):
        end = min(vectors.rows, begin + CHUNK)
        scores = as_float32(vectors.matrix[begin:end]) @ queries.T  # (rows, queries)
        scores[~vectors.live[begin:end]] = -np.inf
        inside = (own >= begin) & (own < end)
        scores[own[inside] - begin, np.flatnonzero(inside)] = -np.inf
        take = min(k, end - begin)
        top = np.argpartition(-scores, take - 1, axis=0)[:take].T  # (queries, take)
        rows = np.concatenate([best_rows, top + begin], axis=1)
        values = np.concatenate([best_scores, np.take_along_axis(scores.T, top, axis=1)], axis=1)
        keep = np.argsort(-values, axis=1, kind="stable")[:, :k]
        best_rows, best_scores = np.take_along_axis(rows, keep, axis=1), np.take_along_axis(values, keep, axis=1)
    return [r[np.isfinite(s)] for r, s in zip(best_rows, best_scores)]


def _add(index: Any, vectors: VectorFile, start: int) -> None:
    for begin in range(start, vectors.rows, CHUNK):
        rows = np.arange(begin, min(vectors.rows, begin + CHUNK), dtype=np.int64)
        rows = rows[vectors.live[rows]]
        if len(rows):
            index.add_with_ids(as_float32(vectors.matrix[int(rows[0]):int(rows[-1]) + 1])[rows - rows[0]], rows)


def _write(ann: Ann) -> None:
    faiss = load_faiss()
    path = ann.path
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") as handle:
            faiss.write_index(ann.index, faiss.PyCallbackIOWriter(handle.write))
            handle.write(_trailer(ann))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _trailer(ann: Ann) -> bytes:
    header = {"format": FORMAT, "file_id": ann.file_id, "rows": ann.rows, "trained_rows": ann.trained_rows,
              "cells": ann.cells, "probes": ann.probes, "recall": ann.recall}
    return json.dumps(header).encode().ljust(TRAILER_BYTES, b" ")


def start_build(db_path: Path) -> subprocess.Popen | None:
    """Build or extend the index in a child process that outlives this one (`python -m clipsearch.store.ann`)."""
    try:
        return subprocess.Popen([sys.executable, "-m", "clipsearch.store.ann", os.fspath(db_path)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError:
        return None  # queries stay exact until a later run manages to start it


def main(argv: list[str]) -> int:
    """The child process: bring the index file up to date with the vector file, at low priority."""
    from . import Store, vector_index

    if hasattr(os, "nice"):
        os.nice(10)
    with Store.open(argv[0], create=False) as store:
        vector_index.maintain(store, background=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
