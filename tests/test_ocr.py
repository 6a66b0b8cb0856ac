"""Text in photos: the bundled PP-OCR models reading generated photos with known words, the `ocr` pass
(incremental, keyed by content, offline), and `find --text` alone and with a query and filters."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from clipsearch.ocr import engine
from clipsearch.store import Store
from clipsearch.store.text import TextStore
from clipsearch_dev import scenes, text_scenes

from .conftest import TINY_MODEL

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
# name -> (scene colour and shape, lines of text, year taken)
PHOTOS = {
    "receipt-red": ("red", "circle", ["IKEA", "Total 42"], 2025),
    "receipt-blue": ("blue", "square", ["IKEA", "Kitchen"], 2025),
    "old-receipt": ("red", "circle", ["IKEA"], 2022),
    "sign-double": ("green", "triangle", ["Double parking", "Tower"], 2024),
    "sign-parking": ("yellow", "star", ["Parking", "Garden"], 2024),
    "cafe": ("purple", "cross", ["Café", "Bakery"], 2024),
    "no-text": ("orange", "circle", [], 2024),
}


def _fonts() -> list[str]:
    return [FONT] if os.path.exists(FONT) else [text_scenes.DEFAULT_FONT]


def write_photos(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    """The photos of PHOTOS (or those named): big shapes (the tiny CLIP model sees them), clear words, and a
    file time in the year given (their date taken, as they carry no EXIF)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for number, name in enumerate(names or list(PHOTOS)):
        colour, shape, lines, year = PHOTOS[name]
        rng = random.Random(number)
        background = next(b for b in scenes.BACKGROUNDS if (colour, b) not in scenes._LOW_CONTRAST and b != "night")
        scene = scenes.Scene(colour, shape, background, 640, 480, 0.5, 0.5, 0.3, 0.0, number)
        image, placed = text_scenes.draw_text_photo(rng, lines, (640, 480), [40] * len(lines), max_angle=2,
                                                    font_choices=_fonts(), scene=scene)
        assert len(placed) == len(lines)
        path = folder / f"{name}.jpg"
        image.save(path, quality=92)
        stamp = datetime(year, 6, 1).timestamp()
        os.utime(path, (stamp, stamp))
        written[name] = path
    return written


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """The photos indexed with `index --ocr`; read-only for the tests (copy it to change it)."""
    from typer.testing import CliRunner

    from clipsearch.cli import app

    folder = tmp_path_factory.mktemp("ocr")
    photos = write_photos(folder / "photos")
    db = folder / "index.db"
    result = CliRunner().invoke(app, ["index", str(folder / "photos"), "--db", str(db), "--model", TINY_MODEL,
                                      "--ocr"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"Read the text in {len(PHOTOS)} photos" in result.stderr
    return db, photos


def _found(cli, db: Path, *args: str) -> list[str]:
    result = cli("find", *args, "--db", db, "--paths")
    assert result.exit_code in (0, 1), result.output
    return [Path(line).stem for line in result.stdout.splitlines()]


def test_the_bundled_models_read_the_words_on_photos(library):
    db, photos = library
    with Store.open(db) as store:
        texts = TextStore(store)
        read = {name: " ".join(line["text"] for line in texts.lines_of(store.id_for_path(str(path)) or -1))
                for name, path in photos.items()}
    for name, (_, _, lines, _) in PHOTOS.items():
        for line in lines:
            assert line.lower() in read[name].lower(), (name, read[name])
    assert read["no-text"] == ""
    with Store.open(db) as store:
        lines = TextStore(store).lines_of(store.id_for_path(str(photos["cafe"])) or -1)
    assert {"text", "confidence", "box"} <= set(lines[0]) and 0.5 <= lines[0]["confidence"] <= 1
    assert all(0 <= x <= 1 and 0 <= y <= 1 for x, y in lines[0]["box"])


def test_text_queries_words_phrases_prefixes_and_accents(cli, library):
    db, _ = library
    assert set(_found(cli, db, "--text", "ikea")) == {"receipt-red", "receipt-blue", "old-receipt"}
    assert set(_found(cli, db, "--text", "parking")) == {"sign-double", "sign-parking"}
    assert _found(cli, db, "--text", '"double parking"') == ["sign-double"]
    assert set(_found(cli, db, "--text", "park*")) == {"sign-double", "sign-parking"}
    assert _found(cli, db, "--text", "cafe") == ["cafe"]  # accents folded both ways
    assert _found(cli, db, "--text", "CAFÉ") == ["cafe"]
    assert _found(cli, db, "--text", "ikea kitchen") == ["receipt-blue"]  # every word must match
    assert _found(cli, db, "--text", "42") == ["receipt-red"]
    nothing = cli("find", "--text", "volcano", "--db", db)
    assert nothing.exit_code == 1 and nothing.stdout == ""


@pytest.mark.parametrize("query", ['"unclosed', "park**", "(", "nosuch:column", "AND"])
def test_a_malformed_text_query_is_a_clear_error(cli, library, query):
    db, _ = library
    result = cli("find", "--text", query, "--db", db)
    assert result.exit_code == 2, result.output
    assert "is not a text query" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) <= 3


def test_text_with_a_query_and_filters_keeps_the_matches_ranked_by_the_query(cli, library):
    db, _ = library
    ranked = json.loads(cli("find", "a red circle", "--text", "ikea", "--db", db, "--json").stdout)
    names = [Path(hit["path"]).stem for hit in ranked]
    assert set(names) == {"receipt-red", "receipt-blue", "old-receipt"}
    assert names[-1] == "receipt-blue"  # the blue square comes last for "a red circle"
    assert ranked[0]["score"] >= ranked[-1]["score"]
    assert all("[IKEA]" in hit["text"] for hit in ranked)  # the snippet, with the match marked
    recent = _found(cli, db, "a red circle", "--text", "ikea", "--after", "2024")
    assert recent == ["receipt-red", "receipt-blue"]
    assert _found(cli, db, "--text", "ikea", "--before", "2023") == ["old-receipt"]
    only_folder = _found(cli, db, "--text", "parking", "--in", str(Path(ranked[0]["path"]).parent))
    assert set(only_folder) == {"sign-double", "sign-parking"}
    plain = json.loads(cli("find", "a red circle", "--db", db, "--json", "--top", "2").stdout)
    assert all(hit["text"] is None for hit in plain)


def test_a_second_run_reads_nothing_and_info_counts_the_text(cli, library):
    db, _ = library
    again = cli("ocr", "--db", db, "--json")
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert (report["read"], report["skipped"]) == (0, len(PHOTOS))
    info = json.loads(cli("info", "--db", db, "--json").stdout)
    assert (info["text_read"], info["with_text"]) == (len(PHOTOS), len(PHOTOS) - 1)


def test_a_renamed_photo_keeps_its_text_without_being_read_again(cli, tmp_path):
    photos = write_photos(tmp_path / "photos", ["cafe", "no-text"])
    db = tmp_path / "index.db"
    assert cli("index", tmp_path / "photos", "--db", db, "--model", TINY_MODEL, "-q").exit_code == 0
    first = json.loads(cli("ocr", tmp_path / "photos", "--db", db, "--json").stdout)
    assert (first["read"], first["with_text"]) == (2, 1)
    moved = tmp_path / "photos" / "renamed.jpg"
    photos["cafe"].rename(moved)
    shutil.copy(moved, tmp_path / "photos" / "copy.jpg")
    assert cli("index", tmp_path / "photos", "--db", db, "-q").exit_code == 0
    second = json.loads(cli("ocr", "--db", db, "--json").stdout)
    assert second["read"] == 0 and second["skipped"] == 3
    assert set(_found(cli, db, "--text", "bakery")) == {"renamed", "copy"}
    (tmp_path / "photos" / "copy.jpg").unlink()
    moved.unlink()
    assert cli("index", tmp_path / "photos", "--db", db, "-q").exit_code == 0
    assert json.loads(cli("ocr", "--db", db, "--json").stdout)["pruned"] == 1  # its content left the index


def test_reading_makes_no_network_connection(cli, tmp_path):
    write_photos(tmp_path / "photos", ["sign-parking"])
    db = tmp_path / "index.db"
    assert cli("index", tmp_path / "photos", "--db", db, "--model", TINY_MODEL, "-q").exit_code == 0
    script = textwrap.dedent(f"""
        import socket, sys
        tried = []
        def refuse(*args, **kwargs):
            tried.append(args)
            raise OSError("the network is blocked in this test")
        socket.socket.connect = socket.socket.connect_ex = refuse
        socket.create_connection = socket.getaddrinfo = refuse
        from clipsearch.cli import app
        try:
            app(["ocr", "--db", {str(db)!r}, "--json"])
        except SystemExit as exit:
            print("TRIED", len(tried), "EXIT", exit.code, file=sys.stderr)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "TRIED 0 EXIT 0" in result.stderr, result.stderr
    assert json.loads(result.stdout)["with_text"] == 1
    assert _found(cli, db, "--text", "garden") == ["sign-parking"]


def test_without_rapidocr_indexing_works_and_ocr_says_why_in_one_line(cli, tmp_path, monkeypatch):
    write_photos(tmp_path / "photos", ["cafe"])
    db = tmp_path / "index.db"
    monkeypatch.setitem(sys.modules, "rapidocr", None)  # `import rapidocr` now fails, as when it is not installed
    indexed = cli("index", tmp_path / "photos", "--db", db, "--model", TINY_MODEL, "--ocr")
    assert indexed.exit_code == 0, indexed.output
    assert "1 new" in indexed.stderr
    notices = [line for line in indexed.stderr.splitlines() if "rapidocr" in line]
    assert len(notices) == 1 and notices[0].startswith("Text in photos not read:"), indexed.stderr
    alone = cli("ocr", "--db", db)
    assert alone.exit_code == 2 and alone.stderr.count("\n") == 1 and "rapidocr" in alone.stderr
    assert cli("find", "a purple cross", "--db", db, "--paths").exit_code == 0


def test_the_web_app_searches_text_and_shows_a_photos_text(library, encoder):
    from starlette.testclient import TestClient

    from clipsearch.web import app as server

    db, photos = library
    client = TestClient(server.create_app(db, lambda: encoder), base_url="http://127.0.0.1")
    page = client.get("/", params={"text": "double parking"})
    assert page.status_code == 200
    assert "sign-double.jpg" in page.text and "sign-parking.jpg" not in page.text
    assert "[Double] [parking]" in page.text or "[Double parking]" in page.text
    assert 'name="text" value="double parking"' in page.text
    photo = client.get("/photo", params={"path": str(photos["receipt-blue"])})
    assert photo.status_code == 200 and "Kitchen" in photo.text
    bad = client.get("/", params={"text": '"unclosed'})
    assert bad.status_code == 400 and "is not a text query" in bad.text


def test_reader_reads_pictures_in_memory_and_finds_nothing_in_a_plain_one():
    rng = random.Random(1)
    image, _ = text_scenes.draw_text_photo(rng, ["Harbour"], (800, 600), [48], font_choices=_fonts())
    reader = engine.Reader()
    assert [line.text for line in reader.read_image(image)] == ["Harbour"]
    assert reader.read_image(scenes.draw(scenes.random_scene(rng, 800, 600))) == []
    assert engine.model_version() == engine.model_version() and "ppocr" in engine.model_version()
