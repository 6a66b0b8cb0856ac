"""Finding duplicate photos in the index, in three separate tiers.

- exact: the same bytes (the SHA-256 the indexer stores).
- near: the same picture saved differently (resized, re-encoded, converted,
  stripped of metadata, rotated by EXIF, cropped or brightened a little). Two
  independent signals must agree: the CLIP vectors propose pairs above
  `near_threshold`, and the perceptual hash computed at index time confirms
  them (at most `max_hash_distance` of its 256 bits differ, and not one greyscale
  and the other colour). Geometric edits (geometry.py) join this tier too:
  mirrored, rotated or transposed copies and copies with borders added, found and
  confirmed by the geometric fingerprint; and crops keeping at least 60% of the
  picture, proposed by CLIP neighbours and sub-window hashes and confirmed from
  the pixels (crops.py). The original, not a crop of it, is kept.
- similar (opt-in): different shots of one scene, like bursts: CLIP vectors above
  `similar_threshold` alone.

Tiers nest: each exact group takes part in the near tier through the file it
keeps, each near group in the similar tier likewise, so a file is listed once
per tier and acting on all tiers in order is consistent. A camera RAW file is
never grouped with a non-RAW image: the JPEG beside it (same stem) is the
camera's rendition of it, not a copy.

Pairs come from the vector index's range search (store/vector_index.py), which
never builds the N x N similarity matrix: exact blockwise products up to
`EXACT_SEARCH_LIMIT` images, faiss k-means cells (several probed per image) above it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInputError, check_finite
from ..indexing import fingerprint
from ..indexing.images import RAW_EXTENSIONS
from ..indexing.metadata import FROM_FILE
from ..models import tuning
from ..options import KeepPolicy
from ..paths import normalise_path, path_json
from ..store import Store, vector_index
from . import geometry

# Formats a camera never writes but exports and conversions do: a PNG beside a JPEG is the copy.
LOSSLESS_EXTENSIONS = frozenset({".png", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tga", ".qoi"})

EXACT_SEARCH_LIMIT = vector_index.EXACT_PAIRS_LIMIT
# Confirmed near pairs further apart than this (of 256 pHash bits) are checked for a crop too, to say so.
CROP_HASH_DISTANCE = 16


class DedupeError(BadInputError):
    """Dedupe cannot run as asked; the message says why."""


@dataclass
class DedupeOptions:
    similar: bool = False
    near_threshold: float | None = None  # None: the model's default (tuning.py)
    similar_threshold: float | None = None
    max_hash_distance: int = 56  # of 256 bits
    neighbours: int = 16  # candidate pairs kept per image: bounds the work on huge groups
    keep: KeepPolicy = KeepPolicy.best
    prefer: tuple[str, ...] = ()  # folders whose files are kept first
    geometric: bool = True  # also mirrored, rotated, bordered and cropped copies (geometry.py, crops.py)

    def resolved(self, model_id: str | None) -> DedupeOptions:
        check_finite(self.near_threshold, "--near-threshold")
        check_finite(self.similar_threshold, "--similar-threshold")
        defaults = tuning.for_model(model_id)
        return DedupeOptions(
            self.similar,
            defaults["near_threshold"] if self.near_threshold is None else self.near_threshold,
            defaults["similar_threshold"] if self.similar_threshold is None else self.similar_threshold,
            self.max_hash_distance, self.neighbours, self.keep,
            tuple(normalise_path(p) for p in self.prefer), self.geometric,
        )


@dataclass
class Member:
    path: str
    width: int | None
    height: int | None
    size: int
    mtime_ns: int
    similarity: float | None = None  # cosine to the kept file (None for the kept file)
    hash_distance: int | None = None  # hash bits that differ from the kept file (the sign hash under `transform`)
    taken: str | None = None  # ISO 8601 date taken (metadata.py)
    transform: str | None = None  # this file is the kept one "mirror"ed, "rotate90"d... (fingerprint.SYMMETRIES)
    borders: bool = False  # borders (letterbox, pillarbox, a frame) added or removed against the kept file
    crop: float | None = None  # share of the uncropped picture's area that the crop keeps
    cropped: str | None = None  # which is the crop: "member" (this file) or "kept"

    def to_dict(self, keep: bool) -> dict:
        from datetime import datetime, timezone

        modified = datetime.fromtimestamp(self.mtime_ns / 1e9, timezone.utc).isoformat(timespec="seconds")
        return {**path_json(self.path), "keep": keep, "width": self.width, "height": self.height,
                "bytes": self.size, "modified": modified, "taken": self.taken,
                "similarity": None if self.similarity is None else round(self.similarity, 4),
                "hash_distance": self.hash_distance, "transform": self.transform, "borders": self.borders,
                "crop": self.crop, "cropped": self.cropped}


@dataclass
class Group:
    tier: str  # "exact", "near" or "similar"
    keep: Member
    reason: str  # why `keep` is the one kept
    others: list[Member] = field(default_factory=list)

    @property
    def members(self) -> list[Member]:
        return [self.keep, *self.others]

    def to_dict(self) -> dict:
        """JSON-ready, with find --json's convention for names that are not UTF-8 ("keep_bytes" beside "keep")."""
        keep = path_json(self.keep.path)
        named = {"keep": keep["path"], **({"keep_bytes": keep["path_bytes"]} if "path_bytes" in keep else {})}
        return {"tier": self.tier, **named, "reason": self.reason,
                "members": [self.keep.to_dict(True)] + [m.to_dict(False) for m in self.others]}


