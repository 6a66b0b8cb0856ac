"""The `clipsearch` command: arguments, exit codes and progress, over the library calls.

Exit codes (errors.py; every library error carries its own, mapped in `_errors`):
0 done; 1 nothing to search or nothing found (no index, empty index or folder,
nothing above --threshold); 2 bad input (missing folder or file, unusable
query, model not available, unknown device); 3 the index cannot be used as
asked (built with another model, written by a newer clipsearch, not an index,
read-only, disk full); 4 index busy (another clipsearch holds the writer lock
for longer than $CLIPSEARCH_LOCK_WAIT seconds); 70 internal error, a bug
(the traceback with --debug); 130 interrupted.

Locking: index, dedupe --move-to/--trash/--undo and tag (runs and manual
edits) take one index-wide writer lock (store.Store.writer); searches never wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import TyperException
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from . import __version__
from . import config, dedupe, indexer, moves, search, sidecars, tags
from .encoder import DEFAULT_MODEL, DEVICES, MODEL_ENV
from .errors import EXIT_BAD_INPUT, EXIT_INDEX, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_NOTHING, ClipsearchError
from .output import (Format, show_export_report, show_groups, show_hits, show_image_tags, show_index_report,
                     show_info, show_move_report, show_plan, show_settings, show_tag_counts, show_tag_report,
                     show_undo_report, shown, stderr)
from .store import DB_ENV, default_db_path, normalise_path, Store

__all__ = ["app", "main", "EXIT_BAD_INPUT", "EXIT_INDEX", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_NOTHING"]
_debug = False  # set by the global --debug flag

def _readable_help_types() -> None:
    """Recent typer prints Python types beside each parameter (`<list[Path]>`, `<bool>`); the metavars
    (FOLDER, N, FILE, MODEL) say it better, and a flag needs no type at all."""
    from typer import core

    if not hasattr(core.TyperOption, "display_type_rich"):  # typer < 0.29: arguments show `<str>`, `<path>`
        from typer._click import types

        default_metavar = types.ParamType.get_metavar

        def argument_metavar(self, param, ctx):  # type: ignore[no-untyped-def]
            value = default_metavar(self, param, ctx)
            return "" if value is None and isinstance(param, core.TyperArgument) else value

        types.ParamType.get_metavar = argument_metavar  # type: ignore[method-assign]
        return
    option_type = core.TyperOption.display_type_rich
    core.TyperArgument.display_type_rich = lambda self, ctx: None
    core.TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else option_type(self, ctx)


_readable_help_types()

app = typer.Typer(
    help="Search your photo library by meaning with CLIP. Index a folder once, then find images by "
         "text or by example.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Defaults that are not plain values are given as text through show_default: typer prints them as
# "[default: ...]" itself (written into the help text, rich markup would swallow the brackets).
def _apply_config(ctx: typer.Context, value: str | None) -> str | None:
    """Eager, so it runs before the other options are read: the config file's settings (and those of
    library `value`) become this command's defaults, below flags and environment variables."""
    with _errors():
        settings = config.load().settings(value)
    ctx.meta["clipsearch.library"] = value
    names = {param.name for param in ctx.command.params}
    ctx.default_map = {**(ctx.default_map or {}), **{k: v for k, (v, _) in settings.items() if k in names}}
    return value


LibraryOption = typer.Option(None, "--library", "-L", envvar=config.LIBRARY_ENV, metavar="NAME", is_eager=True,
                             callback=_apply_config, expose_value=False, show_default="none",
                             help="Use the settings of [library.NAME] in the config file (clipsearch config).")
DbOption = typer.Option(None, "--db", envvar=DB_ENV, help="Index file.", metavar="FILE",
                        show_default="~/.local/share/clipsearch/index.db")
