"""The first text query after a reboot-like state, against rclip's, on the vs-rclip bench's photos.

    python scripts/bench_first_query.py [--runs 3]

Needs ../shared/bench/vs-rclip.sh to have run once (its photos, its random-weight
ViT-B/32 and rclip with its index, under ~/.cache/clipsearch-bench). Dropping
the OS page cache needs root (/proc/sys/vm/drop_caches); without it the
"after reboot" rows are only "no resident process".

Rows, each a new process, wall time and peak RSS from /usr/bin/time:
- clipsearch, cold text-encoder cache: the ONNX export happens in this query (once per model);
- clipsearch after a reboot: page cache dropped, export already made, a text never asked;
- rclip after a reboot: page cache dropped, same text;
- both warm (page cache warm, a new text each time), median of --runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

BENCH = Path(os.environ.get("BENCH_HOME", Path.home() / ".cache" / "clipsearch-bench"))
CLIPSEARCH = Path(sys.executable).with_name("clipsearch")


def timed(command: list[str], cwd: Path | None = None) -> tuple[float, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RCLIP_DATADIR": str(BENCH / "rclip-data")}
    result = subprocess.run(["/usr/bin/time", "-f", "%e %M", *command], cwd=cwd, env=env, text=True, check=False,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if result.returncode not in (0, 1):
        raise SystemExit(f"{command[0]} failed: {result.stderr[-2000:]}")
    wall, peak = result.stderr.split()[-2:]
    return float(wall), float(peak) / 1024


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    db, photos, model = BENCH / "work" / "cs.db", BENCH / "photos200", BENCH / "vit-b32"
    rclip = BENCH / "rclip-venv" / "bin" / "rclip"
    if not (db.exists() and model.is_dir() and rclip.exists()):
        raise SystemExit("Run ../shared/bench/vs-rclip.sh once first.")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from clipsearch.models import onnx_text as textencoder

    def cs(text: str) -> tuple[float, float]:
        return timed([str(CLIPSEARCH), "find", text, "--db", str(db), "--top", "10"])

    def rc(text: str) -> tuple[float, float]:
        return timed([str(rclip), "-n", "-t", "10", text], cwd=photos)

    export = textencoder.export_dir(str(model))
    if export is not None and export.exists():
        shutil.rmtree(export)
    dropped = drop_page_cache()
    rows = [("clipsearch, cold text-encoder cache (exports)", cs(f"a dog {uuid.uuid4().hex[:6]}"))]
    drop_page_cache()
    rows.append(("clipsearch after a reboot", cs(f"a cat {uuid.uuid4().hex[:6]}")))
    drop_page_cache()
    rows.append(("rclip after a reboot", rc(f"a cat {uuid.uuid4().hex[:6]}")))
    for name, run in (("clipsearch", cs), ("rclip", rc)):
        runs = [run(f"a bird {uuid.uuid4().hex[:6]}") for _ in range(args.runs)]
        rows.append((f"{name} warm, new text (median of {args.runs})",
                     (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))))
    print(f"page cache dropped between rows: {'yes' if dropped else 'no (not root)'}")
    for label, (wall, peak) in rows:
        print(f"{label:<48} {wall:6.2f} s {peak:7.0f} MB")


if __name__ == "__main__":
    main()
