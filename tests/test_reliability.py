"""Issue 8: hostile input never gives a traceback, loses a tag, or writes where it must not."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from clipsearch import errors, search
from clipsearch import store as store_module
from clipsearch.cli import output
from clipsearch.dedupe import moves
from clipsearch.indexing import images, scan
from clipsearch.indexing.job import index_folders
from clipsearch.store import ImageRecord, Store, StoreError
from clipsearch.store.tags import TagStore
from clipsearch.tags import auto as tags
from clipsearch.tags import sidecars
from clipsearch_dev.scenes import tag_vocabulary

from .conftest import TINY_MODEL


def _index(cli, folder, db, *extra):
    result = cli("index", folder, "--db", db, "--model", TINY_MODEL, "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return result


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _with_copy(small_library: Path) -> tuple[Path, Path]:
    """The library plus an exact copy of its first photo in a subfolder: one duplicate pair."""
    original = min(small_library.glob("*.jpg"))
    (small_library / "copies").mkdir()
    copy = small_library / "copies" / original.name
    shutil.copy2(original, copy)
    return original, copy


# -- crashes -----------------------------------------------------------------------


def test_case1_non_utf8_and_ansi_file_names_are_stored_losslessly_and_printed_safely(cli, small_library, tmp_path,
                                                                                     monkeypatch):
    first = min(small_library.glob("*.jpg"))
    bad = os.fsdecode(os.fsencode(str(small_library)) + b"/bad\xff\xfe.jpg")
    ansi = small_library / "\x1b[31mred.jpg"
    shutil.copy(first, bad)
    Image.open(first).rotate(90).save(ansi)
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    with Store.open(db) as store:
        assert bad in store.paths() and str(ansi) in store.paths()

    piped = cli("similar", bad, "--db", db, "--in", small_library, "--top", "20")
    assert piped.exit_code == 0 and os.fsencode(ansi) in piped.stdout_bytes, "pipes get the exact names"
    # In a terminal, the table shows odd bytes and escape sequences escaped, never raw.
    monkeypatch.setattr(output, "stdout", Console(force_terminal=True, width=250, color_system="truecolor"))
    similar = cli("similar", bad, "--db", db, "--in", small_library, "--top", "20")
    assert similar.exit_code == 0 and "\x1b[31mred" not in similar.stdout and "\\x1b[31mred" in similar.stdout
    table = cli("find", "a red circle", "--db", db, "--top", "20")
    assert table.exit_code == 0 and "bad\\xff\\xfe.jpg" in table.stdout
    found = cli("find", "a red circle", "--db", db, "--in", small_library, "--top", "20", "--json")
    hits = json.loads(found.stdout)
    by_bytes = [base64.b64decode(h["path_bytes"]) for h in hits if "path_bytes" in h]
    assert by_bytes == [os.fsencode(bad)]
    paths = cli("find", "a red circle", "--db", db, "--top", "20", "--paths")
    assert os.fsencode(bad) in paths.stdout_bytes.split(b"\n")


def test_case2_changed_photo_and_an_old_copy_of_it_in_one_run(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    photo = min(small_library.glob("*.jpg"))
    old_bytes, old_hash = photo.read_bytes(), _sha(photo)
    Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photo, quality=70)  # edited in place
    (small_library / "zz-old-copy.jpg").write_bytes(old_bytes)  # processed after the edit, same batch size 1

    _index(cli, small_library, db, "--batch-size", "1")
    with Store.open(db) as store:
        row = store.db.execute("SELECT hash FROM images WHERE path = ?", [str(small_library / "zz-old-copy.jpg")])
        assert row.fetchone()[0] == old_hash
        assert store.db.execute("SELECT hash FROM images WHERE path = ?", [str(photo)]).fetchone()[0] != old_hash


def _record(path: str) -> ImageRecord:
    return ImageRecord(path, 1, 1, "h" * 64, 1, 1, b"\0\0" * 64)


def test_case3_locked_read_only_full_and_uncreatable_indexes_are_clear_errors(cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = cli("index", tmp_path, "--db", blocker / "sub" / "index.db")
    assert result.exit_code == errors.EXIT_INDEX and "Cannot create the folder" in result.stderr

    with Store.open(tmp_path / "index.db") as store:
        other = sqlite3.connect(store.path)
        other.execute("BEGIN IMMEDIATE")  # another program holds the write lock
        store.db.execute("PRAGMA busy_timeout = 50")
        with pytest.raises(errors.IndexBusyError, match="busy"):
            store.write([_record("/photos/a.jpg")])
        other.rollback()
        other.close()

        store.db.execute("PRAGMA query_only = 1")  # what a read-only file looks like to SQLite
        with pytest.raises(StoreError, match="read-only"):
            store.write([_record("/photos/a.jpg")])
        store.db.execute("PRAGMA query_only = 0")

        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
        with pytest.raises(StoreError, match="full"):
            store.write([_record(f"/photos/{i}.jpg") for i in range(2000)])
        assert store.count() == 0


def test_case4_foreign_sqlite_file_is_refused_without_being_written(cli, tmp_path):
    foreign = tmp_path / "photos.sqlite"
    connection = sqlite3.connect(foreign)
    connection.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, filename TEXT)")
    connection.execute("INSERT INTO images (filename) VALUES ('x.jpg')")
    connection.commit()
    connection.close()
    before = foreign.read_bytes()
    for command in (("info",), ("index", tmp_path), ("find", "cat")):
        result = cli(*command, "--db", foreign)
        assert result.exit_code == errors.EXIT_INDEX and "not a clipsearch index" in result.stderr
    assert foreign.read_bytes() == before and not Path(str(foreign) + "-wal").exists()


def test_case5_non_finite_weights_and_thresholds_are_refused(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    huge = cli("find", "9" * 310 + ":red", "--db", db, "--json")
    assert huge.exit_code == errors.EXIT_BAD_INPUT and "weight" in huge.stderr
    assert cli("find", "red", "--threshold", "nan", "--db", db).exit_code == errors.EXIT_BAD_INPUT
    assert cli("tag", "--threshold", "inf", "--db", db).exit_code == errors.EXIT_BAD_INPUT
    assert cli("dedupe", "--near-threshold", "nan", "--db", db).exit_code == errors.EXIT_BAD_INPUT


def test_case5_weights_finite_in_python_but_not_in_float32_are_refused(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    for digits in (41, 310):  # 1e41 is a finite Python float, but infinite as float32; 1e310 is infinite anywhere
        result = cli("find", "9" * digits + ":red", "--db", db, "--json")
        assert result.exit_code == errors.EXIT_BAD_INPUT, (digits, result.stdout)
        assert "weight" in result.stderr and "NaN" not in result.stdout, digits
    with pytest.raises(search.QueryError, match="weight"):
        search.parse_query(["9" * 41 + ":red"])
    # The largest usable weight is summed in float64: it ranks like weight 1, not as all-zero scores.
    plain = json.loads(cli("find", "a red circle", "--db", db, "--json", "--top", "5").stdout)
    heavy = cli("find", "1" + "0" * 38 + ":a red circle", "--db", db, "--json", "--top", "5")
    assert heavy.exit_code == 0
    assert [(h["path"], pytest.approx(h["score"], abs=1e-4)) for h in json.loads(heavy.stdout)] == \
        [(h["path"], h["score"]) for h in plain]


# -- lost data ---------------------------------------------------------------------


def test_case6_a_folder_that_cannot_be_listed_keeps_its_rows_and_tags(small_library, tmp_path, encoder, monkeypatch):
    sub = small_library / "2024"
    sub.mkdir()
    for photo in sorted(small_library.glob("*.jpg"))[:3]:
        shutil.move(photo, sub / photo.name)
    with Store.open(tmp_path / "index.db") as store:
        index_folders([small_library], store, encoder=encoder)
        inside = store.paths(str(sub))
        tags.edit_tags(store, inside[0], add=["grandma"])
        real_scandir = os.scandir

        def flaky(path):  # root reads everything, so a permission failure has to be simulated
            if os.fspath(path) == str(sub):
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_scandir(path)

        monkeypatch.setattr(scan.os, "scandir", flaky)
        report = index_folders([small_library], store, encoder=encoder)
        assert report.removed == 0 and store.paths(str(sub)) == inside
        assert any(path == str(sub) and "kept" in reason for path, reason in report.skipped)
        assert [t["tag"] for t in tags.edit_tags(store, inside[0])] == ["grandma"]


def test_case7_export_exports_what_is_stored_and_runs_remember_their_vocabulary(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    vocab = tmp_path / "mine.txt"
    vocab.write_text(tag_vocabulary())
    _index(cli, small_library, db)
    assert cli("tag", "--db", db, "--vocab", vocab).exit_code == 0
    with Store.open(db) as store:
        stored = TagStore(store).tags_by_path()
    assert stored

    export = cli("tag", "--db", db, "--export", "xmp")
    assert export.exit_code == 0
    for image, keywords in stored.items():
        assert sidecars.read_keywords(image + ".xmp") == keywords
    again = json.loads(cli("tag", "--db", db, "--json").stdout)  # no --vocab: the remembered one, nothing to do
    assert again["vocabulary"] == str(vocab) and again["tagged"] == 0
    with Store.open(db) as store:
        assert TagStore(store).tags_by_path() == stored

    other = tmp_path / "other.txt"
    other.write_text("dog\ncat\n")
    refused = cli("tag", "--db", db, "--vocab", other)
    assert refused.exit_code == errors.EXIT_BAD_INPUT and "--retag" in refused.stderr
    with Store.open(db) as store:
        assert TagStore(store).tags_by_path() == stored


def test_case8_writers_take_one_lock_and_a_second_writer_is_told_the_index_is_busy(cli, small_library, tmp_path,
                                                                                    monkeypatch):
    original, copy = _with_copy(small_library)
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    monkeypatch.setenv("CLIPSEARCH_LOCK_WAIT", "0.2")
    with Store.open(db) as holder, holder.writer():  # an index run in progress
        for command in (("index", small_library, "--model", TINY_MODEL), ("tag", "add", original, "x"),
                        ("dedupe", "--move-to", tmp_path / "review", "--yes")):
            result = cli(*command, "--db", db)
            assert result.exit_code == errors.EXIT_BUSY and "busy" in result.stderr, command
        assert cli("find", "a red circle", "--db", db).exit_code == 0  # readers never wait
    assert original.exists() and copy.exists()
    assert cli("dedupe", "--move-to", tmp_path / "review", "--yes", "--db", db).exit_code == 0


def test_case8_filling_photo_metadata_is_a_write_that_takes_the_lock(cli, small_library, tmp_path, monkeypatch):
    """dedupe fills in the EXIF metadata of rows indexed before it existed: that write waits for the lock too."""
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    with Store.open(db) as store:
        store.conn.execute("UPDATE images SET taken = NULL, taken_source = NULL")
    monkeypatch.setenv("CLIPSEARCH_LOCK_WAIT", "0.2")
    with Store.open(db) as holder, holder.writer():
        result = cli("dedupe", "--db", db)
        assert result.exit_code == errors.EXIT_BUSY and "busy" in result.stderr
    assert cli("dedupe", "--db", db).exit_code in (0, 1)
    with Store.open(db) as store:
        assert store.conn.execute("SELECT count(*) FROM images WHERE taken IS NULL").fetchone()[0] == 0


def _group_of(cli, db, *paths: Path) -> dict:
    """The dedupe group of exactly these files, as `dedupe --json` lists it."""
    groups = json.loads(cli("dedupe", "--db", db, "--json").stdout)
    return next(g for g in groups if {m["path"] for m in g["members"]} == {str(p) for p in paths})


def test_case8_move_to_refuses_when_the_copy_to_keep_has_vanished(cli, small_library, tmp_path):
    original, copy = _with_copy(small_library)
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    group = _group_of(cli, db, original, copy)
    keep = group["keep"]
    (other,) = [m["path"] for m in group["members"] if not m["keep"]]
    os.remove(keep)  # deleted after indexing: the index still lists it as the copy to keep

    result = cli("dedupe", "--move-to", tmp_path / "review", "--yes", "--db", db)
    assert "the copy to keep is gone" in result.stderr, result.stderr
    assert os.path.exists(other), "the last copy stays"
    with Store.open(db) as store:
        assert store.id_for_path(other) is not None
    manifest = next((tmp_path / "review").glob("*.jsonl"))
    assert other not in [record["source"] for record in moves.read_manifest(manifest)[1]], "not even recorded"


def test_case8_opposite_keep_policies_never_move_both_files_of_a_pair(cli, small_library, tmp_path):
    from clipsearch.library import Library
    from clipsearch.options import KeepPolicy

    original, copy = _with_copy(small_library)
    info = original.stat()
    os.utime(copy, ns=(info.st_atime_ns, info.st_mtime_ns + 3600 * 10**9))  # the copy is an hour newer
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    pair = {str(original), str(copy)}

    # One run after the other: the second finds the pair gone from the index.
    first = cli("dedupe", "--move-to", tmp_path / "first", "--keep", "oldest", "--yes", "--db", db)
    assert first.exit_code == 0, first.stderr
    assert original.exists() and not copy.exists()
    second = cli("dedupe", "--move-to", tmp_path / "second", "--keep", "newest", "--yes", "--db", db)
    assert second.exit_code in (0, errors.EXIT_NOTHING)
    assert original.exists(), "the file the first run kept is still there"
    undo = cli("dedupe", "--undo", next((tmp_path / "first").glob("*.jsonl")), "--db", db)
    assert undo.exit_code == 0 and copy.exists()

    # Both planned before either moves (two runs started together): the second finds its keep gone.
    with Library(db) as oldest, Library(db) as newest:
        by_oldest = oldest.plan_moves(oldest.dedupe(keep=KeepPolicy.oldest).groups, tmp_path / "a")
        by_newest = newest.plan_moves(newest.dedupe(keep=KeepPolicy.newest).groups, tmp_path / "b")
        assert {m.source for m in by_oldest} & pair == {str(copy)}
        assert {m.source for m in by_newest} & pair == {str(original)}
        oldest.move_duplicates(by_oldest, tmp_path / "a")
        report = newest.move_duplicates(by_newest, tmp_path / "b")
    assert original.exists() and not copy.exists()
    assert [(path, reason) for path, reason in report.skipped if path in pair] == \
        [(str(original), f"the copy to keep is gone ({copy}); run clipsearch index, then dedupe again")]


def test_case12_undo_refuses_a_file_whose_bytes_differ_from_the_recorded_hash(cli, small_library, tmp_path):
    original, copy = _with_copy(small_library)
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    review = tmp_path / "review"
    assert cli("dedupe", "--move-to", review, "--yes", "--db", db).exit_code == 0
    manifest = next(review.glob("*.jsonl"))
    records = {r["source"]: r for r in moves.read_manifest(manifest)[1]}
    moved_away = copy if str(copy) in records else original
    target = Path(records[str(moved_away)]["target"])
    assert target.parent.is_relative_to(review) and not moved_away.exists()
    other = max(small_library.glob("*.jpg"))
    target.write_bytes(other.read_bytes())  # another photo in its place, inside the manifest's folder

    undo = cli("dedupe", "--undo", manifest, "--db", db)
    assert undo.exit_code == errors.EXIT_NOTHING and "has changed since it was moved" in undo.stderr
    assert not moved_away.exists() and _sha(target) == _sha(other), "neither put back nor touched"
    with Store.open(db) as store:
        assert store.id_for_path(str(moved_away)) is None, "no row for a file that is not there"


def test_case8_a_tag_run_and_an_undo_are_refused_while_another_writer_holds_the_lock(cli, small_library, tmp_path,
                                                                                      monkeypatch):
    original, copy = _with_copy(small_library)
    db = tmp_path / "index.db"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text(tag_vocabulary())
    _index(cli, small_library, db)
    review = tmp_path / "review"
    assert cli("dedupe", "--move-to", review, "--yes", "--db", db).exit_code == 0
    manifest = next(review.glob("*.jsonl"))
    moved_away = copy if not copy.exists() else original
    monkeypatch.setenv("CLIPSEARCH_LOCK_WAIT", "0.2")
    with Store.open(db) as holder, holder.writer():  # an index run in progress
        for command in (("tag", "--vocab", vocab), ("dedupe", "--undo", manifest)):
            result = cli(*command, "--db", db)
            assert result.exit_code == errors.EXIT_BUSY and "busy" in result.stderr, (command, result.stderr)
    assert not moved_away.exists(), "the refused undo moved nothing"
    with Store.open(db) as store:
        assert TagStore(store).tags_by_path() == {}, "the refused tag run stored nothing"
    assert cli("dedupe", "--undo", manifest, "--db", db).exit_code == 0 and moved_away.exists()
    assert cli("tag", "--vocab", vocab, "--db", db).exit_code == 0


def test_case9_cut_off_manifest_and_interrupted_cross_device_undo_are_resumable(cli, small_library, tmp_path,
                                                                                monkeypatch):
    original, copy = _with_copy(small_library)
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    review = tmp_path / "review"
    assert cli("dedupe", "--move-to", review, "--yes", "--db", db).exit_code == 0
    moved_away = copy if not copy.exists() else original
    manifest = next(review.glob("*.jsonl"))
    with open(manifest, "a") as handle:
        handle.write('{"source": "/x/y.jpg", "tar')  # the disk filled up half way through a line

    real_rename, real_copy = os.rename, shutil.copyfileobj

    def cross_device(source, target, *args, **kwargs):
        if not str(source).endswith(".clipsearch-partial"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(source, target)

    def killed_half_way(reader, writer, length=0):
        writer.write(reader.read(100))
        raise KeyboardInterrupt

    monkeypatch.setattr(moves.os, "rename", cross_device)
    monkeypatch.setattr(moves.shutil, "copyfileobj", killed_half_way)
    with Store.open(db) as store, pytest.raises(KeyboardInterrupt):
        moves.undo_moves(manifest, store)
    assert not moved_away.exists()  # never half there
    monkeypatch.setattr(moves.shutil, "copyfileobj", real_copy)
    undo = cli("dedupe", "--undo", manifest, "--db", db)
    assert undo.exit_code == 0, undo.output
    assert _sha(moved_away) == _sha(original if moved_away == copy else copy)
    assert not list(moved_away.parent.glob(".*clipsearch-partial"))


# -- writing where it must not -----------------------------------------------------


def test_case10_a_sidecar_symlink_is_not_followed(small_library, tmp_path):
    photo = str(min(small_library.glob("*.jpg")))
    outside = tmp_path / "outside.xmp"  # a valid sidecar elsewhere, which exiv2 would happily write into
    outside.write_text(sidecars.EMPTY_PACKET)
    os.symlink(outside, photo + ".xmp")
    report = sidecars.export_sidecars({photo: ["cat"]})
    assert report.failed and "symlink" in report.failed[0][1]
    assert outside.read_text() == sidecars.EMPTY_PACKET and os.path.islink(photo + ".xmp")


def test_case11_move_to_a_symlink_into_the_library_is_refused(cli, small_library, tmp_path):
    original, copy = _with_copy(small_library)
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    link = tmp_path / "review-link"
    os.symlink(small_library / "copies", link)
    result = cli("dedupe", "--move-to", link, "--yes", "--db", db)
    assert result.exit_code == errors.EXIT_BAD_INPUT and "inside the library" in result.stderr
    assert original.exists() and copy.exists()


def test_case11_a_review_folder_never_receives_a_file_from_outside_the_given_root(cli, small_library, tmp_path):
    """A root that does not hold the files (a hand-made form, a library call) would send them to ../ of the
    review folder: refused before anything moves. Two runs in one second never share a manifest name."""
    from clipsearch import Library

    original, copy = _with_copy(small_library)
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with Library(db, model=TINY_MODEL) as library:
        groups = library.dedupe().groups
        with pytest.raises(moves.MoveError, match="not under"):
            library.plan_moves(groups, tmp_path / "review", folder=elsewhere)
    assert original.exists() and copy.exists() and not (tmp_path / "review").exists()

    first = moves.default_manifest_path(str(tmp_path))
    first.write_text("")
    assert moves.default_manifest_path(str(tmp_path)) != first


def test_case12_undo_refuses_moves_it_did_not_make(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    elsewhere = tmp_path / "elsewhere" / "secret.jpg"
    elsewhere.parent.mkdir()
    shutil.copy(min(small_library.glob("*.jpg")), elsewhere)
    folder = tmp_path / "handmade"
    folder.mkdir()
    source = str(small_library / "planted.jpg")
    row = {"path": source, "size": 1, "mtime_ns": 1, "hash": _sha(elsewhere), "width": 1, "height": 1,
           "vector": {"base64": ""}, "indexed_at": "x"}
    manifest = folder / "clipsearch-dedupe-1.jsonl"
    manifest.write_text(json.dumps({"clipsearch_dedupe_manifest": 1, "action": "move"}) + "\n" + json.dumps(
        {"source": source, "target": str(elsewhere), "sha256": _sha(elsewhere), "row": row}) + "\n")
    undo = cli("dedupe", "--undo", manifest, "--db", db)
    assert undo.exit_code == errors.EXIT_NOTHING and "not touched" in undo.stderr
    assert elsewhere.exists() and not Path(source).exists()
    assert cli("find", "a red circle", "--db", db).exit_code == 0


def test_case14_huge_files_are_refused_unread(cli, small_library, tmp_path):
    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as handle:
        handle.truncate(3 * 1024 ** 3)  # 3 GB, no blocks on disk
    with pytest.raises(images.ImageError, match="larger than"):
        images.read_and_hash(str(sparse))
    result = cli("index", small_library, "--db", tmp_path / "index.db", "--model", TINY_MODEL, "--quiet", "--json",
                 "--max-file-size", "0.001")
    report = json.loads(result.stdout)
    assert report["new"] == 0 and all("larger than" in s["reason"] for s in report["skipped"])


# -- structure ---------------------------------------------------------------------


def test_every_library_error_carries_its_exit_code_and_anything_else_is_an_internal_error(cli, small_library,
                                                                                         tmp_path, monkeypatch):
    from clipsearch import store
    from clipsearch.dedupe import groups as dedupe
    from clipsearch.indexing import job as indexer
    from clipsearch.models import torch_encoder as encoder

    for error, code in [(store.StoreError, 3), (store.MissingIndexError, 1), (store.ModelMismatchError, 3),
                        (search.QueryError, 2), (search.EmptyIndexError, 1), (encoder.ModelError, 2),
                        (indexer.IndexingError, 2), (moves.MoveError, 2), (dedupe.DedupeError, 2),
                        (tags.TagError, 2), (errors.IndexBusyError, 4)]:
        assert issubclass(error, errors.ClipsearchError) and error.exit_code == code
    db = tmp_path / "index.db"
    _index(cli, small_library, db)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(search, "find", broken)
    crash = cli("find", "cat", "--db", db)
    assert crash.exit_code == errors.EXIT_INTERNAL and "internal error" in crash.stderr
    assert "Traceback" not in crash.stderr and "please report" in crash.stderr
    debug = cli("--debug", "find", "cat", "--db", db)
    assert debug.exit_code == errors.EXIT_INTERNAL and "Traceback" in debug.stderr


# -- issue 17: user mistakes are messages, read-only commands write nothing, tags stay small --------------


def _clipsearch(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command line in its own process (wide COLUMNS: rich does not wrap the message)."""
    return subprocess.run([sys.executable, "-m", "clipsearch", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400", **(env or {})}, timeout=300)


def test_issue17_user_mistakes_exit_2_with_a_message_naming_the_value(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    not_utf8 = tmp_path / "config.toml"
    not_utf8.write_bytes(b"top = 5\n# caf\xe9\n")
    cases = [
        (("find", "red", "--after", "9999-12-31"), {}, ["--after", "9999-12-31", "9998"]),
        (("find", "red", "--before", "9999"), {}, ["--before", "'9999'", "9998"]),
        (("find", "red", "--after", "2024-00"), {}, ["--after", "2024-00", "month must be in 1..12"]),
        (("similar", min(small_library.glob("*.jpg")), "--after", "2024-13"), {}, ["2024-13", "2024-06-15"]),
        (("index", small_library), {"CLIPSEARCH_LOCK_WAIT": "abc"}, ["CLIPSEARCH_LOCK_WAIT='abc'", "0 or more"]),
        (("tag",), {"CLIPSEARCH_LOCK_WAIT": "nan"}, ["CLIPSEARCH_LOCK_WAIT='nan'", "0 or more"]),
        (("find", "red"), {"CLIPSEARCH_CONFIG": str(not_utf8)}, [str(not_utf8), "not UTF-8", "byte 13"]),
        (("index", small_library, "--max-megapixels", "nan"), {}, ["--max-megapixels nan", "above 0"]),
        (("index", small_library, "--max-megapixels", "-1"), {}, ["--max-megapixels -1", "above 0"]),
        (("index", small_library, "--max-file-size", "nan"), {}, ["--max-file-size nan", "above 0"]),
    ]
    for args, env, expected in cases:
        result = _clipsearch(*args, "--db", db, env=env)
        assert result.returncode == errors.EXIT_BAD_INPUT, (args, result.returncode, result.stderr)
        assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr
        for text in expected:
            assert text in result.stderr, (args, result.stderr)
    with Store.open(db) as store:
        assert store.count() == 12, "the refused index runs changed nothing"


def test_issue17_date_filters_accept_the_last_year_and_reject_impossible_dates():
    assert search.Filters.parse("9998-12-31", "9998").after == "9998-12-31T00:00:00"
    assert search.Filters.parse(before="9998-12").before == "9999-01-01T00:00:00"
    for text in ("2024-00", "2024-06-00", "2023-02-29", "0000", "10000", "2024-06-15T24:00"):
        with pytest.raises(search.QueryError, match="--after"):
            search.Filters.parse(after=text)


def _foreign_and_empty_files(folder: Path) -> dict[str, Path]:
    """SQLite files that are not (yet) indexes: empty, marked by another program, holding its tables."""
    folder.mkdir()
    files = {name: folder / f"{name}.db" for name in ("empty", "application_id", "user_version", "tables")}
    files["empty"].write_bytes(b"")
    for name, statement in (("application_id", "PRAGMA application_id = 12345"),
                            ("user_version", "PRAGMA user_version = 7"),
                            ("tables", "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")):
        connection = sqlite3.connect(files[name])
        connection.execute(statement)
        connection.commit()
        connection.close()
    return files


def test_issue17_read_only_commands_never_create_or_convert_a_file(cli, small_library, tmp_path):
    files = _foreign_and_empty_files(tmp_path / "dbs")
    missing = tmp_path / "dbs" / "missing.db"
    photo = min(small_library.glob("*.jpg"))
    before = {name: path.read_bytes() for name, path in files.items()}
    commands = [("info",), ("find", "a red circle"), ("find", "--tag", "red"), ("tags", "list"), ("similar", photo),
                ("dedupe",), ("tags", "export"), ("tags", "add", photo, "x")]
    for command in commands:
        for name, path in [*files.items(), ("missing", missing)]:
            result = cli(*command, "--db", path)
            expected = errors.EXIT_NOTHING if name in ("empty", "missing") else errors.EXIT_INDEX
            assert result.exit_code == expected, (command, name, result.output)
            assert ("No index" if expected == errors.EXIT_NOTHING else "not a clipsearch index") in result.stderr
            if name == "missing":
                assert not path.exists(), command
            else:
                assert path.read_bytes() == before[name], (command, name)
            leftovers = [p.name for p in path.parent.iterdir() if not p.name.endswith(".db")]
            assert not leftovers, (command, name, leftovers)

    for name in ("application_id", "user_version", "tables"):
        result = cli("index", small_library, "--db", files[name], "--model", TINY_MODEL, "--quiet")
        assert result.exit_code == errors.EXIT_INDEX and "left untouched" in result.stderr, result.stderr
        assert files[name].read_bytes() == before[name]
    _index(cli, small_library, files["empty"])  # only index makes an index, and marks it as ours
    connection = sqlite3.connect(files["empty"])
    assert connection.execute("PRAGMA application_id").fetchone()[0] == store_module.APPLICATION_ID
    connection.close()
    assert cli("find", "a red circle", "--db", files["empty"]).exit_code == 0


def test_issue17_tags_are_short_plain_text(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    photo = min(small_library.glob("*.jpg"))
    longest = "x" * 200  # the limit
    assert cli("tags", "add", photo, longest, "--db", db).exit_code == 0
    for bad, message in [("y" * 201, "at most 200 characters"),
                         ("red\x1b[31m", "control character (U+001B)"),
                         ("a\u202eb", "control character (U+202E)"),
                         ("bad\udcff", "not UTF-8")]:
        for command in (("tags", "add", photo, bad), ("tags", "remove", photo, bad), ("find", "--tag", bad)):
            result = cli(*command, "--db", db)
            assert result.exit_code == errors.EXIT_BAD_INPUT and message in result.stderr, (command, result.stderr)
    assert cli("tags", "add", photo, "tab\tand  spaces", "--db", db).exit_code == 0
    with Store.open(db) as store:
        stored = {row["tag"] for row in TagStore(store).tags_of([store.id_for_path(str(photo))])[
            store.id_for_path(str(photo))]}
    assert stored == {longest, "tab and spaces"}, "whitespace is made one space; nothing refused was stored"

    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("red\nblue: a blue thing\n" + "z" * 201 + ": a long one\n")
    result = cli("tag", "--db", db, "--vocab", vocabulary)
    assert result.exit_code == errors.EXIT_BAD_INPUT and f"{vocabulary}, line 3" in result.stderr, result.stderr
    vocabulary.write_text("red\ngr\x07een\n")
    result = cli("tag", "--db", db, "--vocab", vocabulary)
    assert result.exit_code == errors.EXIT_BAD_INPUT and "line 2" in result.stderr and "U+0007" in result.stderr


def test_issue16_removing_a_tag_the_image_does_not_have_is_an_error(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    photo = min(small_library.glob("*.jpg"))
    bare = cli("tags", "remove", photo, "nosuchtag", "--db", db)
    assert bare.exit_code == errors.EXIT_BAD_INPUT and "no tag 'nosuchtag'" in bare.stderr
    assert "it has no tags" in bare.stderr
    assert cli("tags", "add", photo, "holiday", "beach", "--db", db).exit_code == 0
    wrong = cli("tags", "remove", photo, "nosuchtag", "other", "--db", db)
    assert wrong.exit_code == errors.EXIT_BAD_INPUT and "'nosuchtag', 'other'" in wrong.stderr
    assert "its tags are: beach, holiday" in wrong.stderr
    with Store.open(db) as store:
        assert not list(store.query("SELECT tag FROM tags WHERE source = 'rejected'")), "a refused remove wrote"
    removed = cli("tags", "remove", photo, "beach", "nosuchtag", "--db", db, "--json")
    assert removed.exit_code == 0 and [t["tag"] for t in json.loads(removed.stdout)["tags"]] == ["holiday"]


def test_issue16_a_query_ending_in_an_operator_is_an_error(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    _index(cli, small_library, db)
    for query in (["a red circle", "-"], ["a red circle -"], ["a red circle", "+"]):
        result = cli("find", *query, "--db", db)
        assert result.exit_code == errors.EXIT_BAD_INPUT and "Nothing after" in result.stderr, (query, result.stderr)
    doubled = cli("find", "red", "+", "-", "circle", "--db", db)
    assert doubled.exit_code == errors.EXIT_BAD_INPUT and "Nothing between '+' and '-'" in doubled.stderr
    for fine in (["+", "a red circle"], ["a red circle", "-", "blue"], ["t-shirt"], ["C++ code"]):
        assert cli("find", *fine, "--db", db).exit_code == 0, fine


RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
DC = "{http://purl.org/dc/elements/1.1/}"


def _subject_container(sidecar: Path) -> tuple[str, list[str]]:
    """dc:subject's array type (Bag, Seq...) and items, read with an XML parser."""
    import xml.etree.ElementTree as ElementTree

    subject = ElementTree.fromstring(sidecar.read_bytes().split(b"?>", 1)[1].rsplit(b"<?xpacket", 1)[0]).find(
        f".//{DC}subject")
    assert subject is not None and len(subject) == 1
    container = subject[0]
    return container.tag.removeprefix(RDF), [li.text or "" for li in container.findall(f"{RDF}li")]


def test_issue16_xmp_keywords_are_an_rdf_bag_that_exiftool_accepts(tmp_path):
    sidecar = tmp_path / "IMG_0001.jpg.xmp"
    keywords = ["red", "Doe, John", "a<b&c", "type=Alt x"]
    assert sidecars.write_keywords(str(sidecar), keywords) == "written"
    assert _subject_container(sidecar) == ("Bag", keywords)
    assert sidecars.read_keywords(str(sidecar)) == keywords

    # A sidecar an older version wrote (rdf:Seq) with other fields: merged into, and made a Bag.
    older = tmp_path / "IMG_0002.jpg.xmp"
    older.write_text(
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="3">'
        "<dc:subject><rdf:Seq><rdf:li>holiday</rdf:li></rdf:Seq></dc:subject>"
        '<dc:creator><rdf:Seq><rdf:li>Ada</rdf:li></rdf:Seq></dc:creator>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end=\"w\"?>\n")
    assert sidecars.write_keywords(str(older), ["beach"]) == "merged"
    assert _subject_container(older) == ("Bag", ["holiday", "beach"])
    text = older.read_text()
    assert 'xmp:Rating="3"' in text and "<rdf:li>Ada</rdf:li>" in text

    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed: the XML checks above ran, exiftool's own did not")
    for path in (sidecar, older):
        edited = subprocess.run(["exiftool", "-overwrite_original", "-XMP-dc:Subject+=extra", str(path)],
                                capture_output=True, text=True, timeout=60)
        assert edited.returncode == 0 and "Warning" not in edited.stdout + edited.stderr, edited.stdout + edited.stderr
        assert _subject_container(path)[0] == "Bag"


def test_issue17_photos_that_would_share_a_lightroom_sidecar_get_none(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    jpeg = min(small_library.glob("*.jpg"))
    png = jpeg.with_suffix(".png")
    Image.open(jpeg).save(png)
    _index(cli, small_library, db)
    other = sorted(small_library.glob("*.jpg"))[1]
    for photo, tag in ((jpeg, "from-jpeg"), (png, "from-png"), (other, "alone")):
        assert cli("tags", "add", photo, tag, "--db", db).exit_code == 0

    export = cli("tags", "export", "--db", db, "--sidecar", "lightroom")
    assert export.exit_code == 0
    shared = jpeg.with_suffix(".xmp")
    assert not shared.exists(), "neither photo's tags went into the shared sidecar"
    assert f"not written {shared}" in export.stderr and jpeg.name in export.stderr and png.name in export.stderr
    assert "--sidecar digikam" in export.stderr and "1 written" in export.stderr
    assert sidecars.read_keywords(str(other.with_suffix(".xmp"))) == ["alone"]

    report = sidecars.export_sidecars({str(jpeg): ["a"], str(png): ["b"]}, sidecars.SidecarStyle.lightroom)
    assert report.written == 0 and [sidecar for sidecar, _ in report.failed] == [str(shared)]
    digikam = cli("tags", "export", "--db", db)
    assert digikam.exit_code == 0 and "3 written" in digikam.stderr
    assert sidecars.read_keywords(str(jpeg) + ".xmp") == ["from-jpeg"]
    assert sidecars.read_keywords(str(png) + ".xmp") == ["from-png"]
