"""The OCR pass over an index: read the text in photos not yet read, and store it.

Opt-in and incremental, like tagging: `clipsearch ocr` (or `index --ocr`, after
the index job) reads each content once per OCR version (engine.model_version),
so a second run does no work, and a renamed or copied photo keeps its text (it
is stored by content hash). Results are committed in batches under the writer
lock, so Ctrl-C loses at most the photos in flight and the next run goes on
where this one stopped. Photos are read by a small thread pool: onnxruntime
releases the GIL, and one thread per core with one onnxruntime thread each
keeps both cores busier than one reader with two (decoding and the boxes'
post-processing run between model calls).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BadInputError
from ..paths import normalise_path
from ..store import Store
from ..store.text import TextStore, Unread
from . import engine

if TYPE_CHECKING:
    from ..indexing.job import Progress

BATCH = 32  # photos per commit...
BATCH_SECONDS = 5.0  # ...or this long, whichever comes first


class OcrError(BadInputError):
    """The OCR pass cannot run as asked; the message says why."""


@dataclass
class OcrReport:
    version: str  # the OCR models and settings the photos were read with
    read: int = 0  # photos read in this run
    with_text: int = 0  # of those, photos in which text was found
    lines: int = 0  # lines of text found in this run
    skipped: int = 0  # images whose content was already read with this version
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): to be tried again next run
    pruned: int = 0  # stored texts dropped because their content left the index
    seconds: float = 0.0
    unavailable: str | None = None  # why OCR could not run at all (only when asked to carry on without it)

    @property
    def images_per_second(self) -> float:
        return self.read / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "failed": [{"path": p, "reason": r} for p, r in self.failed],
                "seconds": round(self.seconds, 2), "images_per_second": round(self.images_per_second, 2)}


def default_workers() -> int:
    """Reading threads: one per core this process may use, at most 4 (each runs one onnxruntime thread)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def read_text(store: Store, folders: list[str] | None = None, progress: Progress | None = None,
              workers: int | None = None, reader: Callable[[], engine.Reader] | None = None) -> OcrReport:
    """Read the text in the indexed photos (all, or those under `folders`) not yet read with this OCR version,
    and store it; `progress` hears `started("Reading text", photos to read)` and an `advance` per photo.

    `reader` makes the engine (default: `engine.Reader`); OcrUnavailableError when it cannot be made."""
    with store.writer():
        return _read_text(store, folders, progress, workers or default_workers(), reader)


def _read_text(store: Store, folders: list[str] | None, progress: Progress | None, workers: int,
               make_reader: Callable[[], engine.Reader] | None) -> OcrReport:
    started = time.perf_counter()
    report = OcrReport(engine.model_version())
    texts = TextStore(store)
    scopes: list[str | None] = [normalise_path(f) for f in folders] if folders else [None]
    for scope in scopes:
        if scope is not None and not os.path.isdir(scope) and store.count(scope) == 0:
            raise OcrError(f"{scope} is not a folder, and nothing under it is indexed.")
    todo: dict[str, Unread] = {}
    for scope in scopes:
        unread = texts.unread(report.version, scope)
        report.skipped += store.count(scope) - sum(1 for u in unread if u.hash not in todo)
        todo.update((u.hash, u) for u in unread if u.hash not in todo)
    if todo:
        reader = (make_reader or (lambda: engine.Reader(threads=1)))()
        if progress:
            progress.started("Reading text", len(todo))
        _read_all(reader, list(todo.values()), texts, report, progress, workers)
    report.pruned = texts.prune()
    report.seconds = time.perf_counter() - started
    return report


def _read_one(reader: engine.Reader, photo: Unread) -> list[engine.Line] | str:
    """The lines in one photo, or why it could not be read."""
    from ..indexing.images import ImageError

    try:
        return reader.read_file(photo.path)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001  (one photo the engine fails on must not stop the others)
        return f"text recognition failed ({type(exc).__name__}: {exc})"


def _read_all(reader: engine.Reader, photos: list[Unread], texts: TextStore, report: OcrReport,
              progress: Progress | None, workers: int) -> None:
    """Read `photos` with `workers` threads, a few photos ahead of the one being stored, committing in batches."""
    pending: list[tuple[str, list[dict[str, Any]]]] = []
    last_commit = time.monotonic()
    queue = iter(photos)
    with ThreadPoolExecutor(workers, thread_name_prefix="clipsearch-ocr") as pool:
        in_flight: deque[tuple[Unread, Future]] = deque()
        try:
            for photo in queue:
                in_flight.append((photo, pool.submit(_read_one, reader, photo)))
                if len(in_flight) < 2 * workers:
                    continue
                _collect(*in_flight.popleft(), pending, report, progress)
                if len(pending) >= BATCH or time.monotonic() - last_commit >= BATCH_SECONDS:
                    texts.save(pending, report.version)
                    pending, last_commit = [], time.monotonic()
            while in_flight:
                _collect(*in_flight.popleft(), pending, report, progress)
        finally:  # Ctrl-C: what is read is kept; photos not started are not waited for
            for _, future in in_flight:
                future.cancel()
            texts.save(pending, report.version)


def _collect(photo: Unread, future: Future, pending: list[tuple[str, list[dict[str, Any]]]], report: OcrReport,
             progress: Progress | None) -> None:
    result = future.result()
    if isinstance(result, str):
        report.failed.append((photo.path, result))
        if progress:
            progress.skipped(photo.path, result)
    else:
        pending.append((photo.hash, [line.to_dict() for line in result]))
        report.read += 1
        report.with_text += bool(result)
        report.lines += len(result)
    if progress:
        progress.advance(1)
