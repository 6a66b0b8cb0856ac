import os
import shutil
import stat

import pytest

from clipsearch.indexing.job import IndexingError, IndexOptions, Progress, index_folders
from clipsearch.store import ModelMismatchError, Store
from clipsearch.store import vectors as vectorcache

from .conftest import TINY_MODEL, set_mtime


def run(folder, db_path, **kwargs):
    kwargs.setdefault("model", TINY_MODEL)
    kwargs.setdefault("options", IndexOptions(batch_size=4, workers=2))
    with Store.open(db_path) as store:
        return index_folders([folder], store, **kwargs)


def paths_in(db_path) -> set[str]:
    with Store.open(db_path) as store:
        return set(store.paths())


def on_disk(folder) -> set[str]:
    return {str(p) for p in folder.rglob("*.jpg")}


def test_first_run_indexes_everything_second_run_does_no_model_work(small_library, tmp_path):
    db = tmp_path / "index.db"
    first = run(small_library, db)
    assert (first.new, first.encoded, first.skipped) == (12, 12, [])
    assert first.model_loaded
    assert paths_in(db) == on_disk(small_library)
    with Store.open(db) as store:
        assert store.model() == (TINY_MODEL, 64)
        assert vectorcache.read(store.cache_path, store.identity(), 64) is not None, "index leaves a fresh query cache"

    second = run(small_library, db)
    assert second.unchanged == 12
    assert (second.new, second.updated, second.encoded, second.reused) == (0, 0, 0, 0)
    assert not second.model_loaded, "an unchanged library must not even load the model"


def test_touch_rename_copy_modify_delete(small_library, tmp_path):
    db = tmp_path / "index.db"
    run(small_library, db)
    files = sorted(small_library.glob("*.jpg"))
    with Store.open(db) as store:
        vector_before = store.vector_for_path(str(files[1]))

    set_mtime(files[0], 60)  # touched: same bytes, new mtime
    renamed = small_library / "renamed.jpg"
    files[1].rename(renamed)
    (small_library / "copies").mkdir()
    shutil.copy(files[2], small_library / "copies" / "copy.jpg")
    files[3].unlink()

    report = run(small_library, db)
    assert report.encoded == 0 and not report.model_loaded, "reuse needs no model"
    assert report.reused == 3  # touched, renamed, copied
    assert report.removed == 2  # the rename's old path and the deleted file
    assert paths_in(db) == on_disk(small_library)
    with Store.open(db) as store:
        assert (store.vector_for_path(str(renamed)) == vector_before).all()

    # New content in an existing file is re-embedded.
    shutil.copy(files[5], files[4])
    set_mtime(files[4], 120)
    report = run(small_library, db)
    assert report.reused == 1  # files[4] now holds files[5]'s bytes: reused, and counted so
    (small_library / "copies" / "copy.jpg").write_bytes(b"")  # an indexed file that became broken
    from clipsearch_dev import scenes

    scenes.draw(scenes.random_scene(__import__("random").Random(99), 200, 150)).save(files[6])
    set_mtime(files[6], 180)
    report = run(small_library, db)
    assert (report.updated, report.encoded) == (1, 1)
    assert [reason for _, reason in report.skipped] == ["empty file (0 bytes)"]
    assert str(small_library / "copies" / "copy.jpg") not in paths_in(db), "a broken file loses its stale vector"


def test_bad_files_are_skipped_with_reasons_and_the_rest_indexed(small_library, tmp_path):
    good = sorted(small_library.glob("*.jpg"))
    (small_library / "empty.jpg").write_bytes(b"")
    (small_library / "notes.png").write_text("shopping list: milk")
    (small_library / "half.jpg").write_bytes(good[0].read_bytes()[:2000])
    (small_library / "dangling.jpg").symlink_to(small_library / "nowhere.jpg")
    locked = small_library / "locked.jpg"
    shutil.copy(good[1], locked)
    locked.chmod(0)

    class DeleteAfterScan(Progress):
        def scanned(self, changes):
            good[2].unlink()  # vanishes between the scan and the read

    db = tmp_path / "index.db"
    report = run(small_library, db, progress=DeleteAfterScan())
    reasons = {os.path.basename(path): reason for path, reason in report.skipped}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["notes.png"].startswith("not an image")
    assert "truncated" in reasons["half.jpg"]
    assert reasons["dangling.jpg"].startswith("broken symlink")
    assert reasons[good[2].name] == "vanished during the run"
    if os.geteuid() != 0:  # root reads anything; test_images covers the message
        assert reasons["locked.jpg"].startswith("permission denied")
    assert report.new == len(paths_in(db)) >= 10

    # Unchanged broken files are not retried, but still reported.
    again = run(small_library, db)
    assert again.encoded == 0 and not again.model_loaded
    assert {os.path.basename(p) for p, _ in again.skipped} >= {"empty.jpg", "notes.png", "half.jpg"}
    locked.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_interrupted_run_resumes_where_it_stopped(small_library, tmp_path):
    class InterruptAfterTwoBatches(Progress):
        done = 0

        def advance(self, count=1):
            self.done += count
            if self.done >= 8:
                raise KeyboardInterrupt

    db = tmp_path / "index.db"
    with pytest.raises(KeyboardInterrupt):
        run(small_library, db, progress=InterruptAfterTwoBatches())
    saved = paths_in(db)
    assert 4 <= len(saved) < 12, "whole batches written before the interrupt are kept"

    report = run(small_library, db)
    assert report.unchanged == len(saved)
    assert report.new == 12 - len(saved)
    assert paths_in(db) == on_disk(small_library)


