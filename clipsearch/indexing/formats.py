"""Pillow set up for the formats clipsearch reads beyond Pillow's own: HEIC/HEIF from phones.

Both modules that open image files (images.py for pixels, metadata.py for headers) call
`register()`, so the opener is there whichever runs first, without the two importing each other.
"""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def register() -> ModuleType | None:
    """Register pillow-heif's opener with Pillow (once) and return pillow-heif; None when it is not installed."""
    try:  # HEIC/HEIF from phones; Pillow itself reads AVIF.
        import pillow_heif
    except ImportError:  # pragma: no cover - optional at runtime
        return None
    pillow_heif.register_heif_opener()
    return pillow_heif
