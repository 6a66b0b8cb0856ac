"""The `clipsearch` command: arguments, exit codes and output, over the library calls.

Each command parses its arguments, makes one call on `library.Library` (the
Python API, so what the command line does a script can do the same way) and
shows the result (output.py). Nothing here runs SQL or orchestrates a job.

Start-up: at import this module loads only typer and stdlib-only modules (rich when something is printed)
(options.py for option defaults and choices, errors.py for exit codes), so
`clipsearch --help` does not import numpy, SQLite helpers, Pillow or torch.
Each command imports what it needs when it runs.

Exit codes (errors.py; every library error carries its own, mapped in `_errors`):
0 done; 1 nothing to search or nothing found (no index, empty index or folder,
nothing above --threshold); 2 bad input (missing folder or file, unusable
query, model not available, unknown device); 3 the index cannot be used as
asked (built with another model, written by a newer clipsearch, not an index,
read-only, disk full); 4 index busy (another clipsearch holds the writer lock
for longer than $CLIPSEARCH_LOCK_WAIT seconds); 70 internal error, a bug
(the traceback with --debug); 130 interrupted (Ctrl-C); 141 the reader of
stdout went away (`| head -1`: quietly, as `ls` does); 143 terminated (SIGTERM).

Locking: index, dedupe --move-to/--trash/--undo and tagging (runs and manual
edits) take one index-wide writer lock (store.Store.writer); searches never wait.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.exceptions import TyperException

from .. import __version__
from ..errors import (
    EXIT_BAD_INPUT,
    EXIT_INDEX,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NOTHING,
    EXIT_PIPE_CLOSED,
    EXIT_TERMINATED,
    ClipsearchError,
    Terminated,
)
from ..options import (
    DB_ENV,
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_MAX_TAGS,
    DEFAULT_MODEL,
    DEFAULT_WORKERS,
    DEVICES,
    LIBRARY_ENV,
    MODEL_ENV,
    ImagePrecision,
    KeepPolicy,
    SidecarStyle,
    TextPrecision,
)
from .output import Format, escape, shown, stderr

if TYPE_CHECKING:
    from .. import Hit, Library, TextWorker

__all__ = ["EXIT_BAD_INPUT", "EXIT_INDEX", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_NOTHING", "app", "main"]
_debug = False  # set by the global --debug flag


def _plain_help_and_errors() -> None:
    """typer 0.28 writes a required argument as `{FOLDER}` in usage lines; click's `FOLDER...` (and `[DIR]...`
    for an optional one) is what every other command-line tool prints. A bounded number given as text is
    "not a valid whole number", not "not a valid int range"."""
    from typer import core
    from typer._click import types

    types.IntRange.name = "whole number"
    types.FloatRange.name = "number"

    def make_metavar(self: Any, ctx: Any, *, usage: bool = False) -> str:
        var = self.metavar or (self.name or "").upper()
        if self.nargs != 1 and not var.endswith("..."):
            var += "..."
        return f"[{var}]" if usage and not self.required and not var.startswith("[") else var

    core.TyperArgument.make_metavar = make_metavar  # type: ignore[method-assign]


_plain_help_and_errors()

app = typer.Typer(
    help="Search your photo library by meaning with CLIP. Index a folder once, then find images by "
         "text or by example.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


# Defaults that are not plain values are given as text through show_default: typer prints them as
# "[default: ...]" itself (written into the help text, rich markup would swallow the brackets).
def _apply_config(ctx: typer.Context, value: str | None) -> str | None:
    """Eager, so it runs before the other options are read: the config file's settings (and those of
    library `value`) become this command's defaults, below flags and environment variables."""
    from .. import config

    with _errors():
        settings = config.load().settings(value)
    ctx.meta["clipsearch.library"] = value
    names = {param.name for param in ctx.command.params}
    ctx.default_map = {**(ctx.default_map or {}), **{k: v for k, (v, _) in settings.items() if k in names}}
    return value


LibraryOption = typer.Option(None, "--library", "-L", envvar=LIBRARY_ENV, metavar="NAME", is_eager=True,
                             callback=_apply_config, expose_value=False, show_default="none",
                             help="Use the settings of [library.NAME] in the config file (clipsearch config).")
