"""`clipsearch serve`: a local web app over the index, with nothing to install beyond clipsearch.

Photo search is visual: this shows results as a grid of thumbnails, a photo
large with "more like this" and its tags, an uploaded or dropped image as a
query, and the dedupe review with a keep choice and "move to review folder"
(the same manifest and undo as the CLI). Every page is a URL (`/?q=a+dog`),
so searches can be bookmarked. It is a Starlette app with Jinja2 templates and
a few lines of plain JavaScript shipped in the package: no build step, no
network at run time.

It serves only files the index knows: a path must be exactly an indexed path
and the file there must still have the size and modification time the index
recorded, so `..` tricks, symlinks swapped in later and anything outside the
library are 404s. The model is loaded once by the caller and reused.

A file name that is not valid UTF-8 (a surrogate-escaped str, see paths.py)
travels in links and form fields as its exact bytes, percent-encoded, and is
read back the same way (`_query`, `_form_path`); pages show it with `\\xff`
escapes. SQL lives in store.py.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import dedupe, images, indexer, moves, search, thumbnails
from .paths import is_utf8, normalise_path, readable, url_quote, url_unquote
from .store import Store
from .tagstore import TagStore

PAGE_SIZE = 48
SIMILAR_ON_PHOTO_PAGE = 18
THUMB_SIZES = (320, 1600)  # grid cells, and the photo page (every browser shows a JPEG; not every one a HEIC)
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PATH_PARAMS = ("path", "like", "in")  # query parameters that are file paths: their exact bytes are kept
_WEB = Path(__file__).resolve().parent / "web"


def _human_size(size: int | None) -> str:
    if not size:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def _date(mtime_ns: int | None) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9).strftime("%Y-%m-%d") if mtime_ns else ""


def _url(route: str, **params) -> str:
    """A link with its query string; `in_` stands for the `in` parameter (a Python keyword).

    A path that is not valid UTF-8 goes in as its exact bytes, percent-encoded; `_query` reads it back.
    """
    kept = {("in" if k == "in_" else k): v for k, v in params.items()
            if v not in (None, "", [], (), 1 if k == "page" else None)}
    return route + ("?" + urlencode(kept, doseq=True, errors="surrogateescape") if kept else "")


def _query(request: Request) -> QueryParams:
    """The query string's parameters, the paths among them (PATH_PARAMS) decoded to their exact bytes.

    Starlette decodes every parameter as UTF-8 with replacement characters, which
    would turn a file name that is not valid UTF-8 into another name. Other
    parameters (the query text, tags) are decoded as Starlette does.
    """
    pairs = parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True,
                      errors="surrogateescape")
    return QueryParams([(key, value if key in PATH_PARAMS or is_utf8(value) else _replaced(value))
                        for key, value in pairs])


def _replaced(text: str) -> str:
    """Surrogate-escaped text as Starlette would have decoded it: undecodable bytes as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _shown(value):
    """Every value a template prints: a path that is not valid UTF-8 is shown with `\\xff` escapes
    (an HTML page is UTF-8; links carry the exact bytes through `url` and `form_value`)."""
    if isinstance(value, str) and not is_utf8(value):
        return Markup(readable(value)) if isinstance(value, Markup) else readable(value)
    return value


