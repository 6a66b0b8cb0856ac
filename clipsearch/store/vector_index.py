"""Given a query vector and which images may be returned, the best k: the one place that ranks stored vectors.

find, similar, serve and tagging rank through `VectorIndex.search`/`rows_for`, and dedupe's
neighbour search is `pairs_above`. Two ways to rank, chosen by size:

- exact, up to APPROXIMATE_FROM images: every row of the float16 vector file (vectors.py) is
  scored by faiss in place (numpy's float16 arithmetic is several times slower);
- approximate, above it, once the IVF file (ann.py) exists: faiss scans the cells nearest the query,
  and the best RERANK candidates are scored again exactly from the float16 rows. Rows the IVF does
  not cover yet (appended since it was written) are scored exactly too, so an `index` run that adds
  photos needs no rebuild before they are found.

`--exact` forces the first. Filters (a folder, dates, camera, tags...) arrive as the allowed image
ids: few of them (up to FEW_CANDIDATES) are ranked exactly; otherwise the IVF searches with them as
a faiss IDSelector, and if that finds fewer than k the query is ranked exactly, so a filtered query
never returns fewer results than exist.

Keeping the files current also lives here: `sync` brings the vector file to the index's state by the
vector log (schema.py: the image ids whose vectors changed since the file's state) or, failing that,
rewrites it from the database; `refresh` (writers, after a change) also prunes the log and starts
the IVF build or extension in the background when the library is large enough.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import ann as annfile
from . import vectors as vectorfile
from .vectors import VECTOR_DTYPE, VectorFile, Vectors, load_faiss

if TYPE_CHECKING:
    from .images import Images

# Measured on 2 cores (scripts/bench_search.py, scripts/bench_vector_index.py): exact faiss ranking of
# float16 rows costs ~0.1 ms per 1,000 images, so up to here a query ranks everything in under ~25 ms.
APPROXIMATE_FROM = 250_000
APPROXIMATE_FROM_ENV = "CLIPSEARCH_APPROXIMATE_FROM"
RERANK = 200  # candidates scored again exactly from the float16 rows
FEW_CANDIDATES = 50_000  # a filter leaving at most this many images ranks them exactly
GATHER_ROWS = 10_000  # up to this many scattered rows are read with pread (gather_rows), more through the map
# Rows of removed photos (dead, until a quarter are and the file is rewritten) are dropped from what a search
# finds rather than selected out beforehand: a map of the live rows costs ~65 ms a query at ten million. Exact
# ranking fetches k + dead results for that, up to this many (more dead rows: the live ones are selected).
OVERFETCH_DEAD = 10_000


def approximate_from() -> int:
    """The size from which the approximate index is used (CLIPSEARCH_APPROXIMATE_FROM overrides it, for tests)."""
    try:
        return max(1, int(os.environ.get(APPROXIMATE_FROM_ENV, "")))
    except ValueError:
        return APPROXIMATE_FROM


# -- keeping the files current ---------------------------------------------------------


@contextmanager
def _locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """An OS lock on `path`.lock, so two processes never update one file at once; yields whether it was taken.

    Where the folder cannot be written there is nothing to protect: it yields True unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows: updates are rare and the files are replaced atomically anyway
        yield True
        return
    try:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _dim(store: Images) -> int:
    recorded = store.model()
    return recorded[1] if recorded else 0


