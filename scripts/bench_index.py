"""Index throughput on camera-sized JPEGs with a ViT-B/32-shaped CLIP (random weights).

    python scripts/bench_index.py [--images 200] [--megapixels 12] [--device cpu|cuda] [--precision auto]
                                  [--repeat 3] [--photos FOLDER] [--model FOLDER]
    python scripts/bench_index.py --precision auto,int8,fp32,bf16 [--repeat 1]   # a table, one process each

Random weights cost exactly what trained ones do, so no download is needed.
Prints one line per figure:
- the per-image cost of each decode stage on one core (read, SHA-256, draft decode
  with EXIF, fingerprints, resize and crop);
- three ceilings measured in the same run: decode-only with all cores (threads, and
  processes for comparison), model-only (the encoder `index` would choose), and the
  end-to-end index rate (scan + read + hash + decode + encode + store, overlapped) as a
  median over --repeat runs on a fresh index, with its share of the lower ceiling. On a
  CPU both stages share the same cores, so the script also prints the bound of doing
  both on them, 1 / (1/decode + 1/model), and end-to-end's share of that.
With a list of precisions it prints a table instead: for each, in a process of its own,
the path `index` took, the end-to-end and model-only images/s, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # clipsearch_dev: not installed

from clipsearch.indexing import fingerprint, images
from clipsearch.indexing.job import IndexOptions, index_folders
from clipsearch.models.onnx_image import ImageEncoder, load_image_encoder
from clipsearch.options import ImagePrecision
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


def _decode_one(path: Path, prep: images.Preprocess, draft: bool = True) -> None:
    """What an index worker does with a new file: read and hash it, decode it small, fingerprint it."""
    _digest, data = images.read_and_hash(str(path))
    if draft:
        images.decode(data, prep)
    else:
        images.to_model_pixels(images.open_oriented(data, None)[0], prep)


def decode_rate(paths: list[Path], prep: images.Preprocess, workers: int, draft: bool = True,
                processes: bool = False) -> float:
    pool_type = ProcessPoolExecutor if processes else ThreadPoolExecutor
    with pool_type(workers) as pool:
        list(pool.map(_decode_one, paths[:workers], [prep] * workers))  # start the workers
        started = time.perf_counter()
        list(pool.map(_decode_one, paths, [prep] * len(paths), [draft] * len(paths), chunksize=1))
    return len(paths) / (time.perf_counter() - started)


def stage_costs(paths: list[Path], prep: images.Preprocess) -> dict[str, float]:
    """Median milliseconds per image of each decode stage, on one core."""
    timings: dict[str, list[float]] = {name: [] for name in
                                       ("read", "sha256", "draft decode + EXIF", "fingerprints", "resize + crop")}
    for path in paths:
        marks = [time.perf_counter()]
        data = path.read_bytes()
        marks.append(time.perf_counter())
        hashlib.sha256(data).hexdigest()
        marks.append(time.perf_counter())
        image, _ = images.open_oriented(data, prep.shortest_edge)  # reads the EXIF metadata too
        marks.append(time.perf_counter())
        fingerprint.fingerprints(image)
        marks.append(time.perf_counter())
        images.to_model_pixels(image, prep)
        marks.append(time.perf_counter())
        for name, start, end in zip(timings, marks, marks[1:]):
            timings[name].append((end - start) * 1000)
    return {name: statistics.median(values) for name, values in timings.items()}


def model_rate(encoder: ImageEncoder, count: int, batch_size: int) -> float:
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


def end_to_end_rate(photos: list[Path], encoder: ImageEncoder, options: IndexOptions, repeat: int) -> list[float]:
    """Images/s of `repeat` index runs of `photos` on a fresh index each time."""
    rates = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as scratch:
            with Store.open(Path(scratch) / "index.db") as store:
                report = index_folders([photos[0].parent], store, encoder=encoder, options=options)
            assert report.encoded == len(photos), report
            rates.append(len(photos) / report.seconds)
    return rates


def precision_table(args: argparse.Namespace, precisions: list[str]) -> None:
    """Run this script once per precision (--brief), each in a process of its own, and print a table with each
    process's peak RSS."""
    common = ["--images", str(args.images), "--megapixels", str(args.megapixels), "--batch-size",
              str(args.batch_size), "--repeat", str(args.repeat)]
    for flag, value in (("--device", args.device), ("--workers", args.workers), ("--model", args.model),
                        ("--photos", args.photos)):
        if value:
            common += [flag, str(value)]
    if not args.photos:  # made once here, so that no child's peak includes making them
        camera_photos(CACHE / f"photos-{args.megapixels:g}mp", args.images, args.megapixels)
    print(f"{'precision':10}{'path taken':44}{'index img/s':>12}{'model img/s':>12}{'peak RSS MB':>12}")
    for precision in precisions:
        child = subprocess.Popen([sys.executable, __file__, *common, "--precision", precision, "--brief"],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest child's so far
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            print(f"{precision:10}failed (exit {code})")
            continue
        result = json.loads(output.strip().splitlines()[-1])
        print(f"{precision:10}{result['path'][:43]:44}{result['index']:12.1f}{result['model']:12.1f}"
              f"{usage.ru_maxrss / 1024:12.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default=None, help="Model id or folder [default: random ViT-B/32 shape].")
    parser.add_argument("--precision", default="auto",
                        help="One of auto, int8, fp32, bf16, or a comma-separated list of them for a table.")
    parser.add_argument("--photos", type=Path, default=None, help="Index these JPEGs instead of generated ones.")
    parser.add_argument("--brief", action="store_true", help="Only the end-to-end and model rates, as one JSON line.")
    args = parser.parse_args()
    precisions = args.precision.split(",")
    for precision in precisions:
        ImagePrecision(precision)  # ValueError names a wrong one
    if len(precisions) > 1:
        precision_table(args, precisions)
        return

    model = args.model or str(vit_b32_model(CACHE / "vit-b32-random"))
    if args.photos:
        photos = sorted(args.photos.glob("*.jpg"))[:args.images]
    else:
        photos = camera_photos(CACHE / f"photos-{args.megapixels:g}mp", args.images, args.megapixels)
    options = IndexOptions(batch_size=args.batch_size, precision=ImagePrecision(args.precision))
    if args.workers:
        options.workers = args.workers
    paths: list[str] = []
    encoder = load_image_encoder(model, args.device, args.precision,
                                 notify=lambda line: paths.append(line) if line.startswith("Image encoder") else None)
    kind = f"{type(encoder).__name__} {getattr(encoder, 'precision', '')}"
    if args.brief:
        model_only = model_rate(encoder, max(64, args.images // 2), options.batch_size)
        rates = end_to_end_rate(photos, encoder, options, args.repeat)
        path = paths[-1].removeprefix("Image encoder: ") if paths else kind
        print(json.dumps({"path": path, "index": statistics.median(rates), "model": model_only}))
        return
    for line in paths:
        print(line)
    mean_mb = statistics.mean(p.stat().st_size for p in photos) / 1e6
    print(f"setup: {len(photos)} JPEGs ({mean_mb:.1f} MB each), model {Path(model).name}, device {encoder.device} "
          f"({kind}), batch {options.batch_size}, {options.workers} decode threads, {os.cpu_count()} cores")

    costs = stage_costs(photos[:30], encoder.preprocess)
    print("per image, one core: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in costs.items())
          + f"; total {sum(costs.values()):.1f} ms")
    full_size = decode_rate(photos[:40], encoder.preprocess, options.workers, draft=False)
    print(f"decode only, full size: {full_size:.1f} images/s")
    decode = decode_rate(photos, encoder.preprocess, options.workers)
    print(f"decode only, draft mode, {options.workers} threads: {decode:.1f} images/s")
    processes = decode_rate(photos, encoder.preprocess, options.workers, processes=True)
    print(f"decode only, draft mode, {options.workers} processes: {processes:.1f} images/s")
    model_only = model_rate(encoder, max(128, args.images), options.batch_size)
    print(f"model only: {model_only:.1f} images/s")

    rates = end_to_end_rate(photos, encoder, options, args.repeat)
    end_to_end = statistics.median(rates)
    lower = min(decode, model_only)
    print(f"index end to end: {end_to_end:.1f} images/s (median of {len(rates)}: "
          + ", ".join(f"{r:.1f}" for r in rates) + f"), {end_to_end / lower:.0%} of the lower ceiling")
    if encoder.device == "cpu":
        shared = 1 / (1 / decode + 1 / model_only)
        print(f"both stages on the same cores: bound {shared:.1f} images/s; end to end is {end_to_end / shared:.0%}")


if __name__ == "__main__":
    main()
