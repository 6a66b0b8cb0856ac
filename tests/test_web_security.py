"""`clipsearch serve` as an attack surface (issue 17): DNS rebinding, cross-site requests, framing, symlinks
swapped in, oversized uploads, a busy index and a blocked event loop. Real indexes, files and servers."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import pytest
from starlette.testclient import TestClient

from clipsearch.dedupe import moves
from clipsearch.dedupe.groups import DedupeOptions, find_duplicates
from clipsearch.indexing.job import IndexOptions, index_folders
from clipsearch.store import Store
from clipsearch.web import app as server
from clipsearch_dev import scenes

ORIGIN = "http://127.0.0.1"


def make_client(db, encoder, base_url: str = ORIGIN, origin: str | None = ORIGIN, **options) -> TestClient:
    headers = {"Origin": origin} if origin else {}
    return TestClient(server.create_app(db, lambda: encoder, **options), base_url=base_url, headers=headers)


def token(client: TestClient) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/").text).group(1)


@pytest.fixture
def duplicates(tmp_path, encoder):
    library = tmp_path / "library"
    scenes.write_duplicate_library(library, families=2, unrelated=4, raw_pairs=0, seed=5, size=(320, 240))
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([library], store, encoder=encoder, options=IndexOptions(batch_size=16))
    return library, db


def review_form(client: TestClient, destination) -> tuple[dict, list[str]]:
    """The dedupe form with its first group ticked, and that group's members."""
    page = client.get("/dedupe").text
    members = [html.unescape(m) for m in re.findall(r'name="member0" value="([^"]+)"', page)]
    form = {"csrf": re.search(r'name="csrf" value="([^"]+)"', page).group(1),
            "groups": re.search(r'name="groups" value="(\d+)"', page).group(1), "in": "",
            "destination": str(destination), "act0": "1", "member0": members,
            "keep0": html.unescape(re.search(r'name="keep0" value="([^"]+)" checked', page).group(1)),
            "tier0": re.search(r'name="tier0" value="(\w+)"', page).group(1)}
    return form, members


# -- 1. DNS rebinding, cross-site requests, framing -----------------------------------------------------------


def test_requests_for_another_host_name_are_refused(duplicates, encoder, tmp_path):
    # A page on evil.example that rebinds its name to 127.0.0.1 sends `Host: evil.example:8765`.
    _, db = duplicates
    good = make_client(db, encoder)
    form, members = review_form(good, tmp_path / "review")
    photo = members[0]
    evil = make_client(db, encoder, base_url="http://evil.example:8765", origin="http://evil.example:8765")
    for route, params in (("/", {"q": "a circle"}), ("/file", {"path": photo}), ("/thumb", {"path": photo}),
                          ("/dedupe", {}), ("/static/style.css", {})):
        refused = evil.get(route, params=params)
        assert refused.status_code == 400, route
        assert "does not answer to the name 'evil.example:8765'" in refused.text and "--allow-host" in refused.text
        assert "csrf" not in refused.text
    moved = evil.post("/dedupe/move", data=form)
    assert moved.status_code == 400 and all(os.path.exists(m) for m in members), "nothing moved"
    assert not (tmp_path / "review").exists()

    for name in ("localhost:8000", "127.0.0.1", "LOCALHOST", "[::1]:8000"):
        assert make_client(db, encoder, base_url=f"http://{name}").get("/").status_code == 200, name
    for name in ("evil.example", "localhost.evil.example", "127.0.0.1.evil.example", "[::1", "a b", ""):
        client = make_client(db, encoder)
        assert client.get("/", headers={"Host": name}).status_code == 400, name
    extra = make_client(db, encoder, base_url="http://photos.lan:8000", allow_hosts=["photos.lan"])
    assert extra.get("/").status_code == 200, "--allow-host NAME adds a name"


def test_listening_on_every_address_accepts_addresses_not_other_names(duplicates, encoder):
    _, db = duplicates
    app = server.create_app(db, lambda: encoder)
    app.state.web.allow("0.0.0.0")  # what server.run does for --host 0.0.0.0
    web = app.state.web
    assert web.host_allowed("192.168.1.20:8000") and web.host_allowed("[fe80::1]:8000")
    assert web.host_allowed(f"{socket.gethostname()}:8000")
    assert not web.host_allowed("evil.example:8000"), "a rebinding always comes with a name"


