"""Pixel fingerprints stored beside each vector, for the near-identical tier of dedupe.

The CLIP vector says "same content"; these say "same picture": a 256-bit DCT
perceptual hash (imagehash's pHash with hash_size=16, on the upright image, so a rotated copy
with a compensating EXIF tag hashes like the original) and a colourfulness
score. pHash works on brightness only, so a greyscale copy hashes like its
colour original; colourfulness tells the two apart. Both are computed from
the picture the indexer already decodes, so they cost almost nothing.
"""

from __future__ import annotations

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
