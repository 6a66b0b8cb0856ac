"""Near-identical copies that a geometric edit hides: mirrored, rotated, transposed, bordered and cropped.

The plain near tier compares hashes of the whole frame, which any geometric
edit scrambles, and CLIP vectors, which a small model does not keep mirror- or
crop-invariant. Here each picture's geometric fingerprint (fingerprint.geometry:
borders trimmed, a DCT sign hash whose mirrors and rotations are bit operations,
sub-window hashes) proposes and confirms pairs:

- Symmetries and borders: the sign hash of every symmetric copy is derived from
  the stored one; pairs come from a multi-index hash (the 256 bits cut into
  CHUNKS chunks; two hashes within a few bits share a chunk exactly), looked up
  through direct-address tables, so a million photos cost seconds, not N x N; CLIP
  neighbours are checked too. A pair is confirmed at most MAX_DISTANCE bits apart
  under one symmetry, with a close mean colour and enough detail for the hash to mean something.
- Crops: CLIP neighbours above the near threshold and pictures whose whole hash
  matches another's centred sub-window are candidates; crops.py decides from the
  pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..indexing import fingerprint
from ..indexing.fingerprint import INVERSE, SYMMETRIES, Geometry

# Of 256 sign bits: mirrored, rotated and bordered copies came within 16 on the test scenes, other photos 90 or
# more apart, but an 80% crop of a nearly symmetric picture within 33 of its mirror image.
MAX_DISTANCE = 24
MIN_DETAIL = 4.0  # greyscale standard deviation below which a picture is too plain for its signs to mean anything
MAX_COLOUR_SHIFT = 24.0  # mean colour (0-255 per channel) two copies may differ by
CHUNK_BITS = 24
CHUNKS = 10  # 240 of the 256 bits, in 3-byte chunks
BUCKET_LIMIT = 64  # a chunk value shared by more pictures than this proposes no pairs (plain, repetitive pictures)
BLOCK = 65_536
DIRECT_LIMIT = 100_000
_NAMES = tuple(SYMMETRIES)
# Querying every picture's symmetric hashes against every picture's stored one finds each pair under s or its
# inverse, so one of rotate90 / rotate270 is enough.
_QUERIED = tuple(i for i, name in enumerate(_NAMES) if name != "rotate270")


@dataclass(frozen=True)
class Link:
    """`b` is `a` after `transform` (a SYMMETRIES name), with borders added or removed when `borders`;
    or, when `crop` is set, `b` is a crop of `a` that keeps that share of its area."""

    a: int
    b: int
    transform: str = "identity"
    borders: bool = False
    crop: float | None = None
    distance: int | None = None  # sign-hash bits apart under `transform`

    def seen_from(self, kept: int) -> tuple[str | None, bool, float | None, str | None]:
        """(transform, borders, crop share, which is cropped: "member" or "kept") of the other file against `kept`."""
        transform = self.transform if kept == self.a else INVERSE[self.transform]
        cropped = None if self.crop is None else ("member" if kept == self.a else "kept")
        return (None if transform == "identity" else transform), self.borders, self.crop, cropped


def usable(geo: Geometry) -> np.ndarray:
    return geo.has & (geo.detail >= MIN_DETAIL)


def _chunk_keys(hashes: np.ndarray) -> np.ndarray:
    """(n, 4) uint64 hashes -> (n, CHUNKS) uint32 keys of 24 bits each."""
    data = np.ascontiguousarray(hashes).view(np.uint8).reshape(len(hashes), -1)[:, :CHUNKS * 3].astype(np.uint32)
    data = data.reshape(len(hashes), CHUNKS, 3)
    return (data[:, :, 0] << 16) | (data[:, :, 1] << 8) | data[:, :, 2]


class _Tables:
    """Per chunk, the stored rows sorted by their 24-bit value. Above DIRECT_LIMIT rows also a direct-address
    count of each value (one byte per value: 16 MB a chunk), so most lookups end at one array read instead of
    a binary search."""

    def __init__(self, hashes: np.ndarray, rows: np.ndarray):
        keys = _chunk_keys(hashes[rows])
        self.sorted_keys, self.order, self.counts = [], [], []
        for c in range(CHUNKS):
            order = np.argsort(keys[:, c])
            ordered = keys[order, c]
            if len(rows) > DIRECT_LIMIT:
                starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
                values, counts = ordered[starts], np.diff(np.r_[starts, len(ordered)])
                table = np.zeros(1 << CHUNK_BITS, dtype=np.uint8)
                table[values] = np.where(counts > BUCKET_LIMIT, 0, counts)  # too common to mean anything
                self.counts.append(table)
            self.sorted_keys.append(ordered)
            self.order.append(rows[order].astype(np.int32))

    def _counts(self, c: int, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """How many stored rows hold each key in chunk c, and where the first one sits."""
        if self.counts:
            count = self.counts[c][key].astype(np.int64)
            return count, np.zeros(0, dtype=np.int64)
        left = np.searchsorted(self.sorted_keys[c], key, "left")
        count = np.searchsorted(self.sorted_keys[c], key, "right") - left
        count[count > BUCKET_LIMIT] = 0
        return count, left

    def lookup(self, query_rows: np.ndarray, query_keys: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(query row, stored row) pairs sharing at least one chunk value (the same pair may come more than once)."""
        for c in range(CHUNKS):
            key = query_keys[:, c]
            count, left = self._counts(c, key)
            hit = np.flatnonzero(count)
            if len(hit) == 0:
                continue
            count = count[hit]
            first = left[hit] if len(left) else np.searchsorted(self.sorted_keys[c], key[hit])
            offsets = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
            yield np.repeat(query_rows[hit], count), self.order[c][np.repeat(first, count) + offsets].astype(np.int64)


