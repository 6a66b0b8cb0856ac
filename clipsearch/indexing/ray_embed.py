"""Decode + embed on a Ray cluster (`index --ray ADDRESS`), with Ray Data.

The local process still scans and decides what needs work, and writes the index with one
writer (job.py); only the entries whose size or modification time changed come here. Ray
Data reads, hashes and decodes them in tasks on the cluster's CPUs (the same code as a local
run: images.read_and_hash and images.decode, with the model's pixel settings read from its
preprocessor_config.json, so the driver never loads the model), embeds the new content in
actors that load the encoder once (load_image_encoder: one actor per GPU with num_gpus=1 when
the cluster has GPUs, else as many as there are machines, on their CPUs), and streams vectors,
fingerprints and metadata back block by block (iter_batches) as results for the local writer.

Content the index already holds: the bytes are on the workers, not here, so the workers hash
every file and compare the digest with the index's known hashes (shipped once with the decode
function); a known digest comes back as `Reused` without being decoded, and the writer copies
the stored vector, so renamed and copied files never reach the model, as in a local run.

Workers must see the photos at the same paths (a shared mount). A file a worker cannot open
comes back as a failure naming the worker's host; it is not recorded as broken, so the next run
tries it again. A lost worker: Ray Data retries its tasks and restarts its actors, and a
block's rows reach the writer once, when the block is done, so nothing is lost or written
twice. Ctrl-C stops the stream; the batches committed so far stay, as in a local run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import pickle
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from ..errors import BadInputError
from ..models.preprocess import Preprocess
from . import images
from .embed import Embedded, Failed, Result, Reused, make_record
from .scan import FileEntry

if TYPE_CHECKING:
    from .job import IndexOptions, Progress

INSTALL = "Indexing on a Ray cluster needs Ray: pip install 'clipsearch[ray]'"
# Memory each embedding actor asks the scheduler for (ViT-B/32 holds ~0.2 GB as int8 ONNX, ~0.6 GB in torch fp32).
# Also keeps decoding in tasks of its own: Ray Data fuses a map step into the next when their resources are the
# same, and would then decode in the actors' single processes.
ENCODER_MEMORY = 512 * 1024**2


def import_ray() -> Any:
    """The ray module, or BadInputError saying how to install it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report to Anyscale unless the user opted in
    # Ray's C++ core logs warnings to this process's stderr, over the progress bar (one per run: Ray Data's actors
    # keep their constructor arguments in the object store); its own log files keep everything.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        import ray
        import ray.data  # the ray[data] extra
    except ImportError:
        raise BadInputError(INSTALL) from None
    return ray


# Ray Client's proxy sometimes fails to start the server of a new client: it forks while gRPC's threads run, and
# the child dies at once (ray-project/ray#63202, open; several percent of connections, more on a busy machine).
# That failure says CLIENT_SERVER_FAILED; connecting again usually works, so a ray:// address gets a few tries.
RAY_CLIENT_ATTEMPTS = 3
CLIENT_SERVER_FAILED = "Starting Ray client server failed"


