"""Walking photo folders: which files are images, which folders are junk, what changed.

Change detection compares (size, mtime) with the index, so an unchanged
library is checked with one `stat` per file and no reads.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..paths import normalise_path
from ..store import StoredFile
from .images import supported_extensions

# Folders that hold no photos of the user's, or copies a photo manager keeps.
DEFAULT_EXCLUDES = (
    "node_modules", "__pycache__", "@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN",
    "System Volume Information", "lost+found", "*.lrdata", "*.photoslibrary",
)


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute, normalised
    size: int
    mtime_ns: int


@dataclass
class Changes:
    """What a scan found compared with the index."""

    to_index: list[FileEntry]  # new or modified files
    unchanged: int
    known_bad: list[tuple[str, str]]  # unchanged files that failed before: (path, reason)
    gone: list[str]  # indexed paths no longer on disk
    seen: int


def _exclusion_matcher(patterns: Iterable[str]):
    """One compiled regex for all globs: a name or path test per entry, not one per pattern."""
    regex = re.compile("|".join(fnmatch.translate(os.path.normcase(p)) for p in patterns))

    def excluded(name: str, path: str) -> bool:
        return bool(regex.match(os.path.normcase(name)) or regex.match(os.path.normcase(path)))

    return excluded


def walk_images(
    roots: Iterable[str],
    exclude: Iterable[str] = (),
    follow_symlinks: bool = False,
    on_error: Callable[[str, str], None] | None = None,
    unlisted: list[str] | None = None,
) -> Iterator[FileEntry]:
    """Image files under `roots`, skipping hidden files, junk folders and `exclude` globs.

    `exclude` adds to DEFAULT_EXCLUDES; a pattern matches a file or folder name
    (`*.tmp`, `Screenshots`) or a whole path (`*/exports/*`). Symlinked folders
    are followed only with `follow_symlinks`, after all real folders, so a
    folder reachable both ways is listed under its real path, and only once.
    A folder that cannot be listed is reported to `on_error` and appended to
    `unlisted`, so its indexed files are not taken for deleted.
    """
    excluded = _exclusion_matcher(tuple(DEFAULT_EXCLUDES) + tuple(exclude))
    extensions = supported_extensions()
    visited: set[tuple[int, int]] = set()
    stack = [normalise_path(root) for root in roots][::-1]
    linked: list[str] = []
    while stack or linked:
        folder = stack.pop() if stack else linked.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in visited:
                continue
            visited.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as found:
                entries = sorted(found, key=lambda e: e.name)
        except OSError as exc:
            if unlisted is not None:
                unlisted.append(folder)
            if on_error:
                on_error(folder, f"cannot list folder: {exc.strerror or exc}; its indexed files are kept")
            continue
        subfolders, linked_subfolders = [], []
        for entry in entries:
            if entry.name.startswith("."):  # hidden files, .git, .Trash, macOS ._ files
                continue
            path = os.path.join(folder, entry.name)
            if excluded(entry.name, path):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(path)
                    continue
                if follow_symlinks and entry.is_symlink() and entry.is_dir():
                    linked_subfolders.append(path)
                    continue
                if os.path.splitext(entry.name)[1].lower() not in extensions:
                    continue
                if not entry.is_file(follow_symlinks=True):
                    if entry.is_symlink() and not os.path.exists(path) and on_error:
                        on_error(path, "broken symlink (its target is missing)")
                    continue
                stat = entry.stat(follow_symlinks=True)
            except OSError as exc:  # broken symlink, vanished file
                if on_error:
                    on_error(path, f"cannot stat: {exc.strerror or exc}")
                continue
            yield FileEntry(path, stat.st_size, stat.st_mtime_ns)
        stack.extend(reversed(subfolders))
        linked.extend(reversed(linked_subfolders))


def compare(
    entries: Iterable[FileEntry],
    indexed: dict[str, StoredFile],
    failed: dict[str, tuple[int, int, str]],
    unlisted: Iterable[str] = (),
) -> Changes:
    """Split scanned files into new/modified, unchanged and previously-broken; list vanished ones.

    Files under an `unlisted` folder (one that could not be read this time: a
    permission, a flaky network mount) are never counted as vanished. `unlisted`
    is read after `entries` is consumed, so the walk may fill it as it goes.
    """
    to_index, known_bad = [], []
    unchanged = seen = 0
    seen_paths = set()
    for entry in entries:
        seen += 1
        seen_paths.add(entry.path)
        stored = indexed.get(entry.path)
        if stored and stored.size == entry.size and stored.mtime_ns == entry.mtime_ns:
            unchanged += 1
            continue
        previous_failure = failed.get(entry.path)
        if previous_failure and previous_failure[:2] == (entry.size, entry.mtime_ns):
            known_bad.append((entry.path, previous_failure[2]))
            continue
        to_index.append(entry)
    prefixes = tuple(folder.rstrip(os.sep) + os.sep for folder in unlisted)
    gone = [path for path in list(indexed) + list(failed)
            if path not in seen_paths and not (prefixes and path.startswith(prefixes))]
    return Changes(to_index, unchanged, known_bad, gone, seen)
