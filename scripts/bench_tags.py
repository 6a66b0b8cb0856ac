"""Tagging speed once vectors exist: a 10,000-image index, the built-in vocabulary, a ViT-B/32-shaped model.

    python scripts/bench_tags.py [--images 10000] [--runs 3] [--device cpu|cuda]

The index holds random 512-d unit vectors; the model is a randomly initialised
CLIP with ViT-B/32's shapes (bench_index.py makes it once, in .bench/), so the
text encoder costs what the real one does. Prints the median of --runs full
`tag --retag` runs through the library call (text embedding of every prompt,
scoring, storing), the model load, and the share of the time each part takes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_index import CACHE, vit_b32_model

from clipsearch.models.torch_encoder import Encoder
from clipsearch.store import ImageRecord, Store, encode_vector
from clipsearch.store.tags import TagStore
from clipsearch.tags import auto as tags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model = vit_b32_model(CACHE / "vit-b32-random")
    started = time.perf_counter()
    encoder = Encoder.load(str(model), args.device)
    load_seconds = time.perf_counter() - started
    vocabulary = tags.load_vocabulary()
    prompts = sum(len(p) for p in vocabulary.prompts.values())

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.images, encoder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as workdir, Store.open(Path(workdir) / "index.db") as store:
        store.set_model(encoder.model_id, encoder.dim)
        store.write([ImageRecord(f"/bench/{i:06d}.jpg", 1000, i, f"h{i}", 4000, 3000, encode_vector(v))
                     for i, v in enumerate(vectors)])
        store.vectors()
        first = tags.tag_images(store, lambda: encoder, None, vocabulary)  # embeds the prompts, caches them
        # Random weights give random scores: pick the threshold that gives ~3 tags a photo, so storing costs
        # what it would with a real model.
        scores = vectors @ TagStore(store).tag_vectors(encoder.model_id, vocabulary.version, vocabulary.tags).T
        threshold = float(np.quantile(scores, 1 - 3 / len(vocabulary.tags)))
        runs = []
        for _ in range(args.runs):
            report = tags.tag_images(store, lambda: encoder, None, vocabulary,
                                     tags.TagOptions(threshold=threshold, retag=True))
            runs.append(report.seconds)
        again = tags.tag_images(store, lambda: encoder, None, vocabulary, tags.TagOptions(threshold=threshold))
    median = statistics.median(runs)
    print(f"{args.images:,} images, {len(vocabulary.tags)} tags ({prompts} prompts), device {args.device}")
    print(f"first run with this vocabulary (embeds the {prompts} prompts, then scores and stores): "
          f"{first.seconds:.2f}s = {args.images / first.seconds:,.0f} images/s")
    print(f"later full runs (--retag; prompt vectors cached in the index): median {median:.2f}s = "
          f"{args.images / median:,.0f} images/s (runs: {', '.join(f'{s:.2f}' for s in runs)}); "
          f"{report.assigned:,} tags given")
    print(f"model load (not in the figures above): {load_seconds:.1f}s")
    print(f"incremental re-run with nothing new: {again.seconds * 1000:.0f} ms, {again.skipped:,} skipped")


if __name__ == "__main__":
    main()