class RayEmbedder:
    """Decode + embed on the Ray cluster at `address`: `auto` (the cluster this machine belongs to, as
    ray.init("auto")), `local` (a cluster of this machine, started now and stopped at the end) or
    `ray://HOST:PORT`. A Ray already initialised in this process (a test, a notebook) is used as it is."""

    def __init__(self, address: str, model_id: str, device: str | None, options: IndexOptions, progress: Progress):
        self.ray = import_ray()
        self.address, self.model_id, self.device, self.options, self.progress = (
            address, model_id, device, options, progress)
        self.model_loaded = False

    def _connect(self) -> bool:
        """Connect (or start `local`); True when this call did, and so must shut Ray down at the end."""
        ray = self.ray
        if ray.is_initialized():
            return False
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}  # no banners over the progress bar
        attempts = RAY_CLIENT_ATTEMPTS if self.address.startswith("ray://") else 1
        while True:
            try:
                with _stderr_kept_unless_failed():
                    if self.address == "local":
                        ray.init(include_dashboard=False, **quiet)
                    elif self.address.startswith("ray://"):
                        ray.init(self.address, **quiet)
                    else:
                        ray.init(self.address, include_dashboard=False, **quiet)
                return True
            except Exception as exc:  # noqa: BLE001 - Ray raises plain Exceptions too ("timed out during startup")
                attempts -= 1
                if attempts == 0 or CLIENT_SERVER_FAILED not in str(exc):
                    self._cannot_reach(exc)
                with contextlib.suppress(Exception):  # what the failed connection left, if anything
                    ray.shutdown()

    def _cannot_reach(self, exc: Exception) -> NoReturn:
        token = ""
        if self.address.startswith("ray://") and not os.environ.get("RAY_AUTH_MODE"):
            token = (" If the cluster requires a token (Ray 2.59 and later turn token authentication on): "
                     "RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(ray get-auth-token) clipsearch index ...")
        raise BadInputError(f"Cannot reach a Ray cluster at '{self.address}' ({_reason(exc)}). "
                            f"Start one with `ray start --head`, give its ray://HOST:PORT, "
                            f"or use --ray local.{token}") from None

    def _plan(self) -> tuple[int, float, str | None, str]:
        """How many embedding actors, GPUs per actor and the device they use, and the cluster in words."""
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        machines = sum(1 for node in self.ray.nodes() if node.get("Alive"))
        described = f"{int(resources.get('CPU', 0))} CPUs, {gpus} GPUs on {machines} machine(s)"
        if (self.device is None and gpus) or (self.device or "").startswith("cuda"):
            if not gpus:
                raise BadInputError(f"--device {self.device}: the Ray cluster at '{self.address}' has no GPUs "
                                    f"({described}). Leave out --device to embed on its CPUs.")
            return gpus, 1.0, self.device, f"{described}; embedding on {gpus} GPU(s)"
        return max(1, machines), 0.0, self.device or "cpu", f"{described}; embedding on CPUs"

    def run(self, entries: Sequence[FileEntry], known_hashes: set[str],
            model_ready: Callable[[str, int], None]) -> Generator[Result, None, None]:
        from ..models.torch_encoder import preprocess_of

        prep = preprocess_of(self.model_id)  # read before connecting: a wrong model fails fast
        started_here = self._connect()
        try:
            with _cluster_messages_to_stderr(self.ray):
                yield from self._stream(entries, known_hashes, model_ready, prep, started_here)
        finally:
            if started_here:
                self.ray.shutdown()

    def _stream(self, entries: Sequence[FileEntry], known_hashes: set[str], model_ready: Callable[[str, int], None],
                prep: Preprocess, own_cluster: bool) -> Generator[Result, None, None]:
        ray = self.ray
        actors, gpus, device, described = self._plan()
        # Decoding tasks on the CPUs the actors leave free (each actor holds one).
        decoders = max(1, int(ray.cluster_resources().get("CPU", 1)) - actors)
        self.progress.notice(f"Ray cluster at {self.address}: {described}.")
        paths = [os.fsencode(entry.path) for entry in entries]
        plan = _Plan(self.model_id, device, self.options.precision.value, self.options.batch_size, decoders, actors,
                     gpus, prep, self.options.max_megapixels, self.options.max_file_mb)
        self.progress.model_loading(self.model_id)  # the actors load it on the cluster
        recorded = False
        if _through_ray_client(ray):
            batches: Iterator[dict[str, np.ndarray]] = _batches_from_a_driver_actor(ray, paths, known_hashes, plan)
        else:
            batches = iter(_pipeline(ray, paths, known_hashes, plan))
        try:
            for number, batch in enumerate(batches):
                if number == 0:
                    self.progress.model_loaded()
                kinds = batch["kind"]
                embedded = int(np.count_nonzero(kinds == "embed"))
                if embedded and not recorded:  # before the first batch is written, as a local run
                    model_ready(self.model_id, int(batch["vector"].shape[1]))
                    recorded = self.model_loaded = True
                if embedded:
                    self.progress.advance(embedded)  # once a block, so that the bar's rate is a rate
                for row, kind in enumerate(kinds):
                    entry = entries[int(batch["i"][row])]
                    if kind == "embed":
                        decoded = pickle.loads(batch["decoded"][row])
                        record = make_record(entry, str(batch["digest"][row]), decoded, batch["vector"][row])
                        yield Embedded(entry, record)
                    elif kind == "reused":
                        yield Reused(entry, str(batch["digest"][row]))
                    else:
                        worker = str(batch["host"][row]) if kind == "unreadable" else None
                        yield Failed(entry, str(batch["reason"][row]), worker)
        finally:
            # Stop the pipeline: a cluster started for this run is shut down whole (run() does it), which is
            # quicker and quieter than stopping its actors one by one first.
            # Through Ray Client the driver actor is killed either way (the cluster outlives this process).
            close = getattr(batches, "close", None)
            if close is not None and (not own_cluster or _through_ray_client(ray)):
                close()


