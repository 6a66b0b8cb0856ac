"""Is one photo a crop of another? A geometric check on the two pictures, for dedupe's candidate pairs.

A crop has no hash of its own to compare (every hash of a picture changes when
its frame does), so dedupe proposes pairs (CLIP neighbours, sub-window hashes)
and this module decides, from the pixels: the smaller picture is searched in
the larger at every scale that keeps at least MIN_AREA of it (normalised
template matching on small greyscale copies, coarse then fine), and the best
placement must then explain the crop everywhere: after one brightness and
contrast fit, every tile of a grid differs little (a burst frame, whose subject
moved, fails in the tiles the subject left), and the fine grain correlates (two
photos of one scene with the same framing do not share their grain).

Only candidate pairs are read, each file once (a small cache), with Pillow's
draft mode; a file that vanished or cannot be read is skipped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

MIN_AREA = 0.6  # a crop keeps at least this share of the original's area
MAX_AREA = 0.97  # above this, the pair is the same frame (the plain near tier's business)
_AREA_SLACK = 0.02  # measuring on small copies: a 60% crop may measure 59%
_LOAD_SIDE = 320  # long side of the pictures read
_COARSE_SIDE = 72  # long side of the original in the coarse search
_FINE_SIDE = 256  # long side of the original in the fine check
_SCALE_STEP = 1.025
_COARSE_SCORE = 0.93  # normalised cross-correlation a placement needs to be refined (crops came at 0.95+)
_GRID = 6  # tiles per side in the final check
_TILE_LIMIT = 20.0  # largest RMS difference (grey levels) of any tile after the brightness fit
_GRAIN_LIMIT = 0.5  # smallest correlation of the fine detail (picture minus its blur)


@dataclass(frozen=True)
class CropMatch:
    """`small` shows `fraction` of `large`'s area (after trimming borders), at `box` (fractions of `large`)."""

    fraction: float
    box: tuple[float, float, float, float]