def sync(store: Images) -> VectorFile:
    """The vector file as of the index's current state, updated first if it is behind (by the vector log when
    it can be, else rewritten); an in-memory copy where the folder cannot be written."""
    dim, path = _dim(store), store.cache_path
    current = vectorfile.read(path, store.identity(), dim)
    if current is not None:
        return current
    with _locked(path), store.transaction():  # one snapshot: the change token and the rows it names
        identity = store.identity()
        current = vectorfile.read(path, None, dim)
        if current is not None and current.identity == identity:
            return current
        try:
            _catch_up(store, path, identity, current, dim)
        except OSError:
            chunks = list(_chunks(store, "", []))
            matrix = np.concatenate([c.matrix for c in chunks]) if chunks else np.zeros((0, dim), VECTOR_DTYPE)
            ids = np.concatenate([c.ids for c in chunks]) if chunks else np.zeros(0, np.int64)
            return _in_memory(path, identity, Vectors(ids, matrix), dim)
    written = vectorfile.read(path, identity, dim)
    if written is None:
        raise OSError(f"{path} could not be read back after writing it")
    return written


def _catch_up(store: Images, path: Path, identity: str, current: VectorFile | None, dim: int) -> None:
    """Append the vectors changed since the file's state (the vector log says which), or rewrite the file."""
    since = _log_position(store, current)
    if current is not None and since is not None:
        changed = store.execute("SELECT count(DISTINCT image_id) FROM vector_log WHERE seq > ? "
                                "AND image_id IS NOT NULL", [since]).fetchone()[0]
        if changed <= current.rows // 2 + 1000:
            gone = np.array([row[0] for row in store.execute(
                "SELECT DISTINCT image_id FROM vector_log WHERE seq > ? AND image_id IS NOT NULL", [since])],
                dtype=np.int64)
            added = list(_chunks(store, "WHERE id IN (SELECT image_id FROM vector_log WHERE seq > ?)", [since]))
            vectorfile.append(current, identity, Vectors(
                np.concatenate([c.ids for c in added]) if added else np.zeros(0, np.int64),
                np.concatenate([c.matrix for c in added]) if added else np.zeros((0, dim), VECTOR_DTYPE)), gone)
            updated = vectorfile.read(path, identity, dim)
            if updated is None or updated.dead * 4 <= updated.rows:
                return
            # a quarter of the rows are dead: rewrite the file without them, from its own rows
            vectorfile.write(path, identity, dim, updated.rows - updated.dead, vectorfile.live_chunks(updated))
            return
    count = store.execute("SELECT count(*) FROM images").fetchone()[0]
    vectorfile.write(path, identity, dim, count, _chunks(store, "", []))


def _log_position(store: Images, current: VectorFile | None) -> int | None:
    """Where in the vector log the file's state ends, or None if this index's log does not reach back to it."""
    if current is None:
        return None
    index_id, _, generation = current.identity.rpartition(":")
    if index_id != store.identity().rpartition(":")[0]:
        return None
    row = store.execute("SELECT seq FROM vector_log WHERE generation = ?", [generation]).fetchone()
    return row[0] if row else None


def _chunks(store: Images, where: str, params: list, size: int = 65536) -> Iterator[Vectors]:
    """Image ids and float16 vectors from the database in id order, `size` rows at a time."""
    dim = _dim(store)
    cursor = store.execute(f"SELECT id, vector FROM images {where} ORDER BY id", params)
    while rows := cursor.fetchmany(size):
        yield Vectors(np.array([row[0] for row in rows], dtype=np.int64),
                      np.frombuffer(b"".join(row[1] for row in rows), dtype=VECTOR_DTYPE).reshape(len(rows), dim))


def _in_memory(path: Path, identity: str, vectors: Vectors, dim: int) -> VectorFile:
    """The same layout as the file, in memory: for an index whose folder cannot be written."""
    header = json.dumps({"format": vectorfile.FORMAT, "dim": dim, "file_id": "memory"}).encode()
    data = (header.ljust(vectorfile.HEADER_BYTES, b" ") + vectorfile.faiss_header(dim, len(vectors))
            + np.ascontiguousarray(vectors.matrix, dtype=VECTOR_DTYPE).tobytes())
    return VectorFile(path, identity, "memory", dim, vectors.ids, np.frombuffer(data, dtype=np.uint8))


