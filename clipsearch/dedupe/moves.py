"""Acting on duplicate groups: move or trash the extra copies, reversibly.

Nothing is ever deleted: files go to a folder of the user's (keeping their
relative layout) or to the system trash. Before each move, a line is appended
to a manifest (JSON Lines, each line fsynced) recording where the file goes, its
SHA-256, its index row and its tags, so `undo` can put every file, row and tag back even after
a crash half way. A file is moved only if its bytes still match the index and
the copy being kept still exists, checked under the index's writer lock.

Across filesystems a file is copied to a hidden partial name, fsynced, then
renamed into place, so it is never half there; undo moves back the same way
and can simply be run again after an interruption.

Undo reverses only what this tool did, because a manifest is a file anyone
can edit: each record is signed (HMAC-SHA256) with a secret key kept in the
index's meta table, so only a record this index wrote, naming a path this index
held, is undone; its file must also be in a folder the index covers, sit in the
manifest's folder (or the trash) with the recorded hash, and carry a sane row.
A finished undo is marked at the end of its manifest; running it again restores
nothing and says so.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from ..errors import BadInputError
from ..paths import normalise_path
from ..store import Store
from ..store.tags import TagStore
from .groups import Group

MANIFEST_FORMAT = 1
KEY_META = "manifest_key"  # the index's secret for signing manifest records (meta table)


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
    destination: str | None = None  # the folder files went to; None: the system trash

    @property
    def trash(self) -> bool:
        """True when the files were sent to the system trash (then `destination` is None)."""
        return self.destination is None


@dataclass
class UndoReport:
    manifest: str = ""
    restored: list[str] = field(default_factory=list)  # put back by this run
    already: list[str] = field(default_factory=list)  # already back where they were (an earlier undo)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), nothing touched
    undone_before: str | None = None  # when an earlier undo of this manifest finished, if one did
    removed_folders: list[str] = field(default_factory=list)  # review folders this undo emptied and removed


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
    check_destination(destination, store, root)
    outside = [source for source, _, _ in moves if os.path.relpath(source, root).startswith(os.pardir + os.sep)]
    if outside:  # its relative path would climb out of the review folder
        raise MoveError(f"{outside[0]} is not under {root}, so it has no place under {destination}. "
                        "Nothing was moved; choose a folder that holds every file (--in).")
    return [Move(source, os.path.join(destination, os.path.relpath(source, root)), keep, tier)
            for source, keep, tier in moves]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_destination(destination: str | os.PathLike, store: Store, folder: str | None = None) -> None:
    """Refuse a --move-to folder inside the library: inside `folder` (the --in folder), inside any folder
    the index covers, or holding indexed files, compared by path and by real path (a symlink into the
    library counts). Cheap and moves nothing, so callers can check before showing a plan."""
    destination = normalise_path(destination)
    real_destination = os.path.realpath(destination)  # see through symlinks
    libraries = ([normalise_path(folder)] if folder else []) + store.indexed_folders()
    for library in libraries:
        if any(_inside(d, r) for d in (destination, real_destination) for r in (library, os.path.realpath(library))):
            raise MoveError(f"{destination} is inside the library being deduplicated ({library}); the next index "
                            f"run would add the moved files back. Choose a folder outside {library}.")
    if store.count(destination) or store.count(real_destination):
        raise MoveError(f"{destination} is inside the library being deduplicated (it holds indexed photos); the "
                        "next index run would add the moved files back. Choose a folder outside the library.")


def data_folder() -> Path:
    """clipsearch's data folder: $XDG_DATA_HOME/clipsearch (~/.local/share/clipsearch), whatever --db says."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "clipsearch"


def default_manifest_path(destination: str | None) -> Path:
    """Beside the moved files for --move-to; in clipsearch's data folder (data_folder()/dedupe) for --trash."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(destination) if destination else data_folder() / "dedupe"
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


def _manifest_key(store: Store, create: bool) -> bytes | None:
    """The index's secret for signing manifest records; made on first use (call under the writer lock)."""
    key = store.get_meta(KEY_META)
    if key is None and create:
        key = secrets.token_hex(32)
        store.set_meta(KEY_META, key)
    return bytes.fromhex(key) if key else None