DbOption = typer.Option(None, "--db", envvar=DB_ENV, help="Index file.", metavar="FILE",
                        show_default="~/.local/share/clipsearch/index.db")
ModelOption = typer.Option(None, "--model", "-m", envvar=MODEL_ENV, metavar="MODEL",
                           help="Hugging Face model id or local folder.",
                           show_default=f"the index's model, else {DEFAULT_MODEL}")
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
PlaceOption = typer.Option(None, "--place", metavar="NAME", show_default=False,
                           help="Only photos taken in a town, region or country of this name (any case, accents "
                                "ignored: \"sao paulo\"), from their GPS position.")
CountryOption = typer.Option(None, "--country", metavar="CODE", show_default=False,
                             help="Only photos taken in this country, by ISO code: PT, US, GB (any case).")
NearOption = typer.Option(None, "--near", metavar="LAT,LON", show_default=False,
                          help="Only photos taken within --radius of this position, e.g. 38.72,-9.14.")
RadiusOption = typer.Option(None, "--radius", metavar="DISTANCE", show_default="1km",
                            help="With --near: how far from it, e.g. 500m, 5km, 3mi.")
ExactOption = typer.Option(False, "--exact", help="Rank every image, even in a library large enough for the "
                           "approximate index (slower above 250,000 images; `info` says which one is used).")
JsonOption = typer.Option(False, "--json", help="Print JSON for programs.")
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bar.")
PathsOption = typer.Option(False, "--paths", "-p", help="Print bare paths, one a line, for pipes.")
NullOption = typer.Option(False, "--null", "-0", help="End each piped line with a NUL byte instead of a newline "
                          "(for xargs -0): safe for any file name, even one with a newline in it.")
PreviewOption = typer.Option(False, "--preview", help="Show thumbnails (kitty, WezTerm, Ghostty, iTerm2, sixel).")
PreviewSizeOption = typer.Option(6, "--preview-size", min=1, max=60, metavar="ROWS",
                                 help="Thumbnail height in terminal rows.")
SidecarOption = typer.Option(SidecarStyle.digikam, "--sidecar",
                             help="Sidecar names: digikam (IMG.jpg.xmp, also darktable) or lightroom (IMG.xmp).")


def _format(json_: bool, paths: bool = False) -> Format:
    if json_ and paths:
        raise typer.BadParameter("--json and --paths cannot be used together.")
    return Format.json if json_ else Format.paths if paths else Format.table


@contextmanager
def _errors(saves_work: bool = True) -> Iterator[None]:
    """The one place errors become exit codes: a library error is one clear line and its own code;
    anything else is a bug, reported as an internal error (with the traceback under --debug).
    `saves_work`: an interruption says the work so far is kept (not for a query, which has none)."""
    try:
        yield
    except ClipsearchError as exc:
        stderr.print(f"[red]error:[/] {escape(shown(str(exc)))}")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        what = "Terminated" if isinstance(exc, Terminated) else "Interrupted"
        saved = " Work so far is saved; run the same command again to continue." if saves_work else ""
        stderr.print(f"[yellow]{what}.[/]{saved}")
        raise typer.Exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED) from None
    except BrokenPipeError:  # `clipsearch find cat | head -1`: the reader has all it wanted
        _silence_stdout()
        raise typer.Exit(EXIT_PIPE_CLOSED) from None
    except (typer.Exit, typer.Abort, TyperException):  # usage errors and exits: typer reports them
        raise
    except Exception as exc:  # noqa: BLE001  (anything else is a bug: reported, with exit 70)
        if _debug:
            import traceback

            traceback.print_exc()
        stderr.print(f"[red]internal error:[/] {escape(shown(f'{type(exc).__name__}: {exc}'))}. This is a bug in "
                     f"clipsearch {__version__}; please report it with the command you ran"
                     f"{'' if _debug else ' and the output of the same command with --debug'}.")
        raise typer.Exit(EXIT_INTERNAL) from None


