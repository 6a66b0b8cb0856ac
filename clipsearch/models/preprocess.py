"""How a model wants its pixels: the one fact about a model that decoding (indexing/images.py) needs.

It lives with the models, which read it from the model's own settings; the decoders take it as a
parameter, so indexing depends on models and never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

# PIL.Image.Resampling.BICUBIC, as a number: a text query imports this module and needs no Pillow (8 ms).
BICUBIC = 3


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its pixels: resize the short side, then centre-crop."""

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    resample: int = BICUBIC