def refresh(store: Images, background: bool = True) -> VectorFile:
    """After a change (writers: index, dedupe moves and undo): bring the vector file up to date, drop the
    vector log it no longer needs, and start bringing the IVF up to date if the library is large."""
    current = sync(store)
    generation = current.identity.rpartition(":")[2]
    try:
        with store.transaction():
            store.execute("DELETE FROM vector_log WHERE seq < (SELECT seq FROM vector_log WHERE generation = ?)",
                          [generation])
    except Exception:  # noqa: BLE001  a read-only index keeps its log; the next writer prunes it
        pass
    maintain(store, background, current)
    return current


def maintain(store: Images, background: bool = True, current: VectorFile | None = None) -> str | None:
    """Build or extend the IVF file if the library is large enough and the file is missing or behind (or measure
    the cells to scan, for a file written before that); in a child process when `background`. Returns what was
    needed ("build", "extend", "calibrate") or None."""
    current = current or sync(store)
    if current.rows - current.dead < approximate_from() or current.file_id == "memory":
        return None
    path = annfile.ann_path(store.path)
    existing = annfile.read(path, current)
    needed = "build" if existing is None else existing.needs(current)
    if needed is None:
        return None
    if background:
        annfile.start_build(store.path)
        return needed
    with _locked(path, wait=False) as mine:
        if not mine:
            return needed  # another process is building it
        existing = annfile.read(path, current)  # it may have finished just before
        needed = "build" if existing is None else existing.needs(current)
        if needed == "extend" and existing is not None:
            annfile.extend(existing, current)
        elif needed == "calibrate" and existing is not None:
            annfile.recalibrate(existing, current)
        elif needed == "build":
            annfile.build(current, path)
    return needed


# -- ranking -----------------------------------------------------------------------------


def _bitmap(rows: np.ndarray, size: int) -> np.ndarray:
    """faiss's IDSelectorBitmap layout: bit (r & 7) of byte r >> 3 set for each row r."""
    flags = np.zeros(size, dtype=bool)
    flags[rows] = True
    return np.packbits(flags, bitorder="little")


