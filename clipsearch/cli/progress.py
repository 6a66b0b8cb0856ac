"""The command line's progress display: a rich bar on stderr over the library's `clipsearch.Progress`.

The library reports progress through callbacks and prints nothing; this is
where a person sees it. It lives outside `cli/__init__.py` because it subclasses the
library's `Progress` (which imports numpy), and the CLI imports it only in the
commands that show a bar, so `clipsearch --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .. import Progress as LibraryProgress
from .output import shown, stderr

if TYPE_CHECKING:
    from .. import Changes


class _RateColumn(ProgressColumn):
    """Images per second, once there is a second of work to measure it on: a rate from the first milliseconds
    is noise ("26986.9 img/s" for two images), and its width pushed an 80-column bar to the last column."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed or (task.finished_speed is None and (task.elapsed or 0.0) < MIN_RATE_SECONDS):
            return Text("")
        return Text(f"{speed:.1f} img/s", style="cyan")


MIN_RATE_SECONDS = 1.0


class RichProgress(LibraryProgress):
    """Draws a job's progress on stderr (no bar when quiet or not a terminal) and prints each skipped file."""

    def __init__(self, bar: Progress | None, quiet: bool = False):
        self.bar = bar
        self.task: TaskID | None = None
        self.quiet = quiet  # --quiet (cron): only what went wrong is printed

    def scanned(self, changes: Changes) -> None:
        if not self.quiet:
            stderr.print(f"Found {changes.seen} images: {len(changes.to_index)} to index, {changes.unchanged} "
                         f"unchanged, {len(changes.gone)} gone.")
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
        elif not self.quiet:
            stderr.print(f"Loading model {escape(model_id)}...")

    def model_loaded(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, description="Indexing")

    def notice(self, message: str) -> None:
        if not self.quiet:
            stderr.print(escape(message))

    def fingerprinting(self, count: int) -> None:
        if not self.quiet:
            stderr.print(f"Computing perceptual hashes of {count} images indexed before dedupe existed (once)...")
        if self.bar is not None:
            self.task = self.bar.add_task("Hashing", total=count)

    def started(self, description: str, total: int) -> None:
        if self.bar is not None:
            self.task = self.bar.add_task(description, total=total)


@contextmanager
def progress_shown(quiet: bool) -> Iterator[RichProgress]:
    """A progress reporter for one command; the bar is drawn only on a terminal and without --quiet."""
    if quiet or not stderr.is_terminal:
        yield RichProgress(None, quiet)
        return
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   _RateColumn(), TimeRemainingColumn(), console=getattr(stderr, "real", stderr), transient=True)
    with bar:
        yield RichProgress(bar)
