"""The index job: scan -> read, hash and decode in a thread pool -> batched encode -> store.

Decoding (Pillow) and inference (onnxruntime on a CPU, torch on a GPU; see
onnx_image.py) both release the GIL, so a thread pool keeps the model fed
while it works on the previous batch (threads decode as fast as processes here:
scripts/bench_index.py measures both). Each batch is
committed on its own, so an interrupted run resumes where it stopped. The
model is loaded only when some file's content has never been embedded: a
re-run over an unchanged, renamed or copied library does no model work.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInputError
from ..models.onnx_image import ImageEncoder, load_image_encoder
from ..options import DEFAULT_WORKERS, ImagePrecision, resolve_model
from ..paths import normalise_path
from ..store import ImageRecord, Store, encode_vector
from ..store.schema import METADATA_COLUMNS
from ..store.tags import TagStore
from . import images, metadata
from .places import fill_places
from .scan import Changes, FileEntry, compare, walk_images


class IndexingError(BadInputError):
    """The job cannot start (a folder is missing, ...); the message says why."""


@dataclass
class IndexOptions:
    batch_size: int = 32
    workers: int = DEFAULT_WORKERS
    exclude: tuple[str, ...] = ()
    follow_symlinks: bool = False
    max_megapixels: float = images.DEFAULT_MAX_MEGAPIXELS
    max_file_mb: float = images.DEFAULT_MAX_FILE_MB
    precision: ImagePrecision = ImagePrecision.auto


@dataclass
class IndexReport:
    scanned: int = 0  # images found under the folders (indexed now, unchanged or skipped)
    folders: int = 0  # how many folders were given
    new: int = 0
    updated: int = 0
    reused: int = 0  # content already in the index (renamed, copied or touched files): no model run
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    encoded: int = 0  # images that went through the model
    seconds: float = 0.0
    model_loaded: bool = False
    interrupted: bool = False

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds else 0.0


class Progress:
    """How every long job reports as it goes (index, dedupe's fingerprints, tagging); the CLI draws a progress
    bar from these hooks. No-ops here: override what you need."""

    def started(self, description: str, total: int) -> None:
        """A job that counts ("Tagging") is about to do `total` steps; `advance` follows."""

    def scanned(self, changes: Changes) -> None: ...

    def advance(self, count: int = 1) -> None: ...

    def skipped(self, path: str, reason: str) -> None: ...

    def model_loading(self, model_id: str) -> None: ...

    def model_loaded(self) -> None: ...

    def notice(self, message: str) -> None:
        """A one-line message for the person running the job ("Preparing the image encoder (once)...")."""

    def fingerprinting(self, count: int) -> None:
        """`count` images indexed before fingerprints existed are about to get them."""


@dataclass
class _Reused:
    entry: FileEntry
    digest: str


@dataclass
class _Decoded:
    entry: FileEntry
    digest: str
    image: images.DecodedImage


@dataclass
class _Failed:
    entry: FileEntry
    reason: str


class _LazyEncoder:
    """Loads the model the first time a worker needs its pixel settings; thread-safe."""

    def __init__(self, model_id: str, device: str | None, precision: ImagePrecision, progress: Progress):
        self.model_id, self.device, self.precision, self.progress = model_id, device, precision, progress
        self.encoder: ImageEncoder | None = None
        self._error: Exception | None = None
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
                except Exception as exc:
                    self._error = exc
                    raise
                self.progress.model_loaded()
            return self.encoder


def _prepare(entry: FileEntry, known_hashes: set[str], lazy: _LazyEncoder, options: IndexOptions):
    """Worker: hash while reading (stopping at the size limit), decode only content the index has never seen."""
    try:
        digest, data = images.read_and_hash(entry.path, options.max_file_mb)
        if digest in known_hashes:
            return _Reused(entry, digest)
        return _Decoded(entry, digest, images.decode(data, lazy.get().preprocess, options.max_megapixels, entry.path))
    except images.ImageError as exc:
        return _Failed(entry, str(exc))


def index_folders(
    folders: Iterable[str | os.PathLike],
    store: Store,
    model: str | None = None,
    device: str | None = None,
    options: IndexOptions | None = None,
    progress: Progress | None = None,
    encoder: ImageEncoder | None = None,
) -> IndexReport:
    """Bring the index up to date with `folders`: add new and changed images, drop deleted ones."""
    options = options or IndexOptions()
    images.check_limits(options.max_megapixels, options.max_file_mb)
    progress = progress or Progress()
    started = time.perf_counter()
    roots = [normalise_path(folder) for folder in folders]
    for root in roots:
        if not os.path.isdir(root):
            raise IndexingError(f"{root} is not a folder (is the drive mounted?). Nothing was changed.")
    model_id = encoder.model_id if encoder else resolve_model(store, model)
    store.check_model(model_id)

    report = IndexReport()

    def scan_error(path: str, reason: str) -> None:
        report.skipped.append((path, reason))
        progress.skipped(path, reason)

    with store.writer():  # one writer at a time: a second index, dedupe or tag run waits, then is told
        unlisted: list[str] = []  # folders that could not be listed: their rows stay
        entries = walk_images(roots, options.exclude, options.follow_symlinks, on_error=scan_error, unlisted=unlisted)
        indexed = store.files_under(roots)
        changes = compare(entries, indexed, store.failures_under(roots), unlisted)
        report.scanned, report.unchanged, report.folders = changes.seen, changes.unchanged, len(roots)
        for path, reason in changes.known_bad:
            report.skipped.append((path, f"{reason} (unchanged since last run)"))
        progress.scanned(changes)

        lazy = _LazyEncoder(model_id, device, options.precision, progress)
        lazy.encoder = encoder
        try:
            _process(changes.to_index, set(indexed), store, lazy, options, progress, report)
        except KeyboardInterrupt:
            report.interrupted = True
            report.seconds = time.perf_counter() - started
            raise
        finally:
            report.model_loaded = lazy.encoder is not None and encoder is None
        TagStore(store).carry_tags(changes.gone)  # a renamed photo keeps its tags
        report.removed = store.remove(changes.gone)
        for root in roots:
            fill_fingerprints(store, root, options.workers, progress)
            fill_metadata(store, root, options.workers)
            fill_places(store, root, progress)  # after the metadata: the GPS positions it read get their place
        store.record_run(roots)
        store.refresh_vector_cache()
        report.seconds = time.perf_counter() - started
        return report


def _process(to_index: list[FileEntry], previously_indexed: set[str], store: Store, lazy: _LazyEncoder,
             options: IndexOptions, progress: Progress, report: IndexReport) -> None:
    if not to_index:
        return
    known_hashes = store.known_hashes()
    # The content of files this run replaces, so that a copy of a file's old bytes can still reuse its vector.
    replaced = store.rows_for_hashes_of(entry.path for entry in to_index if entry.path in previously_indexed)
    pending_pixels: list[_Decoded] = []
    pending_records: list[ImageRecord] = []
    pending_failures: list[tuple[str, int, int, str]] = []

    def count_stored(entry: FileEntry) -> None:
        if entry.path in previously_indexed:
            report.updated += 1
        else:
            report.new += 1

    model_recorded = False

    def flush(encode_all: bool) -> None:
        while pending_pixels and (encode_all or len(pending_pixels) >= options.batch_size):
            batch = pending_pixels[:options.batch_size]
            del pending_pixels[:options.batch_size]
            vectors = lazy.get().embed_pixels(np.stack([item.image.pixels for item in batch]))
            for item, vector in zip(batch, vectors):
                found = item.image.metadata.with_file_time(item.entry.mtime_ns)
                pending_records.append(ImageRecord(
                    item.entry.path, item.entry.size, item.entry.mtime_ns, item.digest,
                    item.image.width, item.image.height, encode_vector(vector),
                    item.image.phash, item.image.colourfulness,
                    **{name: getattr(found, name) for name in METADATA_COLUMNS},
                ))
                count_stored(item.entry)
            report.encoded += len(batch)
        if (encode_all or len(pending_records) >= options.batch_size) and (pending_records or pending_failures):
            store.write(pending_records, pending_failures)
            pending_records.clear()
            pending_failures.clear()

    window = max(options.batch_size * 2, options.workers * 4)
    in_flight: deque[Future] = deque()
    queue = iter(to_index)
    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="decode") as pool:
        try:
            while True:
                while len(in_flight) < window:
                    entry = next(queue, None)
                    if entry is None:
                        break
                    in_flight.append(pool.submit(_prepare, entry, known_hashes, lazy, options))
                if not in_flight:
                    break
                result = in_flight.popleft().result()
                if isinstance(result, _Failed):
                    entry = result.entry
                    pending_failures.append((entry.path, entry.size, entry.mtime_ns, result.reason))
                    report.skipped.append((result.entry.path, result.reason))
                    progress.skipped(result.entry.path, result.reason)
                    progress.advance()
                elif isinstance(result, _Reused):
                    known = store.vector_for_hash(result.digest) or replaced.get(result.digest)
                    if known is None:  # not expected: its content left the index some other way
                        reason = "its content left the index during the run; run index again"
                        pending_failures.append((result.entry.path, result.entry.size, result.entry.mtime_ns, reason))
                        report.skipped.append((result.entry.path, reason))
                        progress.skipped(result.entry.path, reason)
                        progress.advance()
                        flush(encode_all=False)
                        continue
                    carried = {name: known[name] for name in METADATA_COLUMNS}
                    if carried["taken_source"] == metadata.FROM_FILE:  # no EXIF date: this copy's own file time
                        carried["taken"] = metadata.file_time(result.entry.mtime_ns)
                    pending_records.append(ImageRecord(
                        result.entry.path, result.entry.size, result.entry.mtime_ns, result.digest,
                        known["width"], known["height"], known["vector"], known["phash"], known["colourfulness"],
                        **carried,
                    ))
                    report.reused += 1
                    progress.advance()
                else:
                    if not model_recorded:  # before the first batch: an early Ctrl-C keeps the model recorded
                        encoder = lazy.get()
                        store.set_model(encoder.model_id, encoder.dim)
                        model_recorded = True
                    pending_pixels.append(result)
                    progress.advance()  # counted when decoded, so the bar moves from the start
                flush(encode_all=False)
            flush(encode_all=True)
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise


def fill_metadata(store: Store, folder: str | None = None, workers: int = DEFAULT_WORKERS) -> int:
    """Read the date taken, camera and GPS position of images indexed before metadata existed.

    Reads only the files' headers, never the model. A file that cannot be read
    gets its indexed file time as the date, so it is not retried. Returns how many rows were filled.
    """
    missing = store.missing_metadata(folder)
    if not missing:
        return 0

    def read(item: tuple[int, str, int]) -> tuple[int, dict]:
        image_id, path, mtime_ns = item
        found = metadata.read_file(path).with_file_time(mtime_ns)
        return image_id, {name: getattr(found, name) for name in METADATA_COLUMNS}

    done: list[tuple[int, dict]] = []
    with store.writer(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="metadata") as pool:
        for result in pool.map(read, missing):
            done.append(result)
            if len(done) >= 500:
                store.set_metadata(done)
                done.clear()
        store.set_metadata(done)
    return len(missing)


def fill_fingerprints(store: Store, folder: str | None = None, workers: int = DEFAULT_WORKERS,
                      progress: Progress | None = None) -> list[tuple[str, str]]:
    """Compute the perceptual hash and colourfulness of images indexed before dedupe existed.

    Needs the files but not the model. Returns (path, reason) for files that
    could not be read; they keep no fingerprint and dedupe only matches them exactly.
    """
    progress = progress or Progress()
    missing = store.missing_fingerprints(folder)
    if not missing:
        return []
    with store.writer():
        return _fill_fingerprints(store, missing, workers, progress)


def _fill_fingerprints(store: Store, missing: list[tuple[int, str]], workers: int,
                       progress: Progress) -> list[tuple[str, str]]:
    progress.fingerprinting(len(missing))
    failed: list[tuple[str, str]] = []

    def compute(item: tuple[int, str]):
        image_id, path = item
        try:
            decoded = images.decode_file(path, images.Preprocess())
            return image_id, decoded.phash, decoded.colourfulness
        except images.ImageError as exc:
            return path, str(exc)

    done: list[tuple[int, bytes, float]] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fingerprint") as pool:
        for result in pool.map(compute, missing):
            if len(result) == 2:
                failed.append(result)
            else:
                done.append(result)
            progress.advance()
            if len(done) >= 500:
                store.set_fingerprints(done)
                done.clear()
    store.set_fingerprints(done)
    return failed