@contextmanager
def _library(db: Path | None, model: str | None = None, device: str | None = None,
             text_worker: TextWorker | None = None, saves_work: bool = True) -> Iterator[Library]:
    """The index as the Python API sees it, with errors mapped to exit codes and notices on stderr."""
    from ..library import Library

    with _errors(saves_work), Library(db, model, device, notify=lambda message: stderr.print(escape(message)),
                            text_worker=text_worker) as library:
        yield library


def _deprecated(old: str, new: str) -> None:
    stderr.print(f"[yellow]deprecated:[/] `{old}` will go in the next version; use `{new}`.", highlight=False)


@app.command("index")
def index_command(
    folders: list[Path] = typer.Argument(..., help="Folders to index (recursively).", show_default=False,
                                         metavar="FOLDER"),
    exclude: list[str] = typer.Option([], "--exclude", "-x", metavar="GLOB", show_default="none",
                                      help="Glob of file/folder names or paths to skip, added to the defaults "
                                           "(hidden files, @eaDir, node_modules...). Repeatable."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, metavar="N", help="Images per model call."),
    workers: int = typer.Option(DEFAULT_WORKERS, "--workers", min=1, metavar="N", help="Decoding threads."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="Descend into symlinked folders."),
    max_megapixels: float = typer.Option(DEFAULT_MAX_MEGAPIXELS, "--max-megapixels", metavar="MP",
                                         help="Skip images larger than this."),
    max_file_size: float = typer.Option(DEFAULT_MAX_FILE_MB, "--max-file-size", min=0.001,
                                        metavar="MB", help="Skip files larger than this many MB, unread."),
    db: Path | None = DbOption,
    library: str | None = LibraryOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
    precision: ImagePrecision = typer.Option(ImagePrecision.auto, "--precision",
                                             help="Image encoder on a CPU: auto takes int8 where it agrees with "
                                                  "the model (cosine >= 0.999), else bf16 on processors with bf16 "
                                                  "hardware, else fp32. GPUs use half precision unless fp32."),
    ray: str | None = typer.Option(None, "--ray", metavar="ADDRESS", show_default=False,
                                   help="Decode and embed on a Ray cluster (pip install 'clipsearch[ray]'): auto (the "
                                        "cluster this machine belongs to), local (start one here) or ray://HOST:PORT. "
                                        "Workers need the photos at the same paths."),
    ocr: bool = typer.Option(False, "--ocr", help="Then read the text in the photos not read yet (as `clipsearch "
                             "ocr`), so find --text finds it. Slow on a CPU the first time; once per photo."),
    json_: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Add new and changed images under FOLDERS to the index, and drop deleted ones.

    Unchanged files are skipped without reading them; renamed and copied files reuse their vector.
    Safe to interrupt: the next run continues where this one stopped.
    """
    from .. import IndexOptions
    from .output import show_index_report
    from .progress import progress_shown

    options = IndexOptions(batch_size, workers, tuple(exclude), follow_symlinks, max_megapixels, max_file_size,
                           precision, ray=ray)
    with _library(db, model, device) as lib:
        with progress_shown(quiet) as progress:
            report = lib.index(*folders, options=options, progress=progress)
            text = lib.ocr(*folders, progress=progress, optional=True) if ocr else None
        show_index_report(report, _format(json_), text)


def _show_query_hits(hits: Sequence[Hit], fmt: Format, preview_rows: int | None, null: bool = False) -> None:
    """find and similar: print the hits (as thumbnails with --preview); exit 1 when nothing was found."""
    from .output import show_hits

    if preview_rows and fmt is Format.table and hits:
        _show_previews(hits, preview_rows)
    else:
        show_hits(hits, fmt, null)
    if not hits:
        raise typer.Exit(EXIT_NOTHING)


def _show_previews(hits: Sequence[Hit], rows: int) -> None:
    import sys

    from . import preview
    from .output import show_hits

    protocol = preview.detect() if sys.stdout.isatty() else preview.Protocol.none
    if protocol is preview.Protocol.none:
        stderr.print(escape(preview.NOTICE), highlight=False)
        show_hits(hits, Format.table)
        return
    preview.show_previews(hits, protocol, rows, sys.stdout.write, stderr.width)
    sys.stdout.flush()


@app.command("find")
def find_command(
    query: list[str] | None = typer.Argument(None, help='Words, image paths, "+", "-" and "N:" weights, e.g. '
                                             '"a dog" + "on a beach", "2:sunset" - "people", ./cat.jpg + "in snow".',
                                             show_default=False, metavar="QUERY"),
    tag: list[str] = typer.Option([], "--tag", "-T", metavar="TAG", show_default="none",
                                  help="Only images with this tag (repeatable: all of them). "
                                  "Without a query: the images with the tag, best first."),
    top: int = TopOption,
    folder: Path | None = InOption,
    threshold: float | None = ThresholdOption,
    after: str | None = AfterOption,
    before: str | None = BeforeOption,
    camera: str | None = CameraOption,
    place: str | None = PlaceOption,
    country: str | None = CountryOption,
    near: str | None = NearOption,
    radius: str | None = RadiusOption,
    text: str | None = typer.Option(None, "--text", metavar="WORDS", show_default=False,
                                    help='Only photos whose text (read by `clipsearch ocr`) has all these words; '
                                         '"a phrase" in double quotes, prefix*, OR, NOT. Without a query: best '
                                         "text match first."),
    exact: bool = ExactOption,
    db: Path | None = DbOption,
    library: str | None = LibraryOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
    precision: TextPrecision = typer.Option(TextPrecision.auto, "--precision",
                                            help="Text encoder: auto uses int8 when it agrees with the model "
                                                 "(cosine >= 0.999), fp32 never quantises."),
    json_: bool = JsonOption,
    paths: bool = PathsOption,
    null: bool = NullOption,
    show_preview: bool = PreviewOption,
    preview_size: int = PreviewSizeOption,
) -> None:
    """Find images matching a description (and/or example images), best first."""
    _quick_exit()
    fmt = _format(json_, paths)
    with _library(db, model, device, text_worker=_text_worker, saves_work=False) as lib:
        hits = lib.find(query, top=top, folder=folder, threshold=threshold, tags=tag, after=after, before=before,
                        camera=camera, precision=precision.value, place=place, country=country, near=near,
                        radius=radius, text=text, exact=exact)
        _show_query_hits(hits, fmt, preview_size if show_preview else None, null)


@app.command("similar")
def similar_command(
    image: Path = typer.Argument(..., help="An image file, indexed or not.", show_default=False, metavar="IMAGE"),
    top: int = TopOption,
    folder: Path | None = InOption,
    threshold: float | None = ThresholdOption,
    after: str | None = AfterOption,
    before: str | None = BeforeOption,
    camera: str | None = CameraOption,
    place: str | None = PlaceOption,
    country: str | None = CountryOption,
    near: str | None = NearOption,
    radius: str | None = RadiusOption,
    exact: bool = ExactOption,
    db: Path | None = DbOption,
    library: str | None = LibraryOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
    json_: bool = JsonOption,
    paths: bool = PathsOption,
    null: bool = NullOption,
    show_preview: bool = PreviewOption,
    preview_size: int = PreviewSizeOption,
) -> None:
    """Find the images most like IMAGE (IMAGE itself is not listed)."""
    _quick_exit()
    fmt = _format(json_, paths)
    with _library(db, model, device, saves_work=False) as lib:
        hits = lib.similar(image, top=top, folder=folder, threshold=threshold, after=after, before=before,
                           camera=camera, place=place, country=country, near=near, radius=radius, exact=exact)
        _show_query_hits(hits, fmt, preview_size if show_preview else None, null)


@app.command("dedupe")
def dedupe_command(
    folder: Path | None = InOption,
    similar: bool = typer.Option(False, "--similar", help="Also group bursts and near-shots of one scene."),
    near_threshold: float | None = typer.Option(
        None, "--near-threshold", metavar="COSINE", show_default="0.93 for ViT-B/32; the model's own otherwise",
        help="Cosine above which two images are near-identical candidates (the hash decides)."),
    max_hash_distance: int = typer.Option(56, "--max-hash-distance", min=0, max=256, metavar="BITS",
                                          help="Near-identical: at most this many of the 256 hash bits differ."),
    similar_threshold: float | None = typer.Option(
        None, "--similar-threshold", metavar="COSINE", show_default="0.90 for ViT-B/32; the model's own otherwise",
        help="Cosine above which images are similar shots."),
    keep: KeepPolicy = typer.Option(KeepPolicy.best, "--keep",
                                    help="Which file of a group to keep. best: the one with camera EXIF, "
                                         "then the original format over a lossless re-encode (PNG, TIFF), "
                                         "then most pixels, then taken first, then shortest path."),
    prefer: list[Path] = typer.Option([], "--prefer", metavar="FOLDER", show_default="none",
                                      help="Keep files in this folder first. Repeatable."),
    move_to: Path | None = typer.Option(None, "--move-to", metavar="FOLDER", help="Move the extra files here, "
                                        "keeping their folders (asks first).", show_default="report only"),
    trash: bool = typer.Option(False, "--trash", help="Send the extra files to the system trash (asks first)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before moving."),
    undo: Path | None = typer.Option(None, "--undo", help="Put back everything a --move-to or --trash run "
                                     "moved, from its manifest.", show_default=False, metavar="MANIFEST"),
    db: Path | None = DbOption,
    library: str | None = LibraryOption,
    json_: bool = JsonOption,
    paths: bool = typer.Option(False, "--paths", "-p", help="Print only the files that could go, one a line."),
    null: bool = NullOption,
    quiet: bool = QuietOption,
) -> None:
    """Find exact copies and near-identical versions of photos (and, with --similar, bursts).

    Only reports, unless --move-to or --trash is given; even then nothing is deleted, and
    --undo MANIFEST puts everything back.
    """
    from .output import show_groups, show_not_hashed
    from .progress import progress_shown

    fmt = _format(json_, paths)
    if move_to and trash:
        raise typer.BadParameter("Use --move-to or --trash, not both.")
    with _library(db) as lib:
        if undo:
            return _undo_moves(lib, undo, fmt)
        if move_to is not None:
            lib.check_destination(move_to, folder)
        with progress_shown(quiet) as progress:
            found = lib.dedupe(folder, similar=similar, near_threshold=near_threshold,
                               similar_threshold=similar_threshold, max_hash_distance=max_hash_distance,
                               keep=keep, prefer=prefer, progress=progress)
        show_not_hashed(found.not_hashed)
        show_groups(found.groups, fmt, null)
        if not found.groups:
            raise typer.Exit(EXIT_NOTHING)
        if move_to is not None or trash:
            _move_duplicates(lib, found.groups, move_to, folder, yes, fmt)


def _move_duplicates(lib: Library, groups: list[Any], to: Path | None, folder: Path | None, yes: bool,
                     fmt: Format) -> None:
    """Show the plan, ask (unless --yes), then move; nothing moves without a yes."""
    from .output import show_move_report, show_plan

    plan = lib.plan_moves(groups, to, folder)
    show_plan(plan)
    if not yes and not typer.confirm("Go ahead?", default=False, err=True):
        stderr.print("Nothing was moved.")
        raise typer.Exit(EXIT_NOTHING)
    show_move_report(lib.move_duplicates(plan, to), fmt)


def _undo_moves(lib: Library, manifest: Path, fmt: Format) -> None:
    from .output import show_undo_report

    report = lib.undo_moves(manifest)
    show_undo_report(report, fmt)
    if report.skipped or not report.restored:  # something stayed where it was, or it was all undone before
        raise typer.Exit(EXIT_NOTHING)


def _old_tag_edit(targets: list[str]) -> str | None:
    """"add" or "remove" when `tag add IMAGE TAG...` (the old spelling) is meant: a verb, an image that is
    not a folder, and at least one tag. Otherwise every target is a folder, so a folder named `add` can be
    tagged with `clipsearch tag add`."""
    if len(targets) >= 3 and targets[0] in ("add", "remove") and not Path(targets[1]).is_dir():
        return targets[0]
    return None


@app.command("tag")
def tag_command(
    folders: list[str] | None = typer.Argument(None, metavar="[DIR]...", show_default=False,
                                               help="Folders to tag (default: the whole index)."),
    vocab: Path | None = typer.Option(None, "--vocab", metavar="FILE", show_default="the built-in 279 tags",
                                      help="Your own vocabulary: one tag per line, or "
                                      "'tag: prompt one | prompt two'."),
    threshold: float | None = typer.Option(
        None, "--threshold", metavar="COSINE", show_default="0.28 for ViT-B/32; the model's own otherwise",
        help="Keep a tag when its cosine with the image reaches this."),
    max_tags: int = typer.Option(DEFAULT_MAX_TAGS, "--max-tags", min=1, metavar="N",
                                 help="At most this many tags per image."),
    retag: bool = typer.Option(False, "--retag", help="Tag again images already tagged with these settings."),
    export: str | None = typer.Option(None, "--export", metavar="FORMAT", show_default="none",
                                      help="Deprecated, use `clipsearch tags export`: also write the tags to "
                                           "sidecar files: xmp."),
    sidecar: SidecarStyle = SidecarOption,
    db: Path | None = DbOption,
    library: str | None = LibraryOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
    json_: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Tag indexed images from a vocabulary (zero-shot); edit tags by hand with `clipsearch tags`.

    Incremental: only images not yet tagged with this model, vocabulary and threshold are scored.
    Manual tags are never changed by automatic tagging.
    """
    from .output import show_export_report, show_tag_report
    from .progress import progress_shown

    targets, fmt = folders or [], _format(json_)
    if edit := _old_tag_edit(targets):
        _deprecated(f"clipsearch tag {edit} IMAGE TAG...", f"clipsearch tags {edit} IMAGE TAG...")
        return _edit_tags(edit, Path(targets[1]), targets[2:], db, json_)
    if export is not None:
        _deprecated("clipsearch tag --export xmp", "clipsearch tags export")
        if export.lower() != "xmp":
            raise typer.BadParameter(f"Unknown export format '{export}'; the one supported is xmp.")
    with _library(db, model, device) as lib:
        if not export or vocab is not None or threshold is not None or retag:  # --export alone: only export
            with progress_shown(quiet) as progress:
                report = lib.tag(*targets, vocab=vocab, threshold=threshold, max_tags=max_tags, retag=retag,
                                 progress=progress)
            show_tag_report(report, fmt)
        if export:
            show_export_report(lib.export_sidecars(*targets, style=sidecar), sidecar, fmt)


tags_app = typer.Typer(help="List the tags, add and remove them by hand, export them to XMP sidecars.",
                       rich_markup_mode=None)
app.add_typer(tags_app, name="tags")


@tags_app.callback(invoke_without_command=True)
def tags_group(ctx: typer.Context, folder: Path | None = InOption, db: Path | None = DbOption,
               library: str | None = LibraryOption, json_: bool = JsonOption) -> None:
    """List the tags (alone, as `tags list`), add and remove them by hand, export them to XMP sidecars."""
    if ctx.invoked_subcommand is None:
        return _list_tags(folder, db, json_)
    # Options before the subcommand would be silently ignored by it: say where they go instead.
    given = [p.opts[0] for p in ctx.command.params
             if getattr(ctx.get_parameter_source(p.name or ""), "name", None) == "COMMANDLINE"]
    if given:
        raise typer.BadParameter(f"Put {', '.join(given)} after the subcommand: clipsearch tags "
                                 f"{ctx.invoked_subcommand} ... {' '.join(given)}")


@tags_app.command("list")
def tags_list_command(folder: Path | None = InOption, db: Path | None = DbOption,
                      library: str | None = LibraryOption, json_: bool = JsonOption) -> None:
    """List the tags in the index with how many images have each."""
    _list_tags(folder, db, json_)


def _list_tags(folder: Path | None, db: Path | None, json_: bool) -> None:
    from .output import show_tag_counts

    with _library(db) as lib:
        counts = lib.tags(folder)
        show_tag_counts(counts, _format(json_))
    if not counts:
        raise typer.Exit(EXIT_NOTHING)


ImageArgument = typer.Argument(..., metavar="IMAGE", show_default=False, help="An indexed image.")
TagsArgument = typer.Argument(..., metavar="TAG...", show_default=False, help="Tags (quote one with spaces).")


@tags_app.command("add")
def tags_add_command(image: Path = ImageArgument, names: list[str] = TagsArgument, db: Path | None = DbOption,
                     library: str | None = LibraryOption, json_: bool = JsonOption) -> None:
    """Give one indexed image tags by hand; automatic tagging never changes them."""
    _edit_tags("add", image, names, db, json_)


@tags_app.command("remove")
def tags_remove_command(image: Path = ImageArgument, names: list[str] = TagsArgument, db: Path | None = DbOption,
                        library: str | None = LibraryOption, json_: bool = JsonOption) -> None:
    """Take tags off one image; a removed automatic tag does not come back on the next run."""
    _edit_tags("remove", image, names, db, json_)


def _edit_tags(verb: str, image: Path, names: list[str], db: Path | None, json_: bool) -> None:
    from .output import show_image_tags

    with _library(db) as lib:
        edit = lib.add_tags if verb == "add" else lib.remove_tags
        show_image_tags(str(image), edit(image, *names), _format(json_))


@tags_app.command("export")
def tags_export_command(
    folders: list[Path] | None = typer.Argument(None, metavar="[DIR]...", show_default=False,
                                                help="Only images under these folders (default: the whole index)."),
    sidecar: SidecarStyle = SidecarOption,
    db: Path | None = DbOption,
    library: str | None = LibraryOption,
    json_: bool = JsonOption,
) -> None:
    """Write the stored tags into XMP sidecars beside the photos (digiKam, darktable, Lightroom read them).

    Existing sidecars are merged: their other keywords and fields stay.
    """
    from .output import show_export_report

    with _library(db) as lib:
        show_export_report(lib.export_sidecars(*(folders or []), style=sidecar), sidecar, _format(json_))


@app.command("ocr")
def ocr_command(
    folders: list[str] | None = typer.Argument(None, metavar="[DIR]...", show_default=False,
                                               help="Folders to read (default: the whole index)."),
    workers: int | None = typer.Option(None, "--workers", min=1, metavar="N", show_default="the cores, at most 4",
                                       help="Photos read at once (one core each)."),
    db: Path | None = DbOption,
    library: str | None = LibraryOption,
    json_: bool = JsonOption,
    quiet: bool = QuietOption,
) -> None:
    """Read the text in indexed photos (signs, receipts, screenshots), so `find --text` finds them.

    Runs on the CPU with the PP-OCR models that come with clipsearch; nothing is downloaded. Incremental: each
    photo is read once, and a renamed or copied one keeps its text. Safe to interrupt: run it again to go on.
    """
    from .output import show_ocr_report
    from .progress import progress_shown

    with _library(db) as lib:
        with progress_shown(quiet) as progress:
            report = lib.ocr(*(folders or []), workers=workers, progress=progress)
        show_ocr_report(report, _format(json_))


@app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", metavar="HOST",
                             help="Address to listen on. Anything but this machine's own address lets others on "
                                  "the network see your photos."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, metavar="PORT", help="Port to listen on."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the web browser."),
    allow_host: list[str] = typer.Option([], "--allow-host", metavar="NAME", help="Also answer to this host name "
                                         "(besides localhost, 127.0.0.1, [::1] and --host); repeat for more."),
    max_upload_mb: int = typer.Option(50, "--max-upload-mb", min=1, metavar="MB", help="Largest image to upload."),
    db: Path | None = DbOption,
    library: str | None = LibraryOption,
    model: str | None = ModelOption,
    device: str | None = DeviceOption,
) -> None:
    """A local web app: search with thumbnails, photo pages with similar photos, duplicate review."""
    from ..web import app as server  # the other front end, which goes through the Library too
    from .output import show_serving

    with _errors():
        _check_port_free(host, port)  # before seconds of model loading, not after
    with _library(db, model, device) as lib:
        lib.warm_up()  # the text model find uses: the ONNX text tower when it is exported, not torch
        web_app = server.create_app(lib.for_thread())  # a Library of its own, sharing the loaded model
        count, db_path = lib.count(), lib.store.path
    url = show_serving(host, port, count, db_path, local=host in server.LOCAL_HOSTS)
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, [url]).start()
    server.run(web_app, host, port, allow_host, max_upload_mb)