def hash_candidates(geo: Geometry, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j) whose hashes agree under a symmetry, found without comparing every pair.

    Returns (i, j, symmetry index) with hash(j) within MAX_DISTANCE of symmetry(hash(i)),
    identity included (for bordered copies); i != j, each unordered pair once.
    """
    rows = np.flatnonzero(allowed & usable(geo))
    found_i, found_j, found_s = [], [], []
    if len(rows) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    tables = _Tables(geo.hash, rows)
    for start in range(0, len(rows), BLOCK):
        block = rows[start:start + BLOCK]
        turned = fingerprint.symmetries(geo.hash[block])
        for s in _QUERIED:
            keys = _chunk_keys(turned[s])
            for qi, sj in tables.lookup(np.arange(len(block)), keys):
                i = block[qi]
                keep = i != sj
                qi, i, sj = qi[keep], i[keep], sj[keep]
                close = fingerprint.hamming(turned[s][qi], geo.hash[sj]) <= MAX_DISTANCE
                found_i.append(i[close])
                found_j.append(sj[close])
                found_s.append(np.full(int(close.sum()), s, dtype=np.int64))
    return _unique_pairs(np.concatenate(found_i or [np.zeros(0, np.int64)]),
                         np.concatenate(found_j or [np.zeros(0, np.int64)]),
                         np.concatenate(found_s or [np.zeros(0, np.int64)]))


def window_candidates(geo: Geometry, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (large, small): the whole hash of `small` is within MAX_DISTANCE of a centred sub-window of `large`."""
    rows = np.flatnonzero(allowed & usable(geo))
    found_large, found_small = [], []
    if len(rows) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    keys = _chunk_keys(geo.hash[rows])
    for w in range(geo.windows.shape[1]):
        windows = geo.windows[:, w]
        tables = _Tables(windows, rows)
        for qi, large in tables.lookup(rows, keys):
            keep = qi != large
            small, large = qi[keep], large[keep]
            close = fingerprint.hamming(geo.hash[small], windows[large]) <= MAX_DISTANCE
            found_large.append(large[close])
            found_small.append(small[close])
        del tables  # one window's tables at a time
    if not found_large:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    large, small = np.concatenate(found_large), np.concatenate(found_small)
    pairs = np.unique(np.stack([large, small], axis=1), axis=0) if len(large) else np.zeros((0, 2), np.int64)
    return pairs[:, 0], pairs[:, 1]


def _unique_pairs(i: np.ndarray, j: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per unordered pair (the first found), oriented so that j = symmetry(i)."""
    if len(i) == 0:
        return i, j, s
    low, high = np.minimum(i, j), np.maximum(i, j)
    _, first = np.unique(low.astype(np.int64) * (int(max(i.max(), j.max())) + 1) + high, return_index=True)
    return i[first], j[first], s[first]


def best_symmetry(geo: Geometry, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For pairs (i, j): the symmetry index s making hash(j) closest to s(hash(i)), and that distance."""
    best_s = np.zeros(len(i), dtype=np.int64)
    best_d = np.full(len(i), 10**6, dtype=np.int64)
    for start in range(0, len(i), BLOCK):
        a, b = i[start:start + BLOCK], j[start:start + BLOCK]
        turned = fingerprint.symmetries(geo.hash[a])
        distances = np.stack([fingerprint.hamming(turned[s], geo.hash[b]) for s in range(len(_NAMES))])
        best_s[start:start + BLOCK] = distances.argmin(axis=0)
        best_d[start:start + BLOCK] = distances.min(axis=0)
    return best_s, best_d


def plausible(geo: Geometry, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Both fingerprints usable and their mean colours close (a hash of signs ignores brightness)."""
    both = usable(geo)[i] & usable(geo)[j]
    return both & (np.abs(geo.colour[i] - geo.colour[j]).max(axis=1) <= MAX_COLOUR_SHIFT)


def symmetric_links(geo: Geometry, i: np.ndarray, j: np.ndarray) -> list[Link]:
    """Links for the pairs (i, j) that are one picture under a symmetry or with borders trimmed.

    Pairs alike as they stand (identity, the same borders) are left to the plain near tier.
    """
    keep = plausible(geo, i, j)
    i, j = i[keep], j[keep]
    s, distance = best_symmetry(geo, i, j)
    boxes_differ = np.abs(geo.box[i] - geo.box[j]).max(axis=1) > 0.02
    ok = (distance <= MAX_DISTANCE) & ((s != 0) | boxes_differ)
    return [Link(int(a), int(b), _NAMES[int(t)], bool(bordered), None, int(d))
            for a, b, t, bordered, d in zip(i[ok], j[ok], s[ok], boxes_differ[ok], distance[ok])]


def symmetry_name(index: int) -> str:
    return _NAMES[index]
