"""Time and peak memory of `clipsearch dedupe` on a synthetic index of 100,000 (or 1,000,000) images.

    python scripts/bench_dedupe.py [--images 100000] [--runs 3] [--crops 200] [--stages] [--cache DIR]

The index is a real clipsearch SQLite file holding random 512-d unit vectors
(ViT-B/32's size) with planted groups: exact copies (same content hash),
near-identical copies (cosine ~0.97, perceptual hash within 20 bits) and
burst pairs (cosine ~0.93, unrelated hashes). Every image has a geometric
fingerprint (random sign hashes, as different photos have), and geometric copies
are planted (issue 20): mirrored and rotated copies (0.5% each) whose sign hash is
the original's under that symmetry with up to 12 bits flipped and whose CLIP
vector is only ~0.85 from the original's (below the near threshold, so only the
hashes can find them), and `--crops` real pictures (generated scenes, written to
disk) each with a 60-90% crop of it at a random offset (cosine ~0.97): the crop
check reads those files. Other planted pairs that reach the crop check name
files that do not exist, which the check skips, as it does files that vanished.

Each run is a fresh process running the real command (`clipsearch dedupe
--json`, then with `--similar`); peak memory is that process's maximum resident
set size. The first run also builds the vector cache beside the index, as the
first query after indexing would. Recall is the share of planted pairs found in
the right tier. `--stages` adds one in-process run under cProfile and prints the
time of each stage (reading the index, CLIP neighbours, hash candidates, symmetry
checks, crop checks, grouping) and the peak resident memory within it.

The index (and its planted pairs, and the crop pictures) is kept in `--cache`
(default: clipsearch-bench-dedupe in the temporary folder), one per size, so
later runs skip building it (minutes at a million images); `--cache ''` builds
a fresh one in a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
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

from clipsearch.indexing import fingerprint
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


def random_geometry(rng: np.random.Generator) -> bytes:
    """A geometric fingerprint as a photo without borders has one: whole box, mid colour, detail, random hashes."""
    header = np.asarray([0, 0, 65535, 65535], dtype="<u2").tobytes() + bytes([120, 110, 100, 40])
    return header + rng.bytes(HASH_BYTES * (1 + len(fingerprint.WINDOWS)))


def turned_geometry(blob: bytes, symmetry: int, flips: int, rng: np.random.Generator) -> bytes:
    """The fingerprint of a copy made by `symmetry` (an index into fingerprint.SYMMETRIES), `flips` bits off."""
    stored = fingerprint.split_geometry([blob])
    turned = fingerprint.symmetries(stored.hash)[symmetry][0].tobytes()
    start = fingerprint.HEADER_BYTES
    return blob[:start] + flip_bits(turned, flips, rng) + rng.bytes(HASH_BYTES * len(fingerprint.WINDOWS))


def write_crop_pairs(folder: Path, count: int, seed: int) -> list[tuple[str, bytes, str, bytes]]:
    """`count` real pictures and a crop of each (60-90% of the area, random offset): (path, geometry) of both."""
    import random

    from clipsearch_dev import scenes

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for k in range(count):
        picture = scenes.draw(scenes.random_scene(rng, 480, 360))
        share = rng.uniform(0.6, 0.9)
        w, h = round(480 * share ** 0.5), round(360 * share ** 0.5)
        left, top = round((480 - w) * rng.random()), round((360 - h) * rng.random())
        crop = picture.crop((left, top, left + w, top + h))
        original_path, crop_path = folder / f"scene{k:05d}.jpg", folder / f"scene{k:05d}-crop.jpg"
        picture.save(original_path, quality=90)
        crop.save(crop_path, quality=85)
        pairs.append((str(original_path), fingerprint.geometry(picture), str(crop_path), fingerprint.geometry(crop)))
    return pairs


def build_index(path: Path, images: int, seed: int = 0, crops: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Write the synthetic index; return the planted pairs per kind ("exact", "near", "similar", "mirror",
    "rotate90", "crop"; the last three belong to the near tier)."""
    rng = np.random.default_rng(seed)
    planted: dict[str, list[tuple[str, str]]] = {"exact": [], "near": [], "similar": [], "mirror": [], "rotate90": [],
                                                 "crop": []}
    exact, near, bursts = images // 50, images // 20, images // 33  # 2% exact, 5% near, 3% burst copies
    mirrored = rotated = images // 200  # 0.5% each
    base_count = images - exact - near - bursts - mirrored - rotated - 2 * crops
    base = rng.standard_normal((base_count, DIM)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    hashes = [rng.bytes(HASH_BYTES) for _ in range(base_count)]

    def name(i: int) -> str:
        return f"/bench/{i // 1000:03d}/IMG_{i:06d}.jpg"

    records = [ImageRecord(name(i), 2_000_000 + i, 1_600_000_000_000_000_000 + i, f"h{i}", 4000, 3000,
                           encode_vector(base[i]), hashes[i], 30.0, geometry=random_geometry(rng))
               for i in range(base_count)]
    next_id = base_count
    originals = rng.permutation(base_count)
    plans = [("exact", exact), ("near", near), ("similar", bursts), ("mirror", mirrored), ("rotate90", rotated)]
    symmetry = {name: index for index, name in enumerate(fingerprint.SYMMETRIES)}
    cursor = 0
    for tier, count in plans:
        for source in originals[cursor:cursor + count]:
            original = records[source]
            assert original.geometry is not None
            if tier == "exact":
                record = ImageRecord(name(next_id), original.size, original.mtime_ns + 1, original.hash, 4000, 3000,
                                     original.vector, original.phash, 30.0, geometry=original.geometry)
            elif tier == "near":
                record = ImageRecord(name(next_id), 900_000, original.mtime_ns + 1, f"h{next_id}", 2000, 1500,
                                     encode_vector(noisy(base[source], 0.97, rng)),
                                     flip_bits(original.phash, int(rng.integers(0, 21)), rng), 30.0,
                                     geometry=turned_geometry(original.geometry, 0, int(rng.integers(0, 13)), rng))
            elif tier == "similar":
                record = ImageRecord(name(next_id), 2_100_000, original.mtime_ns + 1, f"h{next_id}", 4000, 3000,
                                     encode_vector(noisy(base[source], 0.93, rng)), rng.bytes(HASH_BYTES), 30.0,
                                     geometry=random_geometry(rng))
            else:  # mirrored or rotated: the pixels' hash scrambled, CLIP below the near threshold
                width, height = (3000, 4000) if tier == "rotate90" else (4000, 3000)
                record = ImageRecord(name(next_id), 1_900_000, original.mtime_ns + 1, f"h{next_id}", width, height,
                                     encode_vector(noisy(base[source], 0.85, rng)), rng.bytes(HASH_BYTES), 30.0,
                                     geometry=turned_geometry(original.geometry, symmetry[tier],
                                                              int(rng.integers(0, 13)), rng))
            records.append(record)
            planted[tier].append((original.path, record.path))
            next_id += 1
        cursor += count
    for original_path, original_geometry, crop_path, crop_geometry in write_crop_pairs(path.parent / "crops", crops,
                                                                                       seed):
        vector = rng.standard_normal(DIM).astype(np.float32)
        vector /= np.linalg.norm(vector)
        for file_path, blob, vec, size in ((original_path, original_geometry, vector, (480, 360)),
                                           (crop_path, crop_geometry, noisy(vector, 0.97, rng), (400, 300))):
            records.append(ImageRecord(file_path, os.path.getsize(file_path), 1_600_000_000_000_000_000 + next_id,
                                       f"h{next_id}", *size, encode_vector(vec), rng.bytes(HASH_BYTES), 30.0,
                                       geometry=blob))
            next_id += 1
        planted["crop"].append((original_path, crop_path))
    with Store.open(path) as store:
        store.set_model("bench/random-vectors-512", DIM)
        for start in range(0, len(records), 5000):
            store.write(records[start:start + 5000])
    return planted


def run(db: Path, *extra: str) -> tuple[float, float, list]:
    """One dedupe process: wall seconds, peak RSS in MB, parsed groups.

    Timed by /usr/bin/time, as ../shared/bench/vs-rclip.sh does: the rusage of a child started from this
    process counts this process's own resident memory from before the child's exec (Linux keeps the high
    mark across exec), which after building a million-image index here was 5.2 GB."""
    command = [sys.executable, "-m", "clipsearch", "dedupe", "--db", str(db), "--json", "--quiet", *extra]
    with tempfile.NamedTemporaryFile("r") as timing:
        result = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", timing.name, *command], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, check=False)
        seconds, peak_kb = timing.read().split()[-2:]
    if result.returncode not in (0, 1):
        raise SystemExit(f"dedupe failed: {command}")
    return float(seconds), float(peak_kb) / 1024, json.loads(result.stdout)


def recall(groups: list, planted: list[tuple[str, str]], tier: str) -> float:
    if not planted:
        return 1.0
    together = set()
    for group in groups:
        if group["tier"] == tier:
            paths = [m["path"] for m in group["members"]]
            together.update((a, b) for a in paths for b in paths)
    return sum((a, b) in together for a, b in planted) / len(planted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3, help="processes timed per command (0: --stages only)")
    parser.add_argument("--crops", type=int, default=200, help="real pictures with a crop of each to plant")
    parser.add_argument("--stages", action="store_true", help="also time each stage in-process (cProfile)")
    parser.add_argument("--no-similar", action="store_true", help="time plain dedupe only")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "clipsearch-bench-dedupe"),
                        help="folder keeping built indexes between runs ('' for a fresh one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        folder = Path(args.cache) / f"{args.images}-{args.crops}" if args.cache else Path(workdir)
        db, planted_file = folder / "index.db", folder / "planted.json"
        if planted_file.exists():
            planted = json.loads(planted_file.read_text())
            print(f"reusing the {args.images:,}-image index in {folder}")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob("index.db*"):
                stale.unlink()
            started = time.perf_counter()
            planted = build_index(db, args.images, crops=args.crops)
            planted_file.write_text(json.dumps(planted))
            print(f"built a {args.images:,}-image index in {time.perf_counter() - started:.1f}s ("
                  + ", ".join(f"{len(pairs)} {kind}" for kind, pairs in planted.items()) + " pairs planted)")
        tiers = {"exact": "exact", "near": "near", "similar": "similar", "mirror": "near", "rotate90": "near",
                 "crop": "near"}
        runs = (("dedupe", ()),) if args.no_similar else (("dedupe", ()), ("dedupe --similar", ("--similar",)))
        runs = runs if args.runs > 0 else ()
        for label, extra in runs:
            results = [run(db, *extra) for _ in range(args.runs)]
            seconds = [r[0] for r in results]
            memory = [r[1] for r in results]
            groups = results[-1][2]
            found = {kind: recall(groups, planted[kind], tier) for kind, tier in tiers.items()
                     if kind != "similar" or extra}
            print(f"{label:17}: median {statistics.median(seconds):.2f}s (runs: "
                  f"{', '.join(f'{s:.2f}' for s in seconds)}; the first builds the vector cache), "
                  f"peak memory {max(memory):.0f} MB, {len(groups)} groups, recall "
                  + ", ".join(f"{tier} {value:.4f}" for tier, value in found.items()))
        if args.stages:
            stages(db)


