"""Small upright JPEG copies of photos, cached on disk, for terminal previews and the web app.

A grid of results must not decode forty 12 MP files on every view: each
thumbnail is decoded once (JPEG draft mode, EXIF orientation, RAW files
through their embedded preview, all via images.py) and kept under
$XDG_CACHE_HOME/clipsearch/thumbnails. The cache key covers the file's path,
size and modification time, so an edited photo gets a new thumbnail; the key
doubles as the web app's ETag. The cache can be deleted at any time.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from . import images

FORMAT_VERSION = 1  # bump when thumbnails are made differently, so old ones are not reused


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/clipsearch/thumbnails (~/.cache/... by default)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_home) / "clipsearch" / "thumbnails"


def thumbnail_key(path: str, max_side: int, info: os.stat_result | None = None) -> str:
    """Identifies one rendition of one version of a file, from `info` or the file's stat (OSError if it is gone)."""
    info = info or os.stat(path)
    text = f"{FORMAT_VERSION}\0{path}\0{info.st_size}\0{info.st_mtime_ns}\0{max_side}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def render(data: bytes, max_side: int, path: str = "") -> Image.Image:
    """An upright RGB image whose longer side is at most `max_side`, decoding as little as possible."""
    orientation = None
    if path and images.is_raw(path):
        data, orientation, _ = images.raw_preview(data)
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except (OSError, SyntaxError, ValueError):
        width = height = 0  # open_oriented below reports what is wrong with the file
    # Draft mode keeps the short side at least this big: enough for a long side of max_side.
    short_needed = max(1, round(max_side * min(width, height) / max(width, height, 1))) if width else None
    image, _ = images.open_oriented(data, short_needed, orientation=orientation)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def thumbnail(path: str, max_side: int, opened: BinaryIO | None = None) -> tuple[bytes, str]:
    """The JPEG thumbnail of `path` and its key, from the cache or made now (and cached).

    With `opened` (the file, already opened and checked by the caller: the web app)
    the picture is read from that handle, not from `path` again. Raises
    images.ImageError (with a reason a person understands) when the file cannot be read.
    """
    try:
        key = thumbnail_key(path, max_side, os.fstat(opened.fileno()) if opened else None)
    except OSError as exc:
        raise images.ImageError(f"cannot read file: {exc.strerror or exc}") from None
    cached = cache_dir() / key[:2] / f"{key}.jpg"
    try:
        return cached.read_bytes(), key
    except OSError:
        pass
    buffer = io.BytesIO()
    render(_read(opened) if opened else images.read_bytes(path), max_side, path).save(buffer, "JPEG", quality=85)
    data = buffer.getvalue()
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        os.replace(partial, cached)
    except OSError:  # a read-only cache still gives thumbnails, just not cached ones
        partial.unlink(missing_ok=True)
    return data, key


def _read(opened: BinaryIO) -> bytes:
    try:
        data = opened.read()
    except OSError as exc:
        raise images.ImageError(f"cannot read file: {exc.strerror or exc}") from None
    if not data:
        raise images.ImageError("empty file (0 bytes)")
    return data
