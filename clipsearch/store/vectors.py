"""The query cache: every stored vector of an index in one memory-mapped file beside it.

Decoding 200,000 float16 blobs from SQLite takes seconds, which rclip pays on
every query. This file (`index.db.vectors`) holds the same vectors as one
float32 matrix that a query memory-maps: no copy, and the OS page cache keeps
it warm between queries, so ranking a million images costs one matrix-vector
product.

float32, not float16: numpy has no fast float16 arithmetic, and converting a
million float16 rows on the fly took 2.0 s against 0.35-0.8 s for the float32
product on this 2-core machine (scripts/bench_search.py). The disk and page
cache pay 2 KB per 512-d image for that speed.

The file is tagged with the identity of its index (a random id kept in the
database) and the index's change token (a new random value at every change),
so a cache copied from another index, or left from before a change, is never
used: it is rebuilt from the database instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Vectors:
    """Stored vectors of a set of images; row i belongs to image id ids[i]."""

    ids: np.ndarray  # int64
    matrix: np.ndarray  # float32, n x dim, rows L2-normalised

    def __len__(self) -> int:
        return len(self.ids)


def cache_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".vectors")


def read(path: Path, identity: str, dim: int) -> Vectors | None:
    """The cached vectors if the file belongs to exactly this state of this index (`identity`), else None."""
    try:
        with open(path, "rb") as handle:
            tag = np.load(handle, allow_pickle=False)
            if tag.shape != (1,) or str(tag[0]) != identity:
                return None
            ids = np.load(handle, allow_pickle=False)
            np.lib.format.read_magic(handle)
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
            offset = handle.tell()
        if fortran_order or dtype != np.float32 or shape != (len(ids), dim) or ids.dtype != np.int64:
            return None
        if not len(ids):
            return Vectors(ids, np.zeros((0, dim), dtype=np.float32))
        # Memory-mapped: no copy, and the OS page cache keeps it warm between queries.
        return Vectors(ids, np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=shape))
    except (OSError, ValueError, IndexError, EOFError):
        return None  # missing, stale or damaged: the caller rebuilds it from the database


def write(path: Path, identity: str, vectors: Vectors) -> None:
    """Replace the cache atomically; a folder that cannot be written just means no cache."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") as handle:
            np.save(handle, np.array([identity]))
            np.save(handle, np.asarray(vectors.ids, dtype=np.int64))
            np.save(handle, np.ascontiguousarray(vectors.matrix, dtype=np.float32))
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)