def _check_port_free(host: str, port: int) -> None:
    """BadInputError (exit 2) when `host:port` cannot be listened on: in use, or not an address of this machine."""
    import errno
    import socket

    from ..errors import BadInputError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BadInputError(f"Cannot listen on {host}: {exc.strerror}. Give an address of this machine with "
                            "--host.") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BadInputError(f"Port {port} on {host} is in use (another server, or clipsearch serve "
                                    f"already running?). Choose another with --port, e.g. --port {port + 1}.") from None
            raise BadInputError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from None


@app.command("info")
def info_command(db: Path | None = DbOption, library: str | None = LibraryOption,
                 json_: bool = JsonOption) -> None:
    """Where the index is, which model built it and how many images it holds."""
    from .output import show_info

    with _library(db) as lib:
        show_info(lib.info(), _format(json_))


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
    from .. import config
    from .output import show_settings

    values = {"db": str(db) if db else None, "model": model, "device": device, "top": top}
    # By name: typer may bring its own copy of click's ParameterSource.
    given = {name: (value, getattr(ctx.get_parameter_source(name), "name", None)) for name, value in values.items()}
    with _errors():
        rows, loaded = config.explain(given, ctx.meta.get("clipsearch.library"))
        show_settings(rows, loaded, _format(json_))


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush into the closed pipe does not complain."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout already closed or replaced: nothing left to flush
        pass


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


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


