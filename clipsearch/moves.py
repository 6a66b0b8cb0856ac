"""Acting on duplicate groups: move or trash the extra copies, reversibly.

Nothing is ever deleted: files go to a folder of the user's (keeping their
relative layout) or to the system trash. Before each move, a line is appended
to a manifest (JSON Lines, each line fsynced) recording where the file goes, its
SHA-256, its index row and its tags, so `undo` can put every file, row and tag back even after
a crash half way. A file is moved only if its bytes still match the index and
the copy being kept still exists, checked under the index's writer lock.

Across filesystems a file is copied to a hidden partial name, fsynced, then
renamed into place, so it is never half there; undo moves back the same way
and can simply be run again after an interruption. Undo reverses only what
this tool did: the file must be in the manifest's folder with the recorded
hash, and the recorded row must be a sane row of that file.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from .dedupe import Group
from .errors import BadInputError
from .paths import normalise_path
from .store import Store, default_db_path
from .tagstore import TagStore

MANIFEST_FORMAT = 1


class MoveError(BadInputError):
    """The plan cannot be carried out as asked; the message says why."""


@dataclass
class Move:
    source: str
    target: str | None  # None: to the system trash
    keep: str  # the file of the group that stays, which must still exist
    tier: str


@dataclass
class MoveReport:
    manifest: str
    moved: list[Move] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


@dataclass
class UndoReport:
    restored: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def plan_moves(groups: list[Group], destination: str | None, store: Store, root: str | None = None) -> list[Move]:
    """Every non-kept member of every group, with where it goes (None: the trash).

    Under `destination`, files keep their path relative to `root` (the --in
    folder, else the folder all the moved and kept files share).
    """
    moves = [(member.path, group.keep.path, group.tier) for group in groups for member in group.others]
    if destination is None:
        return [Move(source, None, keep, tier) for source, keep, tier in moves]
    destination = normalise_path(destination)
    if not moves:
        return []
    if root is None:
        root = os.path.commonpath([os.path.dirname(p) for group in groups for p in (m.path for m in group.members)])
    root = normalise_path(root)
    real_destination, real_root = os.path.realpath(destination), os.path.realpath(root)  # see through symlinks
    if any(d == r or d.startswith(r.rstrip(os.sep) + os.sep) for d in (destination, real_destination)
           for r in (root, real_root)) or store.count(destination) or store.count(real_destination):
        raise MoveError(f"{destination} is inside the library being deduplicated; the next index run would add the "
                        f"moved files back. Choose a folder outside {root}.")
    outside = [source for source, _, _ in moves if os.path.relpath(source, root).startswith(os.pardir + os.sep)]
    if outside:  # its relative path would climb out of the review folder
        raise MoveError(f"{outside[0]} is not under {root}, so it has no place under {destination}. "
                        "Nothing was moved; choose a folder that holds every file (--in).")
    return [Move(source, os.path.join(destination, os.path.relpath(source, root)), keep, tier)
            for source, keep, tier in moves]


def default_manifest_path(destination: str | None) -> Path:
    """Beside the moved files for --move-to; in clipsearch's data folder for --trash."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(destination) if destination else default_db_path().parent / "dedupe"
    return Path(_free_name(str(folder / f"clipsearch-dedupe-{stamp}.jsonl")))  # two runs in one second: (2)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _free_name(target: str) -> str:
    """`target`, or `name (2).ext`, ... if something is already there: never overwrite."""
    stem, extension = os.path.splitext(target)
    candidate, number = target, 1
    while os.path.lexists(candidate):
        number += 1
        candidate = f"{stem} ({number}){extension}"
    return candidate