TIERS = ("exact", "near", "similar")


# -- neighbour search ---------------------------------------------------------------


def neighbour_pairs(matrix: np.ndarray, threshold: float, neighbours: int = 16,
                    exact_limit: int = vector_index.EXACT_PAIRS_LIMIT, seed: int = 0,
                    rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of rows whose cosine is at least `threshold`, at most `neighbours` per row: the vector
    index's range search (store/vector_index.py: exact up to `exact_limit` rows, faiss cells above).

    Returns arrays (i, j, similarity), positions in `rows` if given (the rows of `matrix` taking part). Memory
    stays at a few blocks of float32 rows, never N x N: `matrix` may be the memory-mapped float16 rows.
    """
    return vector_index.pairs_above(matrix, threshold, neighbours, exact_limit, seed, rows)


def _cosines(matrix: np.ndarray, rest: np.ndarray, leader: int) -> np.ndarray:
    """Cosine of each row in `rest` to row `leader`, in float32 (`matrix` may hold float16 rows)."""
    rows = vector_index.gather_rows(matrix, np.r_[np.asarray(rest, dtype=np.int64), leader])
    return rows[:-1] @ rows[-1]


def _pair_cosines(matrix: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 16_384) -> np.ndarray:
    """Cosine of rows a[k] and b[k] for every k, a chunk of pairs at a time (each of its rows read once)."""
    sims = np.zeros(len(a), dtype=np.float32)
    for start in range(0, len(a), chunk):
        left, right = a[start:start + chunk], b[start:start + chunk]
        needed, at = np.unique(np.concatenate([left, right]), return_inverse=True)
        rows = vector_index.gather_rows(matrix, needed)
        sims[start:start + len(left)] = np.einsum("ij,ij->i", rows[at[:len(left)]], rows[at[len(left):]])
    return sims


def _components(count: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Connected-component label of each of `count` nodes linked by the pairs (rows, cols)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(count, count))
    return connected_components(graph, directed=False)[1]


# -- choosing what to keep ---------------------------------------------------------------


@dataclass
class _Files:
    """The index's facts as columns, indexable by position."""

    paths: list[str]
    size: np.ndarray
    mtime: np.ndarray
    pixels: np.ndarray
    width: np.ndarray  # -1 where unknown
    height: np.ndarray
    phash: np.ndarray
    has_phash: np.ndarray
    colour: np.ndarray
    raw: np.ndarray
    camera: np.ndarray  # has a camera's EXIF (make, model or shutter date): what an original carries
    lossless: np.ndarray  # a lossless format (PNG, TIFF...) that exports and conversions produce
    taken: list  # ISO text or None
    geo: fingerprint.Geometry  # geometric fingerprints (trimmed box, sign hashes)
    cropped: np.ndarray  # a crop of another file (found by the near tier): never kept over its original
    bordered: np.ndarray  # has borders added (letterbox, frame) where another file of its group has none

    def dimensions(self, i: int) -> tuple[int | None, int | None]:
        width, height = int(self.width[i]), int(self.height[i])
        return (None if width < 0 else width), (None if height < 0 else height)

    def member(self, i: int) -> Member:
        return Member(self.paths[i], *self.dimensions(i), int(self.size[i]), int(self.mtime[i]), taken=self.taken[i])


# What `_read_files` reads of each image; `camera` is whether it has a camera's EXIF (make, model or a shutter date).
# Paths and dates come as bytes and are decoded a chunk at a time (see _decoded), not one Python call per value.
_COLUMNS = ("id", "CAST(path AS BLOB)", "size", "mtime_ns", "ifnull(width, -1)", "ifnull(height, -1)", "phash",
            "ifnull(colourfulness, 0.0)",
            f"ifnull(camera_make, '') <> '' OR ifnull(camera_model, '') <> '' "
            f"OR ifnull(taken_source, '{FROM_FILE}') <> '{FROM_FILE}'",
            "CAST(taken AS BLOB)", "geometry")


def _decoded(values: tuple[bytes | None, ...]) -> list[str | None]:
    """Stored text read as bytes, decoded as the store decodes it (paths.decode_text: bytes that are not UTF-8
    come back as surrogate escapes), in one call for the chunk: a million paths through the connection's
    text factory, one Python call each, took ~1 s. No path or date holds a NUL byte, so it separates them."""
    if None not in values:
        return list(b"\0".join(values).decode("utf-8", "surrogateescape").split("\0"))  # type: ignore[arg-type]
    return [None if value is None else value.decode("utf-8", "surrogateescape") for value in values]


def _read_files(store: Store, folder: str | None) -> tuple[_Files, np.ndarray, np.ndarray]:
    """The facts of the images (under `folder`) as columns, their ids, and the exact tier's labels (files holding
    one content hash share one). Read a chunk of rows at a time into arrays: a million images' rows as Python
    objects took ~1 GB; only the paths and dates taken stay Python strings."""
    chunks: list[tuple] = []
    with store.transaction():  # one snapshot for the rows and the shared hashes
        for rows in store.column_chunks(_COLUMNS, folder):
            ids, names, size, mtime, width, height, phash, colour, camera, taken, geo = zip(*rows)
            numbers = np.asarray([ids, size, mtime, width, height], dtype=np.int64)
            chunks.append((numbers, _decoded(names), fingerprint.hash_matrix(list(phash)),
                           np.asarray([p is not None for p in phash]), np.asarray(colour, dtype=np.float32),
                           np.asarray(camera, dtype=bool), _decoded(taken), fingerprint.split_geometry(list(geo))))
            del rows, ids, names, size, mtime, width, height, phash, colour, camera, taken, geo
        shared = store.same_hash_ids(folder)
    if not chunks:
        chunks.append((np.zeros((5, 0), dtype=np.int64), [], fingerprint.hash_matrix([]), np.zeros(0, dtype=bool),
                       np.zeros(0, dtype=np.float32), np.zeros(0, dtype=bool), [], fingerprint.split_geometry([])))
    numbers = np.concatenate([c[0] for c in chunks], axis=1)
    paths = [path for c in chunks for path in c[1]]
    ids, width, height = numbers[0], numbers[3], numbers[4]
    kinds = {**dict.fromkeys(RAW_EXTENSIONS, 1), **dict.fromkeys(LOSSLESS_EXTENSIONS, 2)}  # by extension
    kind = np.fromiter((kinds.get(p[p.rfind("."):].lower(), 0) for p in paths), dtype=np.int8, count=len(paths))
    files = _Files(
        paths=paths, size=numbers[1], mtime=numbers[2],
        pixels=np.maximum(width, 0) * np.maximum(height, 0), width=width, height=height,
        phash=np.concatenate([c[2] for c in chunks]), has_phash=np.concatenate([c[3] for c in chunks]),
        colour=np.concatenate([c[4] for c in chunks]),
        raw=kind == 1, camera=np.concatenate([c[5] for c in chunks]), lossless=kind == 2,
        taken=[taken for c in chunks for taken in c[6]],
        geo=fingerprint.join_geometry([c[7] for c in chunks]),
        cropped=np.zeros(len(paths), dtype=bool), bordered=np.zeros(len(paths), dtype=bool),
    )
    del chunks, numbers
    label = np.arange(len(ids), dtype=np.int64)
    if shared:
        members = np.concatenate([np.asarray(group, dtype=np.int64) for group in shared])
        leaders = np.repeat([min(group) for group in shared], [len(group) for group in shared])
        found = np.searchsorted(ids, members)
        found[found >= len(ids)] = 0
        ok = ids[found] == members  # always, in one snapshot
        label[found[ok]] = np.searchsorted(ids, leaders)[ok]
    return files, ids, label


def _sort_key(files: _Files, i: int, options: DedupeOptions) -> tuple:
    path = files.paths[i]
    preferred = not any(path.startswith(folder.rstrip(os.sep) + os.sep) for folder in options.prefer)
    pixels, size, mtime = int(files.pixels[i]), int(files.size[i]), int(files.mtime[i])
    keep = options.keep
    if keep == KeepPolicy.best:
        # taken: the date, then the file time to the nanosecond (a copy is newer than its original)
        by_policy: tuple = (bool(files.cropped[i]) or bool(files.bordered[i]), not files.camera[i],
                            bool(files.lossless[i]), -pixels, (files.taken[i] or "9999", mtime), len(path))
    elif keep == KeepPolicy.oldest:
        by_policy = (mtime, -pixels, -size, len(path))
    elif keep == KeepPolicy.newest:
        by_policy = (-mtime, -pixels, -size, len(path))
    elif keep == KeepPolicy.largest:
        by_policy = (-size, -pixels, mtime, len(path))
    else:
        by_policy = (len(path), -pixels, -size, mtime)
    return (preferred, *by_policy, path)


_CRITERIA = {
    KeepPolicy.best: ("uncropped, without borders", "has camera EXIF", "original format (not a lossless re-encode)",
                      "most pixels", "taken first", "shortest path"),
    KeepPolicy.oldest: ("oldest", "most pixels", "largest file", "shortest path"),
    KeepPolicy.newest: ("newest", "most pixels", "largest file", "shortest path"),
    KeepPolicy.largest: ("largest file", "most pixels", "oldest", "shortest path"),
    KeepPolicy.shortest_path: ("shortest path", "most pixels", "largest file", "oldest"),
}


def _choose_keep(files: _Files, indices: list[int], options: DedupeOptions) -> tuple[list[int], str]:
    """Members ordered keep-first, and the reason the first one is kept: the criterion that decided
    against the runner-up, as a short phrase ("has camera EXIF", "most pixels (4032x3024)")."""
    keys = {i: _sort_key(files, i, options) for i in indices}
    ordered = sorted(indices, key=keys.__getitem__)
    best, runner_up = keys[ordered[0]], keys[ordered[1]]
    if best[0] != runner_up[0]:
        return ordered, "in a preferred folder"
    for position, criterion in enumerate(_CRITERIA[options.keep], start=1):
        if best[position] != runner_up[position]:
            return ordered, _reason(criterion, files, ordered[0], ordered[1])
    return ordered, "first by path (all else equal)"


def _reason(criterion: str, files: _Files, kept: int, runner_up: int) -> str:
    """The deciding criterion, with the kept file's value where it helps."""
    if criterion == "uncropped, without borders":
        return "without borders" if files.bordered[runner_up] and not files.cropped[runner_up] else \
            "the uncropped original"
    if criterion == "most pixels":
        width, height = files.dimensions(kept)
        return f"most pixels ({width}x{height})"
    if criterion == "taken first":
        if files.taken[kept] != files.taken[runner_up]:
            return f"taken first ({files.taken[kept]})"
        return "older file (same date taken)" if files.taken[kept] else "older file"
    if criterion in ("oldest", "newest"):
        from datetime import datetime, timezone

        when = datetime.fromtimestamp(files.mtime[kept] / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M")
        return f"{criterion} ({when} UTC)"
    if criterion == "largest file":
        return f"largest file ({files.size[kept]:,} bytes)"
    return criterion


# -- the three tiers -----------------------------------------------------------------


def find_duplicates(store: Store, folder: str | None = None, options: DedupeOptions | None = None) -> list[Group]:
    """Duplicate groups among the indexed images (under `folder`), exact first, then near, then similar.

    Images without a fingerprint (run `fill_fingerprints` first; `dedupe()` does)
    take part in the exact and similar tiers only.
    """
    recorded = store.model()
    options = (options or DedupeOptions()).resolved(recorded[0] if recorded else None)
    assert options.near_threshold is not None and options.similar_threshold is not None  # resolved
    folder = normalise_path(folder) if folder else None
    files, ids, exact_label = _read_files(store, folder)
    vectors = store.vectors(folder, float32=False)  # the whole index: its float16 rows, memory-mapped
    if len(ids) != len(vectors) or not np.array_equal(ids, vectors.ids):
        raise DedupeError("The index changed while dedupe was reading it; run dedupe again.")
    count = len(ids)
    if count < 2:
        return []
    matrix = vectors.matrix
    groups: list[Group] = []
    exact_keep = _tier_groups("exact", files, exact_label, options, groups, matrix)

    # near and similar: one neighbour search among the kept files of the exact tier
    threshold = min(options.near_threshold, options.similar_threshold) if options.similar else options.near_threshold
    rows, cols, sims = neighbour_pairs(matrix, threshold, options.neighbours, rows=exact_keep)
    rows, cols = exact_keep[rows], exact_keep[cols]
    same_kind = files.raw[rows] == files.raw[cols]
    rows, cols, sims = rows[same_kind], cols[same_kind], sims[same_kind]

    confirmed = ((sims >= options.near_threshold) & files.has_phash[rows] & files.has_phash[cols]
                 & (fingerprint.hamming(files.phash[rows], files.phash[cols]) <= options.max_hash_distance)
                 & ~fingerprint.colour_mismatch(files.colour[rows], files.colour[cols]))
    links = _geometric_links(files, exact_keep, rows, cols, sims, confirmed, options) if options.geometric else {}
    linked_rows = np.asarray([link.a for link in links.values()], dtype=np.int64)
    linked_cols = np.asarray([link.b for link in links.values()], dtype=np.int64)
    for link in links.values():
        if link.crop is not None:
            files.cropped[link.b] = True
        elif link.borders:  # the one with borders added is the copy
            files.bordered[link.a if files.geo.trimmed[link.a] else link.b] = True
    near_label = _labels_over(count, exact_keep, np.concatenate([rows[confirmed], linked_rows]),
                              np.concatenate([cols[confirmed], linked_cols]))
    if options.geometric:
        _crops_of_leaders(near_label, exact_keep, files, options, links)
    near_label = _split_around_leaders(
        near_label, exact_keep, files, options,
        lambda leader, rest: _near_to(leader, rest, files, options, matrix) | _linked(leader, rest, links))
    near_keep = _tier_groups("near", files, near_label, options, groups, matrix, among=exact_keep, links=links)

    if options.similar:
        loose = sims >= options.similar_threshold
        similar_label = _labels_over(count, near_keep, _kept_of(near_label, near_keep, rows[loose]),
                                     _kept_of(near_label, near_keep, cols[loose]))
        similar_label = _split_around_leaders(
            similar_label, near_keep, files, options,
            lambda leader, rest: _cosines(matrix, rest, leader) >= options.similar_threshold)
        _tier_groups("similar", files, similar_label, options, groups, matrix, among=near_keep)
    order = {tier: position for position, tier in enumerate(TIERS)}
    groups.sort(key=lambda g: (order[g.tier], g.keep.path))
    return groups


def _geometric_links(files: _Files, nodes: np.ndarray, rows: np.ndarray, cols: np.ndarray, sims: np.ndarray,
                     confirmed: np.ndarray, options: DedupeOptions) -> dict[tuple[int, int], geometry.Link]:
    """Near-identical pairs that a geometric edit hides (geometry.py): symmetric and bordered copies from the
    hashes, crops checked from the pixels. Keyed by (lower, higher) index; pairs the plain checks confirmed
    are left out."""
    from . import crops

    assert options.near_threshold is not None  # resolved
    allowed = np.zeros(len(files.paths), dtype=bool)
    allowed[nodes] = True
    allowed &= files.has_phash  # fingerprints come together: a row without them is matched exactly only
    plain = set(zip(rows[confirmed].tolist(), cols[confirmed].tolist()))
    plain |= {(b, a) for a, b in plain}

    def fresh(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Pairs still open: not confirmed already, both of one kind (RAW or not), colour against colour."""
        same = (files.raw[i] == files.raw[j]) & ~fingerprint.colour_mismatch(files.colour[i], files.colour[j])
        same &= allowed[i] & allowed[j]
        return same & np.asarray([(a, b) not in plain for a, b in zip(i.tolist(), j.tolist())], dtype=bool)

    hash_i, hash_j, _ = geometry.hash_candidates(files.geo, allowed)
    near = sims >= options.near_threshold
    candidate_i = np.concatenate([hash_i, rows[near]])
    candidate_j = np.concatenate([hash_j, cols[near]])
    open_pairs = fresh(candidate_i, candidate_j)
    links: dict[tuple[int, int], geometry.Link] = {}
    for link in geometry.symmetric_links(files.geo, candidate_i[open_pairs], candidate_j[open_pairs]):
        links.setdefault((min(link.a, link.b), max(link.a, link.b)), link)

    # Crops: CLIP neighbours above the near threshold and sub-window hash matches, checked on the pixels, unless
    # the two are joined already (then `_crops_of_leaders` checks the crop against the file kept, to report it).
    large, small = geometry.window_candidates(files.geo, allowed)
    crop_i = np.concatenate([rows[near], large])
    crop_j = np.concatenate([cols[near], small])
    joined = _components(len(files.paths),
                         np.concatenate([rows[confirmed], np.asarray([lk.a for lk in links.values()], dtype=np.int64)]),
                         np.concatenate([cols[confirmed], np.asarray([lk.b for lk in links.values()], dtype=np.int64)]))
    keep = fresh(crop_i, crop_j) & geometry.plausible(files.geo, crop_i, crop_j) & (joined[crop_i] != joined[crop_j])
    pairs = {(min(a, b), max(a, b)) for a, b in zip(crop_i[keep].tolist(), crop_j[keep].tolist())}
    trims = files.geo.box.copy()
    trims[~files.geo.has] = (0.0, 0.0, 1.0, 1.0)
    for (big, cropped), match in crops.verify_pairs(sorted(pairs), files.paths, trims, files.pixels).items():
        links[(min(big, cropped), max(big, cropped))] = geometry.Link(big, cropped, crop=match.fraction)
    return links


def _crops_of_leaders(label: np.ndarray, nodes: np.ndarray, files: _Files, options: DedupeOptions,
                      links: dict[tuple[int, int], geometry.Link]) -> None:
    """Check members of a linked group against the file that will lead it, where their hashes differ like a
    crop's and no link joins the two yet: a crop found against a copy (the neighbour search keeps a few per
    file), or a crop that passed the plain checks, becomes a crop of the original, reported as such."""
    from . import crops

    order = np.argsort(label[nodes], kind="stable")
    sorted_nodes, sorted_labels = nodes[order], label[nodes][order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    pairs = []
    for start, end in zip(starts, np.r_[starts[1:], len(sorted_nodes)]):
        if end - start < 2:
            continue
        members = sorted(sorted_nodes[start:end].tolist(), key=lambda i: _sort_key(files, i, options))
        leader = members[0]
        for other in members[1:]:
            if (min(leader, other), max(leader, other)) not in links and files.has_phash[other] and \
                    fingerprint.hamming(files.phash[leader], files.phash[other]) > CROP_HASH_DISTANCE and \
                    geometry.plausible(files.geo, np.asarray([leader]), np.asarray([other]))[0]:
                pairs.append((min(leader, other), max(leader, other)))
    trims = files.geo.box.copy()
    trims[~files.geo.has] = (0.0, 0.0, 1.0, 1.0)
    for (big, cropped), match in crops.verify_pairs(pairs, files.paths, trims, files.pixels).items():
        links[(min(big, cropped), max(big, cropped))] = geometry.Link(big, cropped, crop=match.fraction)
        files.cropped[cropped] = True


def _linked(leader: int, rest: np.ndarray, links: dict[tuple[int, int], geometry.Link]) -> np.ndarray:
    return np.asarray([(min(leader, r), max(leader, r)) in links for r in rest.tolist()], dtype=bool)


def _kept_of(label: np.ndarray, kept: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Map files to the kept file of their group in a tier (label -> kept index)."""
    by_label = np.full(label.max() + 1, -1, dtype=np.int64)
    by_label[label[kept]] = kept
    return by_label[label[nodes]]


def _near_to(leader: int, rest: np.ndarray, files: _Files, options: DedupeOptions, matrix: np.ndarray) -> np.ndarray:
    """Which of `rest` pass both near-identical checks against `leader`: the cosine and the hash (with colour)."""
    leaders = np.full(len(rest), leader, dtype=np.int64)
    return _near_pairs(rest, leaders, _cosines(matrix, rest, leader), files, options)


def _near_pairs(a: np.ndarray, b: np.ndarray, similarity: np.ndarray, files: _Files,
                options: DedupeOptions) -> np.ndarray:
    """Which pairs (a[k], b[k]) of cosine similarity[k] pass both near-identical checks (b[k] is the file kept)."""
    assert options.near_threshold is not None  # resolved
    return ((similarity >= options.near_threshold) & files.has_phash[a]
            & (fingerprint.hamming(files.phash[a], files.phash[b]) <= options.max_hash_distance)
            & ~fingerprint.colour_mismatch(files.colour[a], files.colour[b]))


def _split_around_leaders(label: np.ndarray, nodes: np.ndarray, files: _Files, options: DedupeOptions,
                          belongs: Callable[[int, np.ndarray], np.ndarray]) -> np.ndarray:
    """Re-form groups so every member passes the tier's checks against the file kept, not just against a neighbour.

    Linked pairs chain (A like B, B like C, ... Z), which would lump a navy square
    with an off-white one, or a whole holiday into one "burst". Instead the file
    the keep policy prefers leads a group of the members that `belongs(leader,
    others)` accepts; the rest form groups among themselves the same way.
    """
    label = label.copy()
    next_label = label.max() + 1
    order = np.argsort(label[nodes], kind="stable")
    sorted_nodes, sorted_labels = nodes[order], label[nodes][order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(sorted_nodes)]):
        if end - start < 3:  # a single linked pair passed the checks against each other
            continue
        waiting = np.asarray(sorted(sorted_nodes[start:end].tolist(), key=lambda i: _sort_key(files, i, options)),
                             dtype=np.int64)
        while len(waiting):
            leader, rest = int(waiting[0]), waiting[1:]
            close = belongs(leader, rest) if len(rest) else np.zeros(0, dtype=bool)
            label[leader] = next_label
            label[rest[close]] = next_label
            next_label += 1
            waiting = rest[~close]  # keeps the keep-policy order
    return label


def _labels_over(count: int, nodes: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Component labels of all `count` files; only `nodes` take part, the rest get their own label."""
    labels = np.arange(count, dtype=np.int64)
    if len(rows):
        keep = rows != cols
        component = _components(count, rows[keep], cols[keep])
        labels[nodes] = count + component[nodes]
    return labels


def _tier_groups(tier: str, files: _Files, label: np.ndarray, options: DedupeOptions, groups: list[Group],
                 matrix: np.ndarray, among: np.ndarray | None = None,
                 links: dict[tuple[int, int], geometry.Link] | None = None) -> np.ndarray:
    """Add this tier's groups (2+ files with one label) to `groups`; return the files kept, one per label."""
    nodes = np.arange(len(label)) if among is None else among
    order = np.argsort(label[nodes], kind="stable")
    sorted_nodes, sorted_labels = nodes[order], label[nodes][order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    ends = np.r_[starts[1:], len(sorted_nodes)]
    alone = ends - starts == 1
    kept = [sorted_nodes[starts[alone]]]
    chosen = []
    for start, end in zip(starts[~alone].tolist(), ends[~alone].tolist()):
        ordered, reason = _choose_keep(files, sorted_nodes[start:end].tolist(), options)
        kept.append(np.asarray(ordered[:1], dtype=np.int64))
        chosen.append((ordered, reason))
    # each member against the file kept, all at once: cosine, hash bits apart, and whether the plain checks pass
    member = np.asarray([i for ordered, _ in chosen for i in ordered[1:]], dtype=np.int64)
    leader = np.asarray([ordered[0] for ordered, _ in chosen for _ in ordered[1:]], dtype=np.int64)
    similarity = _pair_cosines(matrix, member, leader)
    hashed = files.has_phash[member] & files.has_phash[leader]
    distance = fingerprint.hamming(files.phash[member], files.phash[leader])
    near = _near_pairs(member, leader, similarity, files, options)
    at = 0
    for ordered, reason in chosen:
        others = []
        for i in ordered[1:]:
            other = files.member(i)
            other.similarity = float(similarity[at])
            if hashed[at]:
                other.hash_distance = int(distance[at])
            link = (links or {}).get((min(i, ordered[0]), max(i, ordered[0])))
            if link is not None and (link.crop is not None or not near[at]):
                other.transform, other.borders, other.crop, other.cropped = link.seen_from(ordered[0])
                other.hash_distance = link.distance
            others.append(other)
            at += 1
        groups.append(Group(tier, files.member(ordered[0]), reason, others))
    return np.sort(np.concatenate(kept))
