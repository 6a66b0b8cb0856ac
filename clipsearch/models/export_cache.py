"""The cache of exported encoders, shared by the text and image towers (onnx_text.py, onnx_image.py).

Each tower is exported once per model into $XDG_CACHE_HOME/clipsearch/TOWER-encoders/,
in a folder keyed by the model id and a hash of its weight files (found on disk
without importing transformers), written into a temporary folder and renamed, so a
killed export leaves nothing half-written; a failed export is recorded and not
retried until its marker is deleted. Also here: the export steps both towers use
(torch.onnx with weights streamed to disk, onnxruntime's folding and int8
quantisation) and onnxruntime sessions, always with its telemetry off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ClipsearchError

MIN_AGREEMENT = 0.999  # cosine an exported graph must reach against the torch model on every check input
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")


def cache_base() -> Path:
    """$XDG_CACHE_HOME/clipsearch (~/.cache by default): each tower's exports are in a folder below."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipsearch"


class ExportFailed(Exception):
    """An export step failed in a child process; the message names the original error ("RuntimeError: ...")."""


def import_onnxruntime() -> Any:
    """onnxruntime, with its telemetry off: no device id or event database under ~/.cache/Microsoft.

    ORT_DISABLE_TELEMETRY must be set before the first import (disable_telemetry_events()
    alone does not stop the files being written on Linux); ImportError if it is not installed.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    onnxruntime.disable_telemetry_events()
    return onnxruntime


def model_folder(model_id: str) -> Path | None:
    """Where the model's files are on this machine, without importing transformers; None if not here.

    `model_id` is a local folder (an absolute path, as `options.model_id_from`
    records it) or a Hub id, looked up in the Hugging Face cache's documented
    layout: $HF_HUB_CACHE or $HF_HOME/hub, models--ORG--NAME/refs/main -> snapshots/COMMIT.
    """
    if os.path.isdir(model_id):
        return Path(model_id)
    if model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1:
        return None
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    hub = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
               or os.path.join(hf_home, "hub"))
    repo = hub / ("models--" + model_id.replace("/", "--"))
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def weights_digest(folder: Path) -> str | None:
    """A hash of the model's weight files; None if there are none.

    Hugging Face cache files are named by their SHA-256 already (the snapshot
    holds symlinks to blobs/SHA256), which costs nothing to read. Other files
    are hashed once and the digest remembered by (path, size, mtime).
    """
    parts = []
    memo_path = cache_base() / "text-encoders" / "weight-digests.json"  # where it has always been
    memo: dict[str, list] = {}
    dirty = False
    for path in _weight_files(folder):
        real = os.path.realpath(path)
        if re.fullmatch(r"[0-9a-f]{64}", os.path.basename(real)):
            parts.append(os.path.basename(real))
            continue
        info = os.stat(real)
        if not memo and memo_path.exists():
            try:
                memo = json.loads(memo_path.read_text())
            except (OSError, ValueError):
                memo = {}
        known = memo.get(real)
        if known and known[0] == info.st_size and known[1] == info.st_mtime_ns:
            parts.append(known[2])
            continue
        digest = hashlib.sha256()
        with open(real, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        parts.append(digest.hexdigest())
        memo[real] = [info.st_size, info.st_mtime_ns, parts[-1]]
        dirty = True
    if dirty:
        write_json_atomically(memo_path, memo)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest() if parts else None


def export_dir(model_id: str, root: Path, export_format: int) -> Path | None:
    """The cache folder under `root` of this model's export in `export_format`; None if the model's weights are
    not on disk. Keyed by the model id and a hash of its weights, so retrained weights get a new export."""
    folder = model_folder(model_id)
    digest = weights_digest(folder) if folder else None
    if digest is None:
        return None
    key = hashlib.sha256(f"{export_format}\n{model_id}\n{digest}".encode()).hexdigest()[:24]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id.strip("/"))[-60:]
    return root / f"{slug}-{key}"


def export_into_cache(folder: Path | None, model_id: str, write: Callable[[Path], dict[str, Any]],
                      unavailable: type[Exception]) -> Path:
    """Run `write(work)` (an export, returning its settings) in a temporary folder renamed to `folder`, so a
    killed export leaves nothing half-written; the settings get the export's duration. Shared by both towers.
    """
    if folder is None:
        raise unavailable(f"the weights of {model_id} were not found on disk")
    try:
        import onnx  # noqa: F401  (fail before the slow export)

        import_onnxruntime()
    except ImportError as exc:
        raise unavailable(f"{exc.name or 'onnxruntime'} is not installed") from None
    marker = failure_marker(folder)
    if marker.exists():
        raise unavailable(f"{json.loads(marker.read_text())['reason']} (delete {marker} to try again)")
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    # The exporter and the quantiser talk through warnings and the root logger; the library stays silent.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            settings = write(work)
            settings["export_seconds"] = round(time.perf_counter() - started, 2)
            write_json_atomically(work / "settings.json", settings)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(work, folder)
        except (unavailable, ClipsearchError):  # a reason of its own, or the model itself cannot load: not recorded
            raise
        except Exception as exc:  # noqa: BLE001 - a model the exporter cannot handle: never fail the command
            detail = str(exc).splitlines()[0] if str(exc) else ""
            reason = f"export failed: {detail if isinstance(exc, ExportFailed) else f'{type(exc).__name__}: {detail}'}"
            write_json_atomically(marker, {"reason": reason})  # so that later runs do not retry it every time
            raise unavailable(reason) from None
        finally:
            logging.disable(logging.NOTSET)
            shutil.rmtree(work, ignore_errors=True)
    return folder


def failure_marker(folder: Path) -> Path:
    """Where a failed export into `folder` is recorded: `export_into_cache` does not retry it until it is deleted."""
    return folder.with_name(folder.name + ".failed.json")


def session(onnxruntime: Any, folder: Path, graph: str, keep_optimised: bool = True, tower: str = "text",
             threads: int = 1) -> Any:
    """An inference session of `folder`/`tower`.`graph`.onnx, from its pre-optimised copy when there is one.

    Optimising the graph is most of what creating a session costs (120 ms of
    170 for ViT-B/32's int8 text tower here). The first session saves the
    optimised graph, made by and for this onnxruntime version, with its weights
    in a file beside it, and later ones load it with optimisation off and the
    weights memory-mapped (20 ms).
    """
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    # A query is one short sequence: more threads cost more to start than they save. Image batches use
    # every core, and threads that sleep instead of spinning while they wait, leaving the cores to the decoders.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if threads > 1:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if tower == "text":
        # A query embeds one or two texts: repacking the int8 weights for speed costs more (80-150 ms of a
        # 64 MB graph's session) than it saves (4 ms an embedding) here.
        options.add_session_config_entry("session.disable_prepacking", "1")
    source = folder / f"{tower}.{graph}.onnx"
    optimised = folder / f"{tower}.{graph}.ort{onnxruntime.__version__}.onnx"
    if not keep_optimised:
        return onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    if optimised.exists():
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        return onnxruntime.InferenceSession(str(optimised), options, providers=["CPUExecutionProvider"])
    # EXTENDED, not ALL: the saved graph must not depend on this processor's layout optimisations.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    partial = optimised.with_name(f".{optimised.name}.{os.getpid()}.tmp")
    options.optimized_model_filepath = str(partial)
    # The weights go into a file of their own, which onnxruntime memory-maps instead of parsing them out of
    # the graph: a session of the 64 MB int8 text tower then takes 20 ms instead of 130. Named per process,
    # so that two processes preparing the same copy never write into one file.
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     f"{optimised.name}.{os.getpid()}.weights")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    session = onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    try:
        os.replace(partial, optimised)
    except OSError:  # a read-only cache: every session optimises again, which is slower but fine
        partial.unlink(missing_ok=True)
    for stale in folder.glob(f"{tower}.{graph}.optimised-ort*.onnx"):  # the copies of earlier versions
        stale.unlink(missing_ok=True)
    return session


def export_module(module: Any, sample: tuple[Any, ...], target: Path, input_names: list[str], output_name: str,
                  dynamic_axes: dict[str, dict[int, str]]) -> None:
    """torch.onnx (the TorchScript exporter) of `module` into `target`, its weights written one at a time into a
    file beside it (TARGET.weights) instead of being copied into the graph in memory.

    The exporter's own way holds the weights four times at once (folded, in its protobuf, serialised,
    as Python bytes); here the graph is exported without them (its parameters become inputs) and each
    input is then turned into an initializer whose data lies in the file. The weights' transposes are left
    unfolded: `fold_and_quantise` folds them with onnxruntime, in a process without torch.
    """
    import onnx
    import torch

    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(module, sample, str(target), input_names=input_names, output_names=[output_name],
                          dynamic_axes=dynamic_axes, opset_version=18, dynamo=False, export_params=False,
                          do_constant_folding=False)
    graph = onnx.load(str(target))
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    weights = target.with_suffix(".weights")
    kept = []
    with open(weights, "wb") as out:
        for value in graph.graph.input:
            if value.name in input_names:
                kept.append(value)
                continue
            array = tensors[value.name].detach().cpu().contiguous().numpy()  # a view: no copy of the weights
            initializer = onnx.TensorProto(name=value.name, dims=array.shape,
                                           data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype))
            initializer.data_location = onnx.TensorProto.EXTERNAL
            for key, field in (("location", weights.name), ("offset", out.tell()), ("length", array.nbytes)):
                entry = initializer.external_data.add()
                entry.key, entry.value = key, str(field)
            out.write(array.data)
            graph.graph.initializer.append(initializer)
    del graph.graph.input[:]
    graph.graph.input.extend(kept)
    onnx.save(graph, str(target))


def fold_and_quantise(work: Path, tower: str) -> None:
    """TOWER.raw.onnx (from export_module) -> TOWER.fp32.onnx, its weights' transposes folded by onnxruntime (basic
    optimisations only, none specific to this processor) and kept in a file beside it, and TOWER.int8.onnx, its
    dynamic int8 quantisation; the raw files are removed. Needs no torch."""
    onnxruntime = import_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    raw, fp32 = work / f"{tower}.raw.onnx", work / f"{tower}.fp32.onnx"
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(fp32)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     f"{tower}.fp32.weights")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    onnxruntime.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    raw.unlink()
    raw.with_suffix(".weights").unlink()
    quantize_dynamic(fp32, work / f"{tower}.int8.onnx", weight_type=QuantType.QInt8)


def write_json_atomically(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)