def _encode_row(row: dict) -> dict:
    return {k: ({"base64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v) for k, v in row.items()}


def _decode_row(row: dict) -> dict:
    return {k: (base64.b64decode(v["base64"]) if isinstance(v, dict) else v) for k, v in row.items()}


def _append(handle, record: dict) -> None:
    handle.write(json.dumps(record) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass
    finally:
        os.close(fd)


def move_file(source: str, target: str) -> None:
    """Move a file so that it is never half there: a rename, or across filesystems copy to a hidden
    partial name, fsync, rename into place, and only then remove the source."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.rename(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    partial = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.clipsearch-partial")
    try:
        with open(source, "rb") as reader, open(partial, "wb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)
            writer.flush()
            os.fsync(writer.fileno())
        shutil.copystat(source, partial)
        os.rename(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    _fsync_folder(os.path.dirname(target))
    os.unlink(source)


def apply_moves(moves: list[Move], store: Store, manifest: str | os.PathLike,
                on_progress: Callable[[Move], None] | None = None) -> MoveReport:
    """Carry out `moves`, recording each in the manifest first; moved files leave the index."""
    trash = bool(moves) and moves[0].target is None
    path = Path(manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = MoveReport(str(path))
    if trash:
        from send2trash import send2trash
    with store.writer(), open(path, "x", encoding="utf-8") as handle:
        _append(handle, {"clipsearch_dedupe_manifest": MANIFEST_FORMAT, "index": str(store.path),
                         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "action": "trash" if trash else "move"})
        for move in moves:
            rows = store.rows_for_paths([move.source])
            reason = _unsafe(move, rows)
            if reason:
                report.skipped.append((move.source, reason))
                continue
            if store.id_for_path(move.keep) is None:
                reason = (f"the copy to keep ({move.keep}) is no longer in the index; run clipsearch index, "
                          "then dedupe again")
                report.skipped.append((move.source, reason))
                continue
            target = None if trash or move.target is None else _free_name(move.target)
            try:
                _append(handle, {"source": move.source, "target": target, "keep": move.keep, "tier": move.tier,
                                 "sha256": rows[0]["hash"], "row": _encode_row(rows[0]),
                                 "tags": TagStore(store).tag_rows(rows[0]["id"])})
            except OSError as exc:
                raise MoveError(f"Cannot write the manifest {path} ({exc.strerror or exc}); stopped before moving "
                                f"{move.source}. {len(report.moved)} files were moved; to put them back: "
                                f"clipsearch dedupe --undo {path}") from None
            try:
                if trash:
                    send2trash(move.source)
                else:
                    move_file(move.source, target)  # type: ignore[arg-type]  # set unless trash
            except OSError as exc:
                report.skipped.append((move.source, f"could not move: {exc.strerror or exc}"))
                continue
            store.remove([move.source])
            report.moved.append(Move(move.source, target, move.keep, move.tier))
            if on_progress:
                on_progress(move)
    return report


def _unsafe(move: Move, rows: list[dict]) -> str | None:
    """Why moving this file now could lose something, or None when it is safe."""
    if not rows:
        return "no longer in the index (run clipsearch index, then dedupe again)"
    if not os.path.exists(move.keep):
        return f"the copy to keep is gone ({move.keep}); run clipsearch index, then dedupe again"
    try:
        if _sha256(move.source) != rows[0]["hash"]:
            return "changed since it was indexed (run clipsearch index, then dedupe again)"
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    return None


def read_manifest(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """Header and records. A cut-off last line (a full disk, a crash while writing it) is dropped: its
    move never started, because each move happens only after its line is on disk."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = handle.read().split("\n")
        lines = []
        for number, line in enumerate(raw):
            if not line.strip():
                continue
            try:
                lines.append(json.loads(line))
            except ValueError as exc:
                if number == len(raw) - 1:  # the last line, without its newline: cut off
                    break
                raise MoveError(f"Cannot read the manifest {path}, line {number + 1}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MoveError(f"Cannot read the manifest {path}: {exc}") from None
    if not lines or lines[0].get("clipsearch_dedupe_manifest") != MANIFEST_FORMAT:
        raise MoveError(f"{path} is not a clipsearch dedupe manifest.")
    return lines[0], lines[1:]


def undo_moves(manifest: str | os.PathLike, store: Store) -> UndoReport:
    """Put every file the manifest records back where it was, with its index row; safe to repeat."""
    header, records = read_manifest(manifest)
    report = UndoReport()
    with store.writer():
        for record in reversed(records):
            _undo_one(record, header["action"], os.path.realpath(os.path.dirname(os.path.abspath(manifest))),
                      store, report)
    return report


def _not_ours(record: dict, action: str, folder: str, store: Store) -> str | None:
    """Why this manifest record is not a move this tool made (a hand-made or damaged manifest), or None."""
    try:
        source, sha256, row = record["source"], record["sha256"], _decode_row(record["row"])
    except (KeyError, TypeError, ValueError) as exc:
        return f"the manifest's record is incomplete ({exc}); not touched"
    recorded = store.model()
    if not isinstance(source, str) or source != normalise_path(source):
        return "the manifest's source is not an absolute path; not touched"
    if row.get("path") != source or row.get("hash") != sha256 or not isinstance(row.get("vector"), bytes) \
            or recorded is None or len(row["vector"]) != recorded[1] * 2:
        return "the manifest's index row does not belong to this file or this index; not touched"
    if action == "move":
        target = record.get("target")
        if not isinstance(target, str) or not os.path.realpath(target).startswith(folder.rstrip(os.sep) + os.sep):
            return f"the manifest says it was moved to {target}, outside the manifest's folder {folder}; not touched"
    return None


def _undo_one(record: dict, action: str, folder: str, store: Store, report: UndoReport) -> None:
    """Put back one moved file and its row; safe to repeat after an interrupted undo."""
    source = record.get("source", "?")
    reason = _not_ours(record, action, folder, store)
    if reason:
        report.skipped.append((source, reason))
        return
    if os.path.lexists(source):
        if os.path.isfile(source) and _sha256(source) == record["sha256"]:
            TagStore(store).restore([_decode_row(record["row"])], [record.get("tags", [])])  # an earlier undo
            report.restored.append(source)
        else:
            report.skipped.append((source, "another file is there now; left both alone"))
        return
    current, trash_info = _where_is(record, action)
    if current is None:
        report.skipped.append((source, "not found where it was moved to" if action == "move" else
                               "not found in the trash (emptied?); restore it by hand if it is there"))
        return
    if _sha256(current) != record["sha256"]:
        report.skipped.append((source, f"{current} has changed since it was moved; left it there"))
        return
    move_file(current, source)
    if trash_info:
        Path(trash_info).unlink(missing_ok=True)
    TagStore(store).restore([_decode_row(record["row"])], [record.get("tags", [])])
    report.restored.append(source)


def _where_is(record: dict, action: str) -> tuple[str | None, str | None]:
    """Where a moved or trashed file is now, and its trash info file if any."""
    if action == "move":
        return (record["target"], None) if os.path.isfile(record["target"]) else (None, None)
    return _find_in_trash(record["source"], record["sha256"])


def _trash_folders(original: str) -> list[tuple[Path, Path]]:
    """(trash folder, the folder its relative paths start from) where a file from `original` can be.

    These are the freedesktop.org places send2trash uses on Linux and BSD: the
    home trash, and `.Trash/UID` or `.Trash-UID` at the top of other drives.
    """
    data_home = Path(os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"))
    folders = [(data_home / "Trash", data_home)]
    try:
        from send2trash import plat_other  # where send2trash itself puts files (it reads $XDG_DATA_HOME once)

        folders.append((Path(plat_other.HOMETRASH), Path(plat_other.HOMETRASH).parent))
    except Exception:  # noqa: BLE001  # pragma: no cover - other platforms
        pass
    mount = Path(original).parent
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    if hasattr(os, "getuid"):
        folders += [(mount / ".Trash" / str(os.getuid()), mount), (mount / f".Trash-{os.getuid()}", mount)]
    return list(dict.fromkeys(folders))


def _find_in_trash(original: str, sha256: str) -> tuple[str | None, str | None]:
    """The newest trashed copy of `original` whose bytes match."""
    candidates: list[tuple[str, str, str | None]] = []
    for trash, top in _trash_folders(original):
        info_folder = trash / "info"
        if info_folder.is_dir():
            for info in info_folder.glob("*.trashinfo"):
                lines = info.read_text(errors="replace").splitlines()
                fields = dict(line.split("=", 1) for line in lines if "=" in line)
                if os.path.join(top, unquote(fields.get("Path", ""))) == original:
                    candidates.append((fields.get("DeletionDate", ""), str(trash / "files" / info.stem), str(info)))
    macos_trash = Path.home() / ".Trash"
    if macos_trash.is_dir():
        candidates += [("", str(p), None) for p in macos_trash.glob(Path(original).stem + "*" + Path(original).suffix)]
    for _, path, info_file in sorted(candidates, reverse=True):
        if os.path.isfile(path) and _sha256(path) == sha256:
            return path, info_file
    return None, None