class WebApp:
    """The app's state: where the index is, the model (loaded once), uploads, and a form token."""

    def __init__(self, db_path: str | os.PathLike, get_encoder: Callable):
        self.db_path = Path(db_path)
        self.get_encoder = get_encoder
        self.csrf = secrets.token_urlsafe(24)  # forms that move files must come from our own pages
        self.uploads = Path(tempfile.mkdtemp(prefix="clipsearch-uploads-"))
        self._local = threading.local()
        self.templates = Environment(loader=PackageLoader("clipsearch", "web/templates"),
                                     autoescape=select_autoescape(["html"]), finalize=_shown)
        self.templates.filters["human_size"] = _human_size
        self.templates.filters["form_value"] = url_quote  # a path in a form field; `_form_path` reads it back
        self.templates.filters["date"] = _date
        self.templates.globals["url"] = _url

    def store(self) -> Store:
        """One connection per thread (SQLite connections stay in the thread that opened them)."""
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store.open(self.db_path, create=False)
        return store

    def page(self, request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        html = self.templates.get_template(template).render(request=request, csrf=self.csrf, **context)
        return HTMLResponse(html, status_code=status)

    def indexed_file(self, path: str | None) -> dict:
        """The index row of `path` if it may be served, else a 404.

        The path must be exactly as indexed (no normalising, so no `..`), and the
        file there (following symlinks) must be a regular file with the size and
        modification time the index recorded: a file swapped for a symlink to
        something else, or changed since indexing, is not served.
        """
        row = self.store().file_row(path) if path and "\0" not in path else None
        if path is None or row is None:
            raise HTTPException(404, "Not in the index.")
        try:
            info = os.stat(path)
        except OSError:
            raise HTTPException(404, "The file is gone; run clipsearch index to update the index.") from None
        if not os.path.isfile(path) or info.st_size != row["size"] or info.st_mtime_ns != row["mtime_ns"]:
            raise HTTPException(404, "The file changed since it was indexed; run clipsearch index first.")
        return row

    def cards(self, hits: list[search.Hit]) -> list[dict]:
        """What a grid cell shows: the hit plus its name and date."""
        dates = self.store().mtimes([hit.path for hit in hits])
        return [{"path": hit.path, "name": os.path.basename(hit.path), "score": hit.score, "width": hit.width,
                 "height": hit.height, "size": hit.bytes, "mtime_ns": dates.get(hit.path),
                 "taken": hit.taken} for hit in hits]


def create_app(db_path: str | os.PathLike, get_encoder: Callable) -> Starlette:
    """The web app over the index at `db_path`; `get_encoder()` gives the (already loaded) model."""
    web = WebApp(db_path, get_encoder)

    async def search_page(request: Request) -> Response:
        params = _query(request)
        query = params.get("q", "").strip()
        folder = params.get("in", "").strip() or None
        tags = [t.strip() for t in params.getlist("tag") if t.strip()]
        like = params.get("like", "").strip()
        upload = params.get("upload", "").strip()
        try:
            page = max(1, int(params.get("page", "1")))
        except ValueError:
            page = 1
        store = web.store()
        context: dict = {"query": query, "folder": folder or "", "tags": tags, "like": like, "upload": upload,
                         "page": page}
        if not (query or tags or like or upload):  # the start page: what there is to search
            return web.page(request, "search.html", cards=None, count=store.count(),
                            tag_counts=TagStore(store).tag_counts()[:40], **context)
        top = page * PAGE_SIZE
        try:
            if like:
                web.indexed_file(like)
                hits = search.similar(like, store, web.get_encoder, top, folder)
            elif upload:
                hits = search.similar(_upload_path(web, upload), store, web.get_encoder, top, folder)
            else:
                hits = search.find(query or None, store, web.get_encoder, top, folder, tags=tags)
        except search.QueryError as exc:
            return web.page(request, "search.html", 400, cards=[], error=str(exc), **context)
        cards = web.cards(hits[(page - 1) * PAGE_SIZE:])
        more = len(hits) == top
        template = "cards.html" if params.get("partial") else "search.html"
        return web.page(request, template, cards=cards, more=more, **context)

    async def photo_page(request: Request) -> Response:
        row = web.indexed_file(_query(request).get("path"))
        store = web.store()
        similar = web.cards(search.similar(row["path"], store, web.get_encoder, SIMILAR_ON_PHOTO_PAGE))
        photo_tags = TagStore(store).tags_of([row["id"]]).get(row["id"], [])
        return web.page(request, "photo.html", photo=row, name=os.path.basename(row["path"]), cards=similar,
                        photo_tags=photo_tags)

    async def thumbnail(request: Request) -> Response:
        row = web.indexed_file(_query(request).get("path"))
        try:
            size = int(_query(request).get("size", THUMB_SIZES[0]))
        except ValueError:
            size = 0
        if size not in THUMB_SIZES:
            raise HTTPException(400, f"size must be one of {', '.join(map(str, THUMB_SIZES))}")
        try:
            etag = '"' + thumbnails.thumbnail_key(row["path"], size) + '"'
        except OSError:
            raise HTTPException(404, "The file is gone.") from None
        headers = {"ETag": etag, "Cache-Control": "no-cache"}  # revalidate: a 304 costs nothing
        if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        try:
            data, _ = await run_in_threadpool(thumbnails.thumbnail, row["path"], size)
        except images.ImageError as exc:
            raise HTTPException(404, f"No thumbnail: {exc}") from None
        return Response(data, media_type="image/jpeg", headers=headers)

    async def original(request: Request) -> Response:
        row = web.indexed_file(_query(request).get("path"))
        return FileResponse(row["path"], filename=readable(os.path.basename(row["path"])),
                            content_disposition_type="inline")

    async def upload_form(request: Request) -> Response:
        async with request.form(max_files=1, max_part_size=MAX_UPLOAD_BYTES) as form:
            upload = form.get("image")
            data = await upload.read() if upload is not None and hasattr(upload, "read") else b""
            name = getattr(upload, "filename", "") or ""
        if not data:
            return web.page(request, "message.html", 400, title="No image", message="Choose or drop an image file.")
        try:
            images.open_oriented(data, 64)
        except images.ImageError as exc:
            return web.page(request, "message.html", 400, title="Not a usable image", message=f"{name}: {exc}")
        digest = hashlib.sha256(data).hexdigest()[:32]
        extension = os.path.splitext(name)[1].lower()
        extension = extension if extension in images.supported_extensions() else ".jpg"
        for old in web.uploads.glob(f"{digest}.*"):
            old.unlink()
        (web.uploads / f"{digest}{extension}").write_bytes(data)
        return RedirectResponse(f"/?upload={digest}", status_code=303)

    async def uploaded_image(request: Request) -> Response:
        return FileResponse(_upload_path(web, request.path_params["digest"]))

    async def dedupe_page(request: Request) -> Response:
        params = _query(request)
        folder = params.get("in", "").strip() or None
        with_similar = params.get("similar") == "1"
        store = web.store()
        try:
            if folder and not os.path.isdir(folder):
                raise dedupe.DedupeError(f"{folder} is not a folder.")
            await run_in_threadpool(_fill_fingerprints, web.db_path, folder)
            groups = dedupe.find_duplicates(store, folder, dedupe.DedupeOptions(similar=with_similar))
        except (dedupe.DedupeError, search.QueryError) as exc:
            return web.page(request, "message.html", 400, title="Cannot look for duplicates", message=str(exc))
        return web.page(request, "dedupe.html", groups=groups, folder=folder or "", similar=with_similar)

    async def dedupe_move(request: Request) -> Response:
        form = await request.form()
        _check_token(web, form.get("csrf"))
        destination = str(form.get("destination", "")).strip()
        folder = _form_path(str(form.get("in", "")).strip()) or None
        if not destination:
            return web.page(request, "message.html", 400, title="No review folder",
                            message="Give a folder to move the extra files to (outside your library).")
        store = web.store()
        groups = []
        count = str(form.get("groups", "0"))
        for number in range(int(count) if count.isdigit() else 0):
            if not form.get(f"act{number}"):
                continue
            members = [_form_path(p) for p in form.getlist(f"member{number}")]
            keep = _form_path(form.get(f"keep{number}", ""))
            if keep not in members:
                raise HTTPException(400, f"Group {number + 1}: the file to keep is not one of its members.")
            rows = {row["path"]: row for row in (web.indexed_file(p) for p in members)}
            chosen = [_member(rows[p]) for p in [keep] + [p for p in members if p != keep]]
            groups.append(dedupe.Group(str(form.get(f"tier{number}", "near")), chosen[0], "chosen in the web app",
                                       chosen[1:]))
        if not groups:
            return web.page(request, "message.html", 400, title="Nothing chosen", message="Tick the groups to act on.")
        try:
            plan = moves.plan_moves(groups, destination, store, folder)
            report = moves.apply_moves(plan, store, moves.default_manifest_path(normalise_path(destination)))
        except moves.MoveError as exc:
            return web.page(request, "message.html", 400, title="Nothing was moved", message=str(exc))
        store.refresh_vector_cache()
        return web.page(request, "moved.html", report=report)

    async def dedupe_undo(request: Request) -> Response:
        form = await request.form()
        _check_token(web, form.get("csrf"))
        try:
            report = moves.undo_moves(str(form.get("manifest", "")), web.store())
        except moves.MoveError as exc:
            return web.page(request, "message.html", 400, title="Cannot undo", message=str(exc))
        web.store().refresh_vector_cache()
        return web.page(request, "undone.html", report=report)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return web.page(request, "message.html", status, title=f"Error {status}", message=getattr(exc, "detail", ""))

    routes = [
        Route("/", search_page),
        Route("/photo", photo_page),
        Route("/thumb", thumbnail),
        Route("/file", original),
        Route("/upload", upload_form, methods=["POST"]),
        Route("/uploaded/{digest:str}", uploaded_image),
        Route("/dedupe", dedupe_page),
        Route("/dedupe/move", dedupe_move, methods=["POST"]),
        Route("/dedupe/undo", dedupe_undo, methods=["POST"]),
        Mount("/static", StaticFiles(directory=_WEB / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    app.state.web = web
    return app


def _upload_path(web: WebApp, digest: str) -> str:
    if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
        raise HTTPException(404, "No such upload.")
    found = sorted(web.uploads.glob(f"{digest}.*"))
    if not found:
        raise HTTPException(404, "That upload is gone (uploads last until the server stops); upload it again.")
    return str(found[0])


def _form_path(value) -> str:
    """A path from a form field the page filled with `form_value` (its exact bytes, percent-encoded)."""
    return url_unquote(value) if isinstance(value, str) else ""


def _check_token(web: WebApp, token) -> None:
    if not isinstance(token, str) or not secrets.compare_digest(token, web.csrf):
        raise HTTPException(403, "This form is out of date (the server restarted?); reload the page.")


def _fill_fingerprints(db_path: Path, folder: str | None) -> None:
    """Perceptual hashes of images indexed before dedupe existed (reads files, so not on the event loop)."""
    with Store.open(db_path, create=False) as store:
        indexer.fill_fingerprints(store, folder)


def _member(row: dict) -> dedupe.Member:
    return dedupe.Member(row["path"], row["width"], row["height"], row["size"], row["mtime_ns"])


def run(app: Starlette, host: str, port: int) -> None:
    """Serve until Ctrl-C."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
