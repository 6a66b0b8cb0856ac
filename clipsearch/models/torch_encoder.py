"""Loading a CLIP-family model and turning pixels and texts into unit vectors.

Any Hugging Face checkpoint with `get_image_features` / `get_text_features`
(CLIP, SigLIP, ...) works, by Hub id or local directory, through the same
`from_pretrained` calls. torch and transformers are imported only when a model
is actually needed, so database-only commands start instantly.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BadInputError
from ..options import DEVICES, model_id_from
from .preprocess import Preprocess


class ModelError(BadInputError):
    """The model cannot be loaded or used; the message says what to do."""


def pick_device(requested: str | None = None) -> str:
    """CUDA, then Apple MPS, then CPU; or exactly what was requested, if it is there."""
    import torch

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested:
        kind = requested.split(":")[0]
        if kind not in available:
            raise ModelError(f"Unknown device '{requested}'. Use one of: {', '.join(DEVICES)}.")
        if not available[kind]:
            raise ModelError(f"Device '{requested}' is not available on this machine (this torch build: "
                             f"{torch.__version__}). Leave out --device to pick automatically.")
        return requested
    return next(kind for kind in DEVICES if available[kind])


def _preprocess_from_config(config: dict) -> tuple[Preprocess, np.ndarray, np.ndarray]:
    """Our decode settings from a Hugging Face image-processor config (CLIP or SigLIP style)."""
    size = config.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = config.get("crop_size") or {}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if "shortest_edge" in size:
        short = int(size["shortest_edge"])
        if not config.get("do_center_crop", True) or not crop:
            crop = {"height": short, "width": short}
        prep = Preprocess(short, int(crop["height"]), int(crop["width"]), int(config.get("resample", 3)))
    else:  # SigLIP-style: a fixed height x width; keep the aspect ratio and centre-crop
        height, width = int(size.get("height", 224)), int(size.get("width", 224))
        prep = Preprocess(min(height, width), height, width, int(config.get("resample", 3)))
    mean = np.array(config.get("image_mean", [0.5, 0.5, 0.5]), dtype=np.float32)
    std = np.array(config.get("image_std", [0.5, 0.5, 0.5]), dtype=np.float32)
    if not config.get("do_normalize", True):
        mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    return prep, mean, std


def preprocess_of(model: str) -> Preprocess:
    """The pixel settings of `model` (Hub id or folder) from its preprocessor_config.json alone: no torch, no
    weights. For machines that decode for a model they never load (`index --ray` decodes on CPU workers)."""
    import json

    model_id = model_id_from(model)
    _offline_if_the_hub_is_unreachable(model_id)
    try:
        if os.path.isdir(model_id):
            with open(os.path.join(model_id, "preprocessor_config.json"), encoding="utf-8") as handle:
                config = json.load(handle)
        else:
            from huggingface_hub import hf_hub_download

            with open(hf_hub_download(model_id, "preprocessor_config.json"), encoding="utf-8") as handle:
                config = json.load(handle)
    except (OSError, ValueError) as exc:  # huggingface_hub's errors are OSErrors
        raise ModelError(_offline_message(model_id, exc)) from exc
    return _preprocess_from_config(config)[0]


def _offline_if_the_hub_is_unreachable(model_id: str) -> None:
    """Switch huggingface_hub to offline mode when its server cannot be reached (no network, a firewall).

    Otherwise every file of a model is retried with back-off: an offline `index` took 30 s to say the
    model is missing, and a cached model would wait the same before it is used. One TCP connection, at most
    2 s, and only for a Hub id loaded without HF_HUB_OFFLINE; skipped behind a proxy, which this cannot probe.
    """
    import socket
    from urllib.parse import urlsplit

    if os.path.isdir(model_id) or os.environ.get("HF_HUB_OFFLINE") or any(
            os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co",
                                       endpoint.port or (80 if endpoint.scheme == "http" else 443)), timeout=2):
            return
    except OSError:
        pass
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: it read the variable at import
        setattr(constants, "HF_HUB_OFFLINE", True)  # noqa: B010 - a module's constant, untyped


def _offline_message(model_id: str, error: Exception) -> str:
    looks_like_folder = os.path.isabs(model_id) or model_id.startswith((".", "~")) or model_id.count("/") > 1
    if looks_like_folder:
        return (f"Model folder '{model_id}' does not exist or is not a complete model "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
                f"Pass a folder saved with save_pretrained, or a Hugging Face model id.")
    return (
        f"Model '{model_id}' is not on this machine and could not be downloaded "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
        f"Fix: run clipsearch once with network access so the weights are cached "
        f"(~/.cache/huggingface), or download them elsewhere and pass the folder: --model /path/to/model"
    )


@dataclass
class Encoder:
    """A loaded model on a device. Create it with `Encoder.load`."""

    model_id: str
    device: str
    dim: int
    preprocess: Preprocess
    _model: Any  # a transformers CLIP-like model: typed loosely, any checkpoint with the two towers works
    _tokenizer: Any
    _mean: Any  # torch tensors on the device, shape 1x3x1x1
    _std: Any
    _dtype: Any  # torch.dtype (torch is imported only with a model)
    _pad_to_max: bool
    # Images: "fp32"; "bf16" runs the image tower under bfloat16 autocast on a CPU (fast only where the
    # processor has bf16 hardware); on a GPU the weights are already half precision unless fp32 was asked for.
    precision: str = "fp32"

    @classmethod
    def load(cls, model: str | None = None, device: str | None = None, precision: str = "auto") -> Encoder:
        """Load weights, tokenizer and image-processor config by Hub id or local folder.

        `precision` (ImagePrecision): GPUs take fp16 for auto and int8, bf16 or fp32 when asked;
        the CPU keeps fp32 weights and computes images under bf16 autocast when asked for bf16.
        """
        model_id = model_id_from(model)
        _offline_if_the_hub_is_unreachable(model_id)
        device = pick_device(device)
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.image_processing_base import ImageProcessingMixin
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # we draw our own

        dtype = torch.float32
        if device.startswith(("cuda", "mps")) and precision != "fp32":
            dtype = torch.bfloat16 if precision == "bf16" and device.startswith("cuda") else torch.float16
        try:
            network = AutoModel.from_pretrained(model_id, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(model_id)
            processor_config, _ = ImageProcessingMixin.get_image_processor_dict(model_id)
        except (OSError, ValueError) as exc:
            raise ModelError(_offline_message(model_id, exc)) from exc
        if not (hasattr(network, "get_image_features") and hasattr(network, "get_text_features")):
            raise ModelError(f"'{model_id}' is a {type(network).__name__}, not a CLIP-style model with "
                             f"image and text towers. Choose a CLIP or SigLIP checkpoint.")
        network.eval().to(device)
        prep, mean, std = _preprocess_from_config(processor_config)
        dim = int(getattr(network.config, "projection_dim", 0) or network.config.text_config.hidden_size)
        return cls(
            model_id=model_id, device=device, dim=dim, preprocess=prep, _model=network, _tokenizer=tokenizer,
            _mean=torch.from_numpy(mean).view(1, 3, 1, 1).to(device, dtype),
            _std=torch.from_numpy(std).view(1, 3, 1, 1).to(device, dtype),
            _dtype=dtype,
            _pad_to_max=network.config.model_type.startswith("siglip"),
            precision="bf16" if precision == "bf16" else "fp32",
        )

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 batch (n x H x W x 3, as made by images.decode) -> float32 unit vectors (n x dim)."""
        import torch

        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(pixels))
            if self.device.startswith("cuda"):
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).to(self._dtype)
            batch = (batch / 255 - self._mean) / self._std
            autocast = self.precision == "bf16" and self.device == "cpu"
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                features = self._model.get_image_features(pixel_values=batch).pooler_output
            return _unit_rows(features)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> float32 unit vectors (n x dim)."""
        import torch

        tokens = self._tokenizer(
            texts,
            padding="max_length" if self._pad_to_max else True,
            truncation=True,
            max_length=self._max_text_tokens(),
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            features = self._model.get_text_features(**tokens).pooler_output
            return _unit_rows(features)

    def _max_text_tokens(self) -> int:
        config = self._model.config.text_config
        return int(getattr(config, "max_position_embeddings", 77))


def _unit_rows(features) -> np.ndarray:
    import torch

    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy()

