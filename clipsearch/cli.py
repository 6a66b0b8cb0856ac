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
from . import dedupe, indexer, sidecars, tags
from .encoder import DEVICES, MODEL_ENV
from .errors import EXIT_BAD_INPUT, EXIT_INDEX, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_NOTHING, ClipsearchError
from .output import (Format, show_export_report, show_groups, show_hits, show_image_tags, show_index_report,
                     show_info, show_move_report, show_plan, show_tag_counts, show_tag_report, show_undo_report, shown,
                     stderr)
from .library import Library
from .store import DB_ENV

__all__ = ["app", "main", "EXIT_BAD_INPUT", "EXIT_INDEX", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_NOTHING"]
_debug = False  # set by the global --debug flag

app = typer.Typer(
    help="Search your photo library by meaning with CLIP. Index a folder once, then find images by "
         "text or by example.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

DbOption = typer.Option(None, "--db", envvar=DB_ENV, help="Index file [default: ~/.local/share/clipsearch/index.db].",
                        show_default=False)
ModelOption = typer.Option(None, "--model", "-m", envvar=MODEL_ENV, show_default=False,
                           help="Hugging Face model id or local folder [default: the index's model, "
                                "else laion/CLIP-ViT-B-32-laion2B-s34B-b79K].")
DeviceOption = typer.Option(None, "--device", help=f"One of {', '.join(DEVICES)} [default: the fastest available].",
                            show_default=False)
TopOption = typer.Option(10, "--top", "-t", min=1, help="How many results.")
InOption = typer.Option(None, "--in", help="Only images under this folder.", show_default=False)
ThresholdOption = typer.Option(None, "--threshold", help="Only results scoring at least this (cosine, -1..1). "
                               "Good values depend on the model and the query.", show_default=False)
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
        stderr.print(f"Loading model {escape(model_id)}...")

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
    exclude: list[str] = typer.Option([], "--exclude", "-x", help="Glob of file/folder names or paths to skip, "
                                      "added to the defaults (hidden files, @eaDir, node_modules...). Repeatable."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per model call."),
    workers: int = typer.Option(indexer.DEFAULT_WORKERS, "--workers", min=1, help="Decoding threads."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="Descend into symlinked folders."),
    max_megapixels: float = typer.Option(250.0, "--max-megapixels", help="Skip images larger than this."),
    max_file_size: float = typer.Option(indexer.images.DEFAULT_MAX_FILE_MB, "--max-file-size", min=0.001,
                                        help="Skip files larger than this many MB, unread."),
    db: Optional[Path] = DbOption,
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
        with Library(db, model, device) as library, bar or nullcontext():
            report = library.index(*folders, options=options, progress=_RichProgress(bar))
        show_index_report(report, Format.json if json_ else Format.table)


def _notify(message: str) -> None:
    stderr.print(escape(message))


@app.command("find")
def find_command(
    query: Optional[list[str]] = typer.Argument(None, help='Words, image paths, "+", "-" and "N:" weights, e.g. '
                                                '"a dog" + "on a beach", "2:sunset" - "people", ./cat.jpg + "in snow".',
                                                show_default=False, metavar="QUERY"),
    tag: list[str] = typer.Option([], "--tag", "-T", help="Only images with this tag (repeatable: all of them). "
                                  "Without a query: the images with the tag, best first."),
    top: int = TopOption,
    folder: Optional[Path] = InOption,
    threshold: Optional[float] = ThresholdOption,
    db: Optional[Path] = DbOption,
    model: Optional[str] = ModelOption,
    device: Optional[str] = DeviceOption,
    precision: TextPrecision = typer.Option(TextPrecision.auto, "--precision",
                                  help="Text encoder: auto uses int8 when it agrees with the model (cosine >= "
                                       "0.999), fp32 never quantises."),
    json_: bool = JsonOption,
    paths: bool = PathsOption,
) -> None:
    """Find images matching a description (and/or example images), best first."""
    fmt = _format(json_, paths)
    with _errors(), Library(db, model, device, notify=_notify) as library:
        hits = library.find(query, top=top, folder=folder, threshold=threshold, tags=tag, precision=precision.value)
        show_hits(hits, fmt)
    if not hits:  # nothing found
        raise typer.Exit(EXIT_NOTHING)


@app.command("similar")
def similar_command(
    image: Path = typer.Argument(..., help="An image file, indexed or not.", show_default=False, metavar="IMAGE"),
    top: int = TopOption,
    folder: Optional[Path] = InOption,
    threshold: Optional[float] = ThresholdOption,
    db: Optional[Path] = DbOption,
    model: Optional[str] = ModelOption,
    device: Optional[str] = DeviceOption,
    json_: bool = JsonOption,
    paths: bool = PathsOption,
) -> None:
    """Find the images most like IMAGE (IMAGE itself is not listed)."""
    fmt = _format(json_, paths)
    with _errors(), Library(db, model, device, notify=_notify) as library:
        hits = library.similar(image, top=top, folder=folder, threshold=threshold)
        show_hits(hits, fmt)
    if not hits:  # nothing found
        raise typer.Exit(EXIT_NOTHING)


@app.command("dedupe")
def dedupe_command(
    folder: Optional[Path] = InOption,
    similar: bool = typer.Option(False, "--similar", help="Also group bursts and near-shots of one scene."),
    near_threshold: Optional[float] = typer.Option(
        None, "--near-threshold", show_default=False,
        help="Cosine above which two images are near-identical candidates (the hash decides) "
             "[default: 0.93 for ViT-B/32; the model's own default otherwise]."),
    max_hash_distance: int = typer.Option(56, "--max-hash-distance", min=0, max=256,
                                          help="Near-identical: at most this many of the 256 hash bits differ."),
    similar_threshold: Optional[float] = typer.Option(
        None, "--similar-threshold", show_default=False,
        help="Cosine above which images are similar shots [default: 0.90 for ViT-B/32]."),
    keep: dedupe.KeepPolicy = typer.Option(dedupe.KeepPolicy.best, "--keep",
                                           help="Which file of a group to keep. best: most pixels, then largest "
                                                "file, then oldest, then shortest path."),
    prefer: list[Path] = typer.Option([], "--prefer", help="Keep files in this folder first. Repeatable."),
    move_to: Optional[Path] = typer.Option(None, "--move-to", help="Move the extra files here, keeping their "
                                           "folders (asks first).", show_default=False),
    trash: bool = typer.Option(False, "--trash", help="Send the extra files to the system trash (asks first)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before moving."),
    undo: Optional[Path] = typer.Option(None, "--undo", help="Put back everything a --move-to or --trash run "
                                        "moved, from its manifest.", show_default=False, metavar="MANIFEST"),
    db: Optional[Path] = DbOption,
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
    with _errors(), Library(db) as library:
        if undo:
            report = library.undo_moves(undo)
            show_undo_report(report, fmt)
            if report.skipped:
                raise typer.Exit(EXIT_NOTHING)
            return
        bar = _progress_bar(quiet)
        with bar or nullcontext():
            found = library.dedupe(folder, similar=similar, near_threshold=near_threshold,
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
        plan = library.plan_moves(found.groups, move_to, folder)
        show_plan(plan)
        if not yes and not typer.confirm("Go ahead?", default=False, err=True):
            stderr.print("Nothing was moved.")
            raise typer.Exit(EXIT_NOTHING)
        show_move_report(library.move_duplicates(plan, move_to), fmt)


@app.command("tag")
def tag_command(
    targets: Optional[list[str]] = typer.Argument(
        None, metavar="[DIR]... | add IMAGE TAG... | remove IMAGE TAG...", show_default=False,
        help="Folders to tag (default: the whole index); or add / remove manual tags of one image."),
    vocab: Optional[Path] = typer.Option(None, "--vocab", help="Your own vocabulary: one tag per line, or "
                                         "'tag: prompt one | prompt two' [default: the built-in one].",
                                         show_default=False),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", show_default=False,
        help="Keep a tag when its cosine with the image reaches this [default: 0.28 for ViT-B/32; the model's own "
             "default otherwise]."),
    max_tags: int = typer.Option(tags.DEFAULT_MAX_TAGS, "--max-tags", min=1, help="At most this many tags per image."),
    retag: bool = typer.Option(False, "--retag", help="Tag again images already tagged with these settings."),
    export: Optional[str] = typer.Option(None, "--export", help="Also write the tags to sidecar files: xmp.",
                                         show_default=False),
    sidecar: sidecars.SidecarStyle = typer.Option(sidecars.SidecarStyle.digikam, "--sidecar",
                                                  help="Sidecar names: digikam (IMG.jpg.xmp, also darktable) or "
                                                       "lightroom (IMG.xmp)."),
    db: Optional[Path] = DbOption,
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
    with _errors(), Library(db, model, device) as library:
        if targets and targets[0] in ("add", "remove"):
            if len(targets) < 3:
                raise typer.BadParameter(f"Usage: clipsearch tag {targets[0]} IMAGE TAG...")
            edit = library.add_tags if targets[0] == "add" else library.remove_tags
            show_image_tags(targets[1], edit(targets[1], *targets[2:]), fmt)
            return
        if not export or vocab is not None or threshold is not None or retag:  # --export alone: only export
            bar = _progress_bar(quiet)
            with bar or nullcontext():
                task = bar.add_task("Tagging", total=library.count()) if bar else None
                report = library.tag(*targets, vocab=vocab, threshold=threshold, max_tags=max_tags, retag=retag,
                                     on_progress=(lambda n: bar.advance(task, n)) if bar else None)
            show_tag_report(report, fmt)
        if export:
            show_export_report(library.export_sidecars(*targets, style=sidecar), sidecar, fmt)


@app.command("tags")
def tags_command(folder: Optional[Path] = InOption, db: Optional[Path] = DbOption, json_: bool = JsonOption) -> None:
    """List the tags in the index with how many images have each."""
    with _errors(), Library(db) as library:
        counts = library.tags(folder)
        show_tag_counts(counts, Format.json if json_ else Format.table)
    if not counts:
        raise typer.Exit(EXIT_NOTHING)


@app.command("info")
def info_command(db: Optional[Path] = DbOption, json_: bool = JsonOption) -> None:
    """Where the index is, which model built it and how many images it holds."""
    with _errors(), Library(db) as library:
        show_info(library.info(), Format.json if json_ else Format.table)


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
