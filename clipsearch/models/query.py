"""The models a query needs, each loaded only when it is needed, cheapest first.

A text term is answered, in order, from the vectors the index remembers for
texts it was asked before (no model at all), from the ONNX text encoder
(onnx_text.py: no torch, a few hundred milliseconds), exported on first use,
and only as a fallback from the torch model. An image term that is not in the
index goes through the image tower `index` prepared (ONNX) on a CPU, else torch. `QueryEncoder` has the interface of
`encoder.Encoder` that `search` uses, so callers pass it where a model goes.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..store import Store
from . import export_cache, onnx_text
from .onnx_text import OnnxTextEncoder, TextEncoderUnavailable
from .text_worker import TextWorker

if TYPE_CHECKING:  # the torch model and Pillow: imported only when a query needs them
    from .preprocess import Preprocess
    from .protocols import ImageEncoder
    from .torch_encoder import Encoder


class LoadedModels:
    """The models of one QueryEncoder, shared by its copies for other threads (`QueryEncoder.on`): loaded once,
    and used by one thread at a time (a tokenizer fails when two threads use it at once)."""

    def __init__(self) -> None:
        self.text: OnnxTextEncoder | Encoder | None = None
        self.image: ImageEncoder | None = None
        self.torch: Encoder | None = None
        self.lock = threading.RLock()


class QueryEncoder:
    """Embeds query texts and images for one model, loading as little as the query needs.

    `notify` receives the one-line notices a person should see (a one-time
    export, a fallback to torch); the library itself prints nothing.
    """

    def __init__(self, store: Store, model_id: str, device: str | None = None, precision: str = "auto",
                 notify: Callable[[str], None] | None = None, models: LoadedModels | None = None,
                 worker: TextWorker | None = None):
        if precision not in onnx_text.PRECISIONS:
            raise ValueError(f"precision must be one of {onnx_text.PRECISIONS}, not {precision!r}")
        self.store, self.model_id, self.device, self.precision = store, model_id, device, precision
        self.notify = notify or (lambda message: None)
        self.models = models or LoadedModels()
        self.worker = worker  # the command line's text worker (text_worker.py): asked instead of the thread

    def on(self, store: Store) -> QueryEncoder:
        """The same models, remembering queries in `store`: for another thread, which has its own connection."""
        return QueryEncoder(store, self.model_id, self.device, self.precision, self.notify, self.models)

    # -- the Encoder interface used by search ------------------------------

    @property
    def preprocess(self) -> Preprocess:
        return self.image_encoder().preprocess

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        with self.models.lock:
            return self.image_encoder().embed_pixels(pixels)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of `texts`: remembered ones from the index, the rest embedded and then remembered."""
        known = self.store.remembered_queries(self.model_id, self.precision, list(dict.fromkeys(texts)))
        new = [text for text in dict.fromkeys(texts) if text not in known]
        if new:
            embedded = None
            if self.worker is not None:
                embedded, self.worker = self.worker.answer(new), None
            if embedded is None:
                with self.models.lock:
                    embedded = self.text_encoder().embed_texts(new)
            vectors = dict(zip(new, embedded))
            self.store.remember_queries(self.model_id, self.precision, vectors)
            known.update(vectors)
        return np.stack([known[text] for text in texts])

    def start_loading(self, texts: list[str]) -> None:
        """Start embedding the texts that are not remembered while the caller opens the index and filters it
        (search.find): the text worker is asked when there is one, else the text encoder loads in a background
        thread (onnxruntime, the tokenizer, the graph: ~0.1 s). Only the cached ONNX export is used there;
        anything else (an export, the torch fallback and its notices) is left to `text_encoder`, in the
        caller's thread."""
        new = [] if self.models.text is not None else list(dict.fromkeys(texts))
        if new:
            known = self.store.remembered_queries(self.model_id, self.precision, new)
            new = [text for text in new if text not in known]
        if self.worker is not None and not (new and self.worker.ask(self.model_id, self.precision, new)):
            self.worker.stop()  # not needed: its core goes back to the query
            self.worker = None
        if not new or self.worker is not None:
            return
        threading.Thread(target=self._load_cached_text_encoder, name="clipsearch-text-encoder", daemon=True).start()

    def _load_cached_text_encoder(self) -> None:
        # text_encoder() waits on the lock for the load started here; on any failure it tries again, and says why
        with self.models.lock, contextlib.suppress(Exception):
            if self.models.text is None:
                self.models.text = OnnxTextEncoder.load(self.model_id, self.precision)

    # -- loading ------------------------------------------------------------

    def image_encoder(self) -> ImageEncoder:
        """What embeds an image that is not in the index: on a CPU the image tower `index` prepared (ONNX, no
        torch: a fraction of a second), else the torch model, announced first since it takes seconds to load."""
        with self.models.lock:
            if self.models.image is None:
                self.models.image = self._onnx_image_encoder() or self.torch_model(
                    f"Loading model {self.model_id} to embed an image that is not in the index...")
            return self.models.image

    def _onnx_image_encoder(self) -> ImageEncoder | None:
        from .onnx_image import ImageEncoderUnavailable, OnnxImageEncoder, accelerator_possible

        if self.device not in (None, "cpu") or (self.device is None and accelerator_possible()):
            return None
        try:
            return OnnxImageEncoder.load(self.model_id)
        except ImageEncoderUnavailable:
            return None

    def torch_model(self, notice: str | None = None) -> Encoder:
        """The torch model, on the requested device (loaded once); `notice` is said before loading it."""
        with self.models.lock:
            if self.models.torch is None:
                from .torch_encoder import Encoder

                if notice:
                    self.notify(notice)
                self.models.torch = Encoder.load(self.model_id, self.device)
            return self.models.torch

    def text_encoder(self) -> OnnxTextEncoder | Encoder:
        """The ONNX text encoder, exported first if needed; the torch model when that cannot work."""
        with self.models.lock:
            if self.models.text is None:
                self.models.text = self._load_text_encoder()
            return self.models.text

    def _load_text_encoder(self) -> OnnxTextEncoder | Encoder:
        try:
            return OnnxTextEncoder.load(self.model_id, self.precision)
        except TextEncoderUnavailable as exc:
            reason = str(exc)
        if reason == "not exported yet":
            failure = _failure_marker(self.model_id)
            if failure is not None and failure.exists():
                reason = json.loads(failure.read_text())["reason"] + f" (delete {failure} to try again)"
            else:
                try:
                    return self._export()
                except TextEncoderUnavailable as exc:
                    reason = str(exc)
        self.notify(f"Fast text encoder not available ({reason}); using torch, which is slower.")
        return self.torch_model()

    def _export(self) -> OnnxTextEncoder:
        from .torch_encoder import Encoder

        self.notify("Preparing the text encoder (once)...")
        cpu = self.torch_model() if self.torch_model().device == "cpu" else Encoder.load(self.model_id, "cpu")
        onnx_text.export(cpu)  # a failure is recorded there, and raised as TextEncoderUnavailable
        return OnnxTextEncoder.load(self.model_id, self.precision)


def _failure_marker(model_id: str) -> Path | None:
    """Where a failed export is recorded, so later queries do not retry it (nor load torch for it) every time."""
    folder = onnx_text.export_dir(model_id)
    return export_cache.failure_marker(folder) if folder else None
