"""The Python API: one object for one index, the way sqlite-utils' `Database` and llm's `Collection` are.

Every command of the CLI is one call here, so a script needs one import, not
six: `Library().find("a red car")`. The index is opened on first use (created
only by `index`), and a model is loaded only by an operation that needs one:
text queries go through `models.query.QueryEncoder` (remembered vectors, then
the torch-free ONNX text tower), tagging and indexing through the torch model.
Like the rest of the library it prints nothing; `notify` receives the few
one-line notices a person should see (a one-time export, a fallback).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import search
from .errors import BadInputError
from .options import DEFAULT_MAX_TAGS, KeepPolicy, resolve_model
from .paths import normalise_path
from .store import Store
from .store.tags import TagStore
from .store.text import TextStore

if TYPE_CHECKING:  # each command imports the modules it uses when it runs, so a query loads only its own
    from typing import BinaryIO

    from .dedupe import moves
    from .dedupe.groups import Group
    from .indexing import job as indexer
    from .models.protocols import GetQueryModel
    from .models.query import LoadedModels, QueryEncoder
    from .models.text_worker import TextWorker
    from .models.torch_encoder import Encoder
    from .ocr.job import OcrReport
    from .places.names import Place
    from .tags.auto import TagReport
    from .tags.sidecars import ExportReport, SidecarStyle

PathLike = str | os.PathLike[str]


@dataclass
class Duplicates:
    """What `Library.dedupe` found: the groups, best tier first, and files it could not fingerprint."""

    groups: list[Group]
    not_hashed: list[tuple[str, str]]  # (path, reason): only exact copies of these are found


@dataclass
class Photo:
    """One indexed image as `Library.photo` describes it: the file facts the index recorded, its photo
    metadata and its tags."""

    path: str
    size: int
    mtime_ns: int
    width: int | None
    height: int | None
    taken: str | None  # ISO date and time, from EXIF, else the file's time (then `taken_from_file`)
    taken_from_file: bool
    camera: str | None  # "Canon EOS R5"
    tags: list[dict[str, Any]]  # {"tag", "score", "source"}, best first
    lat: float | None = None  # the GPS position, in degrees
    lon: float | None = None
    place: Place | None = None  # the nearest town and its areas (.city, .region, .country, .long())
    text: list[dict[str, Any]] = field(default_factory=list)  # lines read in it: {"text", "confidence", "box"}


class Library:
    """A photo library's index: index folders, then search, deduplicate and tag them.

    `db` is the index file (default: $CLIPSEARCH_DB, else ~/.local/share/clipsearch/index.db);
    `model` a Hugging Face id or local folder (default: the index's own model);
    `device` cuda, mps or cpu (default: the fastest available). Close it, or use `with`.
    `query_model`, when given, gives the model that embeds every query instead (an already loaded
    one, or a test's stand-in). `text_worker` (`TextWorker.start()`, forked at a program's start) embeds the
    first query's new texts while the index opens: the command line's `find` uses it.

    A Library is used by one thread at a time (SQLite connections stay in their thread): another
    thread takes `for_thread()`, which shares the loaded models.
    """

    def __init__(self, db: PathLike | None = None, model: str | None = None, device: str | None = None,
                 notify: Callable[[str], None] | None = None, *, query_model: GetQueryModel | None = None,
                 text_worker: TextWorker | None = None):
        self.db, self.model, self.device = db, model, device
        self.notify: Callable[[str], None] = notify or (lambda message: None)
        self.query_model = query_model
        self.text_worker = text_worker
        self._store: Store | None = None
        self._encoder: Encoder | None = None
        self._query_encoders: dict[str, QueryEncoder] = {}
        self._models: dict[tuple[str, str], LoadedModels] = {}  # shared with the copies of for_thread()

    def for_thread(self) -> Library:
        """This library for another thread: its own connection to the index, the same loaded models."""
        twin = Library(self._store.path if self._store else self.db, self.model, self.device, self.notify,
                       query_model=self.query_model)
        twin._encoder, twin._models = self._encoder, self._models
        return twin

    # -- the index file -------------------------------------------------------

    def _open(self, create: bool) -> Store:
        if self._store is None:
            self._store = Store.open(self.db, create=create)
        return self._store

    @property
    def store(self) -> Store:
        """The open index (opened now if needed); it must exist already: `index` creates it."""
        return self._open(create=False)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        self._query_encoders.clear()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def count(self, folder: PathLike | None = None) -> int:
        """How many images are indexed (under `folder`)."""
        return self.store.count(normalise_path(folder) if folder else None)

    # -- indexing -------------------------------------------------------------

    def index(self, *folders: PathLike, options: indexer.IndexOptions | None = None,
              progress: indexer.Progress | None = None) -> indexer.IndexReport:
        """Bring the index up to date with `folders` (created if missing): new, changed and deleted files."""
        from .indexing import job as indexer

        store = self._open(create=True)
        report = indexer.index_folders(folders, store, self.model, self.device, options, progress,
                                       encoder=self._encoder)
        self._query_encoders.clear()  # an index's first run records its model
        return report

    # -- searching ------------------------------------------------------------

    def query_encoder(self, precision: str = "auto") -> QueryEncoder:
        """What find and similar embed queries with (models load on first need, not here)."""
        from .models.query import LoadedModels, QueryEncoder

        if precision not in self._query_encoders:
            model_id = resolve_model(self.store, self.model)
            models = self._models.setdefault((model_id, precision), LoadedModels())
            self._query_encoders[precision] = QueryEncoder(self.store, model_id, self.device, precision,
                                                           notify=self.notify, models=models,
                                                           worker=self.text_worker)
            self.text_worker = None  # one query's texts: the first encoder asks it, or stops it
        return self._query_encoders[precision]

    def _query_model(self, precision: str = "auto") -> GetQueryModel:
        if self.query_model is not None:
            return self.query_model
        encoder = self.query_encoder(precision)
        return lambda: encoder

    def warm_up(self) -> None:
        """Load the text model queries use now, and run it once, so the first query is as fast as the next
        (`serve` does this before it listens). Loads the ONNX text tower when there is one, not torch."""
        model_id = resolve_model(self.store, self.model)
        self.notify(f"Loading model {model_id}...")
        model = self.query_model() if self.query_model is not None else self.query_encoder().text_encoder()
        model.embed_texts(["a photo"])  # the model's own call: nothing is remembered in the index

    def find(self, query: Sequence[str] | str | None = None, *, top: int = 10, folder: PathLike | None = None,
             threshold: float | None = None, tags: Sequence[str] = (), after: str | None = None,
             before: str | None = None, camera: str | None = None, precision: str = "auto",
             place: str | None = None, country: str | None = None, near: str | None = None,
             radius: str | None = None, text: str | None = None, exact: bool = False) -> list[search.Hit]:
        """Images best matching `query` ("dog + snow", or a list of terms), and/or having all `tags`, and/or
        whose text (read by `ocr`) matches `text`; best first.

        `after`/`before` are dates ("2024", "2024-06", "2024-06-15": from the start / to the end of that
        period) and `camera` text in the camera's make or model (any case). `place` is a town, area or
        country name (any case, accents ignored), `country` an ISO code ("PT"), `near` a position
        ("38.72,-9.14") with a `radius` ("500m", "5km", "2mi"; 1 km by default): only photos with a GPS
        position match these. `text` is words (all must be in the photo's text), "a phrase", prefix* or FTS5
        syntax: alone it ranks by BM25; with a query it keeps the matches and ranks them by the query. Hits
        found through `text` carry a snippet of the photo's text. `exact` ranks every image even in a library
        large enough for the approximate index (store/vector_index.py)."""
        filters = search.Filters.parse(after, before, camera, place, country, near, radius)
        return search.find(query, self.store, self._query_model(precision), top, _text(folder), threshold,
                           tags=tags, filters=filters, text=text, exact=exact)

    def similar(self, image: PathLike, *, top: int = 10, folder: PathLike | None = None,
                threshold: float | None = None, after: str | None = None, before: str | None = None,
                camera: str | None = None, place: str | None = None, country: str | None = None,
                near: str | None = None, radius: str | None = None, exact: bool = False) -> list[search.Hit]:
        """Images most like `image` (indexed or not), which itself is not listed; filters and `exact` as in `find`."""
        filters = search.Filters.parse(after, before, camera, place, country, near, radius)
        return search.similar(image, self.store, self._query_model(), top, _text(folder), threshold,
                              filters=filters, exact=exact)

    # -- single photos (what the web app shows) -------------------------------

    def indexed_file(self, path: str) -> dict[str, Any] | None:
        """path, size, mtime_ns, width and height the index recorded for exactly `path` (no normalising), or
        None when it is not indexed."""
        row = self.store.file_row(path)
        return {key: row[key] for key in ("path", "size", "mtime_ns", "width", "height")} if row else None

    def photo(self, path: str) -> Photo | None:
        """What the index knows of the image at exactly `path`: file facts, date taken, camera, tags."""
        from .indexing import metadata

        row = self.store.file_row(path)
        if row is None:
            return None
        facts = self.store.image_rows([row["id"]]).get(row["id"], {})
        tags = TagStore(self.store).tags_of([row["id"]]).get(row["id"], [])
        from .store.places import place_of

        return Photo(row["path"], row["size"], row["mtime_ns"], row["width"], row["height"], facts.get("taken"),
                     facts.get("taken_source") == metadata.FROM_FILE,
                     metadata.camera_name(facts.get("camera_make"), facts.get("camera_model")), tags,
                     facts.get("lat"), facts.get("lon"), place_of(facts), TextStore(self.store).lines_of(row["id"]))

    def modified_times(self, paths: Sequence[str]) -> dict[str, int]:
        """path -> modification time (ns) the index recorded, for each of `paths` that is indexed."""
        return self.store.mtimes(list(paths))

    @staticmethod
    def thumbnail_key(path: str, size: int, info: os.stat_result | None = None) -> str:
        """Names one rendition of one version of a file (an ETag): from `info`, else the file's stat."""
        from .indexing import thumbnails

        return thumbnails.thumbnail_key(path, size, info)

    @staticmethod
    def thumbnail(path: str, size: int, opened: BinaryIO | None = None) -> bytes:
        """A JPEG of `path` at most `size` pixels on its long side, cached; read from `opened` when given (a
        file the caller opened and checked). BadInputError saying why when the file cannot be read."""
        from .indexing import images, thumbnails

        try:
            return thumbnails.thumbnail(path, size, opened=opened)[0]
        except images.ImageError as exc:
            raise BadInputError(str(exc)) from None

    @staticmethod
    def check_image(data: bytes) -> None:
        """BadInputError saying why unless `data` is an image clipsearch can read (an upload, before it is kept)."""
        from .indexing import images

        try:
            images.open_oriented(data, 64)
        except images.ImageError as exc:
            raise BadInputError(str(exc)) from None

    @staticmethod
    def image_extensions() -> frozenset[str]:
        """The file extensions (".jpg", with the dot) of the image formats clipsearch reads."""
        from .indexing import images

        return images.supported_extensions()

    # -- duplicates -----------------------------------------------------------

    def dedupe(self, folder: PathLike | None = None, *, similar: bool = False, near_threshold: float | None = None,
               similar_threshold: float | None = None, max_hash_distance: int = 56,
               keep: KeepPolicy = KeepPolicy.best, prefer: Sequence[PathLike] = (),
               progress: indexer.Progress | None = None) -> Duplicates:
        """Exact copies and near-identical versions (and, with `similar`, bursts); nothing is moved.

        Images indexed before fingerprints or photo metadata existed get them first (the files are read,
        not the model): the keep choice reads camera EXIF and dates.
        """
        from .dedupe.groups import DedupeOptions, find_duplicates
        from .indexing import job as indexer

        store, scope = self.store, _text(folder)
        if folder is not None and not Path(folder).is_dir():
            raise indexer.IndexingError(f"{folder} is not a folder.")
        not_hashed = indexer.fill_fingerprints(store, scope, progress=progress)
        indexer.fill_metadata(store, scope)
        options = DedupeOptions(similar, near_threshold, similar_threshold, max_hash_distance, keep=keep,
                                prefer=tuple(os.fspath(p) for p in prefer))
        return Duplicates(find_duplicates(store, scope, options), not_hashed)

    def plan_moves(self, groups: list[Group], to: PathLike | None = None,
                   folder: PathLike | None = None) -> list[moves.Move]:
        """What moving the extra files of `groups` to `to` (None: the system trash) would do; checks, moves nothing.

        Files keep their folders relative to `folder` (or to the folder a group's members share).
        """
        from .dedupe import moves

        return moves.plan_moves(groups, _folder(to), self.store, _text(folder))

    def check_destination(self, to: PathLike, folder: PathLike | None = None) -> None:
        """BadInputError unless `to` is a safe place for moved duplicates (not inside the library): checked
        before a dedupe is run and shown, so a refusal comes first, not after the whole report."""
        from .dedupe import moves

        moves.check_destination(os.path.expanduser(os.fspath(to)), self.store, _text(folder))

    def move_duplicates(self, plan: list[moves.Move], to: PathLike | None = None) -> moves.MoveReport:
        """Carry out `plan`, writing a manifest first (in `to`, or the data folder for the trash) to undo it."""
        from .dedupe import moves

        with self.store.writer():  # a busy index is refused before the manifest's folder is made
            report = moves.apply_moves(plan, self.store, moves.default_manifest_path(_folder(to)))
        self.store.refresh_vector_cache()
        return report

    def undo_moves(self, manifest: PathLike) -> moves.UndoReport:
        """Put back every file a `move_duplicates` run moved, and its index row and tags."""
        from .dedupe import moves

        report = moves.undo_moves(os.path.expanduser(os.fspath(manifest)), self.store)
        self.store.refresh_vector_cache()
        return report

    # -- tags -----------------------------------------------------------------

    def tag(self, *folders: PathLike, vocab: PathLike | None = None, threshold: float | None = None,
            max_tags: int = DEFAULT_MAX_TAGS, retag: bool = False,
            progress: indexer.Progress | None = None) -> TagReport:
        """Zero-shot tags for the indexed images (under `folders`) from `vocab` (default: the index's last
        vocabulary, else the built-in one); only images not yet tagged with these settings are scored."""
        from .tags.auto import TagOptions, tag_images, vocabulary_for

        vocabulary = vocabulary_for(self.store, vocab)
        options = TagOptions(threshold, max_tags, retag)
        # A new vocabulary's prompts are text: the exported text tower embeds them, without torch.
        return tag_images(self.store, self.query_encoder().text_encoder, [os.fspath(f) for f in folders],
                          vocabulary, options, progress=progress)

    def tags(self, folder: PathLike | None = None) -> list[dict[str, Any]]:
        """Each tag with how many images have it (`images`, `auto`, `manual`), most used first."""
        return TagStore(self.store).tag_counts(normalise_path(folder) if folder else None)

    def add_tags(self, image: PathLike, *names: str) -> list[dict[str, Any]]:
        """Give one indexed image manual tags; returns its tags afterwards."""
        from .tags.auto import edit_tags

        return edit_tags(self.store, image, add=list(names))

    def remove_tags(self, image: PathLike, *names: str) -> list[dict[str, Any]]:
        """Take tags off one image (a removed auto tag stays away); returns its tags afterwards."""
        from .tags.auto import edit_tags

        return edit_tags(self.store, image, remove=list(names))

    def tags_by_path(self, *folders: PathLike) -> dict[str, list[str]]:
        """Every tagged image (under `folders`) with its tags, best first."""
        found: dict[str, list[str]] = {}
        scopes: list[str | None] = [normalise_path(f) for f in folders] or [None]
        for scope in scopes:
            found.update(TagStore(self.store).tags_by_path(scope))
        return found

    def export_sidecars(self, *folders: PathLike, style: SidecarStyle | None = None) -> ExportReport:
        """Write the stored tags into XMP sidecars beside the photos (under `folders`), merging existing ones."""
        from .tags import sidecars

        return sidecars.export_sidecars(self.tags_by_path(*folders), style or sidecars.SidecarStyle.digikam)

    # -- text in photos -------------------------------------------------------

    def ocr(self, *folders: PathLike, workers: int | None = None, progress: indexer.Progress | None = None,
            optional: bool = False) -> OcrReport:
        """Read the text in the indexed photos (under `folders`) not yet read with this OCR version, so
        `find(text=...)` finds them. `optional`: when OCR cannot run (rapidocr missing or broken), say why in
        the report's `unavailable` instead of raising (what `index --ocr` wants)."""
        from .ocr.engine import OcrUnavailableError
        from .ocr.job import OcrReport, read_text

        try:
            return read_text(self.store, [os.fspath(f) for f in folders], progress, workers)
        except OcrUnavailableError as exc:
            if not optional:
                raise
            return OcrReport("", unavailable=str(exc))

    # -- about the index ------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Where the index is, which model built it, the folders and dates it covers, and how many images,
        failures and tags it holds."""
        from .models.onnx_image import describe as describe_image_encoder
        from .store import vector_index
        from .store.places import PlaceStore

        store = self.store
        recorded = store.model()
        taken_from, taken_to = store.date_range()
        text_read, with_text = TextStore(store).count_read()
        with_gps, with_place, places_pending = PlaceStore(store).counts()
        return {
            "index": str(store.path),
            "model": recorded[0] if recorded else None,
            "dimensions": recorded[1] if recorded else None,
            "image_encoder": describe_image_encoder(recorded[0]) if recorded else None,  # what `index` takes
            "images": store.count(),
            "folders": [{"path": folder, "images": store.count(folder)} for folder in store.indexed_folders()],
            "taken_from": taken_from,
            "taken_to": taken_to,
            "last_index_run": store.get_meta("last_index_run"),
            "failed_files": store.failure_count(),
            "tagged_images": TagStore(store).tagged_count(),
            "text_read": text_read,  # images whose text was read (clipsearch ocr)...
            "with_text": with_text,  # ...and those in which some was found
            "without_fingerprint": len(store.missing_fingerprints()),
            "with_gps": with_gps,  # photos with a GPS position; `with_place` of them have a town near it
            "with_place": with_place,
            "places_pending": places_pending,  # positions the next `index` run looks up
            "top_places": PlaceStore(store).top_places(10),  # {"city", ..., "country_code", "images"}
            "vector_index": vector_index.describe(store),  # exact or approximate ranking, and why
            "schema_version": store.schema_version(),
            "size_bytes": sum(p.stat().st_size for p in store.path.parent.glob(store.path.name + "*")),
        }


def _text(path: PathLike | None) -> str | None:
    return os.fspath(path) if path is not None else None


def _folder(path: PathLike | None) -> str | None:
    """A folder given in Python, where no shell has expanded `~` (a manifest in ./~ would be lost)."""
    return os.path.expanduser(os.fspath(path)) if path is not None else None