def test_missing_folder_changes_nothing(small_library, tmp_path):
    db = tmp_path / "index.db"
    run(small_library, db)
    with pytest.raises(IndexingError, match="not a folder"):
        run(tmp_path / "unplugged-drive", db)
    assert paths_in(db) == on_disk(small_library)


def test_other_model_is_refused(small_library, tmp_path):
    db = tmp_path / "index.db"
    run(small_library, db)
    with pytest.raises(ModelMismatchError, match="built with model"):
        run(small_library, db, model="openai/clip-vit-base-patch32")


def test_several_folders_and_only_those_are_pruned(tmp_path):
    from clipsearch_dev import scenes

    scenes.write_library(tmp_path / "a", 3, seed=1)
    scenes.write_library(tmp_path / "b", 3, seed=2)
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([tmp_path / "a", tmp_path / "b"], store, model=TINY_MODEL)
        assert store.count() == 6
        for path in (tmp_path / "b").iterdir():
            path.unlink()
        report = index_folders([tmp_path / "a"], store)  # b is not being indexed: left alone
        assert report.removed == 0 and store.count() == 6
        report = index_folders([tmp_path / "b"], store)
        assert report.removed == 3 and store.count() == 3


class RecordingProgress(Progress):
    """Every call the index job makes, in order (model loading is reported from a decoding thread)."""

    def __init__(self, db_path=None):
        import threading

        self.calls: list[tuple] = []
        self.stored_at_advance: list[int] = []  # images in the index when each advance came
        self._db_path = db_path
        self._lock = threading.Lock()

    def _record(self, *call) -> None:
        with self._lock:
            self.calls.append(call)

    def scanned(self, changes):
        self._record("scanned", len(changes.to_index))

    def advance(self, count=1):
        if self._db_path is not None:
            import sqlite3
            from contextlib import closing

            with closing(sqlite3.connect(f"file:{self._db_path}?mode=ro", uri=True)) as reader:
                self.stored_at_advance.append(reader.execute("SELECT count(*) FROM images").fetchone()[0])
        self._record("advance", count)

    def skipped(self, path, reason):
        self._record("skipped", path, reason)

    def model_loading(self, model_id):
        self._record("model_loading", model_id)

    def model_loaded(self):
        self._record("model_loaded")

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def advanced(self) -> int:
        return sum(call[1] for call in self.calls if call[0] == "advance")


def test_progress_says_loading_model_then_counts_images_as_they_are_decoded(small_library, tmp_path):
    from clipsearch import Library

    db = tmp_path / "index.db"
    progress = RecordingProgress(db)
    with Library(db, model=TINY_MODEL) as library:
        # One batch larger than the library: nothing is embedded until every file is decoded.
        report = library.index(small_library, options=IndexOptions(batch_size=64, workers=2), progress=progress)
    names = progress.names()
    assert progress.calls[0] == ("scanned", 12)
    assert names.count("model_loading") == 1 and names.count("model_loaded") == 1
    assert ("model_loading", TINY_MODEL) in progress.calls
    assert names.index("model_loading") < names.index("model_loaded") < names.index("advance"), names
    assert "skipped" not in names
    assert progress.advanced() == 12 == report.new == report.encoded and report.model_loaded
    # The bar counts decoded images: it reached 12 while no batch had been embedded and stored yet.
    assert progress.stored_at_advance == [0] * 12
    assert paths_in(db) == on_disk(small_library)

    # A copy of an indexed photo reuses its vector: counted, and no model is loaded.
    (small_library / "copies").mkdir()
    shutil.copy(min(small_library.glob("*.jpg")), small_library / "copies" / "copy.jpg")
    again = RecordingProgress()
    with Library(db) as library:
        report = library.index(small_library, progress=again)
    assert again.calls[0] == ("scanned", 1)
    assert "model_loading" not in again.names() and "model_loaded" not in again.names()
    assert again.advanced() == 1 == report.reused and not report.model_loaded


def test_index_quiet_draws_no_progress_bar_on_a_terminal(cli, small_library, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from clipsearch.cli import progress

    def index(db_name: str, *extra: str) -> str:
        screen = io.StringIO()  # stands for a terminal: the bar is drawn only on one
        monkeypatch.setattr(progress, "stderr", Console(file=screen, force_terminal=True, force_interactive=True,
                                                        width=120, color_system=None))
        result = cli("index", small_library, "--db", tmp_path / db_name, "--model", TINY_MODEL, *extra)
        assert result.exit_code == 0, result.output
        return screen.getvalue()

    drawn = index("a.db")
    assert "12/12" in drawn and "\x1b[?25l" in drawn, "without --quiet a terminal gets the bar (control check)"
    quiet = index("b.db", "--quiet")
    assert "Found 12 images" in drawn and "Found 12 images" not in quiet, "--quiet: no chatter either (cron)"
    assert "12/12" not in quiet and "\x1b[?25l" not in quiet and "━" not in quiet, quiet


def test_ctrl_c_while_the_model_loads_stops_every_worker_without_loading_again(monkeypatch):
    """The first decoding thread that needs the model loads it (a one-time export can take a minute). Ctrl-C there
    must not have the next thread start the export again while the run stops: it gets the same interrupt."""
    from clipsearch.indexing import embed
    from clipsearch.options import ImagePrecision

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args)
        raise KeyboardInterrupt

    monkeypatch.setattr(embed, "load_image_encoder", interrupted)
    lazy = embed._LazyEncoder(TINY_MODEL, None, ImagePrecision.auto, Progress())
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            lazy.get()
    assert len(calls) == 1