ModelOption = typer.Option(None, "--model", "-m", envvar=MODEL_ENV, metavar="MODEL",
                           help="Hugging Face model id or local folder.",
                           show_default="the index's model, else laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
DeviceOption = typer.Option(None, "--device", metavar="DEVICE", help=f"One of {', '.join(DEVICES)}.",
                            show_default="the fastest available")
TopOption = typer.Option(10, "--top", "-t", min=1, metavar="N", help="How many results.")
InOption = typer.Option(None, "--in", metavar="FOLDER", help="Only images under this folder.",
                        show_default="the whole index")
ThresholdOption = typer.Option(None, "--threshold", metavar="SCORE", show_default="none",
                               help="Only results scoring at least this (cosine, -1..1). "
                               "Good values depend on the model and the query.")
AfterOption = typer.Option(None, "--after", metavar="DATE", show_default=False,
                           help="Only photos taken on or after DATE: 2024, 2024-06 or 2024-06-15 (from its start).")
BeforeOption = typer.Option(None, "--before", metavar="DATE", show_default=False,
                            help="Only photos taken on or before DATE: 2024, 2024-06 or 2024-06-15 (to its end).")
CameraOption = typer.Option(None, "--camera", metavar="TEXT", show_default=False,
                            help="Only photos from a camera whose make or model contains TEXT (any case).")
JsonOption = typer.Option(False, "--json", help="Print JSON for programs.")
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bar.")
PathsOption = typer.Option(False, "--paths", "-p", help="Print bare paths, one a line, for pipes.")


class TextPrecision(str, Enum):
    auto = "auto"
    fp32 = "fp32"


def _format(json_: bool, paths: bool) -> Format:
    if json_ and paths:
        raise typer.BadParameter("--json and --paths cannot be used together.")
    return Format.json if json_ else Format.paths if paths else Format.table


@contextmanager
def _errors() -> Iterator[None]:
    """The one place errors become exit codes: a library error is one clear line and its own code;
    anything else is a bug, reported as an internal error (with the traceback under --debug)."""
    try:
        yield
    except ClipsearchError as exc:
        stderr.print(f"[red]error:[/] {escape(shown(str(exc)))}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        stderr.print("[yellow]Interrupted.[/] Work done so far is saved; run the same command again to continue.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (typer.Exit, typer.Abort, TyperException):  # usage errors and exits: typer reports them
        raise
    except Exception as exc:
        if _debug:
            import traceback

            traceback.print_exc()
        stderr.print(f"[red]internal error:[/] {escape(shown(f'{type(exc).__name__}: {exc}'))}. This is a bug in "
                     f"clipsearch {__version__}; please report it with the command you ran"
                     f"{'' if _debug else ' and the output of the same command with --debug'}.")
        raise typer.Exit(EXIT_INTERNAL) from None


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} img/s" if speed else "", style="cyan")


class _RichProgress(indexer.Progress):
    """Draws the index job's progress on stderr and prints each skipped file above the bar."""

    def __init__(self, bar: Progress | None):
        self.bar = bar
        self.task = None

    def scanned(self, changes) -> None:
        message = (f"Found {changes.seen} images: {len(changes.to_index)} to index, {changes.unchanged} unchanged, "
                   f"{len(changes.gone)} gone.")
        stderr.print(message)
        if self.bar is not None and changes.to_index:
            self.task = self.bar.add_task("Indexing", total=len(changes.to_index))

    def advance(self, count: int = 1) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.advance(self.task, count)

    def skipped(self, path: str, reason: str) -> None:
        stderr.print(f"[yellow]skipped[/] {escape(shown(path))}: {escape(shown(reason))}")

    def model_loading(self, model_id: str) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, description="loading model")
        else:
            stderr.print(f"Loading model {escape(model_id)}...")

    def model_loaded(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, description="Indexing")

    def fingerprinting(self, count: int) -> None:
        stderr.print(f"Computing perceptual hashes of {count} images indexed before dedupe existed (once)...")
        if self.bar is not None:
            self.task = self.bar.add_task("Hashing", total=count)


def _progress_bar(quiet: bool) -> Progress | None:
    if quiet or not stderr.is_terminal:
        return None
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    _RateColumn(), TimeRemainingColumn(), console=stderr, transient=True)


