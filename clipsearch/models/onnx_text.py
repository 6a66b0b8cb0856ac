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
(`export_cache.import_onnxruntime`): it would otherwise write a device id and an event
database under ~/.cache/Microsoft.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import export_cache

if TYPE_CHECKING:
    from .torch_encoder import Encoder

EXPORT_FORMAT = 1  # bump when the files written by `export` change meaning
PRECISIONS = ("auto", "fp32")

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


def cache_root() -> Path:
    """$XDG_CACHE_HOME/clipsearch/text-encoders (~/.cache by default)."""
    return export_cache.cache_base() / "text-encoders"


def export_dir(model_id: str) -> Path | None:
    """The cache folder of this model's exported text encoder; None if the model's weights are not on disk."""
    return export_cache.export_dir(model_id, cache_root(), EXPORT_FORMAT)


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
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise TextEncoderUnavailable(f"{exc.name or 'tokenizers'} is not installed") from None
        # The tokenizer first: reading it (50 ms for CLIP's) lets go of the GIL, so in search's background load
        # it overlaps the query's own imports; importing onnxruntime (Python code, 35 ms) would not.
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        try:
            onnxruntime = export_cache.import_onnxruntime()
        except ImportError as exc:
            raise TextEncoderUnavailable(f"{exc.name or 'onnxruntime'} is not installed") from None
        try:
            session = export_cache.session(onnxruntime, folder, graph, keep_optimised)
        except Exception as exc:  # noqa: BLE001 - a damaged file, or an onnxruntime that cannot run it
            raise TextEncoderUnavailable(f"onnxruntime cannot load {folder}: {exc}") from None
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


def export(encoder: Encoder) -> Path:
    """Export `encoder`'s text tower (fp32, on the CPU) to the cache, with int8 when it agrees; returns the folder.

    Needs torch, transformers, onnx and onnxruntime.
    """
    def write(work: Path) -> dict[str, Any]:
        write_torch_half(encoder, work)
        export_cache.fold_and_quantise(work, "text")
        return check(work, encoder.model_id)

    return export_cache.export_into_cache(export_dir(encoder.model_id), encoder.model_id, write, TextEncoderUnavailable)


def write_torch_half(encoder: Encoder, work: Path) -> None:
    """The half of an export that needs torch: the raw graph with its weights, the tokenizer, the settings and
    the torch model's vectors of AGREEMENT_PROMPTS (reference.npy), all into `work`."""
    inputs = _export_graph(encoder, work / "text.raw.onnx")
    (work / "tokenizer.json").write_text(_quick_loading(encoder._tokenizer.backend_tokenizer.to_str()))
    np.save(work / "reference.npy", encoder.embed_texts(list(AGREEMENT_PROMPTS)))
    export_cache.write_json_atomically(work / "settings.json", {
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
    if settings["fp32_min_cosine"] < export_cache.MIN_AGREEMENT:
        raise TextEncoderUnavailable(
            f"the exported graph disagrees with the model (cosine {settings['fp32_min_cosine']:.4f})")
    settings["auto"] = "int8" if settings["int8_min_cosine"] >= export_cache.MIN_AGREEMENT else "fp32"
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
    """The raw graph (export_cache.export_module) of get_text_features(...).pooler_output; returns the input names."""
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
    export_cache.export_module(TextTower().eval(), tuple(sample[n] for n in names), target, names, "text_embeds",
                  {**axes, "text_embeds": {0: "batch"}})
    return names