def _reason(error: Exception) -> str:
    """The gist of Ray's error: its first line, and the last one when that is all there is to it (Ray Client
    sends the head's whole traceback after "Initialization failure from server:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How the cluster decodes and embeds: everything the pipeline needs besides the files and known hashes."""

    model_id: str
    device: str | None
    precision: str
    batch_size: int
    decoders: int
    actors: int
    gpus: float
    prep: Preprocess
    max_megapixels: float
    max_file_mb: float


def _pipeline(ray: Any, paths: list[bytes], known_hashes: set[str], plan: _Plan) -> Iterator[dict[str, np.ndarray]]:
    """The Ray Data pipeline (decode tasks, then embedding actors), as an iterator of finished blocks."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the CLI draws its own bar
    context.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:  # Ray Data's own INFO lines on the console
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)
    rows = [{"i": i, "path": path} for i, path in enumerate(paths)]
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / plan.batch_size)))
    dataset = dataset.map_batches(
        _decode, batch_size=plan.batch_size, batch_format="numpy", num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=plan.decoders),
        fn_kwargs={"known": known_hashes, "prep": plan.prep, "max_megapixels": plan.max_megapixels,
                   "max_file_mb": plan.max_file_mb})
    dataset = dataset.map_batches(
        _Embed, batch_size=plan.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.actors),
        fn_constructor_args=(plan.model_id, plan.device, plan.precision), num_cpus=1, num_gpus=plan.gpus,
        memory=ENCODER_MEMORY)
    return dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)


def _through_ray_client(ray: Any) -> bool:
    """Whether this process talks to its cluster through Ray Client (`ray://`): Ray Data cannot run its executor
    in such a driver (it needs a core worker of its own), so the pipeline runs in an actor on the cluster."""
    client = getattr(getattr(ray, "util", None), "client", None)
    is_connected = getattr(getattr(client, "ray", None), "is_connected", None)
    return bool(is_connected and is_connected())


class _PipelineDriver:
    """Ray actor, on the cluster, for a Ray Client driver: runs `_pipeline` and hands its blocks out one by one."""

    def __init__(self, paths: list[bytes], known_hashes: set[str], plan: _Plan):
        import ray

        self.blocks = iter(_pipeline(ray, paths, known_hashes, plan))

    def next_block(self) -> dict[str, np.ndarray] | None:
        return next(self.blocks, None)


def _batches_from_a_driver_actor(ray: Any, paths: list[bytes], known_hashes: set[str], plan: _Plan
                                 ) -> Iterator[dict[str, np.ndarray]]:
    """The pipeline's blocks through Ray Client: a driver actor runs it on the cluster (no CPU of its own, so the
    decoders keep theirs) and this process asks it for the next block, one at a time; it is killed at the end."""
    driver = ray.remote(num_cpus=0)(_PipelineDriver).remote(paths, known_hashes, plan)
    try:
        while (block := ray.get(driver.next_block.remote())) is not None:
            yield block
    finally:
        ray.kill(driver)


@contextlib.contextmanager
def _cluster_messages_to_stderr(ray: Any) -> Iterator[None]:
    """Ray prints the cluster's messages about this job (a lost worker's task being retried) on stdout, where
    they would break `--json`; during the run they go to stderr. (Ray has no setting for this.)"""
    module = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(module, "print_to_stdstream", None)
    if original is None:
        yield
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    module.print_to_stdstream = to_stderr  # type: ignore[union-attr]
    try:
        yield
    finally:
        module.print_to_stdstream = original  # type: ignore[union-attr]


@contextlib.contextmanager
def _stderr_kept_unless_failed() -> Iterator[None]:
    """Hold what is written to file descriptor 2 (by Ray's C++ core as it starts, and by the processes a local
    cluster starts) and show it only if starting fails. Python's own stderr (the progress bar) keeps the
    terminal meanwhile, and Ray Client's warnings are left out: a failure is reported as one error instead."""
    python_stderr = sys.stderr
    python_stderr.flush()
    encoding = getattr(python_stderr, "encoding", None) or "utf-8"
    with tempfile.TemporaryFile() as held, open(os.dup(2), "w", encoding=encoding, errors="backslashreplace",
                                                 buffering=1) as terminal:
        saved = os.dup(2)
        sys.stderr = terminal
        os.dup2(held.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            python_stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)


