"""`clipsearch serve` over HTTP: every route, with real indexes, real files and the tiny model."""

from __future__ import annotations

import html
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from urllib.parse import quote

import pytest
from PIL import Image
from starlette.testclient import TestClient

from clipsearch.indexing.job import IndexOptions, index_folders
from clipsearch.store import Store
from clipsearch.store.tags import TagStore
from clipsearch.web import app as server
from clipsearch_dev import scenes

from .conftest import REPO

ORIGIN = "http://127.0.0.1"


def make_client(db_path, encoder, **options) -> TestClient:
    """A client addressed to 127.0.0.1 whose requests come from the app's own pages (the Origin a browser sends)."""
    return TestClient(server.create_app(db_path, lambda: encoder, **options), base_url=ORIGIN,
                      headers={"Origin": ORIGIN})


@pytest.fixture
def client(store, encoder) -> TestClient:
    return make_client(store.path, encoder)


def token(client: TestClient) -> str:
    """The per-server form token, as every page carries it."""
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/").text).group(1)


def result_paths(page: str) -> list[str]:
    return [html.unescape(p) for p in re.findall(r'<span class="name" title="([^"]+)"', page)]


def test_search_page_shows_a_grid_of_the_best_matches(client, scene_library):
    page = client.get("/", params={"q": "a red circle"})
    assert page.status_code == 200
    paths = result_paths(page.text)
    assert len(paths) == server.PAGE_SIZE and len(set(paths)) == len(paths)
    assert paths[0].endswith("-red-circle.jpg")
    assert sum(p.endswith("-red-circle.jpg") for p in paths[:3]) == 3
    assert page.text.count('src="/thumb?path=') == server.PAGE_SIZE
    assert re.search(r'<span class="score">0\.\d{3}</span>', page.text)
    # each part kept whole (a no-break space in the size)
    meta = r'<span>\d{4}-\d\d-\d\d</span> · <span>320×240</span> · <span>[\d.]+\xa0KB</span>'
    assert re.search(meta, page.text), "date, size and file size"
    more = re.search(r'<a class="more" href="([^"]+)"', page.text).group(1)
    assert "page=2" in more
    following = client.get(html.unescape(more) + "&partial=1")
    assert following.status_code == 200 and "<header>" not in following.text, "only the next cards"
    rest = result_paths(following.text)
    assert rest and not set(rest) & set(paths), "page 2 continues where page 1 stopped"
    assert len(paths) + len(rest) <= len(scene_library)


def test_search_page_without_a_query_and_with_a_bad_one(client):
    start = client.get("/")
    assert start.status_code == 200 and "160 photos indexed" in start.text
    bad = client.get("/", params={"q": "dogs - dogs"})
    assert bad.status_code == 400 and "cancel each other out" in bad.text
    nowhere = client.get("/", params={"q": "a red circle", "in": "/no/such/folder"})
    assert nowhere.status_code == 400 and "is not a folder" in nowhere.text


def test_folder_and_tag_filters(tmp_path, encoder):
    first, second = tmp_path / "2023", tmp_path / "2024"
    scenes.write_library(first, 8, seed=1)
    scenes.write_library(second, 8, seed=2)
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([first, second], store, encoder=encoder, options=IndexOptions(batch_size=16))
        tagged = sorted(store.paths(str(second)))[3]
        TagStore(store).set_manual_tags(store.id_for_path(tagged), add=["favourite"])
    client = make_client(db, encoder)
    inside = result_paths(client.get("/", params={"q": "a circle", "in": str(first)}).text)
    assert len(inside) == 8 and all(p.startswith(str(first) + os.sep) for p in inside)
    assert result_paths(client.get("/", params={"tag": "favourite"}).text) == [tagged]
    assert result_paths(client.get("/", params={"q": "a circle", "tag": "favourite", "in": str(first)}).text) == []
    start = client.get("/").text
    assert 'href="/?tag=favourite"' in start, "the start page offers the tags as filters"


def test_photo_page_shows_it_large_with_similar_photos_and_tags(client, store, scene_library):
    path = str(scene_library[0][0])
    TagStore(store).set_manual_tags(store.id_for_path(path), add=["holiday"])
    page = client.get("/photo", params={"path": path})
    assert page.status_code == 200
    assert "size=1600" in page.text and 'href="/?tag=holiday"' in page.text
    similar = result_paths(page.text)
    assert len(similar) == server.SIMILAR_ON_PHOTO_PAGE and path not in similar
    colour, shape = scene_library[0][1].colour, scene_library[0][1].shape
    assert similar[0].endswith(f"-{colour}-{shape}.jpg")
    everything = client.get("/", params={"like": path})
    assert everything.status_code == 200 and result_paths(everything.text)[:3] == similar[:3]


