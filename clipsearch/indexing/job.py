"""The index job in three stages: decide -> decode + embed -> write.

`decide` (here, in this process) scans the folders and compares sizes and
modification times with the index; `decode + embed` (embed.py) turns the
changed files into records or failures, in a thread pool here
(embed.LocalEmbedder; threads decode as fast as processes here:
scripts/bench_index.py measures both) or on a Ray cluster
(ray_embed.RayEmbedder, `index --ray`); `write` (here, one writer) commits
them in batches, so an interrupted run resumes where it stopped. The model is
loaded only when some file's content has never been embedded: a re-run over an
unchanged, renamed or copied library does no model work.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import BadInputError
from ..models.onnx_image import ImageEncoder
from ..options import DEFAULT_WORKERS, ImagePrecision, resolve_model
from ..paths import normalise_path
from ..store import ImageRecord, Store
from ..store.schema import METADATA_COLUMNS
from ..store.tags import TagStore
from . import images, metadata
from .embed import Embedded, EmbedStep, LocalEmbedder, Result, Reused
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
    ray: str | None = None  # decode + embed on this Ray cluster (auto, local, ray://HOST:PORT); None: here


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
    unreadable_on_workers: dict[str, int] = field(default_factory=dict)  # Ray worker host -> files it could not open

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
    step = _embed_step(model_id, device, options, progress, encoder)  # before the scan: `--ray` without Ray fails fast

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

        try:
            _process(changes.to_index, set(indexed), store, step, options, progress, report)
        except KeyboardInterrupt:
            report.interrupted = True
            report.seconds = time.perf_counter() - started
            raise
        finally:
            report.model_loaded = step.model_loaded
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


def _embed_step(model_id: str, device: str | None, options: IndexOptions, progress: Progress,
                encoder: ImageEncoder | None) -> EmbedStep:
    """Where decode + embed runs: in this process, or on the Ray cluster that `options.ray` names."""
    if options.ray is None:
        return LocalEmbedder(model_id, device, options, progress, encoder)
    from .ray_embed import RayEmbedder

    return RayEmbedder(options.ray, model_id, device, options, progress)


def _process(to_index: list[FileEntry], previously_indexed: set[str], store: Store, step: EmbedStep,
             options: IndexOptions, progress: Progress, report: IndexReport) -> None:
    if not to_index:
        return
    known_hashes = store.known_hashes()
    # The content of files this run replaces, so that a copy of a file's old bytes can still reuse its vector.
    replaced = store.rows_for_hashes_of(entry.path for entry in to_index if entry.path in previously_indexed)

    def model_ready(model_id: str, dim: int) -> None:
        store.set_model(model_id, dim)

    with contextlib.closing(step.run(to_index, known_hashes, model_ready)) as results:
        _write(results, store, previously_indexed, replaced, options, progress, report)


def _write(results: Iterator[Result], store: Store, previously_indexed: set[str], replaced: dict[str, dict],
           options: IndexOptions, progress: Progress, report: IndexReport) -> None:
    """The one writer: records and failures, wherever they were made, committed every `batch_size` records."""
    records: list[ImageRecord] = []
    failures: list[tuple[str, int, int, str]] = []

    def fail(entry: FileEntry, reason: str, worker: str | None = None) -> None:
        if worker is None:  # a file a cluster worker could not open is retried next run, not recorded as broken
            failures.append((entry.path, entry.size, entry.mtime_ns, reason))
        else:
            report.unreadable_on_workers[worker] = report.unreadable_on_workers.get(worker, 0) + 1
        report.skipped.append((entry.path, reason))
        progress.skipped(entry.path, reason)
        progress.advance()

    for result in results:
        if isinstance(result, Embedded):
            records.append(result.record)
            report.encoded += 1
            if result.entry.path in previously_indexed:
                report.updated += 1
            else:
                report.new += 1
        elif isinstance(result, Reused):
            record = _reused_record(result, store, replaced)
            if record is None:  # not expected: its content left the index some other way
                fail(result.entry, "its content left the index during the run; run index again")
            else:
                records.append(record)
                report.reused += 1
                progress.advance()
        else:
            fail(result.entry, result.reason, result.worker)
        if len(records) >= options.batch_size:
            store.write(records, failures)
            records.clear()
            failures.clear()
    if records or failures:
        store.write(records, failures)


def _reused_record(result: Reused, store: Store, replaced: dict[str, dict]) -> ImageRecord | None:
    """The record of a file whose content is indexed already: its vector, fingerprints and metadata, copied."""
    known = store.vector_for_hash(result.digest) or replaced.get(result.digest)
    if known is None:
        return None
    carried = {name: known[name] for name in METADATA_COLUMNS}
    if carried["taken_source"] == metadata.FROM_FILE:  # no EXIF date: this copy's own file time
        carried["taken"] = metadata.file_time(result.entry.mtime_ns)
    entry = result.entry
    return ImageRecord(entry.path, entry.size, entry.mtime_ns, result.digest, known["width"], known["height"],
                       known["vector"], known["phash"], known["colourfulness"], **carried,
                       geometry=known.get("geometry"))


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
            return image_id, decoded.phash, decoded.colourfulness, decoded.geometry
        except images.ImageError as exc:
            return path, str(exc)

    done: list[tuple[int, bytes, float, bytes | None]] = []
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
