"""clipsearch: search a photo library by meaning with CLIP, from the command line or Python.

    from clipsearch import Library
    with Library() as library:
        library.index("~/Photos")
        for hit in library.find("a red car"):
            print(hit.score, hit.path)

`Library` and the types its methods take and return are importable from here. They are
imported on first use, so `import clipsearch` (and `clipsearch --help`) loads neither numpy
nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module (under clipsearch) that defines it.
_PUBLIC = {
    "Library": "library",
    "Duplicates": "library",
    "Photo": "library",
    "IndexOptions": "indexing.job",
    "IndexReport": "indexing.job",
    "Progress": "indexing.job",
    "Changes": "indexing.scan",
    "Hit": "search",
    "Filters": "search",
    "Group": "dedupe.groups",
    "Member": "dedupe.groups",
    "Move": "dedupe.moves",
    "MoveReport": "dedupe.moves",
    "UndoReport": "dedupe.moves",
    "TagReport": "tags.auto",
    "ExportReport": "tags.sidecars",
    "OcrReport": "ocr.job",
    "KeepPolicy": "options",
    "SidecarStyle": "options",
    "ImagePrecision": "options",
    "TextPrecision": "options",
    "TextWorker": "models.text_worker",
    "ClipsearchError": "errors",
    "BadInputError": "errors",
    "NothingFoundError": "errors",
    "MissingIndexError": "errors",
    "IndexUnusableError": "errors",
    "IndexBusyError": "errors",
}
__all__ = ["Library", "__version__"]  # `import *` takes the facade; the types are imported by name

if TYPE_CHECKING:  # for type checkers: the names __getattr__ gives (`X as X`: re-exported)
    from .dedupe.groups import Group as Group
    from .dedupe.groups import Member as Member
    from .dedupe.moves import Move as Move
    from .dedupe.moves import MoveReport as MoveReport
    from .dedupe.moves import UndoReport as UndoReport
    from .errors import BadInputError as BadInputError
    from .errors import ClipsearchError as ClipsearchError
    from .errors import IndexBusyError as IndexBusyError
    from .errors import IndexUnusableError as IndexUnusableError
    from .errors import MissingIndexError as MissingIndexError
    from .errors import NothingFoundError as NothingFoundError
    from .indexing.job import IndexOptions as IndexOptions
    from .indexing.job import IndexReport as IndexReport
    from .indexing.job import Progress as Progress
    from .indexing.scan import Changes as Changes
    from .library import Duplicates as Duplicates
    from .library import Library as Library
    from .library import Photo as Photo
    from .models.text_worker import TextWorker as TextWorker
    from .ocr.job import OcrReport as OcrReport
    from .options import ImagePrecision as ImagePrecision
    from .options import KeepPolicy as KeepPolicy
    from .options import SidecarStyle as SidecarStyle
    from .options import TextPrecision as TextPrecision
    from .search import Filters as Filters
    from .search import Hit as Hit
    from .tags.auto import TagReport as TagReport
    from .tags.sidecars import ExportReport as ExportReport


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