def test_state_changing_requests_need_our_own_origin(duplicates, encoder, tmp_path):
    _, db = duplicates
    client = make_client(db, encoder)
    form, members = review_form(client, tmp_path / "review")
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": "http://127.0.0.1:9999"},
                    {"Origin": ""}):
        refused = client.post("/dedupe/move", data=form, headers=headers)
        assert refused.status_code == 403 and "did not come from a page of this server" in refused.text, headers
    no_origin = make_client(db, encoder, origin=None)
    assert no_origin.post("/dedupe/move", data={**form, "csrf": no_origin.app.state.web.csrf}).status_code == 403
    assert no_origin.post("/dedupe/move", data={**form, "csrf": no_origin.app.state.web.csrf},
                          headers={"Referer": "http://evil.example/page"}).status_code == 403
    assert all(os.path.exists(m) for m in members) and not (tmp_path / "review").exists()
    # A browser that sends a same-origin Referer but no Origin is one of our pages.
    referred = no_origin.post("/dedupe/move", data={**form, "csrf": no_origin.app.state.web.csrf},
                              headers={"Referer": f"{ORIGIN}/dedupe"})
    assert referred.status_code == 200 and f"Moved {len(members) - 1} files" in referred.text


def test_every_response_forbids_framing_and_foreign_content(duplicates, encoder, tmp_path):
    _, db = duplicates
    client = make_client(db, encoder)
    photo = review_form(client, tmp_path)[1][0]
    responses = [client.get("/"), client.get("/static/style.css"), client.get("/file", params={"path": photo}),
                 client.get("/photo", params={"path": "/etc/passwd"}),
                 client.get("/", headers={"Host": "evil.example"}),
                 client.post("/dedupe/move", data={}, headers={"Origin": "http://evil.example"})]
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 400, 403]
    for response in responses:
        assert response.headers["x-frame-options"] == "DENY"
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert "script-src 'self'" in policy and "unsafe" not in policy
        assert response.headers["referrer-policy"] == "same-origin"
        assert response.headers["x-content-type-options"] == "nosniff"
    page = responses[0].text
    assert "<script>" not in page and " style=" not in page and " on" + "click=" not in page, "nothing inline"


# -- 4. A symlink swapped in with the same size and mtime ----------------------------------------------------


def test_a_symlink_swapped_in_with_the_same_size_and_date_is_not_served(tmp_path, encoder):
    library = tmp_path / "photos"
    written = scenes.write_library(library, 3, seed=2)
    db = tmp_path / "index.db"
    with Store.open(db) as store:
        index_folders([library], store, encoder=encoder, options=IndexOptions(batch_size=16))
    photo = written[0][0]
    secret = tmp_path / "secret.txt"  # as `touch -r /etc/passwd photo.jpg` then `ln -sf /etc/passwd photo.jpg`
    secret.write_bytes(b"root:x:0:0:secret\n".ljust(photo.stat().st_size, b"#"))
    info = photo.stat()
    os.utime(secret, ns=(info.st_atime_ns, info.st_mtime_ns))
    photo.unlink()
    photo.symlink_to(secret)
    assert os.stat(photo).st_size == info.st_size and os.stat(photo).st_mtime_ns == info.st_mtime_ns
    client = make_client(db, encoder)
    for route in ("/file", "/thumb", "/photo"):
        refused = client.get(route, params={"path": str(photo)})
        assert refused.status_code == 404 and b"secret" not in refused.content, route
        assert "symlink" in refused.text
    served = client.get("/file", params={"path": str(written[1][0])})
    assert served.status_code == 200 and served.content == written[1][0].read_bytes()
    assert served.headers["content-type"] == "image/jpeg" and served.headers["content-length"] == str(
        written[1][0].stat().st_size)

    fifo = written[2][0]  # a FIFO in its place: refused at once, not a request that never ends
    fifo.unlink()
    os.mkfifo(fifo)
    started = time.monotonic()
    assert client.get("/file", params={"path": str(fifo)}).status_code == 404
    assert time.monotonic() - started < 5


