"""How a model wants its pixels: the one fact about a model that decoding (indexing/images.py) needs.

It lives with the models, which read it from the model's own settings; the decoders take it as a
parameter, so indexing depends on models and never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its pixels: resize the short side, then centre-crop."""

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    resample: int = Image.Resampling.BICUBIC