@dataclass
class VectorIndex:
    """The vector file of an index, and its IVF file when the library is large enough to use one."""

    vectors: VectorFile
    ann: annfile.Ann | None

    @property
    def kind(self) -> str:
        return "approximate" if self.ann is not None else "exact"

    def __len__(self) -> int:
        return self.vectors.rows - self.vectors.dead

    def rows_for(self, image_ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the ids among `image_ids` that have a vector, their vectors as float32), in the order given."""
        rows = self.vectors.rows_of(np.asarray(image_ids, dtype=np.int64))
        matrix = self.vectors.matrix
        found = gather_rows(matrix, rows) if len(rows) <= GATHER_ROWS else np.asarray(matrix[rows], dtype=np.float32)
        return np.asarray(self.vectors.ids[rows]), found

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None,
               exclude: Sequence[int] = (), exact: bool = False) -> list[tuple[int, float]]:
        """The k best (image id, cosine) pairs, best first, among `allowed` image ids (all if None)."""
        vectors = self.vectors
        if k <= 0 or vectors.rows == 0:
            return []
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if allowed is not None:
            rows = vectors.rows_of(np.asarray(allowed, dtype=np.int64))
        elif len(exclude):
            rows = np.flatnonzero(vectors.live)
        else:
            rows = None  # every live row: the searches leave the dead ones out themselves
        if len(exclude) and rows is not None:
            rows = rows[~np.isin(vectors.ids[rows], np.asarray(list(exclude), dtype=np.int64))]
        available = len(self) if rows is None else len(rows)
        if available == 0:
            return []
        with _one_thread():
            if self.ann is None or exact or (allowed is not None and available <= FEW_CANDIDATES):
                return self._exact(query, k, rows)
            found = self._approximate(query, k, rows)
            if len(found) < min(k, available):  # the cells searched held too few of the allowed images
                return self._exact(query, k, rows)
            return found

    def _results(self, rows: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(self.vectors.ids[rows[i]]), min(1.0, max(-1.0, float(scores[i])))) for i in order]

    def _exact(self, query: np.ndarray, k: int, rows: np.ndarray | None) -> list[tuple[int, float]]:
        faiss = load_faiss()
        vectors = self.vectors
        index = vectors.faiss_index()
        if rows is None and vectors.dead and k + vectors.dead > OVERFETCH_DEAD:
            rows = np.flatnonzero(vectors.live)
        k = min(k, len(self) if rows is None else len(rows))
        if rows is None:
            scores, found = index.search(query, min(k + vectors.dead, vectors.rows), params=faiss.SearchParameters(
                sel=faiss.IDSelectorRange(0, vectors.rows)))
            keep = (found[0] >= 0) & vectors.live[np.maximum(found[0], 0)]
            return self._results(found[0][keep], scores[0][keep], k)
        bitmap = _bitmap(rows, vectors.rows)
        selector = faiss.IDSelectorBitmap(len(bitmap) * 8, faiss.swig_ptr(bitmap))
        scores, found = index.search(query, k, params=faiss.SearchParameters(sel=selector))
        keep = found[0] >= 0
        return self._results(found[0][keep], scores[0][keep], k)

    def _approximate(self, query: np.ndarray, k: int, rows: np.ndarray | None) -> list[tuple[int, float]]:
        faiss = load_faiss()
        assert self.ann is not None
        vectors, ann = self.vectors, self.ann
        bitmap = _bitmap(rows, vectors.rows) if rows is not None else None
        selector = faiss.IDSelectorBitmap(len(bitmap) * 8, faiss.swig_ptr(bitmap)) if bitmap is not None else None
        wanted = max(RERANK, 2 * k)
        params = faiss.SearchParametersIVF(nprobe=min(ann.probes, ann.cells), sel=selector)
        _, found = ann.index.search(query, wanted, params=params)
        candidates = [found[0][found[0] >= 0]]
        tail_live = int(np.count_nonzero(vectors.live[ann.rows:]))
        if tail_live:  # rows appended since the IVF was written (and not removed since): exactly
            tail = faiss.IDSelectorRange(ann.rows, vectors.rows)
            both = faiss.IDSelectorAnd(tail, selector) if selector is not None else tail
            dead = 0 if selector is not None else vectors.rows - ann.rows - tail_live  # dropped below
            _, extra = vectors.faiss_index().search(query, min(wanted + dead, vectors.rows - ann.rows),
                                                    params=faiss.SearchParameters(sel=both))
            candidates.append(extra[0][extra[0] >= 0])
        picked = np.concatenate(candidates)  # disjoint: the IVF covers rows below ann.rows, the tail the rest
        picked = picked[(picked < vectors.rows)]
        picked = picked[vectors.live[picked]]
        scores = gather_rows(vectors.matrix, picked) @ query[0]  # not through the map: see gather_rows
        return self._results(picked, scores, k)


@contextmanager
def _one_thread() -> Iterator[None]:
    """faiss on one thread for one query: it gains nothing from more (its scans are memory-bound), and the
    OpenMP threads it would start keep spinning after it returns, taking a core from the rest of the query:
    a `find` at 1M images took 0.58 s with them and 0.40 s without (OMP_NUM_THREADS=1)."""
    global _faiss_threads
    faiss = load_faiss()
    if _faiss_threads is None:  # faiss's own count, before any query: what every other caller gets back
        _faiss_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:  # never a count saved by a query running in another thread (the web app's), which would be 1
        faiss.omp_set_num_threads(_faiss_threads)


_faiss_threads: int | None = None


def open_index(store: Images) -> VectorIndex:
    """The index's vector file, brought up to date, and its IVF file if the library is large enough to use it."""
    current = sync(store)
    ann = None
    if current.rows - current.dead >= approximate_from():
        ann = annfile.read(annfile.ann_path(store.path), current)
        if ann is not None and ann.probes == 0:  # calibrated: it misses too many neighbours on these vectors
            ann = None
    return VectorIndex(current, ann)