def load(path: str, trim: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> np.ndarray | None:
    """The picture upright as float32 greyscale, long side at most _LOAD_SIDE, inside `trim`; None if unreadable."""
    from PIL import Image

    from ..indexing import images, thumbnails

    try:
        picture = thumbnails.render(images.read_bytes(path), _LOAD_SIDE, path)
    except (images.ImageError, OSError, ValueError, Image.DecompressionBombError):
        return None  # vanished, unreadable or changed since it was indexed: no claim either way
    width, height = picture.size
    left, top, right, bottom = trim
    box = (round(left * width), round(top * height), round(right * width), round(bottom * height))
    if box[2] - box[0] < 16 or box[3] - box[1] < 16:
        return None
    return np.asarray(picture.crop(box).convert("L"), dtype=np.float32)


def _resized(grey: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    interpolation = cv2.INTER_AREA if width < grey.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(grey, (max(1, width), max(1, height)), interpolation=interpolation)


def _long_side(grey: np.ndarray, side: int) -> np.ndarray:
    height, width = grey.shape
    scale = side / max(height, width)
    return _resized(grey, round(width * scale), round(height * scale)) if scale < 1 else grey


@dataclass
class Picture:
    """One file's greyscale at the sizes the search uses, computed once however many pairs it is in."""

    grey: np.ndarray  # long side at most _LOAD_SIDE
    fine: np.ndarray  # long side at most _FINE_SIDE
    coarse: np.ndarray  # long side at most _COARSE_SIDE, blurred
    template: np.ndarray  # long side at most 2 * _COARSE_SIDE: what coarse templates are cut from

    @classmethod
    def of(cls, grey: np.ndarray) -> Picture:
        import cv2

        return cls(grey, _long_side(grey, _FINE_SIDE), cv2.GaussianBlur(_long_side(grey, _COARSE_SIDE), (0, 0), 1.0),
                   _long_side(grey, 2 * _COARSE_SIDE))


def find_crop(large: np.ndarray | Picture, small: np.ndarray | Picture) -> CropMatch | None:
    """Where `small` sits inside `large` as a crop keeping MIN_AREA..MAX_AREA of it, or None."""
    import cv2

    large = large if isinstance(large, Picture) else Picture.of(large)
    small = small if isinstance(small, Picture) else Picture.of(small)
    blurred = large.coarse
    big_h, big_w = blurred.shape
    aspect = small.grey.shape[1] / small.grey.shape[0]
    # The crop's width as a share `a` of the original's; its height follows from its aspect.
    lowest = math.sqrt(MIN_AREA * aspect * big_h / big_w) * 0.98
    highest = min(1.0, big_h * aspect / big_w)
    if lowest > highest:
        return None
    best: tuple[float, float, int, int] | None = None
    share = lowest
    while share <= highest * 1.0001:
        width, height = round(share * big_w), round(share * big_w / aspect)
        if 8 <= width <= big_w and 8 <= height <= big_h:
            template = cv2.GaussianBlur(_resized(small.template, width, height), (0, 0), 1.0)
            if template.std() > 1e-3:
                scores = cv2.matchTemplate(blurred, template, cv2.TM_CCOEFF_NORMED)
                _, score, _, (x, y) = cv2.minMaxLoc(scores)
                if best is None or score > best[0]:
                    best = (float(score), share, x, y)
        share *= _SCALE_STEP
    if best is None or best[0] < _COARSE_SCORE:
        return None
    return _refine(large, small, best[1], best[2] / big_w, best[3] / big_h)


def _refine(large: Picture, small: Picture, share: float, x: float, y: float) -> CropMatch | None:
    """Refine a coarse placement on a finer copy and accept it only if every tile and the grain agree."""
    import cv2

    fine = large.fine
    big_h, big_w = fine.shape
    aspect = small.grey.shape[1] / small.grey.shape[0]
    margin = 6
    best: tuple[float, int, int, int, int] | None = None
    for step in (-2, -1, 0, 1, 2):
        scale = share * (1 + 0.01 * step)
        width, height = round(scale * big_w), round(scale * big_w / aspect)
        if width > big_w or height > big_h or width < 16 or height < 16:
            continue
        left, top = round(x * big_w), round(y * big_h)
        x0, y0 = max(0, left - margin), max(0, top - margin)
        x1, y1 = min(big_w, left + width + margin), min(big_h, top + height + margin)
        region = fine[y0:y1, x0:x1]
        if region.shape[0] < height or region.shape[1] < width:
            continue
        template = _resized(small.grey, width, height)
        scores = cv2.matchTemplate(region, template, cv2.TM_CCOEFF_NORMED)
        _, score, _, (dx, dy) = cv2.minMaxLoc(scores)
        if best is None or score > best[0]:
            best = (float(score), x0 + dx, y0 + dy, width, height)
    if best is None:
        return None
    _, left, top, width, height = best
    fraction = width * height / (big_w * big_h)
    if not MIN_AREA - _AREA_SLACK <= fraction <= MAX_AREA:
        return None
    if not _agrees(fine[top:top + height, left:left + width], _resized(small.grey, width, height)):
        return None
    return CropMatch(round(fraction, 3), (left / big_w, top / big_h, (left + width) / big_w, (top + height) / big_h))


def _agrees(region: np.ndarray, template: np.ndarray) -> bool:
    """Whether `template` explains `region` everywhere: tile by tile after a brightness fit, and in the grain."""
    import cv2

    a = np.stack([template.ravel(), np.ones(template.size, dtype=np.float32)], axis=1)
    (gain, offset), *_ = np.linalg.lstsq(a, region.ravel(), rcond=None)
    if not 0.5 <= gain <= 2.0:
        return False
    residual = region - (gain * template + offset)
    height, width = residual.shape
    rows = np.linspace(0, height, _GRID + 1).astype(int)
    cols = np.linspace(0, width, _GRID + 1).astype(int)
    worst = max(float(np.sqrt(np.mean(residual[rows[i]:rows[i + 1], cols[j]:cols[j + 1]] ** 2)))
                for i in range(_GRID) for j in range(_GRID))
    if worst > _TILE_LIMIT:
        return False
    grain_a = region - cv2.GaussianBlur(region, (0, 0), 2.0)
    grain_b = template - cv2.GaussianBlur(template, (0, 0), 2.0)
    norm = float(np.linalg.norm(grain_a) * np.linalg.norm(grain_b))
    return norm > 0 and float((grain_a * grain_b).sum()) / norm >= _GRAIN_LIMIT


def verify_pairs(pairs: Iterable[tuple[int, int]], paths: list[str], trims: np.ndarray, pixels: np.ndarray,
                 workers: int = 2) -> dict[tuple[int, int], CropMatch]:
    """For each (i, j): whether one is a crop of the other. Returns {(large, small): match} for those that are.

    The file with more pixels is tried as the original first, then the other (a crop of the camera's file
    can have more pixels than a downsized export of the whole picture). Each file is read once; pairs
    whose files cannot be read are left out.
    """
    pairs = list(pairs)
    if not pairs:
        return {}
    needed = [i for i in sorted({i for pair in pairs for i in pair}) if os.path.exists(paths[i])]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crop-check") as pool:
        def prepared(i: int) -> Picture | None:
            grey = load(paths[i], tuple(trims[i]))
            return None if grey is None else Picture.of(grey)

        loaded = dict(zip(needed, pool.map(prepared, needed)))  # a file gone since it was indexed is left out
        readable = [(i, j) for i, j in pairs if loaded.get(i) is not None and loaded.get(j) is not None]

        def check(pair: tuple[int, int]) -> tuple[tuple[int, int], CropMatch] | None:
            i, j = pair
            first, second = (i, j) if pixels[i] >= pixels[j] else (j, i)
            for large, small in ((first, second), (second, first)):
                match = find_crop(loaded[large], loaded[small])  # type: ignore[arg-type]  # checked above
                if match is not None:
                    return (large, small), match
            return None

        found = [result for result in pool.map(check, readable) if result is not None]
    return dict(found)
