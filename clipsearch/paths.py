"""Paths as the index keeps them: one spelling per file, folder scopes as ranges, exact bytes.

Every layer that looks a file up (index rows, tags, dedupe, search) must agree
on how a path is written, so this lives in one place. Paths are bytes on
POSIX; a name that is not valid UTF-8 arrives as a str with surrogate escapes
(PEP 383). Such a path is bound as its exact bytes and stored as TEXT through
`CAST(? AS TEXT)`, and read back with the same escapes, so nothing is lost and
valid UTF-8 paths are stored exactly as before.
"""

from __future__ import annotations

import base64
import os
from urllib.parse import quote, unquote


def normalise_path(path: str | os.PathLike[str]) -> str:
    """Absolute, with `..` and duplicate slashes removed, symlinks kept as the user sees them."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def folder_range(folder: str) -> tuple[str, str]:
    """Bounds such that `low <= path < high` selects everything under `folder`.

    Using a range instead of LIKE keeps the path index usable and needs no
    escaping of `%` or `_` in folder names.
    """
    prefix = folder.rstrip(os.sep) + os.sep
    return prefix, prefix[:-1] + chr(ord(os.sep) + 1)


def sql_text(value: str) -> str | bytes:
    """A path as SQLite can take it: itself, or its exact bytes when it is not valid UTF-8.

    Used with `CAST(? AS TEXT)` in the SQL, which stores those bytes as TEXT unchanged.
    """
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")


def decode_text(data: bytes) -> str:
    """Text read from the index; bytes that are not UTF-8 come back as the surrogate escapes they went in as."""
    return data.decode("utf-8", "surrogateescape")


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def readable(text: str) -> str:
    """Text that can be shown anywhere (HTML, JSON, a header): bytes that are not UTF-8 as `\\xff` escapes."""
    if is_utf8(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def url_quote(path: str) -> str:
    """A path for a URL or a form field: its exact bytes percent-encoded (`/` kept). `url_unquote` reverses it."""
    return quote(path.encode("utf-8", "surrogateescape"), safe="/")


def url_unquote(text: str) -> str:
    """The path `url_quote` (or a URL's query string) encoded, bytes that are not UTF-8 as surrogate escapes."""
    return unquote(text, encoding="utf-8", errors="surrogateescape")


def path_json(path: str) -> dict:
    """A path for JSON output: "path" always valid Unicode; "path_bytes" (base64 of the exact bytes) as well
    when the name is not valid UTF-8."""
    try:
        path.encode("utf-8")
        return {"path": path}
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "surrogateescape")
        return {"path": raw.decode("utf-8", "backslashreplace"), "path_bytes": base64.b64encode(raw).decode("ascii")}
