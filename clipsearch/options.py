"""Names and defaults shared by the library and the command line's option definitions.

The CLI defines its options when `cli/` is imported, so everything an option
needs (an environment variable's name, a default, the choices of an enum) lives
here, in a module that imports only the standard library: `clipsearch --help`
must not load numpy, SQLite helpers or torch. The modules that own these
concepts (encoder, store, images, indexer, dedupe, sidecars, tags, config)
re-export them, so the library keeps one definition of each.
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Any

# LAION's ViT-B/32: the same cost as OpenAI's (one 224px pass, 512-d vectors) but
# better at retrieval: 66.6% vs 63% ImageNet zero-shot, and 68.8% vs 59.4%
# text-to-image recall on Crossmodal-3600 in immich's measurements.
DEFAULT_MODEL = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
MODEL_ENV = "CLIPSEARCH_MODEL"
DEVICES = ("cuda", "mps", "cpu")
DB_ENV = "CLIPSEARCH_DB"
LIBRARY_ENV = "CLIPSEARCH_LIBRARY"

# Decoding is the bottleneck on a GPU (a 12 MP JPEG takes ~70 ms of one core even
# at 1/8 scale), so use every core; on a CPU the model takes what the decoders leave.
DEFAULT_WORKERS = min(16, os.cpu_count() or 2)
DEFAULT_MAX_MEGAPIXELS = 250.0
# Larger files are skipped unread: a 250 MP 16-bit TIFF is ~1.5 GB, a RAW or a JPEG far less.
DEFAULT_MAX_FILE_MB = 2048.0
DEFAULT_MAX_TAGS = 10


class KeepPolicy(str, Enum):
    """Which file of a duplicate group dedupe keeps."""

    best = "best"  # camera EXIF, original format, most pixels, oldest taken, shortest path
    oldest = "oldest"
    newest = "newest"
    largest = "largest"  # largest file
    shortest_path = "shortest-path"


class SidecarStyle(str, Enum):
    """How XMP sidecars are named beside a photo."""

    digikam = "digikam"  # IMG_0001.jpg.xmp (digiKam, darktable)
    lightroom = "lightroom"  # IMG_0001.xmp (Lightroom, Capture One)


class TextPrecision(str, Enum):
    """The text encoder find uses: auto takes int8 when it agrees with the model, fp32 never quantises."""

    auto = "auto"
    fp32 = "fp32"


class ImagePrecision(str, Enum):
    """How index runs the image tower on a CPU: auto takes int8 where it agrees with the model (cosine >= 0.999),
    else bf16 on processors with bf16 hardware, else fp32. GPUs run half precision unless fp32 is asked for."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    int8 = "int8"


def model_id_from(name: str | None) -> str:
    """The model the user asked for: argument, else $CLIPSEARCH_MODEL, else the default.

    A local directory is recorded by its absolute path, so the index knows it
    whichever folder the command is run from.
    """
    name = name or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    return name


def resolve_model(store: Any, model: str | None) -> str:
    """Explicit --model / $CLIPSEARCH_MODEL, else the model the index was built with, else the default.

    Here, not in the indexer, so that a query resolves its model without importing Pillow or the encoder.
    `store` is a `store.Store` (not imported: this module stays standard-library only).
    """
    recorded = store.model()
    if model is None and not os.environ.get(MODEL_ENV) and recorded:
        return str(recorded[0])
    model_id = model_id_from(model)
    store.check_model(model_id)
    return model_id