def test_thumbnails_are_small_jpegs_with_etags(client, scene_library):
    path = str(scene_library[1][0])
    first = client.get("/thumb", params={"path": path})
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(first.content)).size) == 320
    etag = first.headers["etag"]
    again = client.get("/thumb", params={"path": path}, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    large = client.get("/thumb", params={"path": path, "size": 1600})
    assert large.status_code == 200 and large.headers["etag"] != etag
    assert client.get("/thumb", params={"path": path, "size": 999}).status_code == 400


def test_original_file_is_served_as_it_is(client, scene_library):
    path = scene_library[2][0]
    response = client.get("/file", params={"path": str(path)})
    assert response.status_code == 200 and response.content == path.read_bytes()


def test_only_indexed_files_are_served(tmp_path, encoder):
    library = tmp_path / "photos"
    written = scenes.write_library(library, 4, seed=5)
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(secret)
    (library / "link.jpg").symlink_to(secret)  # a symlink pointing out of the library...
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([library], store, encoder=encoder, options=IndexOptions(batch_size=16))
        store.remove([str(library / "link.jpg")])  # ...that is not in the index
    client = make_client(db, encoder)
    indexed = str(written[0][0])
    refused = [
        str(secret), "/etc/passwd", str(library / "link.jpg"),
        f"{library}/../photos/{written[0][0].name}", f"{library}/./{written[0][0].name}",
        os.path.relpath(indexed), f"{library}/../secret.jpg", "../../../../etc/passwd", indexed + "\0", "",
    ]
    for route in ("/file", "/thumb", "/photo"):
        assert client.get(route, params={"path": indexed}).status_code == 200
        for path in refused:
            assert client.get(route, params={"path": path}).status_code == 404, (route, path)
        assert client.get(route).status_code == 404
    assert client.get("/", params={"like": str(secret)}).status_code == 404
    # An indexed file later swapped for a symlink to something else is not served either.
    swapped = str(written[1][0])
    os.remove(swapped)
    os.symlink(secret, swapped)
    for route in ("/file", "/thumb", "/photo"):
        assert client.get(route, params={"path": swapped}).status_code == 404
    for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py", "/../pyproject.toml"):
        response = client.get(path)
        assert response.status_code == 404 and b"WebApp" not in response.content


def test_static_files_are_served_from_the_package(client):
    assert "IntersectionObserver" in client.get("/static/app.js").text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_an_uploaded_image_is_a_query(client, tmp_path):
    picture = tmp_path / "mine.png"
    scenes.draw(scenes.Scene("red", "circle", "grey", 200, 200, 0.5, 0.5, 0.3, 0.0, 9)).save(picture)
    response = client.post("/upload", files={"image": ("mine.png", picture.read_bytes(), "image/png")},
                           data={"csrf": token(client)}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/?upload=")
    page = client.get(response.headers["location"])
    assert page.status_code == 200 and result_paths(page.text)[0].endswith("-red-circle.jpg")
    shown = re.search(r'<img src="(/uploaded/[0-9a-f]{32})"', page.text).group(1)
    assert client.get(shown).content == picture.read_bytes()
    junk = client.post("/upload", files={"image": ("notes.jpg", b"not an image", "image/jpeg")},
                       data={"csrf": token(client)})
    assert junk.status_code == 400 and "notes.jpg" in junk.text
    assert client.get("/uploaded/" + "0" * 32).status_code == 404
    assert client.get("/uploaded/../../etc/passwd").status_code == 404


@pytest.fixture
def duplicates(tmp_path, encoder):
    library = tmp_path / "library"
    scenes.write_duplicate_library(library, families=2, unrelated=4, raw_pairs=0, seed=5, size=(320, 240))
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([library], store, encoder=encoder, options=IndexOptions(batch_size=16))
    return library, db


def test_dedupe_review_moves_the_chosen_files_and_undoes(duplicates, encoder, tmp_path):
    library, db = duplicates
    client = make_client(db, encoder)
    page = client.get("/dedupe")
    assert page.status_code == 200
    groups = int(re.search(r'name="groups" value="(\d+)"', page.text).group(1))
    assert groups >= 2
    form: dict[str, object] = {"groups": str(groups), "in": "", "destination": str(tmp_path / "review"),
                               "csrf": re.search(r'name="csrf" value="([^"]+)"', page.text).group(1),
                               "act0": "1"}
    members = [html.unescape(m) for m in re.findall(r'name="member0" value="([^"]+)"', page.text)]
    default_keep = html.unescape(re.search(r'name="keep0" value="([^"]+)" checked', page.text).group(1))
    assert default_keep in members and len(members) >= 2
    chosen = next(m for m in members if m != default_keep)  # the user keeps another file
    form.update({"member0": members, "keep0": chosen, "tier0": re.search(r'name="tier0" value="(\w+)"',
                                                                             page.text).group(1)})
    assert client.post("/dedupe/move", data={**form, "csrf": "forged"}).status_code == 403
    inside = client.post("/dedupe/move", data={**form, "destination": str(library / "review")})
    assert inside.status_code == 400 and "inside the library" in inside.text
    assert all(os.path.exists(m) for m in members), "a refused plan moves nothing"

    moved = client.post("/dedupe/move", data=form)
    assert moved.status_code == 200 and f"Moved {len(members) - 1} files" in moved.text
    assert os.path.exists(chosen) and not any(os.path.exists(m) for m in members if m != chosen)
    manifest = html.unescape(re.search(r'name="manifest" value="([^"]+)"', moved.text).group(1))
    assert manifest.startswith(str(tmp_path / "review")) and os.path.isfile(manifest)
    with Store.open(db, create=False) as store:
        assert store.id_for_path(default_keep) is None, "moved files leave the index"
    assert client.get("/thumb", params={"path": default_keep}).status_code == 404

    undone = client.post("/dedupe/undo", data={"csrf": form["csrf"], "manifest": manifest})
    assert undone.status_code == 200 and f"Restored {len(members) - 1} files" in undone.text
    assert all(os.path.exists(m) for m in members)
    with Store.open(db, create=False) as store:
        assert store.id_for_path(default_keep) is not None
    bogus = client.post("/dedupe/undo", data={"csrf": form["csrf"], "manifest": str(db)})
    assert bogus.status_code == 400


def test_dedupe_page_with_no_duplicates_and_a_bad_folder(client, tmp_path):
    assert 'name="groups"' in client.get("/dedupe").text, "the scene index has look-alikes to review"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No duplicates found." in client.get("/dedupe", params={"in": str(empty)}).text
    assert client.get("/dedupe", params={"in": "/no/such/folder"}).status_code == 400


def test_serve_warns_when_listening_beyond_this_machine(cli, scene_index, monkeypatch):
    served = []
    monkeypatch.setattr(server, "run", lambda app, host, port, *options: served.append((host, port)))
    local = cli("serve", "--db", scene_index, "--port", "8123")
    assert local.exit_code == 0 and served[-1] == ("127.0.0.1", 8123)
    assert "warning" not in local.stderr and "http://localhost:8123/" in local.stderr
    public = cli("serve", "--db", scene_index, "--host", "0.0.0.0")
    assert public.exit_code == 0 and served[-1] == ("0.0.0.0", 8000)
    assert "warning" in public.stderr and "anyone who can reach this machine" in public.stderr
    missing = cli("serve", "--db", shutil.os.path.join(os.path.dirname(scene_index), "nothing.db"))
    assert missing.exit_code == 1 and "No index" in missing.stderr


def _review_form(page: str, path_part: str, destination) -> tuple[dict, list[str]]:
    """The dedupe form with only the group holding `path_part` ticked, keeping that file; and the group's members."""
    groups = int(re.search(r'name="groups" value="(\d+)"', page).group(1))
    number = next(n for n in range(groups)
                  if path_part in "".join(re.findall(rf'name="member{n}" value="([^"]+)"', page)))
    members = [html.unescape(m) for m in re.findall(rf'name="member{number}" value="([^"]+)"', page)]
    form = {"csrf": re.search(r'name="csrf" value="([^"]+)"', page).group(1), "groups": str(groups),
            "in": html.unescape(re.search(r'<input type="hidden" name="in" value="([^"]*)"', page).group(1)),
            "destination": str(destination), f"act{number}": "1", f"member{number}": members,
            f"keep{number}": next(m for m in members if path_part in m), f"tier{number}": "exact"}
    return form, members


def test_file_names_that_are_not_utf8_are_shown_linked_and_served_by_their_exact_bytes(tmp_path, encoder):
    library = tmp_path / "photos"
    written = scenes.write_library(library, 6, seed=3)
    original = written[0][0]
    odd_folder = os.fsencode(str(library)) + b"/caf\xe9"  # Latin-1, not UTF-8
    os.mkdir(odd_folder)
    bad = os.fsdecode(odd_folder + b"/bad\xff\xfe.jpg")  # exact copies under non-UTF-8 names
    again = os.fsdecode(odd_folder + b"/again.jpg")
    for copy in (bad, again):
        shutil.copy2(original, copy)
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([library], store, encoder=encoder, options=IndexOptions(batch_size=16))
        assert bad in store.paths()
    client = make_client(db, encoder)
    quoted = "caf%E9%2Fbad%FF%FE.jpg"  # the exact bytes, percent-encoded in a link...
    in_form = "caf%E9/bad%FF%FE.jpg"  # ...and in a form field

    page = client.get("/", params={"like": str(original)})
    assert page.status_code == 200
    assert "caf\\xe9/bad\\xff\\xfe.jpg" in page.text, "shown with escapes"
    links = {html.unescape(link) for link in re.findall(r'href="([^"]+)"', page.text) if quoted in link}
    photo_link = next(link for link in links if link.startswith("/photo?"))
    thumb = html.unescape(re.search(r'src="(/thumb\?[^"]*' + quoted + ')"', page.text).group(1))
    assert client.get(thumb).headers["content-type"] == "image/jpeg"

    photo = client.get(photo_link)
    assert photo.status_code == 200 and "bad\\xff\\xfe.jpg" in photo.text
    original_link = html.unescape(re.search(r'href="(/file\?[^"]+)"', photo.text).group(1))
    served = client.get(original_link)
    assert served.status_code == 200 and served.content == original.read_bytes()
    like = html.unescape(re.search(r'href="(/\?like=[^"]+)"', photo.text).group(1))
    similar = client.get(like)
    assert similar.status_code == 200 and str(original) in result_paths(similar.text)
    assert client.get(thumb.replace("%FF%FE", "%EF%BF%BD%EF%BF%BD")).status_code == 404, "bytes, not lookalikes"

    review = client.get("/dedupe")
    assert review.status_code == 200 and "bad\\xff\\xfe.jpg" in review.text
    form, members = _review_form(review.text, in_form, tmp_path / "review")
    assert len(members) == 3
    moved = client.post("/dedupe/move", data=form)
    assert moved.status_code == 200 and "Moved 2 files" in moved.text
    assert os.path.exists(bad) and not original.exists() and not os.path.exists(again)
    manifest = html.unescape(re.search(r'name="manifest" value="([^"]+)"', moved.text).group(1))
    assert client.post("/dedupe/undo", data={"csrf": form["csrf"], "manifest": manifest}).status_code == 200
    assert original.exists() and os.path.exists(bad) and os.path.exists(again)

    # Only in the odd folder: its name travels through the page's form too, and files keep their place under it.
    inside = client.get("/dedupe?in=" + quote(odd_folder, safe=""))
    assert inside.status_code == 200, inside.text
    form, members = _review_form(inside.text, in_form, tmp_path / "inside")
    assert len(members) == 2 and all("/caf%E9/" in m for m in members)
    moved = client.post("/dedupe/move", data=form)
    assert moved.status_code == 200 and "Moved 1 files" in moved.text
    assert (tmp_path / "inside" / "again.jpg").is_file() and os.path.exists(bad) and original.exists()


def _photo_with_exif(path, colour, camera: tuple[str, str] | None, taken: str | None) -> None:
    exif = Image.Exif()
    if camera:
        exif[0x010F], exif[0x0110] = camera  # Make, Model
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken  # DateTimeOriginal
    scenes.draw(scenes.Scene(colour, "circle", "grey", 320, 240, 0.5, 0.5, 0.3, 0.0, 3)).save(path, exif=exif)


@pytest.fixture
def dated_library(tmp_path, encoder):
    """Three photos: 2019 from a Canon, 2023 from a Fujifilm, one without EXIF (its file date: now)."""
    library = tmp_path / "dated"
    library.mkdir()
    _photo_with_exif(library / "canon-2019.jpg", "red", ("Canon", "Canon EOS R5"), "2019:07:14 09:30:00")
    _photo_with_exif(library / "fuji-2023.jpg", "blue", ("FUJIFILM", "X-T4"), "2023:02:01 16:05:00")
    _photo_with_exif(library / "plain.jpg", "green", None, None)
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([library], store, encoder=encoder, options=IndexOptions(batch_size=16))
    return library, db


def test_date_and_camera_filters_narrow_the_search(dated_library, encoder):
    # `?after=2030` used to be ignored: every photo came back.
    library, db = dated_library
    client = make_client(db, encoder)
    names = lambda **params: sorted(os.path.basename(p) for p in result_paths(  # noqa: E731
        client.get("/", params={"q": "a circle", **params}).text))
    assert names() == ["canon-2019.jpg", "fuji-2023.jpg", "plain.jpg"]
    assert names(before="2022") == ["canon-2019.jpg"]
    assert names(after="2023-02", before="2023-03") == ["fuji-2023.jpg"]
    assert names(camera="fuji") == ["fuji-2023.jpg"]
    assert names(camera="canon", after="2020") == []
    assert names(after="2030") == []
    page = client.get("/", params={"q": "a circle", "after": "2030"})
    assert page.status_code == 200 and "Nothing found." in page.text
    assert 'name="after" value="2030"' in page.text, "the filter stays in the form"
    assert "taken from 2030" in page.text, "and is shown as a chip that removes it"
    like = client.get("/", params={"like": str(library / "canon-2019.jpg"), "camera": "X-T4"})
    assert [os.path.basename(p) for p in result_paths(like.text)] == ["fuji-2023.jpg"], "similar filters too"

    for bad, message in (("2024-13", "is not a date"), ("last week", "is not a date"),
                         ("9999-12-31", "")):
        refused = client.get("/", params={"q": "a circle", "after": bad})
        assert refused.status_code == 400, bad
        assert 'class="error"' in refused.text and message in refused.text
    both = client.get("/", params={"q": "a circle", "after": "2024", "before": "2023"})
    assert both.status_code == 400 and "no photo can match" in both.text


def test_more_results_keep_the_filters(client):
    page = client.get("/", params={"q": "a circle", "before": "2100", "camera": ""})
    more = html.unescape(re.search(r'<a class="more" href="([^"]+)"', page.text).group(1))
    assert "before=2100" in more and "page=2" in more and "camera" not in more


def test_photo_page_shows_camera_and_date_taken(dated_library, encoder):
    library, db = dated_library
    client = make_client(db, encoder)
    canon = client.get("/photo", params={"path": str(library / "canon-2019.jpg")}).text
    assert re.search(r'<dd class="camera">\s*Canon EOS R5\s*</dd>', canon)
    assert re.search(r'<dd class="taken">\s*2019-07-14 09:30\s*</dd>', canon)
    plain = client.get("/photo", params={"path": str(library / "plain.jpg")}).text
    assert re.search(r'<dd class="camera">\s*<span class="meta">unknown</span>', plain)
    assert "no date in its EXIF" in plain


def test_serve_starts_and_answers_a_text_query_without_torch(scene_index, tmp_path):
    """`clipsearch serve` embeds queries as `find` does (the exported ONNX text tower, remembered queries): with
    the text encoder exported (conftest does it), starting and answering a text search never imports torch."""
    script = textwrap.dedent(f"""
        import sys
        from starlette.testclient import TestClient
        from clipsearch.web import app as web

        def run(application, host, port, *options):  # instead of uvicorn: one request, then report
            page = TestClient(application, base_url="http://127.0.0.1").get("/", params={{"q": "a red circle"}})
            print("ANSWER", page.status_code, page.text.count('class="card"'))
            print("IMPORTED", ",".join(m for m in ("torch", "transformers") if m in sys.modules))

        web.run = run
        from clipsearch.cli import main
        sys.argv = ["clipsearch", "serve", "--db", {str(scene_index)!r}, "--port", "{_free_port()}"]
        main()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    answer = next(line.split() for line in result.stdout.splitlines() if line.startswith("ANSWER"))
    assert answer[1] == "200" and int(answer[2]) > 0
    imported = next(line for line in result.stdout.splitlines() if line.startswith("IMPORTED"))
    assert imported.split() == ["IMPORTED"], f"serve imported {imported.split()[1:]}"
    assert "Serving 160 photos" in result.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
