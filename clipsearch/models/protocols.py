"""What the rest of clipsearch needs of a model, as Protocols: search, tagging and indexing are typed
against these, not against one encoder class, so the torch model, the ONNX towers, `QueryEncoder` and a
test's stand-in all fit where a model goes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from .preprocess import Preprocess


class TextEncoder(Protocol):
    """Texts to unit vectors (tag prompts, query texts)."""

    @property
    def model_id(self) -> str: ...

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


class ImageEncoder(Protocol):
    """What the indexer needs of an encoder: its pixel settings and a batch call."""

    @property
    def model_id(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def preprocess(self) -> Preprocess: ...

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray: ...


class QueryModel(Protocol):
    """What a search needs: texts, and pixels for an image query that is not in the index."""

    @property
    def preprocess(self) -> Preprocess: ...

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray: ...


GetQueryModel = Callable[[], QueryModel]  # called only when a query needs a model
GetTextEncoder = Callable[[], TextEncoder]
