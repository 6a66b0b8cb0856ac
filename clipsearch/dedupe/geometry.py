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
BLOCK = 65_536  # rows whose symmetric hashes are looked up at a time (7 x 32 bytes each)
DIRECT_LIMIT = 20_000  # rows from which the bitmaps pay for themselves (20 MB, ~0.1 s to build)
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
    """Per chunk, the stored rows sorted by their 24-bit value. Above DIRECT_LIMIT rows also a bitmap of the
    values held (by at most BUCKET_LIMIT rows: 2 MB a chunk, which stays in the processor's cache), so most
    lookups end at one bit read, and only the few that hit search the sorted values."""

    def __init__(self, hashes: np.ndarray, rows: np.ndarray):
        keys = _chunk_keys(hashes[rows])
        self.sorted_keys, self.order, self.present = [], [], []
        for c in range(CHUNKS):
            order = np.argsort(keys[:, c])
            ordered = keys[order, c]
            if len(rows) > DIRECT_LIMIT:
                starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
                values, counts = ordered[starts], np.diff(np.r_[starts, len(ordered)])
                flags = np.zeros(1 << CHUNK_BITS, dtype=bool)
                flags[values[counts <= BUCKET_LIMIT]] = True  # a more common value means nothing
                self.present.append(np.packbits(flags, bitorder="little"))
            self.sorted_keys.append(ordered)
            self.order.append(rows[order].astype(np.int32))

    def _hits(self, c: int, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which keys stored rows hold in chunk c (at most BUCKET_LIMIT of them), how many, where the first sits."""
        hit = np.arange(len(key))
        if self.present:
            hit = np.flatnonzero((self.present[c][key >> 3] >> (key & 7)) & 1)
        ordered, wanted = self.sorted_keys[c], key[hit]
        first = np.searchsorted(ordered, wanted, "left")
        # count the equal values from there (most values are held once): cheaper than a second binary search
        count = np.zeros(len(hit), dtype=np.int64)
        live = np.arange(len(hit))
        for _ in range(BUCKET_LIMIT + 1):
            at = first[live] + count[live]
            same = at < len(ordered)
            same[same] = ordered[at[same]] == wanted[live[same]]
            live = live[same]
            if len(live) == 0:
                break
            count[live] += 1
        keep = (count > 0) & (count <= BUCKET_LIMIT)
        return hit[keep], count[keep], first[keep]

    def lookup(self, query_rows: np.ndarray, query_keys: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(query row, stored row) pairs sharing at least one chunk value (the same pair may come more than once)."""
        for c in range(CHUNKS):
            hit, count, first = self._hits(c, query_keys[:, c])
            if len(hit) == 0:
                continue
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
    queried = np.asarray(_QUERIED, dtype=np.int64)
    for start in range(0, len(rows), BLOCK):
        block = rows[start:start + BLOCK]
        # every queried symmetry of the block's hashes at once: query q is symmetry queried[q // n] of block[q % n]
        turned = fingerprint.symmetries(geo.hash[block])[queried].reshape(-1, geo.hash.shape[1])
        n = len(block)
        parts = [(q, j) for q, j in tables.lookup(np.arange(len(turned)), _chunk_keys(turned))]
        if not parts:
            continue
        q = np.concatenate([part[0] for part in parts])
        j = np.concatenate([part[1] for part in parts])
        order = np.argsort(q // n, kind="stable")  # by symmetry, then chunk: the order pairs were found in before
        q, j = q[order], j[order]
        i = block[q % n]
        close = (i != j) & (fingerprint.hamming(turned[q], geo.hash[j]) <= MAX_DISTANCE)
        found_i.append(i[close])
        found_j.append(j[close])
        found_s.append(queried[q[close] // n])
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
    both = geo.has[i] & (geo.detail[i] >= MIN_DETAIL) & geo.has[j] & (geo.detail[j] >= MIN_DETAIL)  # usable()
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
