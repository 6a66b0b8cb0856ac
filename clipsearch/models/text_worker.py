"""A second process that embeds a `find`'s new texts, so loading the text encoder runs beside the query.

Loading the ONNX text tower is ~110 ms of work that holds the GIL (importing onnxruntime, reading
CLIP's tokenizer, building the session). In a background thread (QueryEncoder.start_loading) it waits
its turn behind the main thread's own imports and the opening of the index, on a machine with a core
to spare. Forked when the `find` command starts, before numpy is imported, this process imports
onnxruntime and tokenizers on the other core at once, is told the model and the texts as soon as the
query knows them (after it has looked for them among the remembered queries), and sends back their
vectors: at a million photos a `find` with a new text took 0.26 s instead of 0.33 s (with OpenBLAS on
one thread, cli.main; README, Performance).

Started only by the command line (`TextWorker.start`, a no-op but on Linux, where forking a process
that has no threads yet is safe); the Python API keeps the thread. The worker never prints (its
standard streams are /dev/null, so it holds no pipe or terminal of the caller's), ignores Ctrl-C (the
caller handles it) and never opens the index. It ends once it has answered, when it is stopped, or
when the caller goes (its request pipe closes). On any failure it answers with the reason and the
caller loads the encoder itself, with its notices (the one-time export, the torch fallback).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# Loading takes ~0.1 s (seconds from a cold, slow disk); a worker stuck for longer is given up on, and the
# caller loads the encoder itself.
ANSWER_TIMEOUT = 60.0


class TextWorker:
    """The caller's side: `ask` once, then `answer`; `stop` ends the process (idempotent)."""

    def __init__(self, pid: int, requests: int, results: int):
        self.pid = pid
        self._requests: int | None = requests  # our ends of the two pipes
        self._results: int | None = results
        self.asked: list[str] | None = None
        self._killed = False

    @classmethod
    def start(cls) -> TextWorker | None:
        """Fork the worker now (call before importing numpy or starting threads); None where it is not used."""
        if not sys.platform.startswith("linux"):
            return None
        requests_read, requests_write = os.pipe()
        results_read, results_write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (requests_read, requests_write, results_read, results_write):
                os.close(fd)
            return None
        if pid == 0:  # the worker: it never returns into the caller's code
            code = 1
            try:
                os.close(requests_write)
                os.close(results_read)
                _serve(requests_read, results_write)
                code = 0
            finally:
                os._exit(code)
        os.close(requests_read)
        os.close(results_write)
        return cls(pid, requests_write, results_read)

    def ask(self, model_id: str, precision: str, texts: list[str]) -> bool:
        """Have the worker embed `texts` with the cached ONNX export of `model_id`; False if it cannot be asked
        (asked already, or stopped)."""
        if self.asked is not None or self._requests is None:
            return False
        request = json.dumps({"model": model_id, "precision": precision, "texts": texts}).encode() + b"\n"
        try:
            _write_all(self._requests, request)
        except OSError:  # it is gone
            self.stop()
            return False
        self.asked = list(texts)
        return True

    def answer(self, texts: list[str]) -> np.ndarray | None:
        """The unit vectors of `texts` (n x dim, float32), waiting for them; None if they were not asked for
        or the worker could not embed them (then the caller loads the encoder itself). Stops the worker."""
        import numpy as np

        if self.asked != texts or self._results is None:
            return None
        try:
            if not select.select([self._results], [], [], ANSWER_TIMEOUT)[0]:
                raise TimeoutError
            with os.fdopen(self._results, "rb", closefd=False) as results:
                header = json.loads(results.readline() or b"{}")
                rows, dim = int(header.get("rows", 0)), int(header.get("dim", 0))
                payload = results.read(rows * dim * 4)
        except (OSError, ValueError):
            header, payload = {}, b""
        finally:
            self.stop()
        if "rows" not in header or rows != len(texts) or not dim or len(payload) != rows * dim * 4:
            return None
        return np.frombuffer(payload, dtype=np.float32).reshape(rows, dim).copy()

    def stop(self, wait: bool = False) -> None:
        """End the worker: its answer, if any, is no longer wanted. It is reaped if it has ended already (as it
        has once it has answered), else by a later call; with `wait`, now (the command line's, at its exit)."""
        for fd in (self._requests, self._results):
            if fd is not None:
                os.close(fd)
        self._requests = self._results = None
        if not self.pid:
            return
        try:
            if not self._killed:
                os.kill(self.pid, signal.SIGKILL)
                self._killed = True
            if os.waitpid(self.pid, 0 if wait else os.WNOHANG)[0]:
                self.pid = 0
        except (ProcessLookupError, ChildProcessError):
            self.pid = 0


def _serve(requests: int, results: int) -> None:
    """The worker's whole life: import, wait for the one request, embed, answer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; it stops us
    quiet = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(quiet, fd)
    from . import export_cache
    from .onnx_text import OnnxTextEncoder  # numpy

    try:  # what every model needs, while the caller parses its arguments and opens the index
        export_cache.import_onnxruntime()
        import tokenizers  # noqa: F401
    except ImportError:
        pass  # OnnxTextEncoder.load says so below
    with os.fdopen(requests, "rb") as pipe:
        line = pipe.readline()
    if not line:  # the caller stopped us, or went
        return
    request = json.loads(line)
    try:
        encoder = OnnxTextEncoder.load(request["model"], request["precision"])
        vectors = encoder.embed_texts(request["texts"]).astype("float32")
        header, payload = {"rows": vectors.shape[0], "dim": vectors.shape[1]}, vectors.tobytes()
    except Exception as exc:  # noqa: BLE001 - any failure: the caller loads the encoder itself and says why
        header, payload = {"error": f"{type(exc).__name__}: {exc}"}, b""
    _write_all(results, json.dumps(header).encode() + b"\n" + payload)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
