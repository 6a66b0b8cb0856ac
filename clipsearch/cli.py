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

Each command is one or a few calls on `library.Library`, the Python API, so
what the command line does a script can do the same way.
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
from . import config, dedupe, indexer, sidecars, tags
from .encoder import DEFAULT_MODEL, DEVICES, MODEL_ENV
from .errors import EXIT_BAD_INPUT, EXIT_INDEX, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_NOTHING, ClipsearchError
from .library import Library
from .output import (Format, show_export_report, show_groups, show_hits, show_image_tags, show_index_report,
                     show_info, show_move_report, show_plan, show_settings, show_tag_counts, show_tag_report,
                     show_undo_report, shown, stderr)
from .store import DB_ENV, Store, default_db_path

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
        with Library(db, model, device) as lib, bar or nullcontext():
            report = lib.index(*folders, options=options, progress=_RichProgress(bar))
        show_index_report(report, Format.json if json_ else Format.table)


def _notify(message: str) -> None:
    stderr.print(escape(message))


def _show_query_hits(hits, fmt: Format, preview_rows: int | None) -> None:
    """find and similar: print the hits (as thumbnails with --preview); exit 1 when nothing was found."""
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
    fmt = _format(json_, paths)
    with _errors(), Library(db, model, device, notify=_notify) as lib:
        hits = lib.find(query, top=top, folder=folder, threshold=threshold, tags=tag, after=after, before=before,
                        camera=camera, precision=precision.value)
        _show_query_hits(hits, fmt, preview_size if show_preview else None)


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
    fmt = _format(json_, paths)
    with _errors(), Library(db, model, device, notify=_notify) as lib:
        hits = lib.similar(image, top=top, folder=folder, threshold=threshold, after=after, before=before,
                           camera=camera)
        _show_query_hits(hits, fmt, preview_size if show_preview else None)


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
    with _errors(), Library(db) as lib:
        if undo:
            report = lib.undo_moves(undo)
            show_undo_report(report, fmt)
            if report.skipped:
                raise typer.Exit(EXIT_NOTHING)
            return
        bar = _progress_bar(quiet)
        with bar or nullcontext():
            found = lib.dedupe(folder, similar=similar, near_threshold=near_threshold,
                               similar_threshold=similar_threshold, max_hash_distance=max_hash_distance,
                               keep=keep, prefer=prefer, progress=_RichProgress(bar))
        for path, reason in found.not_hashed:
            stderr.print(f"[yellow]not hashed[/] {escape(shown(path))}: {escape(reason)} (only exact copies of it "
                         "are found)")
        show_groups(found.groups, fmt)
        if not found.groups:
            raise typer.Exit(EXIT_NOTHING)
        if move_to is None and not trash:
            return
        plan = lib.plan_moves(found.groups, move_to, folder)
        show_plan(plan)
        if not yes and not typer.confirm("Go ahead?", default=False, err=True):
            stderr.print("Nothing was moved.")
            raise typer.Exit(EXIT_NOTHING)
        show_move_report(lib.move_duplicates(plan, move_to), fmt)


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
    with _errors(), Library(db, model, device) as lib:
        if targets and targets[0] in ("add", "remove"):
            if len(targets) < 3:
                raise typer.BadParameter(f"Usage: clipsearch tag {targets[0]} IMAGE TAG...")
            edit = lib.add_tags if targets[0] == "add" else lib.remove_tags
            show_image_tags(targets[1], edit(targets[1], *targets[2:]), fmt)
            return
        if not export or vocab is not None or threshold is not None or retag:  # --export alone: only export
            bar = _progress_bar(quiet)
            with bar or nullcontext():
                task = bar.add_task("Tagging", total=lib.count()) if bar else None
                report = lib.tag(*targets, vocab=vocab, threshold=threshold, max_tags=max_tags, retag=retag,
                                     on_progress=(lambda n: bar.advance(task, n)) if bar else None)
            show_tag_report(report, fmt)
        if export:
            show_export_report(lib.export_sidecars(*targets, style=sidecar), sidecar, fmt)


@app.command("tags")
def tags_command(folder: Optional[Path] = InOption, db: Optional[Path] = DbOption,
                 library: str | None = LibraryOption, json_: bool = JsonOption) -> None:
    """List the tags in the index with how many images have each."""
    with _errors(), Library(db) as lib:
        counts = lib.tags(folder)
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
    with _errors(), Library(db) as lib:
        show_info(lib.info(), Format.json if json_ else Format.table)


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
