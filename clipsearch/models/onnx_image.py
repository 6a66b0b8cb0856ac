"""Pixels to vectors on a CPU without torch: the model's image tower, exported once to ONNX.

Indexing on a CPU used to import torch and transformers (~3 s), load both towers
(600 MB for ViT-B/32) and run the image tower in torch at fp32. Instead, the first
index run with a model exports its image tower with torch.onnx (uint8 pixels in,
the model's own normalisation inside the graph), quantises it to int8 and keeps
the int8 graph when it agrees with the original (cosine >= 0.999 on `probe_pixels`).
The export is cached beside the text encoder's, under
$XDG_CACHE_HOME/clipsearch/image-encoders/, keyed by the model id and a hash of
its weights. Later runs open it in onnxruntime, in the background while decoding
starts, instead of ~5 s of imports and loading: a third of the peak memory, and
with int8 about twice the model's images per second of torch at fp32 on an AVX2
processor (scripts/bench_index.py). An export that fails is recorded and not retried.

Which path `--precision auto` takes is measured, not guessed from the processor's
flags: the export times the candidates that agree with the model (the int8 graph,
the fp32 graph, and bf16 autocast in torch where the processor has bf16 hardware)
on the probe pictures and records the images per second of each and the fastest
in settings.json. An export made before that record existed keeps its graph.

The first run prepares the encoders in child processes (prepare.py), one tower
and one step at a time, so that its memory stays near 1 GB for ViT-B/32 instead of
2.4 GB, and the index process itself never imports torch.

`load_image_encoder` chooses the encoder for a device and precision, and falls
back to torch with a notice if the export or onnxruntime is not available: this
optimisation never stops an index run. GPUs (CUDA, Apple MPS) keep torch.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..options import ImagePrecision
from . import cpu, export_cache
from .preprocess import Preprocess
from .protocols import ImageEncoder
from .torch_encoder import Encoder, ModelError, pick_device

EXPORT_FORMAT = 1  # bump when the files written by `export` change meaning
MIN_AGREEMENT = export_cache.MIN_AGREEMENT
TIMED_PROBES = 8  # pictures per timed batch when the candidates are measured
TIMED_RUNS = 3  # timed batches per candidate, after one warm-up: the median counts


class ImageEncoderUnavailable(Exception):
    """The ONNX image encoder cannot be used here; the caller falls back to torch. The message says why."""


def cache_root() -> Path:
    """$XDG_CACHE_HOME/clipsearch/image-encoders (~/.cache by default)."""
    return export_cache.cache_base() / "image-encoders"


def export_dir(model_id: str) -> Path | None:
    return export_cache.export_dir(model_id, cache_root(), EXPORT_FORMAT)


@dataclass
class OnnxImageEncoder:
    """The exported image tower in an onnxruntime session (always on the CPU)."""

    model_id: str
    dim: int
    preprocess: Preprocess
    precision: str  # "int8" or "fp32": the graph in use
    _session: Future[Any]
    folder: Path
    device: str = "cpu"

    @classmethod
    def load(cls, model_id: str, precision: str = "auto", threads: int | None = None) -> OnnxImageEncoder:
        """Open the cached export of `model_id`; ImageEncoderUnavailable if it is not there or cannot run."""
        folder = export_dir(model_id)
        if folder is None or not (folder / "settings.json").exists():
            raise ImageEncoderUnavailable("not exported yet")
        return cls.open(folder, model_id, precision, threads)

    @classmethod
    def open(cls, folder: Path, model_id: str, precision: str = "auto", threads: int | None = None,
             keep_optimised: bool = True) -> OnnxImageEncoder:
        settings = json.loads((folder / "settings.json").read_text())
        graph = settings["auto"] if precision == "auto" else precision
        try:
            onnxruntime = export_cache.import_onnxruntime()
        except ImportError:
            raise ImageEncoderUnavailable("onnxruntime is not installed") from None
        if not (folder / f"image.{graph}.onnx").is_file():
            raise ImageEncoderUnavailable(f"{folder} has no {graph} graph")
        # The session takes ~0.3 s to create: in the background, while the decoders start on the pixel
        # settings, which are known already. A graph onnxruntime cannot load is reported at the first batch.
        session: Future[Any] = Future()

        def create() -> None:
            try:
                session.set_result(export_cache.session(onnxruntime, folder, graph, keep_optimised, tower="image",
                                                        threads=threads or os.cpu_count() or 1))
            except Exception as exc:  # noqa: BLE001 - a damaged file, or an onnxruntime that cannot run it
                session.set_exception(exc)

        threading.Thread(target=create, name="image-encoder-session", daemon=True).start()
        return cls(model_id, int(settings["dim"]), Preprocess(*settings["preprocess"]), graph, session, folder)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 batch (n x H x W x 3, as made by images.decode) -> float32 unit vectors (n x dim)."""
        try:
            session = self._session.result()
        except Exception as exc:  # noqa: BLE001 - whatever onnxruntime raised, with the way out
            raise ModelError(f"onnxruntime cannot load the prepared image encoder in {self.folder} ({exc}). "
                             f"Delete that folder to prepare it again, or pass --precision bf16.") from None
        features = session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8)})[0]
        features = features.astype(np.float32, copy=False)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def probe_pixels(prep: Preprocess, count: int = 24) -> np.ndarray:
    """Deterministic pictures on which an exported graph must agree with the torch model.

    Smooth gradients, flat shapes, fine noise and mixtures of them: the range of
    contrast and texture that photos have, made without any file or download.
    """
    rng = np.random.default_rng(1234)
    height, width = prep.crop_height, prep.crop_width
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 6.3)
        base = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) / rng.uniform(8, 120) + phase)[..., None]
        picture = 127 + 100 * base * rng.uniform(0.2, 1.0, 3) + rng.uniform(-60, 60, 3)
        for _ in range(rng.integers(0, 6)):  # flat rectangles and discs
            cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(10, 80)
            mask = ((ys - cy) ** 2 + (xs - cx) ** 2 < r * r) if rng.random() < 0.5 else (
                (abs(ys - cy) < r) & (abs(xs - cx) < r * rng.uniform(0.3, 2)))
            picture[mask] = rng.uniform(0, 255, 3)
        picture += rng.normal(0, rng.uniform(0, 40), picture.shape)  # sensor-like grain
        out[i] = picture.clip(0, 255).astype(np.uint8)
    return out