def _signature(key: bytes, action: str, record: dict) -> str:
    """HMAC-SHA256 of a record (without its "mac") and the manifest's action, in a canonical JSON form."""
    canonical = json.dumps({"action": action, "record": record}, sort_keys=True)
    return hmac.new(key, canonical.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


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
    """Carry out `moves`, recording and signing each in the manifest first; moved files leave the index.

    The manifest sits in the destination folder for a move (MoveReport.destination), so undo can check
    that every file it takes back comes from there.
    """
    trash = bool(moves) and moves[0].target is None
    action = "trash" if trash else "move"
    path = Path(manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = MoveReport(str(path), destination=None if trash else str(path.parent))
    if trash:
        from send2trash import send2trash
    with store.writer(), open(path, "x", encoding="utf-8") as handle:
        key = _manifest_key(store, create=True)
        assert key is not None  # made above
        _append(handle, {"clipsearch_dedupe_manifest": MANIFEST_FORMAT, "index": str(store.path),
                         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "action": action})
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
            record = {"source": move.source, "target": target, "keep": move.keep, "tier": move.tier,
                      "sha256": rows[0]["hash"], "row": _encode_row(rows[0]),
                      "tags": TagStore(store).tag_rows(rows[0]["id"])}
            try:
                _append(handle, {**record, "mac": _signature(key, action, record)})
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
    move never started, because each move happens only after its line is on disk. When an undo of it
    finished, the header's "undone" says when."""
    header, numbered = _read_numbered(path)
    return header, [record for _, record in numbered]


def _read_numbered(path: str | os.PathLike) -> tuple[dict, list[tuple[int, dict]]]:
    """Header and (line number, record) pairs; undo marks go into the header."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = handle.read().split("\n")
        lines: list[tuple[int, dict]] = []
        for number, line in enumerate(raw, start=1):
            if not line.strip():
                continue
            try:
                lines.append((number, json.loads(line)))
            except ValueError as exc:
                if number == len(raw):  # the last line, without its newline: cut off
                    break
                raise MoveError(f"Cannot read the manifest {path}, line {number}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MoveError(f"Cannot read the manifest {path}: {exc}") from None
    if not lines or not isinstance(lines[0][1], dict) \
            or lines[0][1].get("clipsearch_dedupe_manifest") != MANIFEST_FORMAT:
        raise MoveError(f"{path} is not a clipsearch dedupe manifest.")
    header = dict(lines[0][1])
    records = []
    for number, record in lines[1:]:
        if isinstance(record, dict) and "undone" in record and "source" not in record:
            header["undone"] = record["undone"]
        else:
            records.append((number, record))
    return header, records


def undo_moves(manifest: str | os.PathLike, store: Store) -> UndoReport:
    """Put every file the manifest records back where it was, with its index row; safe to repeat.

    Only records this index signed are undone, and only into folders it covers; anything else is
    skipped with a reason naming the manifest and its line. A finished undo is marked in the manifest,
    and the review folders it emptied are removed (the manifest stays).
    """
    header, records = _read_numbered(manifest)
    report = UndoReport(str(manifest), undone_before=header.get("undone"))
    folder = os.path.realpath(os.path.dirname(os.path.abspath(manifest)))
    action = header.get("action")
    with store.writer():
        context = _UndoContext(str(manifest), action if action in ("move", "trash") else "?", folder,
                               _manifest_key(store, create=False), store.indexed_folders(), store)
        for number, record in reversed(records):
            _undo_one(number, record, context, report)
        if records and not report.skipped and (report.restored or report.undone_before is None):
            _mark_undone(manifest, report)
    return report


@dataclass
class _UndoContext:
    manifest: str
    action: str  # "move" or "trash" ("?" when the header says neither: every record is refused)
    folder: str  # the manifest's folder (real path): where moved files must be
    key: bytes | None  # the index's signing key; None if it never wrote a manifest
    covered: list[str]  # the folders the index covers
    store: Store


def _not_ours(record: dict, context: _UndoContext) -> str | None:
    """Why this manifest record is not a move this tool made for this index (a hand-made, edited or
    foreign manifest), or None."""
    if not isinstance(record, dict):
        return "not a record; not touched"
    if context.action == "?":
        return "the manifest's header names no action (move or trash); not touched"
    if context.key is None:
        return "this index never wrote a manifest (it was written for another index, or by hand); not touched"
    signed = {k: v for k, v in record.items() if k != "mac"}
    mac = record.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _signature(context.key, context.action, signed)):
        return ("its signature does not match this index: it was edited, written for another index, or written "
                "by a clipsearch before manifests were signed; not touched")
    try:
        source, sha256, row = record["source"], record["sha256"], _decode_row(record["row"])
    except (KeyError, TypeError, ValueError) as exc:
        return f"the manifest's record is incomplete ({exc}); not touched"
    recorded = context.store.model()
    if not isinstance(source, str) or source != normalise_path(source):
        return "the manifest's source is not an absolute path; not touched"
    if not any(_inside(source, folder) for folder in context.covered):
        return f"{source} is not in a folder this index covers; not touched"
    if row.get("path") != source or row.get("hash") != sha256 or not isinstance(row.get("vector"), bytes) \
            or recorded is None or len(row["vector"]) != recorded[1] * 2:
        return "the manifest's index row does not belong to this file or this index; not touched"
    if context.action == "move":
        target = record.get("target")
        if not isinstance(target, str) or not _inside(os.path.realpath(target), context.folder) \
                or os.path.realpath(target) == context.folder:
            return (f"the manifest says it was moved to {target}, outside the manifest's folder {context.folder}; "
                    "not touched")
    return None


def _undo_one(number: int, record: dict, context: _UndoContext, report: UndoReport) -> None:
    """Put back one moved file and its row; safe to repeat after an interrupted undo."""
    source = record.get("source", "?") if isinstance(record, dict) else "?"
    source = source if isinstance(source, str) else "?"
    reason = _not_ours(record, context)
    if reason:
        report.skipped.append((source, f"line {number} of the manifest {context.manifest}: {reason}"))
        return
    store = context.store
    if os.path.lexists(source):
        if os.path.isfile(source) and not os.path.islink(source) and _sha256(source) == record["sha256"]:
            if store.id_for_path(source) is None:  # an undo stopped between moving the file and its row
                TagStore(store).restore([_decode_row(record["row"])], [record.get("tags", [])])
                report.restored.append(source)
            else:  # restored by an earlier undo (or its move never happened)
                report.already.append(source)
            _remove_emptied_folders(record, context, report)
        else:
            report.skipped.append((source, "another file is there now; left both alone"))
        return
    current, trash_info = _where_is(record, context.action)
    if current is None:
        report.skipped.append((source, "not found where it was moved to" if context.action == "move" else
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
    _remove_emptied_folders(record, context, report)


def _remove_emptied_folders(record: dict, context: _UndoContext, report: UndoReport) -> None:
    """Remove the review folders a moved file leaves empty, up to (not including) the manifest's folder."""
    if context.action != "move":
        return
    folder = os.path.dirname(os.path.realpath(record["target"]))
    while folder != context.folder and _inside(folder, context.folder):
        try:
            os.rmdir(folder)  # only ever removes an empty folder
        except OSError:
            return
        report.removed_folders.append(folder)
        folder = os.path.dirname(folder)


def _mark_undone(manifest: str | os.PathLike, report: UndoReport) -> None:
    """Append an "undone" line to the manifest (kept for the record); a cut-off last line goes first, so the
    manifest still reads. A manifest that cannot be written stays as it was: the mark is only a note."""
    mark = {"undone": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "restored": len(report.restored),
            "already": len(report.already)}
    try:
        with open(manifest, "r+b") as handle:
            handle.seek(0)
            ends_at = handle.read().rfind(b"\n") + 1
            handle.seek(ends_at)
            handle.truncate()
            handle.write((json.dumps(mark) + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        pass


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
