"""The Python API: `clipsearch.Library` does what the commands do, opens and loads only what a call needs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

import clipsearch
from clipsearch import Library
from clipsearch.store import MissingIndexError

from .conftest import REPO, TINY_MODEL


def _run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          cwd=REPO, timeout=300, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def test_import_clipsearch_is_light_and_exports_library():
    result = _run("""
        import sys
        import clipsearch
        light = not {"numpy", "torch", "sqlite_utils"} & set(sys.modules)
        from clipsearch import Library
        print(light, clipsearch.__all__, Library.__module__, "torch" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 1)[0] == "True", "import clipsearch loads neither numpy nor torch"
    assert result.stdout.rstrip().endswith("['Library', '__version__'] clipsearch.library False")
    assert clipsearch.Library is Library


def test_searches_give_what_the_command_line_prints(small_library, tmp_path, cli):
    db = tmp_path / "photos.db"
    with Library(db, model=TINY_MODEL, device="cpu") as library:
        report = library.index(small_library)
        assert report.new == 12 and library.count() == 12
        hits = library.find("a red circle", top=4)
        like = library.similar(hits[0].path, top=3)
    found = json.loads(cli("find", "a red circle", "--db", db, "--top", "4", "--json").stdout)
    assert [h["path"] for h in found] == [h.path for h in hits]
    assert [h["score"] for h in found] == [round(h.score, 6) for h in hits]
    similar = json.loads(cli("similar", hits[0].path, "--db", db, "--top", "3", "--json").stdout)
    assert [h["path"] for h in similar] == [h.path for h in like] and hits[0].path not in similar
    info = json.loads(cli("info", "--db", db, "--json").stdout)
    with Library(db) as library:
        assert library.info() == info


def test_searching_a_missing_index_creates_nothing(tmp_path):
    db = tmp_path / "none" / "index.db"
    with Library(db, model=TINY_MODEL) as library, pytest.raises(MissingIndexError):
        library.find("a red circle")
    assert not db.parent.exists()


def test_database_calls_load_no_model(small_library, tmp_path):
    db = tmp_path / "photos.db"
    with Library(db, model=TINY_MODEL, device="cpu") as library:
        library.index(small_library)
        library.tag(vocab=_vocabulary(tmp_path))
    result = _run(f"""
        import sys
        from clipsearch import Library
        with Library({str(db)!r}) as library:
            print(library.info()["images"], len(library.tags()) > 0, type(library.dedupe()).__name__,
                  len(library.find(tags=[library.tags()[0]["tag"]])) > 0)
        print("torch" in sys.modules, "transformers" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["12 True Duplicates True", "False False"]


def test_manual_tags_and_removed_auto_tags(small_library, tmp_path):
    db = tmp_path / "photos.db"
    with Library(db, model=TINY_MODEL, device="cpu") as library:
        library.index(small_library)
        library.tag(vocab=_vocabulary(tmp_path), threshold=-1.0, max_tags=2)
        photo = min(small_library.glob("*.jpg"))
        auto = library.tags_by_path(small_library)[str(photo)]
        assert len(auto) == 2
        after = library.add_tags(photo, "grandma")
        assert ("grandma", "manual") in [(t["tag"], t["source"]) for t in after]
        after = library.remove_tags(photo, auto[0], "grandma")
        assert {t["tag"] for t in after} == {auto[1]}
        library.tag(vocab=_vocabulary(tmp_path), threshold=-1.0, max_tags=2, retag=True)
        assert auto[0] not in library.tags_by_path(small_library)[str(photo)], "a removed auto tag stays away"


def test_wheel_ships_py_typed_and_no_test_scenes(tmp_path):
    source = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name if source.exists() else _mkdir(source) / name)
    for package in ("clipsearch", "clipsearch_dev"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300,
                           check=False)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("clipsearch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "clipsearch/py.typed" in names and "clipsearch/library.py" in names
    assert "clipsearch/tags/vocabulary.txt" in names
    assert not [n for n in names if "scenes" in n or n.startswith("clipsearch_dev")]


def _mkdir(path):
    path.mkdir(parents=True)
    return path


def _vocabulary(tmp_path):
    from clipsearch_dev import scenes

    path = tmp_path / "vocabulary.txt"
    path.write_text(scenes.tag_vocabulary(), encoding="utf-8")
    return path


def test_tagging_reports_through_the_same_progress_as_indexing(small_library, tmp_path):
    from clipsearch import Progress

    class Recorder(Progress):
        def __init__(self) -> None:
            self.events: list[tuple] = []

        def started(self, description: str, total: int) -> None:
            self.events.append(("started", description, total))

        def advance(self, count: int = 1) -> None:
            self.events.append(("advance", count))

    with Library(tmp_path / "photos.db", model=TINY_MODEL, device="cpu") as library:
        indexing = Recorder()
        library.index(small_library, progress=indexing)
        tagging = Recorder()
        report = library.tag(progress=tagging)
    assert sum(count for kind, count in indexing.events if kind == "advance") == 12
    assert report.tagged == 12 and tagging.events[0] == ("started", "Tagging", 12)
    assert sum(event[1] for event in tagging.events[1:]) == 12