STAGES = {
    "read the index (rows, vectors)": ("file_table", "vectors", "_read_files"),
    "CLIP neighbours": ("neighbour_pairs",),
    "hash candidates (multi-index)": ("hash_candidates",),
    "sub-window candidates": ("window_candidates",),
    "symmetry checks": ("symmetric_links",),
    "crop checks (files read)": ("verify_pairs",),
    "grouping and keep choice": ("_labels_over", "_split_around_leaders", "_tier_groups"),
}


def _status(field: str) -> int:
    """A figure of this process's /proc status in MB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return 0


class _Peaks:
    """Peak resident memory inside each stage: the kernel's high-water mark, reset as a stage starts."""

    def __init__(self) -> None:
        self.peak = _status("VmHWM")
        self.by_stage: dict[str, int] = {}

    def reset(self) -> None:
        self.peak = max(self.peak, _status("VmHWM"))
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS

    def wrap(self, stage: str, function):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.reset()
            try:
                return function(*args, **kwargs)
            finally:
                self.by_stage[stage] = max(self.by_stage.get(stage, 0), _status("VmHWM"))
        return timed


def stages(db: Path) -> None:
    """One in-process dedupe under cProfile: the cumulative time of each stage's functions, and the peak
    resident memory inside each (MB, /proc/self/status VmHWM)."""
    import cProfile
    import pstats

    from clipsearch.dedupe import crops, geometry, groups
    from clipsearch.store import images

    peaks = _Peaks()
    owners = [groups, geometry, crops, images.Images]
    for stage, names in STAGES.items():
        for owner in owners:
            for name in names:
                if name in vars(owner) and callable(getattr(owner, name)):
                    setattr(owner, name, peaks.wrap(stage, getattr(owner, name)))
    profile = cProfile.Profile()
    with Store.open(db) as store:
        started = time.perf_counter()
        profile.runcall(groups.find_duplicates, store)
        total = time.perf_counter() - started
    peaks.reset()
    table = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    for stage, names in STAGES.items():
        seconds = sum(row[3] for (_, _, function), row in table.items() if function in names)
        print(f"stage {stage:34}: {seconds:.2f}s, peak RSS in it {peaks.by_stage.get(stage, 0):,} MB")
    print(f"stage {'find_duplicates in all (profiled)':34}: {total:.2f}s, peak RSS {peaks.peak:,} MB")


if __name__ == "__main__":
    main()