def describe(store: Images) -> dict[str, Any]:
    """Which ranking the index's queries use, from the files as they are (for `info`, which never writes)."""
    images = store.count()
    found: dict[str, Any] = {"kind": "exact", "images": images, "approximate_from": approximate_from()}
    current = vectorfile.read(store.cache_path, None, _dim(store))
    if current is not None and images >= approximate_from():
        ann = annfile.read(annfile.ann_path(store.path), current)
        if ann is not None and ann.probes:
            found.update({"kind": "approximate", "library": "faiss", "ivf": str(ann.path), "cells": ann.cells,
                          "probes": min(ann.probes, ann.cells), "covered": ann.rows, "rerank": RERANK,
                          "calibrated_recall": ann.recall})
        elif ann is not None:
            found.update({"ivf": str(ann.path), "cells": ann.cells, "calibrated_recall": ann.recall})
    if found["kind"] == "approximate":
        measured = f", recall@10 {found['calibrated_recall']:.2f} measured on this library" \
            if found["calibrated_recall"] is not None else ""
        found["summary"] = (f"approximate (faiss IVF, {found['cells']:,} cells with 8-bit codes, {found['probes']} "
                            f"searched per query, the best {RERANK} ranked again exactly{measured}); exact below "
                            f"{approximate_from():,} images or with --exact")
    elif "calibrated_recall" in found:
        found["summary"] = (f"exact: the approximate index found only {found['calibrated_recall']:.0%} of the exact "
                            f"ten best on this library's vectors, even scanning a quarter of its cells, so every "
                            f"image is ranked")
    elif images >= approximate_from():
        found["summary"] = ("exact: the approximate index is not built yet (the last `index` run started it; "
                            "another starts it again)")
    else:
        found["summary"] = f"exact (every image is ranked; approximate from {approximate_from():,} images)"
    return found


# -- all pairs above a similarity (dedupe) ---------------------------------------------------------

EXACT_PAIRS_LIMIT = 20_000
BLOCK_ROWS = 1024
PAIR_CELLS_PER_ROOT = 1.0  # about sqrt(N) cells
# Cells each row is compared in, by threshold: at most `probes` of its nearest, and of those only the ones whose
# centroid's cosine to the row is within `margin` of its own cell's (most rows need 1-3 cells). A lower
# threshold needs a wider margin. Recall of planted pairs at 1M: scripts/bench_dedupe.py.
PAIR_PROBES = ((0.92, 8, 0.03), (0.0, 8, 0.05))  # (threshold from, probes, margin)
ASSIGN_ROWS = 65536  # rows converted to float32 at a time to find their cells
PAIR_AXES = 96  # principal components the cells are compared on first (_cell_pairs)
PAIR_QUERY_ROWS = 4096  # rows range-searched in a cell at a time
EXACT_PAIR_CHUNK = 65_536  # candidate pairs scored exactly at a time


def pair_probes(threshold: float) -> tuple[int, float]:
    """(probes, margin) for pairs at least `threshold` apart: which of a row's nearest cells it is compared in."""
    return next((probes, margin) for floor, probes, margin in PAIR_PROBES if threshold >= floor)