def _unopenable(path: str) -> str | None:
    """Why this worker cannot open `path` (the photos are not mounted here?), or None when it can."""
    try:
        with open(path, "rb"):
            return None
    except FileNotFoundError:
        why = "no such file"
    except PermissionError:
        why = "permission denied"
    except OSError as exc:
        why = exc.strerror or str(exc)
    return f"cannot be opened on Ray worker {socket.gethostname()} ({why}): every worker needs the photos at the " \
           f"same path"


def _decode(batch: dict[str, np.ndarray], known: set[str], prep: Preprocess, max_megapixels: float,
            max_file_mb: float) -> dict[str, np.ndarray]:
    """Ray task, on a CPU worker: read, hash and decode each file whose content is new (as LocalEmbedder does).

    The pixels travel to the embedding actors as a tensor column; everything else decoding found (size,
    fingerprints, metadata: the DecodedImage without its pixels) travels pickled, so that the local side makes
    the record with the same embed.make_record as a local run, whatever fields it has."""
    count = len(batch["i"])
    columns: dict[str, list[Any]] = {"kind": [], "digest": [], "reason": [], "decoded": []}
    pixels = np.zeros((count, prep.crop_height, prep.crop_width, 3), dtype=np.uint8)
    for row in range(count):
        path = os.fsdecode(bytes(batch["path"][row]))
        kind, digest, reason, decoded = "failed", "", "", b""
        unopenable = _unopenable(path)
        if unopenable:
            kind, reason = "unreadable", unopenable
        else:
            try:
                digest, data = images.read_and_hash(path, max_file_mb)
                if digest in known:
                    kind = "reused"
                else:
                    image = images.decode(data, prep, max_megapixels, path)
                    pixels[row] = image.pixels
                    kind, decoded = "embed", pickle.dumps(dataclasses.replace(image, pixels=np.empty(0, np.uint8)))
            except images.ImageError as exc:
                reason = str(exc)
        for name, value in zip(columns, (kind, digest, reason, decoded)):
            columns[name].append(value)
    out = {name: np.array(values, dtype=object if name == "decoded" else None) for name, values in columns.items()}
    return {"i": batch["i"], "host": np.array([socket.gethostname()] * count), **out, "pixels": pixels}


class _Embed:
    """Ray actor: loads the encoder once (the same load_image_encoder as a local run) and embeds the batches'
    new content; the pixels are not sent back."""

    def __init__(self, model_id: str, device: str | None, precision: str):
        from ..models.onnx_image import load_image_encoder

        self.encoder = load_image_encoder(model_id, device, precision)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {name: column for name, column in batch.items() if name != "pixels"}
        wanted = batch["kind"] == "embed"
        vectors = np.zeros((len(wanted), self.encoder.dim), dtype=np.float32)
        if wanted.any():
            vectors[wanted] = self.encoder.embed_pixels(batch["pixels"][wanted])
        out["vector"] = vectors
        return out
