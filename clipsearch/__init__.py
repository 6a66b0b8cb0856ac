"""clipsearch: search a photo library by meaning with CLIP, from the command line or Python.

    from clipsearch import Library
    with Library() as library:
        library.index("~/Photos")
        for hit in library.find("a red car"):
            print(hit.score, hit.path)

`Library` is imported on first use, so `import clipsearch` (and `clipsearch --help`)
loads neither numpy nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Library", "__version__"]

if TYPE_CHECKING:
    from .library import Library


def __getattr__(name: str) -> Any:
    if name == "Library":
        from .library import Library

        return Library
    raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