# -- 5. Uploads: a size cap, the token, and gone when the server stops ---------------------------------------


def picture_bytes(tmp_path, size=(200, 200)) -> bytes:
    path = tmp_path / "query.png"
    scenes.draw(scenes.Scene("red", "circle", "grey", *size, 0.5, 0.5, 0.3, 0.0, 9)).save(path)
    return path.read_bytes()


def test_uploads_need_the_token_and_our_origin(duplicates, encoder, tmp_path):
    _, db = duplicates
    client = make_client(db, encoder)
    files = {"image": ("q.png", picture_bytes(tmp_path), "image/png")}
    assert client.post("/upload", files=files, follow_redirects=False).status_code == 403, "no token"
    assert client.post("/upload", files=files, data={"csrf": "forged"}).status_code == 403
    cross_site = client.post("/upload", files=files, data={"csrf": token(client)},
                             headers={"Origin": "http://evil.example"})
    assert cross_site.status_code == 403
    assert list(client.app.state.web.uploads.iterdir()) == [], "nothing was kept"
    accepted = client.post("/upload", files=files, data={"csrf": token(client)}, follow_redirects=False)
    assert accepted.status_code == 303 and len(list(client.app.state.web.uploads.iterdir())) == 1


def test_uploads_over_the_cap_are_refused_with_413(duplicates, encoder, tmp_path):
    _, db = duplicates
    client = make_client(db, encoder, max_upload_mb=1)
    noise = os.urandom(3 * 1024 * 1024)  # a PNG-named 3 MB file
    too_big = client.post("/upload", files={"image": ("big.png", noise, "image/png")}, data={"csrf": token(client)})
    assert too_big.status_code == 413 and "Uploads are limited to 1 MB" in too_big.text
    assert "--max-upload-mb" in too_big.text
    just_over = client.post("/upload", files={"image": ("big.png", noise[:1024 * 1024 + 10], "image/png")},
                            data={"csrf": token(client)})
    assert just_over.status_code == 413, "the file itself is counted, not only the body"
    assert list(client.app.state.web.uploads.iterdir()) == []
    small = client.post("/upload", files={"image": ("q.png", picture_bytes(tmp_path), "image/png")},
                        data={"csrf": token(client)}, follow_redirects=False)
    assert small.status_code == 303


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def live_server(duplicates, encoder):
    """The app under a real uvicorn on 127.0.0.1; yields (base URL, app)."""
    import uvicorn

    port = free_port()
    slow = SlowEncoder(encoder)
    app = server.create_app(duplicates[1], lambda: slow)
    app.state.slow = slow
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    uvicorn_server.should_exit = True
    thread.join(10)


class SlowEncoder:
    """The tiny model, taking `delay` seconds more for every text it embeds."""

    def __init__(self, encoder, delay: float = 0.0):
        self.encoder, self.delay = encoder, delay

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def embed_texts(self, texts):
        time.sleep(self.delay)
        return self.encoder.embed_texts(texts)


def test_an_oversized_upload_is_refused_before_its_body_is_read(live_server):
    # A 2 GiB upload used to be read in full (2.57 GB RSS): now the declared length is refused at once.
    base, app = live_server
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\n"
                           b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 2147483648\r\n\r\n"
                           + b"--x\r\n" + b"\0" * 65536)
        started = time.monotonic()
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 5
    assert list(app.state.web.uploads.iterdir()) == []


