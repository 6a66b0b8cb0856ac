"""Acting on duplicate groups: move or trash the extra copies, reversibly.

Nothing is ever deleted: files go to a folder of the user's (keeping their
relative layout) or to the system trash. Before each move, a line is appended
to a manifest (JSON Lines, flushed to disk) recording where the file goes, its
SHA-256, its index row and its tags, so `undo` can put every file, row and tag back even after
a crash half way. A file is moved only if its bytes still match the index and
the copy being kept still exists.
"""

from __future__ import annotations

import base64
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
from .store import Store, default_db_path, normalise_path

MANIFEST_FORMAT = 1


class MoveError(Exception):
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
    if destination == root or destination.startswith(root.rstrip(os.sep) + os.sep) or store.count(destination):
        raise MoveError(f"{destination} is inside the library being deduplicated; the next index run would add the "
                        f"moved files back. Choose a folder outside {root}.")
    return [Move(source, os.path.join(destination, os.path.relpath(source, root)), keep, tier)
            for source, keep, tier in moves]


def default_manifest_path(destination: str | None) -> Path:
    """Beside the moved files for --move-to; in clipsearch's data folder for --trash."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(destination) if destination else default_db_path().parent / "dedupe"
    return folder / f"clipsearch-dedupe-{stamp}.jsonl"


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


def apply_moves(moves: list[Move], store: Store, manifest: str | os.PathLike,
                on_progress: Callable[[Move], None] | None = None) -> MoveReport:
    """Carry out `moves`, recording each in the manifest first; moved files leave the index."""
    trash = bool(moves) and moves[0].target is None
    path = Path(manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = MoveReport(str(path))
    if trash:
        from send2trash import send2trash
    with open(path, "x", encoding="utf-8") as handle:
        _append(handle, {"clipsearch_dedupe_manifest": MANIFEST_FORMAT, "index": str(store.path),
                         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "action": "trash" if trash else "move"})
        for move in moves:
            rows = store.rows_for_paths([move.source])
            reason = _unsafe(move, rows)
            if reason:
                report.skipped.append((move.source, reason))
                continue
            target = None if trash else _free_name(move.target)
            _append(handle, {"source": move.source, "target": target, "keep": move.keep, "tier": move.tier,
                             "sha256": rows[0]["hash"], "row": _encode_row(rows[0]),
                             "tags": store.tag_rows(rows[0]["id"])})
            try:
                if trash:
                    send2trash(move.source)
                else:
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.move(move.source, target)
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
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError) as exc:
        raise MoveError(f"Cannot read the manifest {path}: {exc}") from None
    if not lines or lines[0].get("clipsearch_dedupe_manifest") != MANIFEST_FORMAT:
        raise MoveError(f"{path} is not a clipsearch dedupe manifest.")
    return lines[0], lines[1:]


def undo_moves(manifest: str | os.PathLike, store: Store) -> UndoReport:
    """Put every file the manifest records back where it was, with its index row; safe to repeat."""
    header, records = read_manifest(manifest)
    report = UndoReport()
    for record in reversed(records):
        source = record["source"]
        if os.path.lexists(source):
            if os.path.isfile(source) and _sha256(source) == record["sha256"]:
                store.restore_rows([_decode_row(record["row"])], [record.get("tags", [])])  # an earlier undo
                report.restored.append(source)
            else:
                report.skipped.append((source, "another file is there now; left both alone"))
            continue
        current, trash_info = _where_is(record, header["action"])
        if current is None:
            report.skipped.append((source, "not found where it was moved to" if header["action"] == "move" else
                                   "not found in the trash (emptied?); restore it by hand if it is there"))
            continue
        if _sha256(current) != record["sha256"]:
            report.skipped.append((source, f"{current} has changed since it was moved; left it there"))
            continue
        os.makedirs(os.path.dirname(source), exist_ok=True)
        shutil.move(current, source)
        if trash_info:
            Path(trash_info).unlink(missing_ok=True)
        store.restore_rows([_decode_row(record["row"])], [record.get("tags", [])])
        report.restored.append(source)
    return report


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
    except Exception:  # pragma: no cover - other platforms
        pass
    mount = Path(original).parent
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    if hasattr(os, "getuid"):
        folders += [(mount / ".Trash" / str(os.getuid()), mount), (mount / f".Trash-{os.getuid()}", mount)]
    return list(dict.fromkeys(folders))


def _find_in_trash(original: str, sha256: str) -> tuple[str | None, str | None]:
    """The newest trashed copy of `original` whose bytes match."""
    candidates = []
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
    for _, path, info in sorted(candidates, reverse=True):
        if os.path.isfile(path) and _sha256(path) == sha256:
            return path, info
    return None, None
