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

    @property
    def cells(self) -> int:
        return int(self.index.nlist)

    def needs(self, vectors: VectorFile) -> str | None:
        """"extend" when many rows were appended since, "build" when the cells no longer fit the data."""
        if self.file_id != vectors.file_id or self.trained_rows * RETRAIN_AFTER < vectors.rows - vectors.dead:
            return "build"
        if vectors.rows - self.rows > max(1000, EXTEND_AFTER * self.rows):
            return "extend"
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
        return Ann(path, vectors.file_id, int(header["rows"]), int(header["trained_rows"]), index)
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
    _write(index, path, vectors.file_id, vectors.rows, len(live))
    return Ann(path, vectors.file_id, vectors.rows, len(live), index)


def extend(ann: Ann, vectors: VectorFile) -> Ann:
    """Add the rows appended to the vector file since the index was written, keeping its cells."""
    faiss = load_faiss()
    index = faiss.read_index(os.fspath(ann.path))  # into memory: the memory-mapped index cannot grow
    _add(index, vectors, ann.rows)
    _write(index, ann.path, vectors.file_id, vectors.rows, ann.trained_rows)
    return Ann(ann.path, vectors.file_id, vectors.rows, ann.trained_rows, index)


def _add(index: Any, vectors: VectorFile, start: int) -> None:
    for begin in range(start, vectors.rows, CHUNK):
        rows = np.arange(begin, min(vectors.rows, begin + CHUNK), dtype=np.int64)
        rows = rows[vectors.live[rows]]
        if len(rows):
            index.add_with_ids(as_float32(vectors.matrix[int(rows[0]):int(rows[-1]) + 1])[rows - rows[0]], rows)


def _write(index: Any, path: Path, file_id: str, rows: int, trained_rows: int) -> None:
    faiss = load_faiss()
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") as handle:
            header = {"format": FORMAT, "file_id": file_id, "rows": rows, "trained_rows": trained_rows,
                      "cells": int(index.nlist)}
            faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))
            handle.write(json.dumps(header).encode().ljust(TRAILER_BYTES, b" "))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


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
