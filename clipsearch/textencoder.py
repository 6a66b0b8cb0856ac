"""Query text to vectors without torch: the model's text tower, exported once to ONNX.

A cold `find` used to spend ~4 s importing torch and transformers and loading
both towers of the model to embed a few words. Instead, the text tower is
exported once per model (torch.onnx), quantised to int8 when the int8 graph
agrees with the original (cosine >= 0.999 on `AGREEMENT_PROMPTS`), cached
under $XDG_CACHE_HOME/clipsearch/text-encoders/, and run with onnxruntime,
tokenised by `tokenizers` from the model's own tokenizer. Loading it costs a
few hundred milliseconds and imports neither torch nor transformers.

The cache is keyed by the model id and a hash of its weight files, found on
disk without importing transformers (a local folder, or the Hugging Face
cache's layout), so retrained or updated weights get a new export.

Exporting is split in steps that can run in separate processes (prepare.py):
the torch half writes the graph with its weights streamed to a file beside it,
never held as whole in-memory copies (the exporter's own way needs four copies:
1.8 GB for ViT-B/32's image tower); then onnxruntime folds and quantises it, and
the graphs are checked against the model, without torch. onnxruntime is always imported with its telemetry off
(`import_onnxruntime`): it would otherwise write a device id and an event
database under ~/.cache/Microsoft.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ClipsearchError

if TYPE_CHECKING:
    from .encoder import Encoder

EXPORT_FORMAT = 1  # bump when the files written by `export` change meaning
PRECISIONS = ("auto", "fp32")
MIN_AGREEMENT = 0.999
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")

# Varied prompts (length, subject, style, punctuation, non-ASCII) on which an
# exported graph must agree with the torch text tower.
AGREEMENT_PROMPTS = (
    "a dog", "a cat sleeping on a sofa", "sunset over the ocean", "a red circle", "a blue square",
    "a green triangle on a white background", "two people hiking in the mountains", "a bowl of ramen",
    "birthday cake with candles", "a receipt", "a screenshot of a chat", "snow", "a black and white portrait",
    "the Eiffel Tower at night", "children playing football in a park", "a close-up of a flower",
    "a city street in the rain", "a bicycle leaning against a wall", "fireworks", "a plate of sushi",
    "an old car", "a wedding", "a baby smiling", "a dog on a beach", "a horse with stripes",
    "a photo of a coffee cup on a wooden table", "text on a whiteboard", "a mountain lake with reflections",
    "a purple star", "a yellow hexagon", "an orange and a banana", "a crowd at a concert",
    "a selfie", "a map", "autumn leaves", "a cat", "documents", "a forest path in fog",
    "the moon", "a lighthouse on a cliff", "a train station", "a kitchen", "grandma's garden",
    "café au lait", "東京の夜景", "a dog, a cat, and a parrot!", "UPPERCASE WORDS",
    ("a very long description of a quiet morning in a small village with cobblestone streets, flowers "
     "on the windows, a bakery opening its doors, and an old man walking his dog along the river"),
    "42", "a t-shirt",
)


class TextEncoderUnavailable(Exception):
    """The fast text encoder cannot be used here; the caller falls back to torch. The message says why."""


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


def cache_root() -> Path:
    """$XDG_CACHE_HOME/clipsearch/text-encoders (~/.cache by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipsearch" / "text-encoders"


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
    memo_path = cache_root() / "weight-digests.json"
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


def export_dir(model_id: str, root: Path | None = None, export_format: int = EXPORT_FORMAT) -> Path | None:
    """The cache folder of this model's exported text encoder (or, under another `root`, image encoder);
    None if the model's weights are not on disk."""
    folder = model_folder(model_id)
    digest = weights_digest(folder) if folder else None
    if digest is None:
        return None
    key = hashlib.sha256(f"{export_format}\n{model_id}\n{digest}".encode()).hexdigest()[:24]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id.strip("/"))[-60:]
    return (root or cache_root()) / f"{slug}-{key}"


