"""`index --ray`: decode + embed on a real local Ray cluster (Ray Data), written by the local writer.

One cluster (2 CPUs) serves the whole module: Ray takes seconds to start. Its temporary files go
under pytest's tmp folder, never the home folder, and it is shut down at the end (no process left).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from clipsearch.errors import BadInputError
from clipsearch.indexing.job import IndexOptions, Progress, index_folders
from clipsearch.store import Store, decode_vectors
from clipsearch.store.schema import METADATA_COLUMNS

from .conftest import TINY_MODEL

DIM = 64  # the tiny model's
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install 'clipsearch[ray]')")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory, shared_cache_home, exported_text_encoder):
    """A local Ray cluster for the module; its workers find the tiny model's exported encoder in the test cache."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'clipsearch[ray]')")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    temp = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, _temp_dir=str(temp),
             runtime_env={"env_vars": {"XDG_CACHE_HOME": str(shared_cache_home), "HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(temp) not in left, "Ray processes outlived the module"


def run(folder, db, progress=None, ray="local", batch_size=4):
    with Store.open(db) as store:
        return index_folders([folder], store, model=TINY_MODEL, progress=progress,
                             options=IndexOptions(batch_size=batch_size, workers=2, ray=ray))


def rows(db) -> dict[str, dict]:
    columns = ("size", "mtime_ns", "hash", "width", "height", "phash", "colourfulness", *METADATA_COLUMNS)
    with Store.open(db) as store:
        return {row["path"]: row for row in store.query(f"SELECT path, vector, {', '.join(columns)} FROM images")}


def vectors(found: dict[str, dict]) -> dict[str, np.ndarray]:
    return {path: decode_vectors([row.pop("vector")], DIM)[0] for path, row in found.items()}


@needs_ray
def test_ray_run_stores_what_a_local_run_stores(ray_cluster, small_library, tmp_path):
    (small_library / "empty.jpg").write_bytes(b"")
    (small_library / "notes.png").write_text("shopping list")
    local, remote = run(small_library, tmp_path / "local.db", ray=None), run(small_library, tmp_path / "ray.db")
    assert (remote.new, remote.encoded, remote.reused, remote.model_loaded) == (12, 12, 0, True)
    assert sorted(remote.skipped) == sorted(local.skipped) and len(local.skipped) == 2
    local_rows, ray_rows = rows(tmp_path / "local.db"), rows(tmp_path / "ray.db")
    local_vectors, ray_vectors = vectors(local_rows), vectors(ray_rows)
    assert ray_rows == local_rows, "paths, sizes, hashes, fingerprints and metadata"
    for path, vector in local_vectors.items():
        assert float(vector @ ray_vectors[path]) >= 0.999, path
    with Store.open(tmp_path / "ray.db") as store:
        assert store.model()[0] == TINY_MODEL and len(store.failures_under([str(small_library)])) == 2

    # A copy of an indexed photo: its content is known, so the worker only hashes it and the vector is reused.
    (small_library / "copies").mkdir()
    photo = min(small_library.glob("*.jpg"))
    shutil.copy(photo, small_library / "copies" / "copy.jpg")
    again = run(small_library, tmp_path / "ray.db")
    assert (again.reused, again.encoded, again.new) == (1, 0, 0)
    copied = vectors(rows(tmp_path / "ray.db"))
    assert (copied[str(small_library / "copies" / "copy.jpg")] == copied[str(photo)]).all()


@needs_ray
def test_an_interrupted_ray_run_resumes_without_embedding_again(ray_cluster, small_library, tmp_path):
    class CtrlCAfterTheFirstBatch(Progress):
        done = 0

        def advance(self, count=1):
            self.done += count
            if self.done > 4:  # the writer committed the first batch of 4 at the 4th
                raise KeyboardInterrupt

    db = tmp_path / "index.db"
    with pytest.raises(KeyboardInterrupt):
        run(small_library, db, progress=CtrlCAfterTheFirstBatch())
    saved = set(rows(db))
    assert 4 <= len(saved) < 12, "whole batches written before the interrupt are kept"
    report = run(small_library, db)
    assert (report.unchanged, report.encoded, report.new) == (len(saved), 12 - len(saved), 12 - len(saved))
    assert set(rows(db)) == {str(path) for path in small_library.glob("*.jpg")}


def _embedding_actors() -> list[int]:
    """Process ids of Ray Data's embedding actors (their process title names the map step)."""
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if "ray::MapWorker(MapBatches(_Embed))" in line]


@needs_ray
def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(ray_cluster, tmp_path):
    from clipsearch_dev import scenes

    folder = tmp_path / "photos"
    scenes.write_library(folder, 24, seed=5)

    class KillTheEmbedderAtTheFirstResult(Progress):
        def __init__(self):
            self.killed: list[int] = []

        def advance(self, count=1):
            if not self.killed:
                self.killed.extend(_embedding_actors())
                for pid in self.killed:
                    os.kill(pid, signal.SIGKILL)

    progress = KillTheEmbedderAtTheFirstResult()
    report = run(folder, tmp_path / "index.db", progress=progress, batch_size=2)
    assert progress.killed, "an embedding actor was running and was killed"
    assert (report.new, report.encoded, report.skipped) == (24, 24, []), "each image came back exactly once"
    stored = rows(tmp_path / "index.db")
    assert sorted(stored) == sorted(str(path) for path in folder.glob("*.jpg"))


@needs_ray
def test_a_file_a_worker_cannot_open_is_reported_with_its_host_and_retried(ray_cluster, cli, small_library,
                                                                           tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from clipsearch.cli import output
    from clipsearch.cli.output import Format, show_index_report

    victim = min(small_library.glob("*.jpg"))
    moved = tmp_path / "elsewhere.jpg"

    class UnmountedOnTheWorker(Progress):
        def scanned(self, changes):  # this machine's scan saw it; the worker does not find it
            victim.rename(moved)

    db = tmp_path / "index.db"
    report = run(small_library, db, progress=UnmountedOnTheWorker())
    host = socket.gethostname()
    [(path, reason)] = report.skipped
    assert path == str(victim) and f"Ray worker {host}" in reason and "no such file" in reason, reason
    assert "same path" in reason
    assert report.unreadable_on_workers == {host: 1} and report.new == 11
    with Store.open(db) as store:
        assert not store.failures_under([str(small_library)]), "not recorded as broken: the next run tries it again"
    screen = io.StringIO()
    monkeypatch.setattr(output, "stderr", Console(file=screen, width=200, color_system=None))
    show_index_report(report, Format.table)
    assert f"1 files could not be opened on Ray workers {host} (1): mount the photos" in screen.getvalue()

    moved.rename(victim)  # mounted again: the CLI's next run indexes it
    result = cli("index", small_library, "--db", db, "--ray", "local", "--json")
    assert result.exit_code == 0, result.output
    assert '"new": 1' in result.stdout and '"unreadable_on_workers": {}' in result.stdout


def test_without_ray_installed_index_says_how_to_install_it(cli, small_library, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as it does without the extra
    installing = r"pip install 'clipsearch\[ray\]'"
    with Store.open(tmp_path / "index.db") as store, pytest.raises(BadInputError, match=installing):
        index_folders([small_library], store, model=TINY_MODEL, options=IndexOptions(ray="local"))
    result = cli("index", small_library, "--db", tmp_path / "cli.db", "--model", TINY_MODEL, "--ray", "auto")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "pip install 'clipsearch[ray]'" in result.stderr


def test_the_workers_pixel_settings_come_from_the_model_config_alone(encoder):
    from clipsearch.models.torch_encoder import preprocess_of

    assert preprocess_of(TINY_MODEL) == encoder.preprocess


@needs_ray
def test_a_ray_client_connection_is_tried_again_when_the_proxy_fails_to_start_its_server():
    """Ray Client's proxy sometimes fails to start a new client's server (ray-project/ray#63202): that failure is
    tried again, up to RAY_CLIENT_ATTEMPTS in all; any other failure, or the last one, is the one-line error."""
    from clipsearch.indexing import ray_embed

    class FlakyRay:
        def __init__(self, failures: int, message: str = ray_embed.CLIENT_SERVER_FAILED):
            self.failures, self.message, self.inits, self.shutdowns = failures, message, 0, 0

        def is_initialized(self) -> bool:
            return False

        def init(self, *args, **kwargs) -> None:
            self.inits += 1
            if self.inits <= self.failures:
                raise ConnectionAbortedError(f"Initialization failure from server: RuntimeError: {self.message}.")

        def shutdown(self) -> None:
            self.shutdowns += 1

    def embedder(fake: FlakyRay, address: str = "ray://127.0.0.1:10001") -> ray_embed.RayEmbedder:
        made = ray_embed.RayEmbedder(address, TINY_MODEL, None, IndexOptions(), Progress())
        made.ray = fake
        return made

    flaky = FlakyRay(ray_embed.RAY_CLIENT_ATTEMPTS - 1)
    assert embedder(flaky)._connect() is True
    assert (flaky.inits, flaky.shutdowns) == (ray_embed.RAY_CLIENT_ATTEMPTS, ray_embed.RAY_CLIENT_ATTEMPTS - 1)
    broken = FlakyRay(ray_embed.RAY_CLIENT_ATTEMPTS)
    with pytest.raises(BadInputError, match="Cannot reach a Ray cluster"):
        embedder(broken)._connect()
    assert broken.inits == ray_embed.RAY_CLIENT_ATTEMPTS
    refused = FlakyRay(1, "Connection refused")
    with pytest.raises(BadInputError, match="Connection refused"):
        embedder(refused)._connect()
    assert refused.inits == 1  # not the proxy's failure: said at once
    auto = FlakyRay(1)
    with pytest.raises(BadInputError):
        embedder(auto, "auto")._connect()
    assert auto.inits == 1  # only Ray Client addresses go through the proxy
