"""Pixel fingerprints stored beside each vector, for the near-identical tier of dedupe.

The CLIP vector says "same content"; these say "same picture": a 256-bit DCT
perceptual hash (imagehash's pHash with hash_size=16, on the upright image, so a rotated copy
with a compensating EXIF tag hashes like the original) and a colourfulness
score. pHash works on brightness only, so a greyscale copy hashes like its
colour original; colourfulness tells the two apart. Both are computed from
the picture the indexer already decodes, so they cost almost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Below this an image counts as greyscale (Hasler & Süsstrunk's colourfulness:
# 0 for grey, ~15 "slightly colourful", 40+ vivid; a re-encoded greyscale JPEG
# stays below 1). Above twice this it is colour.
GREY_LIMIT = 2.0


HASH_SIZE = 16  # 16x16 DCT coefficients: 256 bits, 32 bytes
HASH_BYTES = HASH_SIZE * HASH_SIZE // 8
_HASH_INPUT = HASH_SIZE * 4  # pHash's 64x64 greyscale input
_COLOUR_INPUT = 64


def _dct_rows(size: int, keep: int) -> np.ndarray:
    """The first `keep` rows of the unnormalised DCT-II matrix (scipy.fftpack.dct's definition)."""
    k = np.arange(keep)[:, None]
    n = np.arange(size)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * size))


_DCT = _dct_rows(_HASH_INPUT, HASH_SIZE)


def fingerprints(image: Image.Image) -> tuple[bytes, float]:
    """Perceptual hash and colourfulness of an upright picture, from a small reduction of it (~0.6 ms).

    The hash is imagehash's pHash (hash_size=16): greyscale, Lanczos to 64x64, a
    2-D DCT, the 16x16 lowest frequencies against their median; the DCT is two small
    matrix products here instead of imagehash and scipy. The picture is first
    box-reduced to at least 128 pixels (as Pillow's `reducing_gap` does), which
    costs a quarter of the time and moves a hash by a few bits at most against one
    of the unreduced picture (scripts/eval_dedupe.py: the tiers are unchanged).
    On the generated test scenes the 256-bit hash keeps renditions of one picture
    (2% crop, re-encoding, 5% brighter...) within 52 bits and puts burst frames and
    other photos 64 or more apart; with the common 64-bit hash, crops and burst
    frames both came as close as 10 bits.
    """
    factor = min(image.size) // (2 * _HASH_INPUT)  # box-reduce first, keeping twice the pixels needed
    small = image.reduce(factor) if factor > 1 else image
    grey = small.convert("L").resize((_HASH_INPUT, _HASH_INPUT), Image.Resampling.LANCZOS)
    low = _DCT @ np.asarray(grey, dtype=np.float64) @ _DCT.T
    phash = np.packbits((low > np.median(low)).flatten()).tobytes()
    return phash, colourfulness(small)