def export(encoder: Encoder, features: frozenset[str] | None = None) -> Path:
    """Export `encoder`'s image tower (fp32, on the CPU) to the cache, with int8 when it agrees, in this process,
    and record the fastest path on this processor (`features`: cpu.cpu_features() by default); returns the folder.

    Needs torch, transformers, onnx and onnxruntime. The first index run does the same in child processes.
    """
    def write(work: Path) -> dict[str, Any]:
        write_torch_half(encoder, work, features)
        export_cache.fold_and_quantise(work, "image")
        return check(work, encoder.model_id, features)

    return export_cache.export_into_cache(export_dir(encoder.model_id), encoder.model_id, write,
                                         ImageEncoderUnavailable)


def write_torch_half(encoder: Encoder, work: Path, features: frozenset[str] | None = None) -> None:
    """The half of an export that needs torch: the raw graph with its weights, the settings and the torch model's
    vectors of the probe pictures (reference.npy); on a processor with bf16 hardware also how well bf16 autocast
    agrees with fp32 and how fast it is."""
    features = cpu.cpu_features() if features is None else features
    _export_graph(encoder, work / "image.raw.onnx")
    prep = encoder.preprocess
    probes = probe_pixels(prep)
    reference = encoder.embed_pixels(probes)
    np.save(work / "reference.npy", reference)
    settings: dict[str, Any] = {
        "model": encoder.model_id, "format": EXPORT_FORMAT, "dim": encoder.dim, "auto": "fp32",
        "preprocess": [prep.shortest_edge, prep.crop_height, prep.crop_width, prep.resample],
    }
    if cpu.native_bf16(features):
        previous, encoder.precision = encoder.precision, "bf16"
        try:
            settings["bf16_min_cosine"] = _min_cosine(encoder.embed_pixels(probes), reference)
            if settings["bf16_min_cosine"] >= MIN_AGREEMENT:
                settings["speed"] = {"bf16": images_per_second(encoder, probes)}
        finally:
            encoder.precision = previous
    export_cache.write_json_atomically(work / "settings.json", settings)