@app.command("index")
def index_command(
    folders: list[Path] = typer.Argument(..., help="Folders to index (recursively).", show_default=False, metavar="FOLDER"),
    exclude: list[str] = typer.Option([], "--exclude", "-x", metavar="GLOB", show_default="none",
                                      help="Glob of file/folder names or paths to skip, added to the defaults "
                                           "(hidden files, @eaDir, node_modules...). Repeatable."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, metavar="N", help="Images per model call."),
    workers: int = typer.Option(indexer.DEFAULT_WORKERS, "--workers", min=1, metavar="N", help="Decoding threads."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="Descend into symlinked folders."),
    max_megapixels: float = typer.Option(250.0, "--max-megapixels", metavar="MP",
                                         help="Skip images larger than this."),
    max_file_size: float = typer.Option(indexer.images.DEFAULT_MAX_FILE_MB, "--max-file-size", min=0.001,
                                        metavar="MB", help="Skip files larger than this many MB, unread."),
    db: Optional[Path] = DbOption,
    library: str | None = LibraryOption,
    model: Optional[str] = ModelOption,
    device: Optional[str] = DeviceOption,
    json_: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Add new and changed images under FOLDERS to the index, and drop deleted ones.

    Unchanged files are skipped without reading them; renamed and copied files reuse their vector.
    Safe to interrupt: the next run continues where this one stopped.
    """
    options = indexer.IndexOptions(batch_size, workers, tuple(exclude), follow_symlinks, max_megapixels, max_file_size)
    with _errors():
        bar = _progress_bar(quiet)
        with Store.open(db) as store, bar or nullcontext():
            report = indexer.index_folders(folders, store, model, device, options, _RichProgress(bar))
        show_index_report(report, Format.json if json_ else Format.table)


def _encoder_factory(store: Store, model: str | None, device: str | None):
    model_id = indexer.resolve_model(store, model)

    def load():
        from .encoder import Encoder

        return Encoder.load(model_id, device)

    return load


def _run_query(search_function, query, top, folder, threshold, db, model, device, fmt: Format,
               after: str | None, before: str | None, camera: str | None, precision: str = "auto",
               preview_rows: int | None = None, **extra) -> None:
    """find and similar: open the index, rank, print; exit 1 when nothing was found."""
    from .queryencoder import QueryEncoder

    with _errors(), Store.open(db, create=False) as store:
        filters = search.Filters.parse(after, before, camera)
        encoder = QueryEncoder(store, indexer.resolve_model(store, model), device, precision,
                               notify=lambda message: stderr.print(escape(message)))
        hits = search_function(query, store, lambda: encoder, top, str(folder) if folder else None, threshold,
                               filters=filters, **extra)
        if preview_rows and fmt is Format.table and hits:
            _show_previews(hits, preview_rows)
        else:
            show_hits(hits, fmt)
    if not hits:
        raise typer.Exit(EXIT_NOTHING)


PreviewOption = typer.Option(False, "--preview", help="Show thumbnails (kitty, WezTerm, Ghostty, iTerm2, sixel).")
PreviewSizeOption = typer.Option(6, "--preview-size", min=1, max=60, metavar="ROWS",
                                   help="Thumbnail height in terminal rows.")


def _show_previews(hits, rows: int) -> None:
    import sys

    from . import preview

    protocol = preview.detect() if sys.stdout.isatty() else preview.Protocol.none
    if protocol is preview.Protocol.none:
        stderr.print(escape(preview.NOTICE), highlight=False)
        show_hits(hits, Format.table)
        return
    preview.show_previews(hits, protocol, rows, sys.stdout.write)
    sys.stdout.flush()


@app.command("find")
def find_command(
    query: Optional[list[str]] = typer.Argument(None, help='Words, image paths, "+", "-" and "N:" weights, e.g. '
                                                '"a dog" + "on a beach", "2:sunset" - "people", ./cat.jpg + "in snow".',
                                                show_default=False, metavar="QUERY"),
    tag: list[str] = typer.Option([], "--tag", "-T", metavar="TAG", show_default="none", help="Only images with this tag (repeatable: all of them). "
                                  "Without a query: the images with the tag, best first."),
    top: int = TopOption,
    folder: Optional[Path] = InOption,
    threshold: Optional[float] = ThresholdOption,
    after: str | None = AfterOption,
    before: str | None = BeforeOption,
    camera: str | None = CameraOption,
    db: Optional[Path] = DbOption,
    library: str | None = LibraryOption,
    model: Optional[str] = ModelOption,
    device: Optional[str] = DeviceOption,
    precision: TextPrecision = typer.Option(TextPrecision.auto, "--precision",
                                  help="Text encoder: auto uses int8 when it agrees with the model (cosine >= "
                                       "0.999), fp32 never quantises."),
    json_: bool = JsonOption,
    paths: bool = PathsOption,
    show_preview: bool = PreviewOption,
    preview_size: int = PreviewSizeOption,
) -> None:
    """Find images matching a description (and/or example images), best first."""
    _run_query(search.find, query, top, folder, threshold, db, model, device, _format(json_, paths),
               after, before, camera, precision.value, preview_size if show_preview else None, tags=tag)


@app.command("similar")
def similar_command(
    image: Path = typer.Argument(..., help="An image file, indexed or not.", show_default=False, metavar="IMAGE"),
    top: int = TopOption,
    folder: Optional[Path] = InOption,
    threshold: Optional[float] = ThresholdOption,
    after: str | None = AfterOption,
    before: str | None = BeforeOption,
    camera: str | None = CameraOption,
    db: Optional[Path] = DbOption,
    library: str | None = LibraryOption,
    model: Optional[str] = ModelOption,
    device: Optional[str] = DeviceOption,
    json_: bool = JsonOption,
    paths: bool = PathsOption,
    show_preview: bool = PreviewOption,
    preview_size: int = PreviewSizeOption,
) -> None:
    """Find the images most like IMAGE (IMAGE itself is not listed)."""
    _run_query(search.similar, image, top, folder, threshold, db, model, device, _format(json_, paths),
               after, before, camera, preview_rows=preview_size if show_preview else None)


@app.command("dedupe")
def dedupe_command(
    folder: Optional[Path] = InOption,
    similar: bool = typer.Option(False, "--similar", help="Also group bursts and near-shots of one scene."),
    near_threshold: Optional[float] = typer.Option(
        None, "--near-threshold", metavar="COSINE", show_default="0.93 for ViT-B/32; the model's own otherwise",
        help="Cosine above which two images are near-identical candidates (the hash decides)."),
    max_hash_distance: int = typer.Option(56, "--max-hash-distance", min=0, max=256, metavar="BITS",
                                          help="Near-identical: at most this many of the 256 hash bits differ."),
    similar_threshold: Optional[float] = typer.Option(
        None, "--similar-threshold", metavar="COSINE", show_default="0.90 for ViT-B/32; the model's own otherwise",
        help="Cosine above which images are similar shots."),
    keep: dedupe.KeepPolicy = typer.Option(dedupe.KeepPolicy.best, "--keep",
                                           help="Which file of a group to keep. best: the one with camera EXIF, "
                                                "then the original format over a lossless re-encode (PNG, TIFF), "
                                                "then most pixels, then taken first, then shortest path."),
    prefer: list[Path] = typer.Option([], "--prefer", metavar="FOLDER", show_default="none",
                                      help="Keep files in this folder first. Repeatable."),
    move_to: Optional[Path] = typer.Option(None, "--move-to", metavar="FOLDER", help="Move the extra files here, "
                                           "keeping their folders (asks first).", show_default="report only"),
    trash: bool = typer.Option(False, "--trash", help="Send the extra files to the system trash (asks first)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before moving."),
    undo: Optional[Path] = typer.Option(None, "--undo", help="Put back everything a --move-to or --trash run "
                                        "moved, from its manifest.", show_default=False, metavar="MANIFEST"),
    db: Optional[Path] = DbOption,
    library: str | None = LibraryOption,
    json_: bool = JsonOption,
    paths: bool = typer.Option(False, "--paths", "-p", help="Print only the files that could go, one a line."),
    quiet: bool = QuietOption,
) -> None:
    """Find exact copies and near-identical versions of photos (and, with --similar, bursts).

    Only reports, unless --move-to or --trash is given; even then nothing is deleted, and
    --undo MANIFEST puts everything back.
    """
    fmt = _format(json_, paths)
    if move_to and trash:
        raise typer.BadParameter("Use --move-to or --trash, not both.")
    with _errors(), Store.open(db, create=False) as store:
        if undo:
            report = moves.undo_moves(undo, store)
            show_undo_report(report, fmt)
            if report.skipped:
                raise typer.Exit(EXIT_NOTHING)
            return
        scope = str(folder) if folder else None
        if scope and not folder.is_dir():
            raise indexer.IndexingError(f"{folder} is not a folder.")
        bar = _progress_bar(quiet)
        with bar or nullcontext():
            unreadable = indexer.fill_fingerprints(store, scope, progress=_RichProgress(bar))
        indexer.fill_metadata(store, scope)  # the keep choice reads camera EXIF and dates
        for path, reason in unreadable:
            stderr.print(f"[yellow]not hashed[/] {escape(shown(path))}: {escape(reason)} (only exact copies of it "
                         "are found)")
        options = dedupe.DedupeOptions(similar, near_threshold, similar_threshold, max_hash_distance, keep=keep,
                                       prefer=tuple(str(p) for p in prefer))
        groups = dedupe.find_duplicates(store, scope, options)
        show_groups(groups, fmt)
        if not groups:
            raise typer.Exit(EXIT_NOTHING)
        if move_to is None and not trash:
            return
        plan = moves.plan_moves(groups, str(move_to) if move_to else None, store, scope)
        show_plan(plan)
        if not yes and not typer.confirm("Go ahead?", default=False, err=True):
            stderr.print("Nothing was moved.")
            raise typer.Exit(EXIT_NOTHING)
        manifest = moves.default_manifest_path(str(move_to) if move_to else None)
        report = moves.apply_moves(plan, store, manifest)
        store.refresh_vector_cache()
        show_move_report(report, fmt)


@app.command("tag")
def tag_command(
    targets: Optional[list[str]] = typer.Argument(
        None, metavar="[DIR]... | add IMAGE TAG... | remove IMAGE TAG...", show_default=False,
        help="Folders to tag (default: the whole index); or add / remove manual tags of one image."),
    vocab: Optional[Path] = typer.Option(None, "--vocab", metavar="FILE", show_default="the built-in 279 tags",
                                         help="Your own vocabulary: one tag per line, or "
                                         "'tag: prompt one | prompt two'."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", metavar="COSINE", show_default="0.28 for ViT-B/32; the model's own otherwise",
        help="Keep a tag when its cosine with the image reaches this."),
    max_tags: int = typer.Option(tags.DEFAULT_MAX_TAGS, "--max-tags", min=1, metavar="N",
                                 help="At most this many tags per image."),
    retag: bool = typer.Option(False, "--retag", help="Tag again images already tagged with these settings."),
    export: Optional[str] = typer.Option(None, "--export", metavar="FORMAT", show_default="none",
                                         help="Also write the tags to sidecar files: xmp."),
    sidecar: sidecars.SidecarStyle = typer.Option(sidecars.SidecarStyle.digikam, "--sidecar",
                                                  help="Sidecar names: digikam (IMG.jpg.xmp, also darktable) or "
                                                       "lightroom (IMG.xmp)."),
    db: Optional[Path] = DbOption,
    library: str | None = LibraryOption,
    model: Optional[str] = ModelOption,
    device: Optional[str] = DeviceOption,
    json_: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Tag indexed images from a vocabulary (zero-shot), or add / remove tags by hand.

    Incremental: only images not yet tagged with this model, vocabulary and threshold are scored.
    Manual tags are never changed by automatic tagging.
    """
    fmt = Format.json if json_ else Format.table
    targets = targets or []
    if export is not None and export.lower() != "xmp":
        raise typer.BadParameter(f"Unknown export format '{export}'; the one supported is xmp.")
    with _errors(), Store.open(db, create=False) as store:
        if targets and targets[0] in ("add", "remove"):
            if len(targets) < 3:
                raise typer.BadParameter(f"Usage: clipsearch tag {targets[0]} IMAGE TAG...")
            change = {"add": targets[2:]} if targets[0] == "add" else {"remove": targets[2:]}
            show_image_tags(targets[1], tags.edit_tags(store, targets[1], **change), fmt)
            return
        if not export or vocab is not None or threshold is not None or retag:  # --export alone: only export
            vocabulary = tags.vocabulary_for(store, vocab)
            options = tags.TagOptions(threshold, max_tags, retag)
            bar = _progress_bar(quiet)
            with bar or nullcontext():
                task = bar.add_task("Tagging", total=store.count()) if bar else None
                report = tags.tag_images(store, _encoder_factory(store, model, device), targets, vocabulary, options,
                                         on_progress=(lambda n: bar.advance(task, n)) if bar else None)
            show_tag_report(report, fmt)
        if export:
            paths = {}
            for scope in [normalise_path(t) for t in targets] or [None]:
                paths.update(store.tags_by_path(scope))
            show_export_report(sidecars.export_sidecars(paths, sidecar), sidecar, fmt)


@app.command("tags")
def tags_command(folder: Optional[Path] = InOption, db: Optional[Path] = DbOption,
                 library: str | None = LibraryOption, json_: bool = JsonOption) -> None:
    """List the tags in the index with how many images have each."""
    with _errors(), Store.open(db, create=False) as store:
        counts = store.tag_counts(normalise_path(folder) if folder else None)
        show_tag_counts(counts, Format.json if json_ else Format.table)
    if not counts:
        raise typer.Exit(EXIT_NOTHING)


@app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Anything but this machine's own "
                             "address lets others on the network see your photos."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the web browser."),
    db: Optional[Path] = DbOption,
    model: Optional[str] = ModelOption,
    device: Optional[str] = DeviceOption,
) -> None:
    """A local web app: search with thumbnails, photo pages with similar photos, duplicate review."""
    from . import server
    from .encoder import Encoder

    with _errors():
        with Store.open(db, create=False) as store:
            model_id = indexer.resolve_model(store, model)
            count, db_path = store.count(), store.path
        stderr.print(f"Loading model {escape(model_id)}...")
        encoder = Encoder.load(model_id, device)
        encoder.embed_texts(["a photo"])  # warm up, so the first search is as fast as the next
    if host not in server.LOCAL_HOSTS:
        stderr.print(f"[yellow]warning:[/] listening on {escape(host)}: anyone who can reach this machine can see "
                     "your photos and move files in the duplicate review. Use --host 127.0.0.1 to keep it private.")
    url = f"http://{'localhost' if host in server.LOCAL_HOSTS else host}:{port}/"
    stderr.print(f"Serving {count} photos from {escape(str(db_path))} at [bold]{url}[/] (Ctrl-C to stop).")
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, [url]).start()
    server.run(server.create_app(db_path, lambda: encoder), host, port)