def hash_matrix(hashes: list[bytes | None]) -> np.ndarray:
    """Stored hashes as an (n, 4) uint64 array; missing ones as zeros."""
    blank = bytes(HASH_BYTES)
    joined = b"".join(h if h is not None and len(h) == HASH_BYTES else blank for h in hashes)
    return np.frombuffer(joined, dtype=np.uint64).reshape(len(hashes), HASH_BYTES // 8)


def colourfulness(image: Image.Image) -> float:
    """Hasler & Süsstrunk (2003) colourfulness on a 64x64 thumbnail: near 0 for greyscale."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    rgb = np.asarray(image.resize((_COLOUR_INPUT, _COLOUR_INPUT), Image.Resampling.BILINEAR), dtype=np.float32)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def hamming(a: np.ndarray | bytes, b: np.ndarray | bytes) -> np.ndarray:
    """Bits that differ between hashes: two hashes (bytes), or row by row of two hash_matrix arrays."""
    if isinstance(a, bytes) and isinstance(b, bytes):
        a, b = hash_matrix([a]), hash_matrix([b])
        return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1)[0]
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1)


def colour_mismatch(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """True where one image is greyscale and the other clearly in colour."""
    low, high = np.minimum(a, b), np.maximum(a, b)
    return (low < GREY_LIMIT) & (high >= 2 * GREY_LIMIT)


# -- the geometric fingerprint: borders trimmed, a hash whose symmetries are bit operations -------------------

# Layout of the `geometry` column (GEOMETRY_BYTES bytes): the trimmed box as four uint16 fractions of the
# width and height (left, top, right, bottom; 65535 = the whole side), the trimmed picture's mean colour
# (3 bytes) and detail (the standard deviation of its 64x64 greyscale, 1 byte: near 0 for a plain square,
# whose sign hash means nothing), then the sign hash of the trimmed picture, then the sign hashes of the
# centred sub-windows WINDOWS (side fractions kept; "square" is the centred square) for crop candidates.
BOX_BYTES = 8
HEADER_BYTES = BOX_BYTES + 4
WINDOWS: tuple[float | str, ...] = (0.9, 0.8, "square")
GEOMETRY_BYTES = HEADER_BYTES + HASH_BYTES * (1 + len(WINDOWS))
# Border trimming, on a copy at most _TRIM_INPUT pixels on its long side. A border line's pixels differ
# from its mean by at most _FLAT (per channel, standard deviation) and its mean from the outer line's by at
# most _SAME; one of the first lines inside must break clearly (twice either). Borders come in opposite pairs
# of one neutral colour (letterbox: top and bottom; pillarbox: left and right; a frame: all four), which tells
# them from a plain sky above and a plain floor below. The trimmed picture keeps at least _KEEP of each side.
_TRIM_INPUT = 160
_FLAT = 5.0
_SAME = 10.0
_KEEP = 0.3
_NEUTRAL = 24.0  # largest difference between a border's red, green and blue


def trim_box(image: Image.Image) -> tuple[float, float, float, float]:
    """The box inside uniform borders (letterbox, pillarbox, a plain frame) as fractions (left, top, right, bottom).

    (0, 0, 1, 1) when there is no border.
    """
    factor = max(1, max(image.size) // _TRIM_INPUT)
    small = image.reduce(factor) if factor > 1 else image
    rgb = np.asarray(small if small.mode == "RGB" else small.convert("RGB"), dtype=np.float32)
    height, width = rgb.shape[:2]
    if height < 16 or width < 16:
        return 0.0, 0.0, 1.0, 1.0
    left, top, right, bottom = 0, 0, width, height
    for _ in range(3):  # trimming one axis can reveal borders on the other (a letterboxed pillarbox)
        inner = rgb[top:bottom, left:right]
        outer = (inner[0], inner[-1], inner[:, 0], inner[:, -1])
        flat = [bool(line.std(axis=0).max() <= _FLAT) for line in outer]
        if not ((flat[0] and flat[1]) or (flat[2] and flat[3])):  # most photos: no pair of plain opposite edges
            break
        rows = _border_pair(inner.mean(axis=1), inner.std(axis=1).max(axis=1), height)
        cols = _border_pair(inner.mean(axis=0), inner.std(axis=0).max(axis=1), width)
        if rows == (0, 0) and cols == (0, 0):
            break
        top, bottom = top + rows[0], bottom - rows[1]
        left, right = left + cols[0], right - cols[1]
    return left / width, top / height, right / width, bottom / height


def _border_pair(means: np.ndarray, stds: np.ndarray, length: int) -> tuple[int, int]:
    """Lines of border at the start and at the end of one axis: both present, of one neutral colour (black,
    white or a grey: a plain coloured background around a subject is part of the photo), or (0, 0).
    `length` is the whole picture's, so repeated passes cannot trim past _KEEP of it."""
    limit = max(0, len(means) - int(length * _KEEP)) // 2
    start, end = _border_run(means, stds, limit), _border_run(means[::-1], stds[::-1], limit)
    if start == 0 or end == 0 or np.abs(means[0] - means[-1]).max() > _SAME or np.ptp(means[0]) > _NEUTRAL:
        return 0, 0
    return start, end


def _border_run(means: np.ndarray, stds: np.ndarray, limit: int) -> int:
    """How many lines from the start are a uniform border of one colour (0 if none, or if it fades in)."""
    if stds[0] > _FLAT:
        return 0
    drift = np.abs(means - means[0]).max(axis=1)
    inside = (stds > _FLAT) | (drift > _SAME)
    run = int(np.argmax(inside)) if inside.any() else len(means)
    if run < 2 or run > limit:
        return 0
    edge = slice(run, run + 2)  # the first lines inside (one may blend border and picture)
    if not ((stds[edge] > 2 * _FLAT) | (drift[edge] > 2 * _SAME)).any():
        return 0  # a slow fade (sky, gradient), not a border's clean edge
    return run


def sign_hash(grey: np.ndarray) -> bytes:
    """256 bits: the signs of the 16x16 lowest DCT coefficients of a 64x64 greyscale picture.

    Unlike pHash's comparison with the median, a sign changes exactly with a mirror or
    a flip (a coefficient of odd frequency along the reversed axis changes sign) and a
    transpose transposes the coefficients: `symmetries` derives the hash of every
    mirrored, rotated and transposed copy from this one without touching the pixels.
    """
    low = _DCT @ grey @ _DCT.T
    return np.packbits((low > 0).flatten()).tobytes()


def geometry(image: Image.Image) -> bytes:
    """The geometric fingerprint of an upright picture (layout above): borders trimmed, then hashed (~1 ms)."""
    factor = min(image.size) // (2 * _HASH_INPUT)  # box-reduce first, as `fingerprints` does
    reduced = image.reduce(factor) if factor > 1 else image
    left, top, right, bottom = trim_box(reduced)
    width, height = reduced.size
    box = (round(left * width), round(top * height), round(right * width), round(bottom * height))
    small = reduced.crop(box) if box != (0, 0, width, height) else reduced
    rgb = np.asarray(small.convert("RGB").resize((8, 8), Image.Resampling.BOX), dtype=np.float64)
    grey = small.convert("L")
    whole = _square(grey)
    header = np.round(np.asarray([left, top, right, bottom]).clip(0, 1) * 65535).astype("<u2").tobytes()
    header += bytes([*(round(float(c)) for c in rgb.reshape(-1, 3).mean(axis=0).clip(0, 255)),
                     int(min(255, round(whole.std())))])
    parts = [header, sign_hash(whole)]
    w, h = grey.size
    for window in WINDOWS:
        kept_w, kept_h = (min(w, h) / w, min(w, h) / h) if window == "square" else (float(window), float(window))
        x, y = (1 - kept_w) / 2 * w, (1 - kept_h) / 2 * h
        parts.append(sign_hash(_square(grey.crop((round(x), round(y), round(w - x), round(h - y))))))
    return b"".join(parts)


def _square(grey: Image.Image) -> np.ndarray:
    return np.asarray(grey.resize((_HASH_INPUT, _HASH_INPUT), Image.Resampling.LANCZOS), dtype=np.float64)


# The eight symmetries of the square, as (transpose, reverse rows, reverse columns) applied in that order to
# the pixel array; names say what was done to the original to make the copy (rotations counterclockwise).
SYMMETRIES: dict[str, tuple[bool, bool, bool]] = {
    "identity": (False, False, False),
    "mirror": (False, False, True),
    "flip": (False, True, False),
    "rotate180": (False, True, True),
    "transpose": (True, False, False),
    "rotate90": (True, True, False),
    "rotate270": (True, False, True),
    "transverse": (True, True, True),
}
INVERSE = {name: name for name in SYMMETRIES} | {"rotate90": "rotate270", "rotate270": "rotate90"}


def _symmetry_masks() -> np.ndarray:
    """Per symmetry, the packed mask of the bits that change sign: odd frequencies along each reversed axis."""
    v, u = np.indices((HASH_SIZE, HASH_SIZE))
    return np.asarray([np.packbits((((v * rows + u * cols) % 2) == 1).ravel())
                       for _, rows, cols in SYMMETRIES.values()])


_MASKS = _symmetry_masks()


def symmetries(hashes: np.ndarray) -> np.ndarray:
    """The sign hashes of every symmetric copy: (n, 4) uint64 hash_matrix rows -> (8, n, 4), in SYMMETRIES' order.

    Row s holds the hash that the copy made by symmetry s of each picture would have: the bits transposed
    (once for all four symmetries that transpose), then XORed with the mask of the signs that flip.
    """
    count = len(hashes)
    data = np.ascontiguousarray(hashes).view(np.uint8).reshape(count, HASH_BYTES)
    bits = np.unpackbits(data, axis=1).reshape(count, HASH_SIZE, HASH_SIZE)
    transposed = np.packbits(bits.transpose(0, 2, 1).reshape(count, HASH_BYTES * 8), axis=1)
    out = np.empty((len(SYMMETRIES), count, HASH_BYTES // 8), dtype=np.uint64)
    for s, (transpose, _, _) in enumerate(SYMMETRIES.values()):
        out[s] = np.ascontiguousarray((transposed if transpose else data) ^ _MASKS[s]).view(np.uint64)
    return out


@dataclass
class Geometry:
    """Stored geometry blobs as arrays, row by row (rows without one: has False, zeros elsewhere)."""

    has: np.ndarray  # (n,) bool
    box: np.ndarray  # (n, 4) float32 fractions (left, top, right, bottom)
    colour: np.ndarray  # (n, 3) float32 mean RGB of the trimmed picture
    detail: np.ndarray  # (n,) float32
    hash: np.ndarray  # (n, 4) uint64, the trimmed picture's sign hash
    windows: np.ndarray  # (n, len(WINDOWS), 4) uint64

    @property
    def trimmed(self) -> np.ndarray:
        """Rows whose picture had borders."""
        return np.asarray((self.box[:, :2] > 0).any(axis=1) | (self.box[:, 2:] < 1).any(axis=1))


def split_geometry(blobs: list[bytes | None]) -> Geometry:
    blank = bytes(GEOMETRY_BYTES)
    has = np.asarray([b is not None and len(b) == GEOMETRY_BYTES for b in blobs], dtype=bool)
    raw = np.frombuffer(b"".join(b if ok and b is not None else blank for b, ok in zip(blobs, has)), dtype=np.uint8)
    raw = raw.reshape(len(blobs), GEOMETRY_BYTES)
    box = raw[:, :BOX_BYTES].copy().view("<u2").astype(np.float32) / 65535
    hashes = raw[:, HEADER_BYTES:].copy().view(np.uint64).reshape(len(blobs), 1 + len(WINDOWS), HASH_BYTES // 8)
    return Geometry(has, box, raw[:, BOX_BYTES:BOX_BYTES + 3].astype(np.float32),
                    raw[:, BOX_BYTES + 3].astype(np.float32), hashes[:, 0].copy(), hashes[:, 1:].copy())


def join_geometry(parts: list[Geometry]) -> Geometry:
    """Geometry of consecutive chunks of rows as one."""
    return Geometry(*(np.concatenate([getattr(part, name) for part in parts])
                      for name in ("has", "box", "colour", "detail", "hash", "windows")))
