"""Time and peak memory of `clipsearch dedupe` on a synthetic index of 100,000 images.

    python scripts/bench_dedupe.py [--images 100000] [--runs 3]

The index is a real clipsearch SQLite file holding random 512-d unit vectors
(ViT-B/32's size) with planted groups: exact copies (same content hash),
near-identical copies (cosine ~0.97, perceptual hash within 20 bits) and
burst pairs (cosine ~0.93, unrelated hashes). Each run is a fresh process
running the real command (`clipsearch dedupe --json`, then with `--similar`);
peak memory is that process's maximum resident set size. The first run also
builds the vector cache beside the index, as the first query after indexing
would. Recall is the share of planted pairs found in the right tier.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clipsearch.indexing.fingerprint import HASH_BYTES
from clipsearch.store import ImageRecord, Store, encode_vector

DIM = 512


def noisy(vector: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at about `cosine` from `vector`."""
    noise = rng.standard_normal(len(vector)).astype(np.float32)
    noise /= np.linalg.norm(noise)
    spread = np.sqrt(1 / cosine**2 - 1)
    out = vector + spread * noise
    return out / np.linalg.norm(out)


def flip_bits(phash: bytes, count: int, rng: np.random.Generator) -> bytes:
    bits = np.unpackbits(np.frombuffer(phash, dtype=np.uint8))
    bits[rng.choice(len(bits), count, replace=False)] ^= 1
    return np.packbits(bits).tobytes()


def build_index(path: Path, images: int, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Write the synthetic index; return the planted pairs per tier."""
    rng = np.random.default_rng(seed)
    planted: dict[str, list[tuple[str, str]]] = {"exact": [], "near": [], "similar": []}
    exact, near, bursts = images // 50, images // 20, images // 33  # 2% exact, 5% near, 3% burst copies
    base_count = images - exact - near - bursts
    base = rng.standard_normal((base_count, DIM)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    hashes = [rng.bytes(HASH_BYTES) for _ in range(base_count)]

    def name(i: int) -> str:
        return f"/bench/{i // 1000:03d}/IMG_{i:06d}.jpg"

    records = [ImageRecord(name(i), 2_000_000 + i, 1_600_000_000_000_000_000 + i, f"h{i}", 4000, 3000,
                           encode_vector(base[i]), hashes[i], 30.0) for i in range(base_count)]
    next_id = base_count
    originals = rng.permutation(base_count)
    plans = [("exact", exact), ("near", near), ("similar", bursts)]
    cursor = 0
    for tier, count in plans:
        for source in originals[cursor:cursor + count]:
            original = records[source]
            if tier == "exact":
                record = ImageRecord(name(next_id), original.size, original.mtime_ns + 1, original.hash, 4000, 3000,
                                     original.vector, original.phash, 30.0)
            elif tier == "near":
                record = ImageRecord(name(next_id), 900_000, original.mtime_ns + 1, f"h{next_id}", 2000, 1500,
                                     encode_vector(noisy(base[source], 0.97, rng)),
                                     flip_bits(original.phash, int(rng.integers(0, 21)), rng), 30.0)
            else:
                record = ImageRecord(name(next_id), 2_100_000, original.mtime_ns + 1, f"h{next_id}", 4000, 3000,
                                     encode_vector(noisy(base[source], 0.93, rng)), rng.bytes(HASH_BYTES), 30.0)
            records.append(record)
            planted[tier].append((original.path, record.path))
            next_id += 1
        cursor += count
    with Store.open(path) as store:
        store.set_model("bench/random-vectors-512", DIM)
        for start in range(0, len(records), 5000):
            store.write(records[start:start + 5000])
    return planted


def run(db: Path, *extra: str) -> tuple[float, float, list]:
    """One dedupe process: wall seconds, peak RSS in MB, parsed groups."""
    command = [sys.executable, "-m", "clipsearch", "dedupe", "--db", str(db), "--json", "--quiet", *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"dedupe failed: {command}")
    return seconds, usage.ru_maxrss / 1024, json.loads(output)


def recall(groups: list, planted: list[tuple[str, str]], tier: str) -> float:
    together = set()
    for group in groups:
        if group["tier"] == tier:
            paths = [m["path"] for m in group["members"]]
            together.update((a, b) for a in paths for b in paths)
    return sum((a, b) in together for a, b in planted) / len(planted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        db = Path(workdir) / "index.db"
        started = time.perf_counter()
        planted = build_index(db, args.images)
        print(f"built a {args.images:,}-image index in {time.perf_counter() - started:.1f}s "
              f"({len(planted['exact'])} exact, {len(planted['near'])} near, {len(planted['similar'])} burst copies)")
        for label, extra in (("dedupe", ()), ("dedupe --similar", ("--similar",))):
            results = [run(db, *extra) for _ in range(args.runs)]
            seconds = [r[0] for r in results]
            memory = [r[1] for r in results]
            groups = results[-1][2]
            found = {tier: recall(groups, planted[tier], tier) for tier in ("exact", "near", "similar")
                     if tier != "similar" or extra}
            print(f"{label:17}: median {statistics.median(seconds):.2f}s (runs: "
                  f"{', '.join(f'{s:.2f}' for s in seconds)}; the first builds the vector cache), "
                  f"peak memory {max(memory):.0f} MB, {len(groups)} groups, recall "
                  + ", ".join(f"{tier} {value:.4f}" for tier, value in found.items()))


if __name__ == "__main__":
    main()