@app.command("info")
def info_command(db: Optional[Path] = DbOption, library: str | None = LibraryOption,
                 json_: bool = JsonOption) -> None:
    """Where the index is, which model built it and how many images it holds."""
    with _errors(), Store.open(db, create=False) as store:
        recorded = store.model()
        date_range = store.date_range()
        info = {
            "index": str(store.path),
            "model": recorded[0] if recorded else None,
            "dimensions": recorded[1] if recorded else None,
            "images": store.count(),
            "folders": [{"path": folder, "images": store.count(folder)} for folder in store.indexed_folders()],
            "taken_from": date_range[0],
            "taken_to": date_range[1],
            "last_index_run": store.get_meta("last_index_run"),
            "failed_files": store.db["failures"].count,
            "tagged_images": store.db.execute("SELECT count(DISTINCT image_id) FROM tags "
                                              "WHERE source != 'rejected'").fetchone()[0],
            "without_fingerprint": len(store.missing_fingerprints()),
            "schema_version": store.schema_version(),
            "size_bytes": sum(p.stat().st_size for p in store.path.parent.glob(store.path.name + "*")),
        }
        show_info(info, Format.json if json_ else Format.table)


@app.command("config")
def config_command(
    ctx: typer.Context,
    db: Path | None = DbOption,
    library: str | None = LibraryOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
    top: int = TopOption,
    json_: bool = JsonOption,
) -> None:
    """Show the effective settings and where each comes from: flag, environment, config file or default.

    The config file is ~/.config/clipsearch/config.toml ($XDG_CONFIG_HOME, or $CLIPSEARCH_CONFIG); it may
    set db, model, device, top, exclude and prefer, and [library.NAME] tables selected with --library NAME.
    """
    with _errors():
        loaded = config.load()
        from_file = loaded.settings(ctx.meta.get("clipsearch.library"))
        given = {"db": str(db) if db else None, "model": model, "device": device, "top": top}
        envvars = {"db": DB_ENV, "model": MODEL_ENV}
        builtin = {"db": str(default_db_path()), "model": f"the index's model, else {DEFAULT_MODEL}",
                   "device": "the fastest available", "top": 10, "exclude": [], "prefer": []}
        rows = []
        for name in config.SETTINGS:
            # By name: typer may bring its own copy of click's ParameterSource.
            source = getattr(ctx.get_parameter_source(name), "name", None) if name in given else None
            if source == "COMMANDLINE":
                rows.append((name, given[name], "flag"))
            elif source == "ENVIRONMENT":
                rows.append((name, given[name], f"environment {envvars[name]}"))
            elif name in from_file:
                rows.append((name, *from_file[name]))
            else:
                rows.append((name, builtin[name], "built-in default"))
        show_settings(rows, loaded, Format.json if json_ else Format.table)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clipsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit."),
          debug: bool = typer.Option(False, "--debug", help="On an internal error, print the traceback.")) -> None:
    """Search your photo library by meaning with CLIP."""
    global _debug
    _debug = debug


def main() -> None:
    app()
