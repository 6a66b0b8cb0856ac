"""Shared fixtures: the project's own tiny CLIP model and generated photo libraries.

Nothing here downloads anything: the model is the one scripts/train_tiny_clip.py
trained and the repository ships, loaded through the same code path as a Hub model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipsearch.cli import app
from clipsearch.indexing.job import IndexOptions, index_folders
from clipsearch.models.torch_encoder import Encoder
from clipsearch.store import Store
from clipsearch_dev import scenes

# Set before transformers is first imported (it reads this once): tests never reach the Hub.
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = str(REPO / "models" / "tiny-clip")


@pytest.fixture(scope="session")
def shared_cache_home(tmp_path_factory) -> Path:
    """One XDG cache for the session: the tiny model's text encoder is exported once, not per test."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session", autouse=True)
def exported_text_encoder(shared_cache_home, encoder) -> Path:
    """The tiny model's text and image towers exported once, up front, so no test's output depends on running
    first (an index run on the CPU uses the exported image tower); returns the text encoder's folder."""
    from clipsearch.models import onnx_image as imageencoder
    from clipsearch.models import onnx_text as textencoder

    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(shared_cache_home)
    try:
        imageencoder.export(encoder)
        return textencoder.export(encoder)
    finally:
        if previous is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path_factory, shared_cache_home):
    """No test touches the user's index, caches, model cache or network."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared_cache_home))
    monkeypatch.delenv("CLIPSEARCH_PREVIEW", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))  # no test reads the user's config file
    monkeypatch.delenv("CLIPSEARCH_CONFIG", raising=False)
    monkeypatch.delenv("CLIPSEARCH_LIBRARY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CLIPSEARCH_DB", raising=False)
    monkeypatch.delenv("CLIPSEARCH_MODEL", raising=False)


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return Encoder.load(TINY_MODEL, "cpu")


@pytest.fixture(scope="session")
def scene_library(tmp_path_factory) -> list[tuple[Path, scenes.Scene]]:
    """A read-only library of 160 generated photos with known content."""
    return scenes.write_library(tmp_path_factory.mktemp("scenes"), 160, seed=7)


@pytest.fixture(scope="session")
def scene_index(tmp_path_factory, scene_library, encoder) -> Path:
    """An index of `scene_library`; tests must not write to it (copy it first)."""
    db_path = tmp_path_factory.mktemp("index") / "index.db"
    with Store.open(db_path) as store:
        index_folders([scene_library[0][0].parent], store, encoder=encoder, options=IndexOptions(batch_size=16))
    return db_path


@pytest.fixture
def store(scene_index, tmp_path):
    """A writable copy of the scene index."""
    copy = tmp_path / "index.db"
    shutil.copy(scene_index, copy)
    with Store.open(copy) as opened:
        yield opened


@pytest.fixture
def small_library(tmp_path) -> Path:
    """A writable library of 12 generated photos."""
    folder = tmp_path / "photos"
    scenes.write_library(folder, 12, seed=3)
    return folder


@pytest.fixture
def cli():
    """Run the real CLI in-process; returns typer's Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None, input: str | None = None):
        return runner.invoke(app, [str(a) for a in args], env=env, input=input, catch_exceptions=False)

    return invoke


def set_mtime(path: Path, seconds_later: int) -> None:
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + seconds_later * 1_000_000_000))