@dataclass
class OnnxTextEncoder:
    """The exported text tower in an onnxruntime session, with the model's own tokenizer."""

    model_id: str
    precision: str  # "int8" or "fp32": the graph in use
    _session: Any
    _tokenizer: Any
    _inputs: tuple[str, ...]

    @classmethod
    def load(cls, model_id: str, precision: str = "auto") -> OnnxTextEncoder:
        """Open the cached export of `model_id`; TextEncoderUnavailable if it is not there or cannot run."""
        folder = export_dir(model_id)
        if folder is None or not (folder / "settings.json").exists():
            raise TextEncoderUnavailable("not exported yet")
        return cls.open(folder, model_id, precision)

    @classmethod
    def open(cls, folder: Path, model_id: str, precision: str = "auto", keep_optimised: bool = True
             ) -> OnnxTextEncoder:
        """Open an export in `folder` (also before it is moved into the cache, to check it: then
        `keep_optimised` is False, so no optimised copy of a graph that may never be used is written)."""
        settings = json.loads((folder / "settings.json").read_text())
        graph = settings["auto"] if precision == "auto" else precision
        try:
            onnxruntime = import_onnxruntime()
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise TextEncoderUnavailable(f"{exc.name or 'onnxruntime'} is not installed") from None
        try:
            session = _session(onnxruntime, folder, graph, keep_optimised)
        except Exception as exc:  # noqa: BLE001 - a damaged file, or an onnxruntime that cannot run it
            raise TextEncoderUnavailable(f"onnxruntime cannot load {folder}: {exc}") from None
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.enable_truncation(settings["max_length"])
        tokenizer.enable_padding(pad_id=settings["pad_id"], pad_token=settings["pad_token"],
                                 length=settings["max_length"] if settings["pad_to_max"] else None)
        inputs = tuple(i.name for i in session.get_inputs())
        return cls(model_id, graph, session, tokenizer, inputs)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> float32 unit vectors (n x dim)."""
        encodings = self._tokenizer.encode_batch(list(texts))
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        features = self._session.run(None, {name: feed[name] for name in self._inputs})[0].astype(np.float32)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _session(onnxruntime: Any, folder: Path, graph: str, keep_optimised: bool = True, tower: str = "text",
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


def export(encoder: Encoder) -> Path:
    """Export `encoder`'s text tower (fp32, on the CPU) to the cache, with int8 when it agrees; returns the folder.

    Needs torch, transformers, onnx and onnxruntime.
    """
    def write(work: Path) -> dict[str, Any]:
        write_torch_half(encoder, work)
        fold_and_quantise(work, "text")
        return check(work, encoder.model_id)

    return export_into_cache(export_dir(encoder.model_id), encoder.model_id, write, TextEncoderUnavailable)


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


def write_torch_half(encoder: Encoder, work: Path) -> None:
    """The half of an export that needs torch: the raw graph with its weights, the tokenizer, the settings and
    the torch model's vectors of AGREEMENT_PROMPTS (reference.npy), all into `work`."""
    inputs = _export_graph(encoder, work / "text.raw.onnx")
    (work / "tokenizer.json").write_text(_quick_loading(encoder._tokenizer.backend_tokenizer.to_str()))
    np.save(work / "reference.npy", encoder.embed_texts(list(AGREEMENT_PROMPTS)))
    write_json_atomically(work / "settings.json", {
        "model": encoder.model_id, "format": EXPORT_FORMAT, "inputs": inputs, **_tokenizer_settings(encoder),
        "auto": "fp32",
    })


def check(work: Path, model_id: str) -> dict[str, Any]:
    """After `fold_and_quantise`, without torch: how well each graph agrees with the model; returns the settings."""
    settings = json.loads((work / "settings.json").read_text())
    reference = np.load(work / "reference.npy")
    for graph in ("fp32", "int8"):
        exported = OnnxTextEncoder.open(work, model_id, graph, keep_optimised=False)
        vectors = exported.embed_texts(list(AGREEMENT_PROMPTS))
        settings[f"{graph}_min_cosine"] = float(np.min(np.sum(vectors * reference, axis=1)))
    (work / "reference.npy").unlink()
    if settings["fp32_min_cosine"] < MIN_AGREEMENT:
        raise TextEncoderUnavailable(
            f"the exported graph disagrees with the model (cosine {settings['fp32_min_cosine']:.4f})")
    settings["auto"] = "int8" if settings["int8_min_cosine"] >= MIN_AGREEMENT else "fp32"
    return settings


def _quick_loading(tokenizer_json: str) -> str:
    """The same tokenizer with its BPE merges written as "a b" strings, which `tokenizers` reads in 60 ms
    instead of 100 ms for [a, b] pairs (CLIP's 48,894 merges); kept as pairs where a token holds a space."""
    data = json.loads(tokenizer_json)
    merges = (data.get("model") or {}).get("merges")
    if isinstance(merges, list) and all(isinstance(m, list) and len(m) == 2 and " " not in "".join(m) for m in merges):
        data["model"]["merges"] = [" ".join(m) for m in merges]
    return json.dumps(data, ensure_ascii=False)


def _tokenizer_settings(encoder: Encoder) -> dict[str, Any]:
    tokenizer = encoder._tokenizer
    return {
        "max_length": encoder._max_text_tokens(),
        "pad_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        "pad_token": str(tokenizer.pad_token or ""),
        "pad_to_max": bool(encoder._pad_to_max),
    }


def _export_graph(encoder: Encoder, target: Path) -> list[str]:
    """The raw graph (export_module) of get_text_features(...).pooler_output; returns the input names."""
    import torch

    model = encoder._model
    names = [n for n in ("input_ids", "attention_mask") if n in encoder._tokenizer.model_input_names]

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model.get_text_features(**dict(zip(names, tensors))).pooler_output

    sample = encoder._tokenizer(["a photo of a dog", "a red circle on a blue background, seen from above"],
                                padding="max_length" if encoder._pad_to_max else True, truncation=True,
                                max_length=encoder._max_text_tokens(), return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    export_module(TextTower().eval(), tuple(sample[n] for n in names), target, names, "text_embeds",
                  {**axes, "text_embeds": {0: "batch"}})
    return names


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
