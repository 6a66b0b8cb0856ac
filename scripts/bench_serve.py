"""Warm query latency of `clipsearch serve` through HTTP on a large index.

    python scripts/bench_serve.py [--images 100000] [--dim 512] [--queries 30]

Reuses bench_search.py's synthetic index (random unit vectors, cached in .bench/).
The text model is the shipped tiny CLIP (no download); its 64-d text vectors are
mapped to --dim by a fixed random projection, so the ranking works on vectors as
large as ViT-B/32's. What scales with the library is ranking and rendering;
embedding a query with the real ViT-B/32 text tower adds its own cost (about
10-20 ms on a laptop CPU), the same as on the command line.

Each query is a full GET /?q=... over a real socket to uvicorn (keep-alive), as
the browser does it: parse, embed, rank, look up 48 rows, render the page.
Prints medians and the 90th percentile.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import CACHE, build

from clipsearch import search
from clipsearch.models.torch_encoder import Encoder
from clipsearch.store import Store
from clipsearch.web import app as server

TINY_MODEL = Path(__file__).resolve().parent.parent / "models" / "tiny-clip"
QUERIES = ["a red circle", "a blue square", "a yellow star on grass", "a green triangle", "a purple cross",
           "an orange circle on a sky background", "a white star", "a black square", "a big red star",
           "a small blue circle"]


class Projected:
    """The tiny model's text vectors mapped to `dim` dimensions (unit length), for a ViT-B/32-sized ranking."""

    def __init__(self, encoder: Encoder, dim: int):
        self.encoder = encoder
        self.projection = np.random.default_rng(3).normal(size=(encoder.embed_texts(["x"]).shape[1], dim))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        vectors = (self.encoder.embed_texts(texts) @ self.projection).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def timed_get(connection: http.client.HTTPConnection, url: str) -> float:
    started = time.perf_counter()
    connection.request("GET", url)
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    assert response.status == 200 and b'class="card"' in body, (response.status, body[:300])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    path = CACHE / f"search-{args.images}-{TINY_MODEL.name}-{args.dim}.db"
    path.parent.mkdir(exist_ok=True)
    build(path, args.images, TINY_MODEL, args.dim)
    encoder = Projected(Encoder.load(str(TINY_MODEL), "cpu"), args.dim)
    with Store.open(path, create=False) as store:
        store.vectors()  # the vector cache file exists, as after any index run
        count = store.count()

    import uvicorn

    app = server.create_app(path, lambda: encoder)
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning"))
    threading.Thread(target=uvicorn_server.run, daemon=True).start()
    while not uvicorn_server.started:
        time.sleep(0.05)
    connection = http.client.HTTPConnection("127.0.0.1", args.port)
    print(f"setup: {count} images, {args.dim}-d vectors, tiny text model projected to {args.dim}-d")

    def series(params_for) -> list[float]:
        for i in range(3):  # warm: first request, page cache, templates
            timed_get(connection, "/?" + urlencode(params_for(i)))
        return [timed_get(connection, "/?" + urlencode(params_for(i))) for i in range(args.queries)]

    def report(label: str, times: list[float]) -> None:
        ms = sorted(t * 1000 for t in times)
        print(f"{label}: median {statistics.median(ms):.1f} ms, p90 {ms[int(len(ms) * 0.9) - 1]:.1f} ms "
              f"({len(ms)} queries)")

    # HTTP and in-process calls alternate, so machine noise hits both alike; the ratio is what HTTP adds.
    http_times, direct, embed = [], [], []
    with Store.open(path, create=False) as store:
        for i in range(args.queries + 3):
            query = QUERIES[i % len(QUERIES)]
            took = timed_get(connection, "/?" + urlencode({"q": query}))
            started = time.perf_counter()
            search.find(query, store, lambda: encoder, server.PAGE_SIZE)
            middle = time.perf_counter()
            encoder.embed_texts([query])
            if i >= 3:  # the first ones warm up
                http_times.append(took)
                direct.append(middle - started)
                embed.append(time.perf_counter() - middle)
    report("GET /?q=... whole index (48 results, whole page)", http_times)
    report("  the same search.find in-process (embed + load + rank + rows)", direct)
    report("  of which: embedding the text (tiny model)", embed)
    report("GET /?q=...&page=3 (results 97-144)", series(lambda i: {"q": QUERIES[i % len(QUERIES)], "page": 3}))
    report("GET /?q=...&in=one folder of 1000",
           series(lambda i: {"q": QUERIES[i % len(QUERIES)], "in": "/photos/0042"}))
    print(f"HTTP + page rendering add {statistics.median(http_times) / statistics.median(direct):.2f}x to the search; "
          f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    uvicorn_server.should_exit = True


if __name__ == "__main__":
    main()
