"""Decode + embed, the middle stage of the index job: file entries in, records or failures out.

The job (job.py) decides here which files need work and writes what comes back, with one
writer; this stage is the part that can run somewhere else. `LocalEmbedder` runs it in this
process with a thread pool (Pillow's decoding and the model's inference both release the GIL,
so threads keep the model fed while it works on the previous batch); ray_embed.RayEmbedder
runs the same decode and encoder code on a Ray cluster. Both yield the same results, so the
writer neither knows nor cares where a record was made, and a new per-image signal is one
more field of the record, filled where the pixels are.

A file whose content the index already holds (renamed, copied or touched) is hashed but not
decoded: the step yields `Reused` with its digest and the writer copies the stored vector.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..models.onnx_image import ImageEncoder, load_image_encoder
from ..options import ImagePrecision
from ..store import ImageRecord, encode_vector
from ..store.schema import METADATA_COLUMNS
from . import images
from .scan import FileEntry

if TYPE_CHECKING:
    from .job import IndexOptions, Progress


@dataclass
class Embedded:
    """A file that went through the model."""

    entry: FileEntry
    record: ImageRecord


@dataclass
class Reused:
    """A file whose content (`digest`) the index holds already: the writer copies its vector."""

    entry: FileEntry
    digest: str


@dataclass
class Failed:
    """A file that cannot be indexed, and why.

    `worker` names the host of a cluster worker that could not open the file: not the file's
    fault, so the index does not record it as broken and the next run tries it again.
    """

    entry: FileEntry
    reason: str
    worker: str | None = None


Result = Embedded | Reused | Failed


class EmbedStep(Protocol):
    """Decode + embed: one result per entry, in any order.

    A step calls `model_ready(model_id, dim)` once, before the first `Embedded` result (the
    index records its model before its first batch), and `progress.advance()` for each entry
    it embeds, when its pixels are ready; the writer advances every other result.
    """

    @property
    def model_loaded(self) -> bool:
        """Whether this run loaded the model (here or on a cluster)."""
        ...

    def run(self, entries: Sequence[FileEntry], known_hashes: set[str],
            model_ready: Callable[[str, int], None]) -> Generator[Result, None, None]: ...


def metadata_fields(decoded: images.DecodedImage, mtime_ns: int) -> dict[str, Any]:
    """The record's photo-metadata columns: the EXIF date, else the file's own time."""
    found = decoded.metadata.with_file_time(mtime_ns)
    return {name: getattr(found, name) for name in METADATA_COLUMNS}


def make_record(entry: FileEntry, digest: str, decoded: images.DecodedImage, vector: np.ndarray) -> ImageRecord:
    return ImageRecord(entry.path, entry.size, entry.mtime_ns, digest, decoded.width, decoded.height,
                       encode_vector(vector), decoded.phash, decoded.colourfulness,
                       **metadata_fields(decoded, entry.mtime_ns), geometry=decoded.geometry)


@dataclass
class _Decoded:
    entry: FileEntry
    digest: str
    image: images.DecodedImage


class _LazyEncoder:
    """Loads the model the first time a worker needs its pixel settings; thread-safe."""

    def __init__(self, model_id: str, device: str | None, precision: ImagePrecision, progress: Progress):
        self.model_id, self.device, self.precision, self.progress = model_id, device, precision, progress
        self.encoder: ImageEncoder | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def get(self) -> ImageEncoder:
        with self._lock:
            if self._error is not None:  # fail every worker the same way, without retrying
                raise self._error
            if self.encoder is None:
                self.progress.model_loading(self.model_id)
                try:
                    self.encoder = load_image_encoder(self.model_id, self.device, self.precision,
                                                      notify=self.progress.notice)
                except BaseException as exc:  # Ctrl-C during a one-time export too: the next worker must not
                    self._error = exc  # start the export again while the run stops
                    raise
                self.progress.model_loaded()
            return self.encoder


class LocalEmbedder:
    """Decode + embed in this process: threads read, hash and decode; batches go through the encoder.

    The model is loaded (by the first thread that needs its pixel settings) only when some
    file's content is new; `encoder` is one loaded already (a Library keeps its own).
    """

    def __init__(self, model_id: str, device: str | None, options: IndexOptions, progress: Progress,
                 encoder: ImageEncoder | None = None):
        self.options, self.progress = options, progress
        self._lazy = _LazyEncoder(model_id, device, options.precision, progress)
        self._lazy.encoder = encoder
        self._given = encoder is not None

    @property
    def model_loaded(self) -> bool:
        return self._lazy.encoder is not None and not self._given

    def _prepare(self, entry: FileEntry, known_hashes: set[str]) -> _Decoded | Reused | Failed:
        """Thread: hash while reading (stopping at the size limit), decode only content the index has never seen."""
        try:
            digest, data = images.read_and_hash(entry.path, self.options.max_file_mb)
            if digest in known_hashes:
                return Reused(entry, digest)
            prep = self._lazy.get().preprocess
            return _Decoded(entry, digest, images.decode(data, prep, self.options.max_megapixels, entry.path))
        except images.ImageError as exc:
            return Failed(entry, str(exc))

    def _embed(self, batch: list[_Decoded]) -> Iterator[Embedded]:
        vectors = self._lazy.get().embed_pixels(np.stack([item.image.pixels for item in batch]))
        for item, vector in zip(batch, vectors):
            yield Embedded(item.entry, make_record(item.entry, item.digest, item.image, vector))

    def run(self, entries: Sequence[FileEntry], known_hashes: set[str],
            model_ready: Callable[[str, int], None]) -> Generator[Result, None, None]:
        batch_size = self.options.batch_size
        window = max(batch_size * 2, self.options.workers * 4)  # files read ahead of the model
        pending: list[_Decoded] = []
        in_flight: deque[Future] = deque()
        queue = iter(entries)
        recorded = False
        with ThreadPoolExecutor(max_workers=self.options.workers, thread_name_prefix="decode") as pool:
            try:
                while True:
                    while len(in_flight) < window and (entry := next(queue, None)) is not None:
                        in_flight.append(pool.submit(self._prepare, entry, known_hashes))
                    if not in_flight:
                        break
                    result = in_flight.popleft().result()
                    if not isinstance(result, _Decoded):
                        yield result
                        continue
                    if not recorded:  # before the first batch: an early Ctrl-C keeps the model recorded
                        encoder = self._lazy.get()
                        model_ready(encoder.model_id, encoder.dim)
                        recorded = True
                    pending.append(result)
                    self.progress.advance()  # counted when decoded, so the bar moves from the start
                    if len(pending) >= batch_size:
                        yield from self._embed(pending[:batch_size])
                        del pending[:batch_size]
                for start in range(0, len(pending), batch_size):
                    yield from self._embed(pending[start:start + batch_size])
            except BaseException:  # Ctrl-C, or the writer stopped: drop the files not started yet
                for future in in_flight:
                    future.cancel()
                raise
