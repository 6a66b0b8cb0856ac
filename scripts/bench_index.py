"""Index throughput on camera-sized JPEGs with a ViT-B/32-shaped CLIP (random weights).

    python scripts/bench_index.py [--images 200] [--megapixels 12] [--device cpu|cuda] [--repeat 3]

Random weights cost exactly what trained ones do, so no download is needed.
Prints one line per figure: decode-only and model-only rates (each stage on
its own) and the end-to-end index rate (scan + read + hash + decode + encode
+ store, overlapped), as medians over --repeat runs on a fresh index.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # clipsearch_dev: not installed

from clipsearch import images
from clipsearch.encoder import Encoder
from clipsearch.indexer import IndexOptions, index_folders
from clipsearch.store import Store
from clipsearch_dev import scenes

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".bench"


def vit_b32_model(folder: Path) -> Path:
    """Save a randomly initialised CLIP with ViT-B/32's shapes (151M parameters)."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel

    if (folder / "model.safetensors").exists():
        return folder
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(REPO / "models" / "tiny-clip")
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=12, num_attention_heads=12),
        projection_dim=512,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def camera_photos(folder: Path, count: int, megapixels: float) -> list[Path]:
    """JPEGs the size of a phone/camera photo, with sensor-like noise so they compress like one."""
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(width * 3 / 4)
    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(folder.glob("*.jpg"))
    if len(paths) >= count:
        return paths[:count]
    rng = random.Random(0)
    np_rng = np.random.default_rng(0)
    noise = [Image.fromarray(np_rng.normal(128, 40, (height, width, 3)).clip(0, 255).astype(np.uint8))
             for _ in range(4)]
    todo = [(i, scenes.random_scene(rng, width, height)) for i in range(len(paths), count)]

    def write(item: tuple[int, scenes.Scene]) -> None:
        i, scene = item
        Image.blend(scenes.draw(scene), noise[i % 4], 0.3).save(folder / f"IMG_{i:04d}.jpg", quality=92)

    with ThreadPoolExecutor() as pool:
        list(pool.map(write, todo))
    return sorted(folder.glob("*.jpg"))[:count]


def decode_rate(paths: list[Path], prep: images.Preprocess, workers: int, draft: bool) -> float:
    def work(path: Path) -> None:
        data = images.read_bytes(str(path))
        hashlib.sha256(data).hexdigest()
        if draft:
            images.decode(data, prep)
        else:
            images.to_model_pixels(images.open_oriented(data, None)[0], prep)

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, paths))
    return len(paths) / (time.perf_counter() - started)


def model_rate(encoder: Encoder, count: int, batch_size: int) -> float:
    prep = encoder.preprocess
    shape = (batch_size, prep.crop_height, prep.crop_width, 3)
    batch = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    encoder.embed_pixels(batch)  # warm-up
    started = time.perf_counter()
    done = 0
    while done < count:
        encoder.embed_pixels(batch)
        done += batch_size
    if encoder.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default=None, help="Model id or folder [default: random ViT-B/32 shape].")
    args = parser.parse_args()

    model = args.model or str(vit_b32_model(CACHE / "vit-b32-random"))
    photos = camera_photos(CACHE / f"photos-{args.megapixels:g}mp", args.images, args.megapixels)
    options = IndexOptions(batch_size=args.batch_size)
    if args.workers:
        options.workers = args.workers
    encoder = Encoder.load(model, args.device)
    mean_mb = statistics.mean(p.stat().st_size for p in photos) / 1e6
    print(f"setup: {len(photos)} JPEGs of {args.megapixels:g} MP ({mean_mb:.1f} MB each), model {Path(model).name}, "
          f"device {encoder.device}, batch {options.batch_size}, {options.workers} decode threads")

    full_size = decode_rate(photos[:40], encoder.preprocess, options.workers, False)
    print(f"decode only, full size: {full_size:.1f} images/s")
    print(f"decode only, draft mode: {decode_rate(photos, encoder.preprocess, options.workers, True):.1f} images/s")
    print(f"model only: {model_rate(encoder, max(128, args.images), options.batch_size):.1f} images/s")

    rates = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as scratch:
            with Store.open(Path(scratch) / "index.db") as store:
                report = index_folders([photos[0].parent], store, encoder=encoder, options=options)
            assert report.encoded == len(photos), report
            rates.append(len(photos) / report.seconds)
    print(f"index end to end: {statistics.median(rates):.1f} images/s (median of {len(rates)}: "
          + ", ".join(f"{r:.1f}" for r in rates) + ")")


if __name__ == "__main__":
    sys.exit(main())
