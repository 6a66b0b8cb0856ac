"""`index --ray ray://HOST:PORT`: through Ray Client, to a real cluster started with `ray start --head`.

Ray Data cannot run its executor in a Ray Client driver, so the pipeline runs in an actor on the cluster
(indexing/ray_embed.py). A file of its own, so that the cluster of test_ray.py is gone before this one starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from clipsearch.indexing.job import IndexOptions, index_folders
from clipsearch.store import Store, decode_vectors

from .conftest import TINY_MODEL

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None or importlib.util.find_spec("grpc") is None,
                                reason="Ray Client is not installed (pip install 'clipsearch[ray]')")
RAY = Path(sys.executable).with_name("ray")
CLIPSEARCH = Path(sys.executable).with_name("clipsearch")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def head_node(shared_cache_home):
    """A one-machine cluster as `ray start --head` makes it, with its Ray Client server; stopped at the end."""
    temp = tempfile.mkdtemp(prefix="cs-ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    # Ray's proxy sometimes fails to start a client's server (ray-project/ray#63202: the child dies at once, its log
    # empty), which `index --ray` tries again (indexing/ray_embed.py); each failed try waits out the proxy's channel
    # check, so it stays at its default 30 s here.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "XDG_CACHE_HOME": str(shared_cache_home)}  # the workers find the tiny model's exported towers there
    client_port = free_port()
    # Its own process group (`ray start` exits; the cluster's processes keep its group), so that the end stops
    # this cluster alone: `ray stop` would stop every Ray cluster of the machine.
    starter = subprocess.Popen([RAY, "start", "--head", "--num-cpus", "2", "--port", str(free_port()),
                                "--ray-client-server-port", str(client_port), "--include-dashboard", "false",
                                "--temp-dir", temp, "--disable-usage-stats"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, errors = starter.communicate(timeout=120)
    try:
        assert starter.returncode == 0, errors
        yield f"ray://127.0.0.1:{client_port}", env, temp
    finally:
        _stop_group(starter.pid)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_group(group: int) -> None:
    """SIGTERM to every process of the group, then SIGKILL to what is left after 5 s."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signum)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if subprocess.run(["pgrep", "-g", str(group)], capture_output=True).returncode != 0:
                return
            time.sleep(0.5)
    raise AssertionError(f"processes of the Ray cluster (group {group}) outlived SIGKILL")


def _client_server_logs(head: tuple) -> str:
    """The head's Ray Client server logs, to say why a connection failed."""
    logs = sorted(Path(head[2]).glob("session_*/logs/ray_client_server*.err"))
    return "".join(f"\n--- {log.name}:\n" + log.read_text(errors="replace")[-3000:] for log in logs)


def stored(db: Path) -> dict[str, tuple]:
    with Store.open(db) as store:
        return {row["path"]: (row["hash"], decode_vectors([row["vector"]], 64)[0])
                for row in store.query("SELECT path, hash, vector FROM images")}


def test_a_ray_client_address_indexes_on_the_cluster_as_a_local_run_does(head_node, small_library, tmp_path):
    address, env, _ = head_node
    db = tmp_path / "ray.db"
    done = subprocess.run([CLIPSEARCH, "index", small_library, "--db", db, "--model", TINY_MODEL, "--ray", address,
                           "--batch-size", "4"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + _client_server_logs(head_node)
    assert f"Ray cluster at {address}: 2 CPUs" in done.stderr
    assert "(_PipelineDriver" not in done.stderr and "core_worker" not in done.stderr, "Ray's own log lines"
    with Store.open(tmp_path / "local.db") as store:
        index_folders([small_library], store, model=TINY_MODEL, options=IndexOptions(batch_size=4, workers=2))
    local, remote = stored(tmp_path / "local.db"), stored(db)
    assert remote.keys() == local.keys() and len(remote) == 12
    for path, (digest, vector) in local.items():
        assert remote[path][0] == digest and float(vector @ remote[path][1]) >= 0.999, path

    again = subprocess.run([CLIPSEARCH, "index", small_library, "--db", db, "--ray", address], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "12 unchanged" in again.stderr, again.stderr


def test_an_unreachable_ray_client_address_says_how_to_reach_one(small_library, tmp_path):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1",
           "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "1"}  # Ray Client gives up after 1 s, not 30
    env.pop("RAY_AUTH_MODE", None)
    done = subprocess.run([CLIPSEARCH, "index", small_library, "--db", tmp_path / "index.db", "--model", TINY_MODEL,
                           "--ray", f"ray://127.0.0.1:{free_port()}"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Cannot reach a Ray cluster at 'ray://127.0.0.1:" in done.stderr
    assert "RAY_AUTH_MODE=token" in done.stderr  # what a cluster with token authentication needs
