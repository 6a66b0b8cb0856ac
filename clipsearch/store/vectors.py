"""The vector file: every stored vector of an index as one float16 matrix beside it, memory-mapped.

Decoding 200,000 float16 blobs from SQLite takes seconds, which rclip pays on every query. This
file (`index.db.vectors`) holds the same vectors as rows a query memory-maps: no copy, and the OS
page cache keeps it warm between queries. float16 halves it against float32 (10 GB, not 20, at
10 million photos); numpy's float16 arithmetic is slow (converting a million rows took 2 s), so
exact ranking runs in faiss, which reads float16 with SIMD (vector_index.py).

Layout: a 4 KB JSON header (format, dimension, a random id of this file), then a faiss
IndexScalarQuantizer (fp16, inner product) exactly as faiss serialises it, whose codes are the
rows. faiss reads it in place (ZeroCopyIOReader over the memory map), so exact search copies
nothing. The file only grows: new and changed vectors are appended, and the row of a changed or
removed image is marked dead in the row map, `index.db.vectors.ids` (row -> image id, -1 for a
dead row), which is replaced atomically at every update and tagged with the index state it
belongs to (`Images.identity`: the index's id and change token) and the file id. A row map from
another index, or one that lost its file, is never used. When a quarter of the rows are dead the
file is rewritten without them.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "clipsearch-vectors-2"
HEADER_BYTES = 4096
VECTOR_DTYPE = np.dtype("<f2")


@dataclass
class Vectors:
    """Stored vectors of a set of images; row i belongs to image id ids[i] (float16 or float32 rows)."""

    ids: np.ndarray  # int64
    matrix: np.ndarray  # n x dim, rows L2-normalised (float32; float16 while being written)

    def __len__(self) -> int:
        return len(self.ids)


def load_faiss() -> Any:
    """faiss, imported where it is needed (not by `--help`); typed loosely, as its stubs lack the SWIG classes
    used here (ZeroCopyIOReader, the IO callbacks, search parameters)."""
    import faiss

    return faiss


def cache_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".vectors")


def ids_path(path: Path) -> Path:
    return path.with_name(path.name + ".ids")


def faiss_header(dim: int, rows: int) -> bytes:
    """The bytes faiss writes before the codes of an fp16 IndexScalarQuantizer of `rows` rows.

    Built by hand (as faiss's index_write.cpp lays it out) so this module needs no faiss to write:
    fourcc, d, ntotal, two unused counts, is_trained, metric; the quantizer (type, range stat,
    its argument, d, code size, an empty trained table); then the codes' byte count.
    """
    inner_product, fp16 = 0, 4  # faiss.METRIC_INNER_PRODUCT, faiss.ScalarQuantizer.QT_fp16
    return (b"IxSQ" + struct.pack("<iqqqBi", dim, rows, 1 << 20, 1 << 20, 1, inner_product)
            + struct.pack("<iifQQQ", fp16, 0, 0.0, dim, dim * 2, 0) + struct.pack("<Q", rows * dim * 2))


@dataclass
class VectorFile:
    """An open vector file: the row map and the memory-mapped rows, as of one index state."""

    path: Path
    identity: str  # the index state the row map belongs to ("index id:change token")
    file_id: str
    dim: int
    ids: np.ndarray  # int64 row -> image id, -1 for a dead row
    _mapped: np.ndarray = field(repr=False)  # the whole file, uint8
    _faiss_index: Any = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        return len(self.ids)

    @cached_property
    def matrix(self) -> np.ndarray:
        """All rows (dead ones included) as a float16 view of the file."""
        start = HEADER_BYTES + len(faiss_header(self.dim, 0))
        return self._mapped[start:start + self.rows * self.dim * 2].view(VECTOR_DTYPE).reshape(self.rows, self.dim)

    @cached_property
    def live(self) -> np.ndarray:
        return self.ids >= 0

    @cached_property
    def dead(self) -> int:
        return int(self.rows - np.count_nonzero(self.live))

    @cached_property
    def _by_id(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted image ids, their rows), for looking rows up by id; quick since rows are mostly in id order."""
        order = np.argsort(self.ids, kind="stable")
        return self.ids[order], order

    def rows_of(self, image_ids: np.ndarray) -> np.ndarray:
        """The live rows of these image ids (ids without one are left out), in the order given."""
        sorted_ids, order = self._by_id
        image_ids = np.asarray(image_ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(sorted_ids, image_ids), max(0, len(sorted_ids) - 1))
        found = (sorted_ids[at] == image_ids) & (image_ids >= 0) if len(sorted_ids) else np.zeros(0, dtype=bool)
        return order[at[found]]

    def faiss_index(self) -> Any:
        """The rows as a faiss IndexScalarQuantizer that searches the memory map in place (no copy)."""
        if self._faiss_index is None:
            faiss = load_faiss()
            part = self._mapped[HEADER_BYTES:]
            index = faiss.read_index(faiss.ZeroCopyIOReader(faiss.swig_ptr(part), part.size))
            if index.ntotal < self.rows or index.d != self.dim:
                raise ValueError(f"{self.path} holds fewer rows than its row map")
            self._faiss_index = index
        return self._faiss_index

    def vectors(self, float32: bool = True) -> Vectors:
        """The live rows in image id order, as float32 (a copy: for dedupe and scripts, not for queries); as the
        stored float16 if not `float32` (the memory-mapped rows themselves when they are in order, as usual)."""
        convert = as_float32 if float32 else np.asarray
        if self.dead == 0 and (self.rows < 2 or bool(np.all(self.ids[1:] > self.ids[:-1]))):
            return Vectors(np.asarray(self.ids), convert(self.matrix))
        live = np.flatnonzero(self.live)
        order = live[np.argsort(self.ids[live], kind="stable")]
        return Vectors(np.asarray(self.ids[order]), convert(self.matrix[order]))


def as_float32(matrix: np.ndarray) -> np.ndarray:
    """Float16 rows as float32, converted by faiss in chunks (numpy's conversion is ~5x slower)."""
    if matrix.dtype == np.float32:
        return np.ascontiguousarray(matrix)
    out = np.empty(matrix.shape, dtype=np.float32)
    if len(matrix) == 0:
        return out
    faiss = load_faiss()
    codec = faiss.ScalarQuantizer(matrix.shape[1], faiss.ScalarQuantizer.QT_fp16)
    for start in range(0, len(matrix), 65536):
        block = np.ascontiguousarray(matrix[start:start + 65536], dtype=VECTOR_DTYPE)
        out[start:start + len(block)] = codec.decode(block.view(np.uint8)).reshape(len(block), -1)
    return out


def read(path: Path, identity: str | None, dim: int) -> VectorFile | None:
    """The vector file if its row map belongs to state `identity` of the index (any state if None), else None."""
    try:
        with open(ids_path(path), "rb") as handle:
            tag = np.load(handle, allow_pickle=False)
            np.lib.format.read_magic(handle)
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
            offset = handle.tell()
        if tag.shape != (3,) or (identity is not None and str(tag[0]) != identity) or str(tag[1]) != FORMAT:
            return None
        if fortran_order or dtype != np.int64 or len(shape) != 1:
            return None
        ids = (np.memmap(ids_path(path), dtype=np.int64, mode="r", offset=offset, shape=shape) if shape[0]
               else np.zeros(0, dtype=np.int64))
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        header = json.loads(bytes(mapped[:HEADER_BYTES]).decode().strip())
        if header.get("format") != FORMAT or header.get("dim") != dim or header.get("file_id") != str(tag[2]):
            return None
        expected = faiss_header(dim, 0)
        start = HEADER_BYTES + len(expected)
        if bytes(mapped[HEADER_BYTES:HEADER_BYTES + 8]) != expected[:8] or len(mapped) < start + len(ids) * dim * 2:
            return None
        return VectorFile(path, str(tag[0]), str(tag[2]), dim, ids, mapped)
    except (OSError, ValueError, IndexError, EOFError, UnicodeDecodeError):
        return None  # missing, stale or damaged: the caller rebuilds it from the database


def _write_ids(path: Path, identity: str, file_id: str, ids: np.ndarray) -> None:
    partial = ids_path(path).with_name(f"{ids_path(path).name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") as handle:
            np.save(handle, np.array([identity, FORMAT, file_id]))
            np.save(handle, np.asarray(ids, dtype=np.int64))
        os.replace(partial, ids_path(path))
    finally:
        partial.unlink(missing_ok=True)


def write(path: Path, identity: str, dim: int, rows: int, chunks: Iterable[Vectors]) -> None:
    """Write a new file holding the `rows` rows of `chunks` in the order given, replacing any old one atomically.

    Chunks may be float32 or float16, and a few at a time, so ten million rows never sit in memory at once.
    """
    file_id = uuid.uuid4().hex
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    ids = []
    try:
        with open(partial, "wb") as handle:
            header = json.dumps({"format": FORMAT, "dim": dim, "file_id": file_id}).encode()
            handle.write(header.ljust(HEADER_BYTES, b" "))
            handle.write(faiss_header(dim, rows))
            for chunk in chunks:
                handle.write(np.ascontiguousarray(chunk.matrix, dtype=VECTOR_DTYPE).tobytes())
                ids.append(np.asarray(chunk.ids, dtype=np.int64))
        written = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        if len(written) != rows:
            raise ValueError(f"{rows} rows announced, {len(written)} written")
        os.replace(partial, path)
        _write_ids(path, identity, file_id, written)
    finally:
        partial.unlink(missing_ok=True)


def live_chunks(current: VectorFile, size: int = 65536) -> Iterator[Vectors]:
    """The live rows of a file in image id order, a chunk at a time (to rewrite it without its dead rows)."""
    live = np.flatnonzero(current.live)
    order = live[np.argsort(current.ids[live], kind="stable")]
    for start in range(0, len(order), size):
        rows = order[start:start + size]
        yield Vectors(np.asarray(current.ids[rows]), np.asarray(current.matrix[rows]))


def append(current: VectorFile, identity: str, added: Vectors, gone: np.ndarray) -> None:
    """Bring the file to a new index state: rows of the image ids in `gone` (removed or changed) die,
    and `added` is appended. The rows written before stay as they are, so a query reading the old
    row map meanwhile still sees consistent rows (the faiss header is patched after the rows are
    written, its byte count before its row count)."""
    rows = current.rows + len(added)
    ids = np.array(current.ids, dtype=np.int64)
    if len(gone):
        ids[np.isin(ids, np.asarray(gone, dtype=np.int64))] = -1
    ids = np.concatenate([ids, np.asarray(added.ids, dtype=np.int64)])
    header = faiss_header(current.dim, rows)
    with open(current.path, "r+b") as handle:
        handle.truncate(HEADER_BYTES + len(header) + current.rows * current.dim * 2)  # a killed append's rows
        handle.seek(0, os.SEEK_END)
        for start in range(0, len(added), 65536):
            handle.write(np.ascontiguousarray(added.matrix[start:start + 65536], dtype=VECTOR_DTYPE).tobytes())
        handle.flush()
        handle.seek(HEADER_BYTES + len(header) - 8)
        handle.write(header[-8:])
        handle.flush()
        handle.seek(HEADER_BYTES)
        handle.write(header[:16])
    _write_ids(current.path, identity, current.file_id, ids)
