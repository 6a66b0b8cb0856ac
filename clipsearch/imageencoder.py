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

`load_image_encoder` chooses the encoder for a device and precision, and falls
back to torch with a notice if the export or onnxruntime is not available: this
optimisation never stops an index run. GPUs (CUDA, Apple MPS) keep torch.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import textencoder
from .encoder import Encoder, ModelError, pick_device
from .images import Preprocess
from .options import ImagePrecision

EXPORT_FORMAT = 1  # bump when the files written by `export` change meaning
MIN_AGREEMENT = textencoder.MIN_AGREEMENT


class ImageEncoder(Protocol):
    """What the indexer needs of an encoder: its pixel settings and a batch call."""

    model_id: str
    device: str
    dim: int
    preprocess: Preprocess

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray: ...


class ImageEncoderUnavailable(Exception):
    """The ONNX image encoder cannot be used here; the caller falls back to torch. The message says why."""


def cache_root() -> Path:
    """$XDG_CACHE_HOME/clipsearch/image-encoders (~/.cache by default)."""
    return textencoder.cache_root().parent / "image-encoders"


def export_dir(model_id: str) -> Path | None:
    return textencoder.export_dir(model_id, cache_root(), EXPORT_FORMAT)


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
            import onnxruntime
        except ImportError:
            raise ImageEncoderUnavailable("onnxruntime is not installed") from None
        if not (folder / f"image.{graph}.onnx").is_file():
            raise ImageEncoderUnavailable(f"{folder} has no {graph} graph")
        # The session takes ~0.3 s to create: in the background, while the decoders start on the pixel
        # settings, which are known already. A graph onnxruntime cannot load is reported at the first batch.
        session: Future[Any] = Future()

        def create() -> None:
            try:
                session.set_result(textencoder._session(onnxruntime, folder, graph, keep_optimised, tower="image",
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


def export(encoder: Encoder) -> Path:
    """Export `encoder`'s image tower (fp32, on the CPU) to the cache, with int8 when it agrees; returns the folder.

    Needs torch, transformers, onnx and onnxruntime.
    """
    return textencoder.export_into_cache(export_dir(encoder.model_id), encoder.model_id,
                                         lambda work: _export_into(encoder, work), ImageEncoderUnavailable)


def _export_into(encoder: Encoder, work: Path) -> dict[str, Any]:
    """Write both graphs and the settings (with the agreement figures) into `work`; returns the settings."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _export_graph(encoder, work / "image.fp32.onnx")
    quantize_dynamic(work / "image.fp32.onnx", work / "image.int8.onnx", weight_type=QuantType.QInt8)
    prep = encoder.preprocess
    settings: dict[str, Any] = {
        "model": encoder.model_id, "format": EXPORT_FORMAT, "dim": encoder.dim, "auto": "fp32",
        "preprocess": [prep.shortest_edge, prep.crop_height, prep.crop_width, prep.resample],
    }
    textencoder.write_json_atomically(work / "settings.json", settings)
    probes = probe_pixels(prep)
    reference = encoder.embed_pixels(probes)
    for graph in ("fp32", "int8"):
        exported = OnnxImageEncoder.open(work, encoder.model_id, graph, keep_optimised=False)
        settings[f"{graph}_min_cosine"] = float(np.min(np.sum(exported.embed_pixels(probes) * reference, axis=1)))
    if settings["fp32_min_cosine"] < MIN_AGREEMENT:
        raise ImageEncoderUnavailable(
            f"the exported graph disagrees with the model (cosine {settings['fp32_min_cosine']:.4f})")
    settings["auto"] = "int8" if settings["int8_min_cosine"] >= MIN_AGREEMENT else "fp32"
    return settings


def _export_graph(encoder: Encoder, target: Path) -> None:
    """torch.onnx (the TorchScript exporter) of uint8 NHWC pixels -> get_image_features(...).pooler_output."""
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
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(ImageTower().eval(), (sample,), str(target), input_names=["pixels"],
                          output_names=["image_embeds"],
                          dynamic_axes={"pixels": {0: "batch"}, "image_embeds": {0: "batch"}},
                          opset_version=18, dynamo=False)


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


def native_bf16() -> bool:
    """Whether this processor computes bfloat16 in hardware (AVX-512 BF16 or AMX), where bf16 beats fp32."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def load_image_encoder(model_id: str, device: str | None = None, precision: str = "auto",
                       notify: Callable[[str], None] = lambda message: None) -> ImageEncoder:
    """The fastest encoder for indexing with `model_id` on `device` at `precision` (see ImagePrecision).

    GPUs run the torch model in half precision (fp32 if asked). On a CPU, `auto`
    and `int8`/`fp32` use the exported ONNX graph (exporting it on first use), `bf16`
    the torch model under bfloat16 autocast; `auto` takes int8 where it agrees with
    the model, else bf16 on processors with bf16 hardware, else fp32.
    """
    precision = ImagePrecision(precision).value
    if device is None and accelerator_possible():
        device = pick_device(None)
    if device not in (None, "cpu"):
        return Encoder.load(model_id, device, precision)
    if precision == "bf16":
        return Encoder.load(model_id, "cpu", "bf16")
    folder = export_dir(model_id)
    if folder is None or not (folder / "settings.json").exists():
        model = Encoder.load(model_id, "cpu")  # also fetches the weights of a Hub model not yet on disk
        try:
            notify("Preparing the image encoder for this model (once)...")
            export(model)
        except ImageEncoderUnavailable as exc:
            notify(f"Using torch for the image encoder ({exc}).")
            model.precision = _torch_precision(precision)
            return model
        _prepare_text_encoder(model, notify)
        folder = export_dir(model_id)
    if precision == "auto" and folder is not None and native_bf16() and _exported_auto(folder) != "int8":
        return Encoder.load(model_id, "cpu", "bf16")  # int8 disagreed: bf16 hardware beats the fp32 graph
    try:
        return OnnxImageEncoder.load(model_id, precision)
    except ImageEncoderUnavailable as exc:
        notify(f"Using torch for the image encoder ({exc}).")
        return Encoder.load(model_id, "cpu", _torch_precision(precision))


def _exported_auto(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / "settings.json").read_text())["auto"])
    except (OSError, ValueError, KeyError):
        return None


def _torch_precision(precision: str) -> str:
    return "bf16" if precision == "auto" and native_bf16() else "fp32"


def _prepare_text_encoder(model: Encoder, notify: Callable[[str], None]) -> None:
    """While the torch model is loaded anyway, export its text tower too, so the first `find` is fast."""
    folder = textencoder.export_dir(model.model_id)
    if folder is None or (folder / "settings.json").exists():
        return
    try:
        textencoder.export(model)
    except textencoder.TextEncoderUnavailable as exc:
        notify(f"The text encoder could not be prepared ({exc}); find will use torch.")
