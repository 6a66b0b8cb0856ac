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
    return np.asarray(matrix[rest], dtype=np.float32) @ np.asarray(matrix[leader], dtype=np.float32)


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
    width: list
    height: list
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

    def member(self, i: int) -> Member:
        return Member(self.paths[i], self.width[i], self.height[i], int(self.size[i]), int(self.mtime[i]),
                      taken=self.taken[i])


def _sort_key(files: _Files, i: int, options: DedupeOptions) -> tuple:
    path = files.paths[i]
    preferred = not any(path.startswith(folder.rstrip(os.sep) + os.sep) for folder in options.prefer)
    by_policy = {
        # taken: the date, then the file time to the nanosecond (a copy is newer than its original)
        KeepPolicy.best: (bool(files.cropped[i]) or bool(files.bordered[i]), not files.camera[i],
                          bool(files.lossless[i]), -files.pixels[i], (files.taken[i] or "9999", files.mtime[i]),
                          len(path)),
        KeepPolicy.oldest: (files.mtime[i], -files.pixels[i], -files.size[i], len(path)),
        KeepPolicy.newest: (-files.mtime[i], -files.pixels[i], -files.size[i], len(path)),
        KeepPolicy.largest: (-files.size[i], -files.pixels[i], files.mtime[i], len(path)),
        KeepPolicy.shortest_path: (len(path), -files.pixels[i], -files.size[i], files.mtime[i]),
    }[options.keep]
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
        return f"most pixels ({files.width[kept]}x{files.height[kept]})"
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
    table = store.file_table(folder)
    vectors = store.vectors(folder, float32=False)  # the whole index: its float16 rows, memory-mapped
    if len(table["id"]) != len(vectors) or not np.array_equal(np.asarray(table["id"], dtype=np.int64), vectors.ids):
        raise DedupeError("The index changed while dedupe was reading it; run dedupe again.")
    count = len(table["id"])
    if count < 2:
        return []
    files = _Files(
        paths=table["path"],
        size=np.asarray(table["size"], dtype=np.int64),
        mtime=np.asarray(table["mtime_ns"], dtype=np.int64),
        pixels=np.asarray([(w or 0) * (h or 0) for w, h in zip(table["width"], table["height"])], dtype=np.int64),
        width=table["width"], height=table["height"],
        phash=fingerprint.hash_matrix(table["phash"]),
        has_phash=np.asarray([p is not None for p in table["phash"]]),
        colour=np.asarray([c if c is not None else 0.0 for c in table["colourfulness"]], dtype=np.float32),
        raw=np.asarray([p[p.rfind("."):].lower() in RAW_EXTENSIONS for p in table["path"]]),
        camera=np.asarray([bool(make or model) or source not in (None, FROM_FILE) for make, model, source
                           in zip(table["camera_make"], table["camera_model"], table["taken_source"])]),
        lossless=np.asarray([p[p.rfind("."):].lower() in LOSSLESS_EXTENSIONS for p in table["path"]]),
        taken=table["taken"],
        geo=fingerprint.split_geometry(table["geometry"]),
        cropped=np.zeros(count, dtype=bool), bordered=np.zeros(count, dtype=bool),
    )
    del table["phash"], table["geometry"]  # the blobs are in `files` now: ~250 MB at a million images
    matrix = vectors.matrix
    groups: list[Group] = []

    # exact: the same content hash (labels by first appearance: a dict is ~10x faster than sorting the text)
    first_seen: dict[str, int] = {}
    exact_label = np.fromiter((first_seen.setdefault(h, len(first_seen)) for h in table["hash"]), dtype=np.int64,
                              count=count)
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
    assert options.near_threshold is not None  # resolved
    return ((_cosines(matrix, rest, leader) >= options.near_threshold) & files.has_phash[rest]
            & (fingerprint.hamming(files.phash[rest], files.phash[leader]) <= options.max_hash_distance)
            & ~fingerprint.colour_mismatch(files.colour[rest], files.colour[leader]))


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
    kept = []
    for start, end in zip(starts, ends):
        if end - start == 1:
            kept.append(sorted_nodes[start])
            continue
        ordered, reason = _choose_keep(files, [int(i) for i in sorted_nodes[start:end]], options)
        kept.append(ordered[0])
        keep = files.member(ordered[0])
        others = []
        for i in ordered[1:]:
            other = files.member(i)
            other.similarity = float(_cosines(matrix, np.asarray([i]), ordered[0])[0])
            if files.has_phash[i] and files.has_phash[ordered[0]]:
                other.hash_distance = int(fingerprint.hamming(files.phash[i], files.phash[ordered[0]]))
            link = (links or {}).get((min(i, ordered[0]), max(i, ordered[0])))
            if link is not None and (link.crop is not None
                                     or not _near_to(ordered[0], np.asarray([i]), files, options, matrix)[0]):
                other.transform, other.borders, other.crop, other.cropped = link.seen_from(ordered[0])
                other.hash_distance = link.distance
            others.append(other)
        groups.append(Group(tier, keep, reason, others))
    return np.sort(np.asarray(kept, dtype=np.int64))
