"""Images/s of `index` here against `index --ray local` (Ray Data on a cluster of this machine).

    python scripts/bench_ray.py [--photos FOLDER] [--model FOLDER] [--images 200] [--workers 2]
                                [--batch-size 32] [--repeat 3]

Each run indexes the photos into a fresh index with the model given by id (as the CLI does: the
encoder is loaded by the run, locally or in the Ray actors). Prints one line per figure:
- local: the thread-pool path, median images/s of --repeat runs;
- ray, cold: one `--ray local` run as the CLI makes it (starts the cluster, runs, stops it), and
  how long starting the cluster took;
- ray, warm: median images/s of --repeat runs on a cluster already up (actors and model load included);
- the Ray path's overhead: its time per image against the local one's.
Wrap it in `flock /tmp/clipsearch-bench.lock` so that no other benchmark shares the cores.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clipsearch.indexing.job import IndexOptions, index_folders
from clipsearch.store import Store

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def one_run(photos: Path, model: str, options: IndexOptions, count: int) -> float:
    """Seconds of one index run of `photos` on a fresh index (asserting every photo went through the model)."""
    with tempfile.TemporaryDirectory() as scratch, Store.open(Path(scratch) / "index.db") as store:
        started = time.perf_counter()
        report = index_folders([photos], store, model=model, options=options)
        seconds = time.perf_counter() - started
    assert report.encoded == count and not report.skipped, report
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cache = Path.home() / ".cache" / "clipsearch-bench"
    parser.add_argument("--photos", type=Path, default=cache / "photos200")
    parser.add_argument("--model", default=str(cache / "vit-b32"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as folder:  # the first --images photos, linked into a folder of their own
        photos = Path(folder)
        for path in sorted(args.photos.glob("*.jpg"))[:args.images]:
            (photos / path.name).symlink_to(path)
        count = len(list(photos.iterdir()))
        local = IndexOptions(batch_size=args.batch_size, workers=args.workers)
        remote = IndexOptions(batch_size=args.batch_size, workers=args.workers, ray="local")
        print(f"setup: {count} photos from {args.photos}, model {Path(args.model).name}, batch {args.batch_size}, "
              f"{args.workers} local decode threads, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")

        one_run(photos, args.model, local, count)  # warm-up: the encoder export and the page cache
        local_times = [one_run(photos, args.model, local, count) for _ in range(args.repeat)]
        local_rate = count / statistics.median(local_times)
        print(f"local: {local_rate:.1f} images/s (median of {len(local_times)}: "
              + ", ".join(f"{count / s:.1f}" for s in local_times) + ")")

        cold = one_run(photos, args.model, remote, count)
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        startup = time.perf_counter() - started
        print(f"ray, cold (starts and stops a local cluster, as `index --ray local`): {count / cold:.1f} images/s "
              f"({cold:.1f} s; starting the cluster alone: {startup:.1f} s)")
        try:
            ray_times = [one_run(photos, args.model, remote, count) for _ in range(args.repeat)]
        finally:
            ray.shutdown()
        ray_rate = count / statistics.median(ray_times)
        print(f"ray, warm (cluster up; actors and model load included): {ray_rate:.1f} images/s (median of "
              f"{len(ray_times)}: " + ", ".join(f"{count / s:.1f}" for s in ray_times) + ")")
        print(f"ray overhead on this machine: warm {local_rate / ray_rate:.2f}x the local time per image, "
              f"cold {local_rate * cold / count:.2f}x; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
