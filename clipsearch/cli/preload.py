"""The shared libraries a query will need, loaded on a second core while the interpreter imports Python code.

Most of a `find` process's time is imports, and a large part of that is the dynamic loader: numpy's,
faiss's, tokenizers' and onnxruntime's compiled libraries (with OpenBLAS and libfaiss behind them) are
mapped, relocated and initialised while Python's import holds the GIL, so it all runs one after the other
on one core. `start` has a thread load them first through ctypes, which lets go of the GIL while the loader
works: the main thread goes on importing Python modules on one core while the libraries load on the
other, and its imports then find them loaded. The thread imports no Python module (two threads importing
numpy at once can break it); a library that cannot be found or loaded is skipped, and the real import
says what is wrong.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import threading
from pathlib import Path

# Per command, the packages whose compiled libraries it loads, in the order it needs them, and their file names.
_LIBRARIES = {
    "numpy": ("_core/_multiarray_umath.*",),
    "faiss": ("_swigfaiss*",),
    "tokenizers": ("tokenizers.*",),
    "onnxruntime": ("capi/onnxruntime_pybind11_state.*",),
}
_NEEDED = {
    "find": ("numpy", "faiss", "tokenizers", "onnxruntime"),
    "similar": ("numpy", "faiss", "onnxruntime"),
}
_SUFFIXES = (".so", ".pyd")


def start(command: str) -> threading.Thread | None:
    """Start loading what `command` will import (nothing for commands not listed); returns the thread."""
    files = [file for package in _NEEDED.get(command, ()) for file in _library_files(package)]
    if not files:
        return None
    thread = threading.Thread(target=_load, args=(files,), name="clipsearch-preload", daemon=True)
    thread.start()
    return thread


def _library_files(package: str) -> list[Path]:
    """The compiled library of `package`, located without importing it (one file, or none when unsure)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = [path for pattern in _LIBRARIES[package] for path in sorted(folder.glob(pattern))
             if path.suffix in _SUFFIXES]
    return found if len(found) == 1 else []  # several builds (one per instruction set): the import chooses


def _load(files: list[Path]) -> None:
    for file in files:
        with contextlib.suppress(OSError):  # the import that needs it reports the problem
            ctypes.CDLL(str(file))