def check(work: Path, model_id: str, features: frozenset[str] | None = None) -> dict[str, Any]:
    """After export_cache.fold_and_quantise, without torch: how well each graph agrees with the model and how fast
    each one that agrees is, and the fastest path; returns the settings."""
    features = cpu.cpu_features() if features is None else features
    settings = json.loads((work / "settings.json").read_text())
    reference = np.load(work / "reference.npy")
    probes = probe_pixels(Preprocess(*settings["preprocess"]))
    speed = settings.pop("speed", {})
    for graph in ("fp32", "int8"):
        exported = OnnxImageEncoder.open(work, model_id, graph, keep_optimised=False)
        settings[f"{graph}_min_cosine"] = _min_cosine(exported.embed_pixels(probes), reference)
        if settings[f"{graph}_min_cosine"] >= MIN_AGREEMENT:
            speed[graph] = images_per_second(exported, probes)
        del exported  # one session at a time
    (work / "reference.npy").unlink()
    if settings["fp32_min_cosine"] < MIN_AGREEMENT:
        raise ImageEncoderUnavailable(
            f"the exported graph disagrees with the model (cosine {settings['fp32_min_cosine']:.4f})")
    settings["speed"] = {path: round(value, 2) for path, value in speed.items()}
    settings["fastest"] = cpu.fastest(speed, features)
    settings["auto"] = cpu.fastest(speed, features, graphs_only=True)  # what `auto` opens when bf16 cannot run
    return settings


def _min_cosine(vectors: np.ndarray, reference: np.ndarray) -> float:
    return float(np.min(np.sum(vectors * reference, axis=1)))


def images_per_second(encoder: ImageEncoder, probes: np.ndarray) -> float:
    """The median rate of TIMED_RUNS batches of TIMED_PROBES probe pictures, after a warm-up batch."""
    batch = probes[:TIMED_PROBES]
    encoder.embed_pixels(batch)
    times = []
    for _ in range(TIMED_RUNS):
        started = time.perf_counter()
        encoder.embed_pixels(batch)
        times.append(time.perf_counter() - started)
    return len(batch) / statistics.median(times)


