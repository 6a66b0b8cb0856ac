"""`clipsearch serve`: a local web app over the index, with nothing to install beyond clipsearch.

Photo search is visual: this shows results as a grid of thumbnails, a photo
large with "more like this", its tags, camera and date taken, an uploaded or
dropped image as a query, and the dedupe review with a keep choice and "move
to review folder" (the same manifest and undo as the CLI). Every page is a URL
(`/?q=a+dog&after=2024`), so searches can be bookmarked. It is a Starlette app
with Jinja2 templates and a few lines of plain JavaScript shipped in the
package: no build step, no network at run time.

A local server is still reachable from any web page the user opens, so:
- Only requests addressed to a name the server was started for are answered
  (the Host header: localhost, 127.0.0.1, [::1], the --host value and
  --allow-host names), which stops DNS rebinding.
- Every request that changes something (POST) must come from one of our own
  pages: its Origin must be this server, and its form must carry the
  per-server token.
- Every response forbids framing and carries a strict Content-Security-Policy.
- It serves only files the index knows: a path must be exactly an indexed path,
  and the file is opened without following a symlink (O_NOFOLLOW), must be a
  regular file and must still have the size and modification time the index
  recorded; what is sent is read from that opened file. So `..` tricks,
  symlinks (even indexed ones) and anything outside the library are 404s.
- Uploads are capped (50 MB by default), refused with 413 before the body is
  read when too large, streamed to disk, and deleted when the server stops.

Everything goes through `clipsearch.Library`, as the command line does: text
queries take the same path as `find` (remembered queries, then the ONNX text
tower, so `serve` starts without torch when it is exported), and dedupe, moves
and undo are the library's. Model and SQL work runs in worker threads (sync
routes, or run_in_threadpool), never on the event loop, so a slow query does not
hold up the stylesheet; each thread has its own `Library.for_thread()` (its own
SQLite connection) and the model, loaded once, is used by one thread at a time.

A file name that is not valid UTF-8 (a surrogate-escaped str, see paths.py)
travels in links and form fields as its exact bytes, percent-encoded, and is
read back the same way (`_query`, `_form_path`); pages show it with `\\xff`
escapes. This package imports nothing of clipsearch but the facade (tests/test_architecture.py).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import mimetypes
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import Filters, Group, Hit, Library, Member
from ..errors import BadInputError, ClipsearchError, IndexBusyError, IndexUnusableError
from ..paths import is_utf8, normalise_path, readable, url_quote, url_unquote
from ..units import human_size

PAGE_SIZE = 48
SIMILAR_ON_PHOTO_PAGE = 18
THUMB_SIZES = (320, 1600)  # grid cells, and the photo page (every browser shows a JPEG; not every one a HEIC)
DEFAULT_MAX_UPLOAD_MB = 50
FORM_OVERHEAD_BYTES = 64 * 1024  # an upload's body: the image plus the multipart headers and the token
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
PATH_PARAMS = ("path", "like", "in")  # query parameters that are file paths: their exact bytes are kept
UPLOADS_PREFIX = "clipsearch-uploads-"
CHUNK = 256 * 1024
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
                                 b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # not no-referrer: that makes browsers send `Origin: null` on our forms
    (b"x-content-type-options", b"nosniff"),
]
_WEB = Path(__file__).resolve().parent


def _human_size(size: int | None) -> str:
    """1.2 MB; the number and unit joined by a no-break space, so they never wrap apart."""
    return human_size(size, "\u00a0")


def _date(mtime_ns: int | None) -> str:
    return datetime.fromtimestamp(mtime_ns / 1e9).strftime("%Y-%m-%d") if mtime_ns else ""


def _breakable(path: str) -> Markup:
    """A path that may wrap after each `/` (not inside a name): escaped, with <wbr> after the slashes."""
    return Markup("/<wbr>").join(escape(readable(part)) for part in path.split("/"))


def _below(path: str, root: str) -> str:
    """The folder of `path` relative to `root` ("" when it is `root` itself)."""
    folder = os.path.relpath(os.path.dirname(path), root) if root else os.path.dirname(path)
    return "" if folder == "." else folder


def _url(route: str, base: dict | None = None, **params) -> str:
    """A link with its query string: `base`'s parameters changed by `params`; `in_` stands for the `in`
    parameter (a Python keyword).

    A path that is not valid UTF-8 goes in as its exact bytes, percent-encoded; `_query` reads it back.
    """
    params = {**(base or {}), **params}
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


def _host_name(value: str) -> str | None:
    """The host in a Host header (or an Origin's netloc), lower case and without its port:
    `[::1]:8000` -> `::1`, `LocalHost.:80` -> `localhost`; None when it is not a host[:port]."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, port = value[1:].partition("]")
        if not bracket or (port and not re.fullmatch(r":\d+", port)):
            return None
        return name or None
    name, _, port = value.partition(":")
    if (port and not port.isdigit()) or not re.fullmatch(r"[a-z0-9._-]+", name or "-"):
        return None
    return name.rstrip(".") or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class _Serialised:
    """The model, used by one thread at a time (a fast tokenizer fails when two threads use it at once)."""

    def __init__(self, encoder: Any, lock: threading.Lock):
        self._encoder, self._lock = encoder, lock

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._encoder, name)
        if not callable(value):
            return value

        def locked(*args, **kwargs):
            with self._lock:
                return value(*args, **kwargs)
        return locked