def test_a_killed_server_leaves_no_upload_folder(tmp_path):
    stale = tmp_path / f"{server.UPLOADS_PREFIX}999999999-abcd"  # a server killed with -9 left this
    stale.mkdir()
    (stale / "x.jpg").write_bytes(b"x")
    mine = tmp_path / f"{server.UPLOADS_PREFIX}{os.getpid()}-live"  # a running server's folder stays
    mine.mkdir()
    original = tempfile.tempdir
    tempfile.tempdir = str(tmp_path)
    try:
        server._remove_stale_uploads()
    finally:
        tempfile.tempdir = original
    assert not stale.exists() and mine.exists()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_uploads_are_deleted_when_the_server_is_stopped_by_a_signal(duplicates, tmp_path, stop):
    _, db = duplicates
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(temporary)}
    process = subprocess.Popen([sys.executable, "-m", "clipsearch", "serve", "--db", str(db), "--port", str(port)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                start = urllib.request.urlopen(base + "/", timeout=5).read().decode()
                break
            except OSError:
                assert process.poll() is None, process.communicate()[1].decode()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        csrf = re.search(r'name="csrf" value="([^"]+)"', start).group(1)
        body = (b"--x\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n" + csrf.encode() + b"\r\n"
                b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n" + picture_bytes(tmp_path) + b"\r\n--x--\r\n")
        request = urllib.request.Request(base + "/upload", data=body, method="POST", headers={
            "Content-Type": "multipart/form-data; boundary=x", "Origin": base})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert "Photos like your image" in answer.read().decode()
        folders = list(temporary.glob(f"{server.UPLOADS_PREFIX}*"))
        assert len(folders) == 1 and len(list(folders[0].iterdir())) == 1
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert not folders[0].exists(), "the uploads went with the server"
    assert b"Traceback" not in stderr


# -- 6. A busy index: a page that says so, status 503, no traceback, no empty review folder -------------------


def test_a_busy_index_is_a_503_page_and_a_failed_move_leaves_no_folder(duplicates, encoder, tmp_path, monkeypatch,
                                                                       capfd):
    _, db = duplicates
    monkeypatch.setenv("CLIPSEARCH_LOCK_WAIT", "0.2")
    client = make_client(db, encoder)
    form, members = review_form(client, tmp_path / "review" / "2024")
    with Store.open(db) as other:
        other.conn.execute("UPDATE images SET phash = NULL WHERE path = ?", [members[0]])  # a missing fingerprint
        other.conn.commit()
        with other.writer():  # another clipsearch is writing
            page = client.get("/dedupe")
            assert page.status_code == 503
            assert "The index is busy" in page.text and "another clipsearch" in page.text
            moved = client.post("/dedupe/move", data=form)
            assert moved.status_code == 503 and "The index is busy" in moved.text
    assert all(os.path.exists(m) for m in members)
    assert not (tmp_path / "review").exists(), "no empty review folder is left behind"
    assert "Traceback" not in capfd.readouterr().err
    assert client.get("/dedupe").status_code == 200, "and once the writer is done, it works"


# -- 8. Model and SQL work off the event loop ----------------------------------------------------------------


def test_a_slow_search_does_not_hold_up_other_requests(live_server):
    base, app = live_server
    app.state.slow.delay = 3.0
    results: dict = {}

    def search() -> None:
        started = time.monotonic()
        with urllib.request.urlopen(base + "/?q=a+slowly+embedded+purple+thing", timeout=30) as answer:
            results["search"] = (answer.status, time.monotonic() - started)

    worker = threading.Thread(target=search)
    worker.start()
    time.sleep(0.5)  # the search is in the model now
    started = time.monotonic()
    with urllib.request.urlopen(base + "/static/style.css", timeout=30) as answer:
        assert answer.status == 200
    css_seconds = time.monotonic() - started
    with urllib.request.urlopen(base + "/dedupe", timeout=30) as answer:
        assert answer.status == 200
    other_seconds = time.monotonic() - started
    worker.join(30)
    assert results["search"][0] == 200 and results["search"][1] >= 3.0
    assert css_seconds < 1.0, f"the stylesheet waited {css_seconds:.1f} s behind the search"
    assert other_seconds < 2.5, f"the dedupe page waited {other_seconds:.1f} s behind the search"


# -- 3. The web undo takes only the manifests this server wrote ----------------------------------------------


def test_the_web_undo_takes_only_manifests_this_server_wrote(duplicates, encoder, tmp_path):
    _, db = duplicates
    with Store.open(db) as store:  # a move made elsewhere (as `clipsearch dedupe --move-to` does it)
        groups = find_duplicates(store, None, DedupeOptions())
        plan = moves.plan_moves(groups[:1], str(tmp_path / "cli-review"), store)
        report = moves.apply_moves(plan, store, moves.default_manifest_path(str(tmp_path / "cli-review")))
    assert report.moved
    client = make_client(db, encoder)
    refused = client.post("/dedupe/undo", data={"csrf": token(client), "manifest": report.manifest})
    assert refused.status_code == 400 and "only moves made by this server" in refused.text
    assert f"clipsearch dedupe --undo {report.manifest}" in html.unescape(refused.text)
    assert not any(os.path.exists(move.source) for move in report.moved), "nothing was put back"
    copy = tmp_path / "copy.jsonl"  # nor a copy of one it wrote, under another name
    form, _ = review_form(client, tmp_path / "web-review")
    moved = client.post("/dedupe/move", data=form)
    manifest = html.unescape(re.search(r'name="manifest" value="([^"]+)"', moved.text).group(1))
    shutil.copy(manifest, copy)
    assert client.post("/dedupe/undo", data={"csrf": token(client), "manifest": str(copy)}).status_code == 400
    other_server = make_client(db, encoder)
    assert other_server.post("/dedupe/undo", data={"csrf": token(other_server), "manifest": manifest}
                             ).status_code == 400
    assert client.post("/dedupe/undo", data={"csrf": token(client), "manifest": manifest}).status_code == 200


def test_serve_passes_allow_host_and_the_upload_cap_to_the_app(cli, scene_index, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append((app, options)))
    port = free_port()
    result = cli("serve", "--db", scene_index, "--port", port, "--allow-host", "photos.lan",
                 "--allow-host", "NAS.local", "--max-upload-mb", "5")
    assert result.exit_code == 0, result.stderr
    (app, options), = served
    web = app.state.web
    assert options["host"] == "127.0.0.1" and options["port"] == port
    assert web.host_allowed("photos.lan:8000") and web.host_allowed("nas.local") and web.host_allowed("localhost")
    assert not web.host_allowed("evil.example")
    assert web.max_upload_bytes == 5 * 1024 * 1024
    assert not web.uploads.exists(), "the uploads folder goes when the server stops"
    assert cli("serve", "--db", scene_index, "--max-upload-mb", "0").exit_code == 2


def test_twenty_searches_complete_while_a_slow_one_runs(live_server, duplicates):
    """One text search stuck in the model (3 s) holds up neither the event loop nor the other worker threads:
    20 searches that need no model (tags, dates, photos like an indexed one) all answer meanwhile."""
    base, app = live_server
    app.state.slow.delay = 3.0
    with Store.open(duplicates[1], create=False) as store:
        photos = sorted(store.file_table()["path"])
    slow: dict = {}

    def slow_search() -> None:
        started = time.monotonic()
        with urllib.request.urlopen(base + "/?q=a+slowly+embedded+green+thing", timeout=30) as answer:
            slow["answer"] = (answer.status, time.monotonic() - started)

    worker = threading.Thread(target=slow_search)
    worker.start()
    time.sleep(0.5)  # the slow search is in the model now
    urls = [base + "/?" + urllib.parse.urlencode({"like": photos[n % len(photos)], "after": "1990"})
            for n in range(20)]
    answers: list = []
    started = time.monotonic()

    def fetch(url: str) -> None:
        with urllib.request.urlopen(url, timeout=30) as answer:
            answers.append((answer.status, answer.read().count(b'class="card"'), time.monotonic() - started))

    fetchers = [threading.Thread(target=fetch, args=(url,)) for url in urls]
    for fetcher in fetchers:
        fetcher.start()
    for fetcher in fetchers:
        fetcher.join(30)
    assert "answer" not in slow, "the slow search was still running while the others answered"
    worker.join(30)
    assert len(answers) == 20 and all(status == 200 and cards > 0 for status, cards, _ in answers), answers
    assert max(seconds for *_, seconds in answers) < 2.4, "a search waited for the slow one"
    assert slow["answer"][0] == 200 and slow["answer"][1] >= 3.0