def _export_graph(encoder: Encoder, target: Path) -> None:
    """The raw graph (export_cache.export_module) of uint8 NHWC pixels -> get_image_features(...).pooler_output."""
    import torch

    model, mean, std = encoder._model, encoder._mean.float().cpu(), encoder._std.float().cpu()

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            batch = (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std  # constants in the graph
            return self.model.get_image_features(pixel_values=batch).pooler_output

    sample = torch.from_numpy(probe_pixels(encoder.preprocess, 2))
    export_cache.export_module(ImageTower().eval(), (sample,), target, ["pixels"], "image_embeds",
                              {"pixels": {0: "batch"}, "image_embeds": {0: "batch"}})


def accelerator_possible() -> bool:
    """Whether torch might find a GPU here, answered without importing torch (~2 s).

    CUDA and ROCm need their kernel drivers, which leave these files; Apple MPS
    needs Apple silicon. Anything else is a CPU, and indexing there needs no torch.
    """
    if sys.platform == "darwin":
        return platform.machine() == "arm64"
    if sys.platform == "win32":
        return os.path.exists(os.path.join(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32", "nvcuda.dll"))
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd")


def load_image_encoder(model_id: str, device: str | None = None, precision: str = "auto",
                       notify: Callable[[str], None] = lambda message: None,
                       features: frozenset[str] | None = None) -> ImageEncoder:
    """The fastest encoder for indexing with `model_id` on `device` at `precision` (see ImagePrecision).

    GPUs run the torch model in half precision (fp32 if asked). On a CPU, `int8`/`fp32`
    use the exported ONNX graph (prepared on first use), `bf16` the torch model under
    bfloat16 autocast, and `auto` the path the export measured fastest (`features`, the
    processor's flags, decide only whether a bf16 record can be used: cpu.cpu_features()
    by default). `notify` gets one line saying which path runs ("Image encoder: ...").
    """
    precision = ImagePrecision(precision).value
    features = cpu.cpu_features() if features is None else features
    if device is None and accelerator_possible():
        device = pick_device(None)
    if device not in (None, "cpu"):
        return Encoder.load(model_id, device, precision)
    if precision == "bf16":
        notify("Image encoder: torch bf16 (--precision bf16).")
        return Encoder.load(model_id, "cpu", "bf16")
    try:
        folder = _prepared_folder(model_id, notify)
        path, why = choose_path(json.loads((folder / "settings.json").read_text()), precision, features)
        if path == "bf16":
            notify(f"Image encoder: torch bf16 ({why}).")
            return Encoder.load(model_id, "cpu", "bf16")
        encoder = OnnxImageEncoder.open(folder, model_id, path)
    except ImageEncoderUnavailable as exc:
        notify(f"Using torch for the image encoder ({exc}).")
        return Encoder.load(model_id, "cpu", "fp32")
    notify(f"Image encoder: onnx {path} ({why}).")
    return encoder


def choose_path(settings: dict[str, Any], precision: str, features: frozenset[str]) -> tuple[str, str]:
    """The path (int8, fp32 or bf16) that `precision` takes with an export's `settings` on a processor with
    `features`, and why, in words. `auto` takes the record of the fastest; an export without one (made by an
    older version) keeps its graph: never bf16 on a guess, nor on a record made on another processor."""
    if precision != "auto":
        return precision, f"--precision {precision}"
    speed = settings.get("speed")
    if not speed:
        return str(settings["auto"]), "chosen when prepared: agrees with the model; speed not measured"
    path = cpu.fastest(speed, features)
    rates = ", ".join(f"{name} {rate:.0f}" for name, rate in sorted(speed.items(), key=lambda item: -item[1]))
    return path, f"measured fastest, images/s: {rates}"


def describe(model_id: str, precision: str = "auto", features: frozenset[str] | None = None) -> str:
    """Which path `index` would take for `model_id`, in words, without loading anything
    ("onnx int8 (measured fastest, images/s: int8 41, fp32 30)"); for `info`."""
    folder = export_dir(model_id)
    if folder is None or not (folder / "settings.json").exists():
        failed = folder is not None and export_cache.failure_marker(folder).exists()
        return "torch fp32 (the ONNX export failed)" if failed else "not prepared yet (the next index run prepares it)"
    path, why = choose_path(json.loads((folder / "settings.json").read_text()), ImagePrecision(precision).value,
                            cpu.cpu_features() if features is None else features)
    described = f"{'torch' if path == 'bf16' else 'onnx'} {path} ({why})"
    return f"torch on a GPU if there is one, else {described}" if accelerator_possible() else described


def _prepared_folder(model_id: str, notify: Callable[[str], None]) -> Path:
    """The folder of the model's exported image tower, prepared now in child processes if it is not there yet
    (the text tower comes along); ImageEncoderUnavailable if it cannot be."""
    from . import prepare

    folder = export_dir(model_id)
    if folder is None:  # a Hub model whose weights are not on this machine yet
        prepare.run_step("fetch", "image", model_id, None, notify)
        folder = export_dir(model_id)
    if folder is not None and (folder / "settings.json").exists():
        return folder
    folder = export_cache.export_into_cache(folder, model_id, lambda work: prepare.prepare("image", model_id, work,
                                                                                          notify),
                                           ImageEncoderUnavailable)
    prepare.text_tower_too(model_id, notify)
    return folder