class WebApp:
    """The app's state: the library (one per worker thread), who may call, uploads, and a form token."""

    def __init__(self, library: Library, allow_hosts: Sequence[str] = (),
                 max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
        self.root = library
        self.csrf = secrets.token_urlsafe(24)  # forms that change something must come from our own pages
        self.hosts: set[str] = set()
        self.any_address = False  # listening on every address: any IP address as Host (a rebinding needs a name)
        self.allow(*LOCAL_HOSTS, *allow_hosts)
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.manifests: set[str] = set()  # the web undo takes only the manifests this server wrote
        _remove_stale_uploads()
        self.uploads = Path(tempfile.mkdtemp(prefix=f"{UPLOADS_PREFIX}{os.getpid()}-"))
        self._local = threading.local()
        self.templates = Environment(loader=PackageLoader("clipsearch.web", "templates"),
                                     autoescape=select_autoescape(["html"]), finalize=_shown)
        self.templates.filters["human_size"] = _human_size
        self.templates.filters["form_value"] = url_quote  # a path in a form field; `_form_path` reads it back
        self.templates.filters["date"] = _date
        self.templates.filters["breakable"] = _breakable
        self.templates.filters["below"] = _below
        self.templates.globals["url"] = _url

    def allow(self, *hosts: str) -> None:
        """Answer requests addressed to these host names too (a wildcard address: to any IP address)."""
        for host in hosts:
            name = host.strip().lower().strip("[]").rstrip(".")
            if name in WILDCARD_HOSTS:
                self.any_address = True
                self.hosts.add(socket.gethostname().lower())
            else:
                self.hosts.add(name)

    def host_allowed(self, header: str) -> bool:
        name = _host_name(header)
        return name is not None and (name in self.hosts or (self.any_address and _is_ip(name)))

    def remove_uploads(self) -> None:
        shutil.rmtree(self.uploads, ignore_errors=True)

    def library(self) -> Library:
        """This thread's Library: its own connection to the index, the models shared (loaded once)."""
        library = getattr(self._local, "library", None)
        if library is None:
            library = self._local.library = self.root.for_thread()
        return library

    def page(self, request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        html = self.templates.get_template(template).render(request=request, csrf=self.csrf, **context)
        return HTMLResponse(html, status_code=status)

    def open_indexed(self, path: str | None) -> tuple[dict, BinaryIO]:
        """The index row of `path` and the file opened for reading, if it may be served; else a 404.

        The path must be exactly as indexed (no normalising, so no `..`). The file
        is opened without following a symlink in its last part and without
        blocking on a FIFO; what was opened must be a regular file with the size
        and modification time the index recorded. Callers read from the returned
        handle, so a file swapped after the check is not what gets sent.
        """
        row = self.library().indexed_file(path) if path and "\0" not in path else None
        if path is None or row is None:
            raise HTTPException(404, "Not in the index.")
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        if not nofollow and os.path.islink(path):  # pragma: no cover - Windows has no O_NOFOLLOW
            raise HTTPException(404, "This file is a symlink; the web app serves only files themselves.")
        try:
            fd = os.open(path, os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HTTPException(404, "This file is a symlink; the web app serves only files themselves.") from None
            raise HTTPException(404, "The file is gone; run clipsearch index to update the index.") from None
        handle = os.fdopen(fd, "rb")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != row["size"] or info.st_mtime_ns != row["mtime_ns"]:
            handle.close()
            raise HTTPException(404, "The file changed since it was indexed; run clipsearch index first.")
        return row, handle

    def indexed_file(self, path: str | None) -> dict:
        """The index row of `path` if it may be served (see `open_indexed`), else a 404."""
        row, handle = self.open_indexed(path)
        handle.close()
        return row

    def cards(self, hits: list[Hit]) -> list[dict]:
        """What a grid cell shows: the hit plus its name, date and place."""
        dates = self.library().modified_times([hit.path for hit in hits])
        return [{"path": hit.path, "name": os.path.basename(hit.path), "score": hit.score, "width": hit.width,
                 "height": hit.height, "size": hit.bytes, "mtime_ns": dates.get(hit.path),
                 "taken": hit.taken, "camera": hit.camera, "text": hit.text,
                 "place": hit.place.short() if hit.place else None} for hit in hits]


class _Guard:
    """ASGI middleware: the Host allow-list, the Origin check on anything but GET/HEAD, and the security
    headers on every response (the refusals included)."""

    def __init__(self, app: ASGIApp, web: WebApp):
        self.app, self.web = app, web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        headers = Headers(scope=scope)
        host = headers.get("host", "")
        refusal = None
        if not self.web.host_allowed(host):
            refusal = PlainTextResponse(
                f"This server does not answer to the name {host!r}. Open it as http://localhost:PORT/, or start it "
                f"with clipsearch serve --allow-host NAME to use another name.", 400)
        elif scope["method"] not in ("GET", "HEAD") and not _same_origin(headers, host):
            refusal = PlainTextResponse("Refused: this request did not come from a page of this server "
                                        "(its Origin header is missing or another site's). Reload the page.", 403)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def _same_origin(headers: Headers, host: str) -> bool:
    """The Origin (else the Referer) names this very server: http(s)://HOST as the request was addressed."""
    source = headers.get("origin") or headers.get("referer") or ""
    parts = urlsplit(source)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.strip().lower()


class _TooLarge(Exception):
    """An upload's body passed the size cap."""


def create_app(library: Library | str | os.PathLike, get_encoder: Callable | None = None,
               allow_hosts: Sequence[str] = (), max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> Starlette:
    """The web app over `library` (or the index at that path), its queries embedded as `find` does them, or
    by the model `get_encoder()` gives when given (a loaded one; tests pass a stand-in).

    It answers to localhost, 127.0.0.1 and [::1], plus `allow_hosts` (`run` adds the address it listens on).
    """
    if not isinstance(library, Library):
        library = Library(library)
    if get_encoder is not None:
        model_lock = threading.Lock()
        library.query_model = lambda: _Serialised(get_encoder(), model_lock)
    web = WebApp(library, allow_hosts, max_upload_mb)

    def search_page(request: Request) -> Response:
        params = _query(request)
        query = params.get("q", "").strip()
        folder = params.get("in", "").strip() or None
        tags = [t.strip() for t in params.getlist("tag") if t.strip()]
        like = params.get("like", "").strip()
        upload = params.get("upload", "").strip()
        after, before, camera, place = (params.get(name, "").strip() for name in ("after", "before", "camera", "place"))
        text = params.get("text", "").strip()  # words in the photo (clipsearch ocr)
        try:
            page = max(1, int(params.get("page", "1")))
        except ValueError:
            page = 1
        lib = web.library()
        here = {"q": query, "in_": folder or "", "tag": tags, "like": like, "upload": upload, "after": after,
                "before": before, "camera": camera, "place": place, "text": text}
        context: dict = {"query": query, "folder": folder or "", "tags": tags, "like": like, "upload": upload,
                         "page": page, "after": after, "before": before, "camera": camera, "place": place, "text": text,
                         "here": here}
        try:
            filters = Filters.parse(after or None, before or None, camera or None, place or None)
        except (BadInputError, OverflowError) as exc:  # OverflowError: a day past the year 9999
            message = str(exc) if isinstance(exc, BadInputError) else f"{after or before} is too far in the future."
            return web.page(request, "search.html", 400, cards=[], error=message, **context)
        if not (query or tags or like or upload or text):  # the start page: what there is to search
            return web.page(request, "search.html", cards=None, count=lib.count(), filtered=bool(filters),
                            tag_counts=lib.tags()[:40], **context)
        top = page * PAGE_SIZE
        try:
            if like or upload:
                image = web.indexed_file(like)["path"] if like else _upload_path(web, upload)
                hits = lib.similar(image, top=top, folder=folder, after=after or None, before=before or None,
                                   camera=camera or None, place=place or None)
            else:
                hits = lib.find(query or None, top=top, folder=folder, tags=tags, after=after or None,
                                before=before or None, camera=camera or None, place=place or None, text=text or None)
        except BadInputError as exc:
            return web.page(request, "search.html", 400, cards=[], error=str(exc), **context)
        cards = web.cards(hits[(page - 1) * PAGE_SIZE:])
        more = len(hits) == top
        template = "cards.html" if params.get("partial") else "search.html"
        return web.page(request, template, cards=cards, more=more, **context)

    def photo_page(request: Request) -> Response:
        row = web.indexed_file(_query(request).get("path"))
        lib = web.library()
        photo = lib.photo(row["path"])
        if photo is None:  # removed from the index since the line above
            raise HTTPException(404, "Not in the index.")
        similar = web.cards(lib.similar(photo.path, top=SIMILAR_ON_PHOTO_PAGE))
        taken = photo.taken
        return web.page(request, "photo.html", photo=photo, name=os.path.basename(photo.path), cards=similar,
                        photo_tags=photo.tags, photo_taken=taken.replace("T", " ")[:16] if taken else "",
                        taken_from_file=photo.taken_from_file, photo_camera=photo.camera or "",
                        photo_place=photo.place, photo_text=[line["text"] for line in photo.text])

    def thumbnail(request: Request) -> Response:
        try:
            size = int(_query(request).get("size", THUMB_SIZES[0]))
        except ValueError:
            size = 0
        if size not in THUMB_SIZES:
            raise HTTPException(400, f"size must be one of {', '.join(map(str, THUMB_SIZES))}")
        row, handle = web.open_indexed(_query(request).get("path"))
        with handle:
            etag = '"' + Library.thumbnail_key(row["path"], size, os.fstat(handle.fileno())) + '"'
            headers = {"ETag": etag, "Cache-Control": "no-cache"}  # revalidate: a 304 costs nothing
            if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
                return Response(status_code=304, headers=headers)
            try:
                data = Library.thumbnail(row["path"], size, opened=handle)
            except BadInputError as exc:
                raise HTTPException(404, f"No thumbnail: {exc}") from None
        return Response(data, media_type="image/jpeg", headers=headers)

    def original(request: Request) -> Response:
        row, handle = web.open_indexed(_query(request).get("path"))
        name = readable(os.path.basename(row["path"]))
        headers = {"Content-Length": str(row["size"]),
                   "Content-Disposition": f"inline; filename*=utf-8''{quote(name)}"}
        return StreamingResponse(_chunks(handle), headers=headers,
                                 media_type=mimetypes.guess_type(name)[0] or "application/octet-stream")

    async def upload_form(request: Request) -> Response:
        limit = web.max_upload_bytes
        too_large = web.page(request, "message.html", 413, title="Image too large",
                             message=f"Uploads are limited to {limit / 1024 / 1024:g} MB "
                                     "(clipsearch serve --max-upload-mb sets the limit).")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + FORM_OVERHEAD_BYTES:
            return too_large  # refused before a byte of the body is read
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await request.receive()
            received += len(message.get("body", b""))
            if received > limit + FORM_OVERHEAD_BYTES:
                raise _TooLarge
            return message

        try:  # the parser spools the file to a temporary file on disk, not to memory
            async with Request(request.scope, capped_receive).form(max_files=1, max_fields=4) as form:
                _check_token(web, form.get("csrf"))
                upload = form.get("image")
                if not isinstance(upload, UploadFile):
                    return web.page(request, "message.html", 400, title="No image",
                                    message="Choose or drop an image file.")
                name = upload.filename or ""
                digest = await run_in_threadpool(_save_upload, web, upload.file, name)
        except _TooLarge:
            return too_large
        if digest is None:
            return too_large
        return RedirectResponse(f"/?upload={digest}", status_code=303)

    def uploaded_image(request: Request) -> Response:
        path = _upload_path(web, request.path_params["digest"])
        with open(path, "rb") as handle:
            return Response(handle.read(), media_type=mimetypes.guess_type(path)[0] or "image/jpeg")

    def dedupe_page(request: Request) -> Response:
        params = _query(request)
        folder = params.get("in", "").strip() or None
        with_similar = params.get("similar") == "1"
        try:  # fingerprints and photo metadata of older rows are filled first, as `clipsearch dedupe` does
            groups = web.library().dedupe(folder, similar=with_similar).groups
        except BadInputError as exc:
            return web.page(request, "message.html", 400, title="Cannot look for duplicates", message=str(exc))
        folders = [os.path.dirname(m.path) for g in groups for m in g.members]
        root = os.path.commonpath(folders) if folders else ""
        return web.page(request, "dedupe.html", groups=groups, folder=folder or "", similar=with_similar, root=root)

    async def dedupe_move(request: Request) -> Response:
        form = await request.form()
        _check_token(web, form.get("csrf"))
        return await run_in_threadpool(_dedupe_move, web, request, form)

    async def dedupe_undo(request: Request) -> Response:
        form = await request.form()
        _check_token(web, form.get("csrf"))
        manifest = str(form.get("manifest", ""))
        if manifest not in web.manifests:
            return web.page(request, "message.html", 400, title="Cannot undo here",
                            message="This page undoes only moves made by this server since it started. "
                                    f"To undo another manifest: clipsearch dedupe --undo {manifest}")
        return await run_in_threadpool(_dedupe_undo, web, request, manifest)

    async def error_page(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return web.page(request, "message.html", status, title=f"Error {status}", message=getattr(exc, "detail", ""))

    async def user_error_page(request: Request, exc: Exception) -> Response:
        """A ClipsearchError (busy index, unusable index, bad input) as a page: no traceback, a clear status."""
        if isinstance(exc, IndexBusyError):
            return web.page(request, "message.html", 503, title="The index is busy", message=str(exc))
        status = 503 if isinstance(exc, IndexUnusableError) else 400
        return web.page(request, "message.html", status, title="Cannot do that", message=str(exc))

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

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        web.remove_uploads()  # the server stops (Ctrl-C, SIGTERM): its uploads go

    app = Starlette(routes=routes, middleware=[Middleware(_Guard, web=web)], lifespan=lifespan,
                    exception_handlers={HTTPException: error_page, ClipsearchError: user_error_page})
    app.state.web = web
    return app


def _dedupe_move(web: WebApp, request: Request, form) -> Response:
    """The review form's ticked groups moved to the review folder (in a worker thread: files and SQL)."""
    destination = str(form.get("destination", "")).strip()
    folder = _form_path(str(form.get("in", "")).strip()) or None
    if not destination:
        return web.page(request, "message.html", 400, title="No review folder",
                        message="Give a folder to move the extra files to (outside your library).")
    library = web.library()
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
        groups.append(Group(str(form.get(f"tier{number}", "near")), chosen[0], "chosen in the web app",
                                   chosen[1:]))
    if not groups:
        return web.page(request, "message.html", 400, title="Nothing chosen", message="Tick the groups to act on.")
    destination = normalise_path(destination)
    existing = destination
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    try:  # busy: refused before the review folder is made
        report = library.move_duplicates(library.plan_moves(groups, destination, folder), destination)
    except BadInputError as exc:
        _remove_empty_folders(destination, existing)
        return web.page(request, "message.html", 400, title="Nothing was moved", message=str(exc))
    except BaseException:
        _remove_empty_folders(destination, existing)
        raise
    web.manifests.add(str(report.manifest))
    return web.page(request, "moved.html", report=report)


def _dedupe_undo(web: WebApp, request: Request, manifest: str) -> Response:
    """Put back what a manifest this server wrote moved (in a worker thread: files and SQL)."""
    try:
        report = web.library().undo_moves(manifest)
    except BadInputError as exc:
        return web.page(request, "message.html", 400, title="Cannot undo", message=str(exc))
    return web.page(request, "undone.html", report=report)


def _remove_empty_folders(folder: str, existing: str) -> None:
    """Remove `folder` and its parents up to (not including) `existing`, as long as they are empty."""
    while folder != existing and folder.startswith(existing):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while block := handle.read(CHUNK):
            yield block


def _save_upload(web: WebApp, source: BinaryIO, name: str) -> str | None:
    """Copy an uploaded file into the uploads folder under its digest; None when it passes the size cap.

    Raises HTTPException(400) when it is empty or not an image this tool can read.
    """
    partial = web.uploads / f"partial-{secrets.token_hex(8)}"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(partial, "xb") as target:
            while block := source.read(CHUNK):
                size += len(block)
                if size > web.max_upload_bytes:
                    return None
                digest.update(block)
                target.write(block)
        if not size:
            raise HTTPException(400, "Choose or drop an image file.")
        try:
            Library.check_image(partial.read_bytes())
        except BadInputError as exc:
            raise HTTPException(400, f"{name}: not a usable image: {exc}") from None
        key = digest.hexdigest()[:32]
        extension = os.path.splitext(name)[1].lower()
        extension = extension if extension in Library.image_extensions() else ".jpg"
        for old in web.uploads.glob(f"{key}.*"):
            old.unlink()
        os.replace(partial, web.uploads / f"{key}{extension}")
        return key
    finally:
        partial.unlink(missing_ok=True)


def _upload_path(web: WebApp, digest: str) -> str:
    if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
        raise HTTPException(404, "No such upload.")
    found = sorted(web.uploads.glob(f"{digest}.*"))
    if not found:
        raise HTTPException(404, "That upload is gone (uploads last until the server stops); upload it again.")
    return str(found[0])


def _remove_stale_uploads() -> None:
    """Upload folders of servers that were killed (their process is gone), so none piles up in /tmp."""
    for folder in Path(tempfile.gettempdir()).glob(f"{UPLOADS_PREFIX}*-*"):
        pid = folder.name[len(UPLOADS_PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or folder.lstat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, AttributeError):  # not ours to judge (another user's process; no getuid on Windows)
            continue


def _form_path(value) -> str:
    """A path from a form field the page filled with `form_value` (its exact bytes, percent-encoded)."""
    return url_unquote(value) if isinstance(value, str) else ""


def _check_token(web: WebApp, token) -> None:
    if not isinstance(token, str) or not secrets.compare_digest(token, web.csrf):
        raise HTTPException(403, "This form is out of date (the server restarted?); reload the page.")


def _member(row: dict) -> Member:
    return Member(row["path"], row["width"], row["height"], row["size"], row["mtime_ns"])


def run(app: Starlette, host: str, port: int, allow_hosts: Sequence[str] = (),
        max_upload_mb: float | None = None) -> None:
    """Serve until Ctrl-C or SIGTERM, answering to `host` and `allow_hosts` besides this machine's own names;
    the uploads folder is removed when it stops."""
    import uvicorn

    web: WebApp = app.state.web
    web.allow(host, *allow_hosts)
    if max_upload_mb is not None:
        web.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        web.remove_uploads()
