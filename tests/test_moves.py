"""dedupe's moves and undo: undo writes only where the index knew a file, says when there is nothing left to
restore, tidies the review folder, and manifests and reports say where the files went."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clipsearch import Library
from clipsearch.dedupe import moves
from clipsearch.indexing.job import index_folders
from clipsearch.store import Store

from .conftest import REPO


def _library_with_copy(small_library: Path, encoder, db: Path, folder: str = "copies/2024/june") -> tuple[Path, Path]:
    """The library plus an exact copy of its first photo two folders down, indexed: one duplicate pair whose
    extra file is the copy (the shorter path is kept)."""
    original = min(small_library.glob("*.jpg"))
    copy = small_library / folder / original.name
    copy.parent.mkdir(parents=True)
    shutil.copy2(original, copy)
    with Store.open(db) as store:
        index_folders([small_library], store, encoder=encoder)
    return original, copy


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _move(db: Path, review: Path | None) -> moves.MoveReport:
    with Library(db) as library:
        groups = library.dedupe().groups
        return library.move_duplicates(library.plan_moves(groups, review), review)


def _forge(manifest: Path, evil: Path, payload: bytes) -> Path:
    """Edit the manifest as an attacker would (issue 17, item 3): its record's source and the copy of the index
    row now name `evil`, the hash is the payload's, and the payload sits in the review folder as the target."""
    lines = manifest.read_text().splitlines()
    record = json.loads(lines[1])
    digest = hashlib.sha256(payload).hexdigest()
    target = Path(record["target"])
    target.write_bytes(payload)
    record["source"], record["sha256"] = str(evil), digest
    record["row"]["path"], record["row"]["hash"] = str(evil), digest
    manifest.write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    return target


def test_undo_of_an_edited_manifest_writes_nothing_outside_the_library(small_library, tmp_path, encoder):
    db = tmp_path / "index.db"
    _library_with_copy(small_library, encoder, db)
    review = tmp_path / "review"
    report = _move(db, review)
    assert len(report.moved) == 1
    manifest = Path(report.manifest)
    evil = tmp_path / "home" / ".config" / "autostart" / "evil.desktop"
    payload = b"[Desktop Entry]\nExec=sh -c 'echo owned'\n"
    planted = _forge(manifest, evil, payload)

    # Through the library.
    with Library(db) as library:
        undone = library.undo_moves(manifest)
    assert undone.restored == [] and not evil.exists() and not evil.parent.exists()
    ((path, reason),) = undone.skipped
    assert path == str(evil) and f"line 2 of the manifest {manifest}" in reason and "signature" in reason
    assert planted.read_bytes() == payload, "the payload is left where it is"
    with Store.open(db) as store:
        assert store.id_for_path(str(evil)) is None, "no index row for it either"

    # Through the CLI, as a user (or a script) would run it.
    environment = {**os.environ, "COLUMNS": "400", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "clipsearch", "dedupe", "--undo", str(manifest), "--db", str(db)],
                            capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode != 0
    assert "line 2 of the manifest" in result.stderr and manifest.name in result.stderr and "evil.desktop" in \
        result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not evil.exists() and not evil.parent.exists()


def test_undo_refuses_records_signed_by_another_index_or_outside_its_folders(small_library, tmp_path, encoder):
    """A manifest is good only for the index that wrote it, and only into the folders that index covers."""
    db = tmp_path / "index.db"
    _original, copy = _library_with_copy(small_library, encoder, db)
    report = _move(db, tmp_path / "review")
    manifest = Path(report.manifest)

    other_db = tmp_path / "other.db"
    shutil.copy(db, other_db)
    with Store.open(other_db) as store:
        store.set_meta(moves.KEY_META, os.urandom(32).hex())  # another index: another key
        undone = moves.undo_moves(manifest, store)
    assert undone.restored == [] and "signature" in undone.skipped[0][1] and not copy.exists()

    with Store.open(db) as store:  # this index, but the folder it covered is no longer one it knows
        store.set_meta("folders", json.dumps([str(tmp_path / "elsewhere")]))
        undone = moves.undo_moves(manifest, store)
    assert undone.restored == [] and "not in a folder this index covers" in undone.skipped[0][1]
    assert not copy.exists()


def test_second_undo_restores_nothing_and_the_first_tidies_the_review_folder(small_library, tmp_path, encoder):
    db = tmp_path / "index.db"
    original, copy = _library_with_copy(small_library, encoder, db)
    review = tmp_path / "review"
    report = _move(db, review)
    assert not report.trash and report.destination == str(review)
    assert (review / "copies" / "2024" / "june" / copy.name).is_file()
    manifest = Path(report.manifest)
    with open(manifest, "a") as handle:
        handle.write('{"source": "/x/y.jpg", "tar')  # a line cut off by a full disk: its move never started

    with Library(db) as library:
        first = library.undo_moves(manifest)
    assert first.restored == [str(copy)] and first.already == [] and first.skipped == []
    assert _sha(copy) == _sha(original)
    assert not (review / "copies").exists(), "the folders the undo emptied are gone"
    assert sorted(p.name for p in review.iterdir()) == [manifest.name], "the manifest itself stays"
    header, records = moves.read_manifest(manifest)
    assert header["undone"] and len(records) == 1, "marked undone; the cut-off line was dropped"

    with Library(db) as library:
        second = library.undo_moves(manifest)
    assert second.restored == [] and second.already == [str(copy)] and second.skipped == []
    assert second.undone_before == header["undone"]
    with Store.open(db) as store:
        assert store.id_for_path(str(copy)) is not None


def test_trash_report_and_manifest_place_with_clipsearch_db_set(small_library, tmp_path, encoder, monkeypatch):
    """--trash: the report says the trash, and the manifest goes to the data folder the README names, not
    beside the index that CLIPSEARCH_DB points to."""
    db = tmp_path / "indexes" / "photos.db"
    db.parent.mkdir()
    original, copy = _library_with_copy(small_library, encoder, db)
    monkeypatch.setenv("CLIPSEARCH_DB", str(db))
    report = _move(db, None)
    assert report.trash and report.destination is None and [m.source for m in report.moved] == [str(copy)]
    data = Path(os.environ["XDG_DATA_HOME"]) / "clipsearch" / "dedupe"
    assert Path(report.manifest).parent == data
    assert not (db.parent / "dedupe").exists()
    with Library(db) as library:
        assert library.undo_moves(report.manifest).restored == [str(copy)]
    assert _sha(copy) == _sha(original)


def test_check_destination_refuses_a_folder_inside_the_library_before_any_plan(small_library, tmp_path, encoder):
    db = tmp_path / "index.db"
    _library_with_copy(small_library, encoder, db)
    link = tmp_path / "link-into-library"
    os.symlink(small_library / "copies", link)
    with Store.open(db) as store:
        for inside in (small_library / "review", small_library, link, link / "deeper"):
            with pytest.raises(moves.MoveError, match="inside the library"):
                moves.check_destination(inside, store)
        with pytest.raises(moves.MoveError, match="inside the library"):  # the --in folder counts too
            moves.check_destination(tmp_path / "scope" / "review", store, str(tmp_path / "scope"))
        moves.check_destination(tmp_path / "review", store)  # outside: fine
    assert not (small_library / "review").exists() and not (tmp_path / "review").exists(), "nothing is created"