def pairs_above(matrix: np.ndarray, threshold: float, neighbours: int = 16, exact_limit: int = EXACT_PAIRS_LIMIT,
                seed: int = 0, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of rows whose cosine is at least `threshold`, at most `neighbours` per row: a range search
    of every row against all the others. Returns arrays (i, j, similarity); never builds the N x N matrix.

    `rows`, if given, are the rows of `matrix` taking part, and i, j are positions in it: `matrix` (float16
    or float32, memory-mapped or not) is never copied whole, only a block of rows at a time is float32, and
    the pages of a memory map read are let go again (`forget_pages`).
    Up to `exact_limit` rows every pair is scored in blocks. Above it, faiss's k-means splits the rows
    into about sqrt(N) cells and each row is compared with the rows of its `pair_probes(threshold)` nearest
    cells: pairs above a high cosine sit in the same or adjacent cells (recall: scripts/bench_dedupe.py).
    The comparisons run cell by cell as faiss range searches (both cores), first on the rows' principal
    components (`_cell_pairs` says why no pair is lost), not one query at a time (faiss's own IVF search of
    every row took ~20x longer on 2 cores); a cell's own rows are compared among themselves once.
    """
    n = len(matrix) if rows is None else len(rows)

    def take(positions: np.ndarray | slice) -> np.ndarray:
        """Rows as float32: a slice (of many rows) read in order and converted by faiss, scattered rows by
        `gather_rows`."""
        if isinstance(positions, slice):
            return vectorfile.as_float32(matrix[positions] if rows is None else matrix[rows[positions]])
        return gather_rows(matrix, positions if rows is None else rows[positions])

    if n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    if n <= exact_limit:
        whole = take(slice(0, n))
        found = [_pairs_in_block(whole[start:start + BLOCK_ROWS], np.arange(start, min(n, start + BLOCK_ROWS)),
                                 whole[start:], np.arange(start, n), threshold, neighbours)
                 for start in range(0, n, BLOCK_ROWS)]
    else:
        found = [_cell_pairs(take, n, threshold, neighbours, seed, lambda: forget_pages(matrix))]
    forget_pages(matrix)
    low = np.concatenate([np.minimum(f[0], f[1]) for f in found])
    high = np.concatenate([np.maximum(f[0], f[1]) for f in found])
    sims = np.concatenate([f[2] for f in found])
    _keys, first = np.unique(low * n + high, return_index=True)  # the same pair may be found twice
    return low[first], high[first], sims[first]


def forget_pages(matrix: np.ndarray) -> None:
    """Let go of the pages of the memory map `matrix` views (if it does), which count in the process's
    resident memory once read: dedupe reads all of a million rows (1 GB) once. The page cache keeps them."""
    import mmap

    base: Any = matrix
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is not None and hasattr(base, "madvise") and not base.closed:
        base.madvise(mmap.MADV_DONTNEED)


def gather_rows(matrix: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rows `positions` of `matrix` as float32. The rows of a memory-mapped file are read with os.pread: read
    through the map, each would bring its neighbourhood into the process's resident memory (the kernel maps
    the pages around a fault: 64 KB, or a whole large folio of the page cache, up to 2 MB, on newer kernels),
    and a few thousand scattered rows would hold the whole file there. Measured at 1M images (Linux with
    large folios): re-ranking 200 candidates through the map took `find` from 112 MB to 454 MB resident."""
    positions = np.asarray(positions, dtype=np.int64)
    located = _file_rows(matrix)
    if located is None or len(positions) == 0:
        return np.asarray(matrix[positions], dtype=np.float32)
    path, offset, stride = located
    size = matrix.shape[1] * matrix.itemsize
    out = bytearray(len(positions) * size)
    view = memoryview(out)
    handle = os.open(path, os.O_RDONLY)
    try:
        for k, row in enumerate(positions.tolist()):
            if os.preadv(handle, [view[k * size:(k + 1) * size]], offset + row * stride) != size:
                raise OSError(f"{path} is shorter than its row map")
    finally:
        os.close(handle)
    return np.frombuffer(out, dtype=matrix.dtype).reshape(len(positions), matrix.shape[1]).astype(np.float32)


def _file_rows(matrix: np.ndarray) -> tuple[str, int, int] | None:
    """(file, offset of row 0, bytes from row to row) when `matrix` views a memory-mapped file's rows, else None."""
    import mmap

    base: Any = matrix
    while base is not None and not (isinstance(base, np.memmap) and isinstance(base.base, mmap.mmap)):
        base = getattr(base, "base", None)
    if base is None or base.filename is None or matrix.ndim != 2 or matrix.strides[1] != matrix.itemsize:
        return None
    offset = base.offset + matrix.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return str(base.filename), int(offset), int(matrix.strides[0])


def _pairs_in_block(queries: np.ndarray, query_ids: np.ndarray, targets: np.ndarray, target_ids: np.ndarray,
                    threshold: float, neighbours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Above-threshold (query, target) pairs of one block, the best `neighbours` per query, no self pairs."""
    sims = queries @ targets.T
    hit_rows, hit_cols = np.nonzero(sims >= threshold)
    not_self = query_ids[hit_rows] != target_ids[hit_cols]
    hit_rows, hit_cols = hit_rows[not_self], hit_cols[not_self]
    if len(hit_rows) == 0:
        return hit_rows, hit_rows, np.zeros(0, dtype=np.float32)
    return _best_per_query(query_ids[hit_rows], target_ids[hit_cols], sims[hit_rows, hit_cols], neighbours)


def _best_per_query(queries: np.ndarray, targets: np.ndarray, sims: np.ndarray,
                    neighbours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs (query, target, similarity) less all but the best `neighbours` of each query."""
    if len(queries) == 0:
        return queries, targets, sims
    _, counts = np.unique(queries, return_counts=True)
    if counts.max() <= neighbours:
        return queries, targets, sims
    order = np.lexsort((-sims, queries))  # rare (huge groups): keep each query's best
    queries, targets, sims = queries[order], targets[order], sims[order]
    rank = np.arange(len(queries)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < neighbours
    return queries[keep], targets[keep], sims[keep]


def _principal_axes(sample: np.ndarray, count: int) -> np.ndarray:
    """The `count` directions holding most of the sample rows' energy (uncentred), as a (dim, count) matrix."""
    moments = sample.T.astype(np.float64) @ sample.astype(np.float64)
    _, vectors = np.linalg.eigh(moments)  # ascending
    return np.ascontiguousarray(vectors[:, ::-1][:, :count], dtype=np.float32)


def _cell_pairs(take: Callable[[Any], np.ndarray], n: int, threshold: float, neighbours: int, seed: int,
                forget: Callable[[], None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs by k-means cells: each cell's rows among themselves, and against the rows that probe it as one of
    their other nearest cells. `take(positions)` gives rows as float32, a block's at a time; `forget()` lets
    go of the pages read.

    Rows are compared on their PAIR_AXES principal components (of a sample) first, plus one more number, the
    length of the rest of the row: a pair's cosine is the dot product of the components plus that of the
    rests, which is at most the product of the rests' lengths (Cauchy-Schwarz). So a pair whose shortened
    rows' product is below the threshold cannot reach it, and the few above are scored exactly on the whole
    rows: the same pairs as comparing whole rows, at a fraction of the arithmetic and memory (random 512-d
    vectors keep a fifth of their energy in 96 components, the rests' products are ~0.78, and other
    rows' products land ~5 standard deviations below 0.93; photos' vectors keep more in their components).
    """
    faiss = load_faiss()
    rng = np.random.default_rng(seed)
    cells = max(16, int(PAIR_CELLS_PER_ROOT * np.sqrt(n)))
    sample = take(np.sort(rng.choice(n, min(n, cells * 40), replace=False)))
    dim = sample.shape[1]
    probes, margin = pair_probes(threshold)
    probes = min(probes, cells)
    kmeans = faiss.Kmeans(dim, cells, niter=8, seed=seed, spherical=True, max_points_per_centroid=40)
    kmeans.train(sample)
    axes = _principal_axes(sample, PAIR_AXES) if dim > 2 * PAIR_AXES else None
    del sample
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(kmeans.centroids)
    width = dim if axes is None else PAIR_AXES + 1
    components = np.empty((n, width), dtype=np.float32)  # what the cells are compared on
    nearest = np.empty((n, probes), dtype=np.int32)  # each row's nearest cells, best first
    close = np.empty((n, probes), dtype=bool)  # and whether each is within `margin` of the nearest one
    for start in range(0, n, ASSIGN_ROWS):
        block = take(slice(start, min(n, start + ASSIGN_ROWS)))
        scores, cells_found = quantizer.search(block, probes)
        nearest[start:start + ASSIGN_ROWS] = cells_found
        close[start:start + ASSIGN_ROWS] = scores >= scores[:, :1] - margin
        if axes is None:
            components[start:start + ASSIGN_ROWS] = block
        else:
            part = block @ axes
            left = np.einsum("ij,ij->i", block, block) - np.einsum("ij,ij->i", part, part)
            components[start:start + ASSIGN_ROWS, :PAIR_AXES] = part
            components[start:start + ASSIGN_ROWS, PAIR_AXES] = np.sqrt(np.maximum(left, 0)) + 1e-3  # rounding
        forget()
    members = np.argsort(nearest[:, 0], kind="stable")
    member_bounds = np.searchsorted(nearest[members, 0], np.arange(cells + 1))
    # rows that probe a cell other than their own, grouped by that cell
    probe_points = np.repeat(np.arange(n), probes - 1)[close[:, 1:].ravel()]
    probe_cells = nearest[:, 1:][close[:, 1:]]
    del nearest, close
    order = np.argsort(probe_cells, kind="stable")
    probe_points, probe_cells = probe_points[order], probe_cells[order]
    probe_bounds = np.searchsorted(probe_cells, np.arange(cells + 1))
    del order, probe_cells
    found_q, found_t = [], []
    for cell in range(cells):
        target_ids = members[member_bounds[cell]:member_bounds[cell + 1]]
        if len(target_ids) == 0:
            continue
        index = faiss.IndexFlatIP(width)
        index.add(components[target_ids])
        own = len(target_ids)
        query_ids = np.concatenate([target_ids, probe_points[probe_bounds[cell]:probe_bounds[cell + 1]]])
        for start in range(0, len(query_ids), PAIR_QUERY_ROWS):
            block = query_ids[start:start + PAIR_QUERY_ROWS]
            lims, _, hits = index.range_search(components[block], threshold - 1e-4)
            counts = np.diff(lims).astype(np.int64)
            queries = np.repeat(block, counts)
            targets = target_ids[hits]
            # a cell's own rows meet each other twice: keep (lower, higher) once
            keep = (queries < targets) | (np.repeat(np.arange(start, start + len(block)), counts) >= own)
            keep &= queries != targets
            found_q.append(queries[keep])
            found_t.append(targets[keep])
    queries = np.concatenate(found_q) if found_q else np.zeros(0, dtype=np.int64)
    targets = np.concatenate(found_t) if found_t else np.zeros(0, dtype=np.int64)
    del found_q, found_t, components
    sims = _exact_cosines(take, queries, targets, forget)
    keep = sims >= threshold
    return _best_per_query(queries[keep], targets[keep], sims[keep], neighbours)


def _exact_cosines(take: Callable[[Any], np.ndarray], a: np.ndarray, b: np.ndarray,
                   forget: Callable[[], None]) -> np.ndarray:
    """Cosine of rows a[k] and b[k] for every k, from the whole rows, read in order a chunk of pairs at a time."""
    sims = np.empty(len(a), dtype=np.float32)
    for start in range(0, len(a), EXACT_PAIR_CHUNK):
        left, right = a[start:start + EXACT_PAIR_CHUNK], b[start:start + EXACT_PAIR_CHUNK]
        needed, at = np.unique(np.concatenate([left, right]), return_inverse=True)
        rows = take(needed)
        sims[start:start + len(left)] = np.einsum("ij,ij->i", rows[at[:len(left)]], rows[at[len(left):]])
        forget()
    return sims