_leave_quickly = False  # set by the query commands: see _leave_now


def _quick_exit() -> None:
    """Mark this run as one that may end without the interpreter's teardown (a query: it wrote nothing)."""
    global _leave_quickly
    _leave_quickly = True


def _leave_now(code: object) -> None:
    """End the process at once, output flushed: a query's answer is out and its index closed, and tearing down
    numpy, faiss and onnxruntime's modules would add ~0.1 s (a fifth of a `find` at a million images)."""
    import os
    import sys

    if _text_worker is not None:
        _text_worker.stop(wait=True)
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        code = EXIT_PIPE_CLOSED
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    with suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)


_text_worker: TextWorker | None = None  # find's, started by main


def _starts_text_worker(args: list[str]) -> bool:
    """Whether this command line is a `find` that may embed a text (then main forks the text worker)."""
    words = [arg for arg in args if not arg.startswith("-")]
    return bool(words) and words[0] == "find" and not {"--help", "-h"} & set(args)


def main() -> None:
    """The console script: SIGTERM unwinds like Ctrl-C (exit 143, work saved); a closed stdout exits quietly.

    For `find`, the text worker is forked first, before numpy is imported (models/text_worker.py)."""
    import os
    import signal
    import sys

    global _text_worker
    if _starts_text_worker(sys.argv[1:]):
        from .. import TextWorker

        # A query multiplies one vector (faiss ranks, not OpenBLAS): OpenBLAS's own thread would only busy-wait
        # for work (measured: 60 ms of CPU in the 0.3 s after numpy loads) on the core the text worker needs.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        _text_worker = TextWorker.start()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except BrokenPipeError:  # a write outside any command (typer's own output), or at exit
        _silence_stdout()
        raise SystemExit(EXIT_PIPE_CLOSED) from None
    except SystemExit as exc:
        # click answers a closed stdout outside any command (`clipsearch --help | head -0`) with exit 1, after
        # wrapping stdout to silence it: that is a closed pipe too, so 141 as for every command.
        if exc.code == 1 and "PacifyFlushWrapper" in type(sys.stdout).__name__:
            raise SystemExit(EXIT_PIPE_CLOSED) from None
        if _leave_quickly:
            _leave_now(exc.code)
        raise
    finally:  # a `find` that ended before it could ask the worker (a wrong option): not left for init to reap
        if _text_worker is not None:
            _text_worker.stop(wait=True)
