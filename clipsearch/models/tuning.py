"""Score thresholds that depend on the model.

CLIP models spread cosine similarities differently (a "match" is 0.28 for
ViT-B/32 text-to-image and something else for another model), so fixed
numbers are wrong for all models but one. Defaults come from here: values
for models we know, a `clipsearch.json` file inside a local model folder
(the shipped tiny test model has one), else the ViT-B/32 values. Every
threshold can still be set on the command line.
"""

from __future__ import annotations

import json
import os

# Tuned for OpenAI/LAION ViT-B/32 (the default model).
DEFAULTS: dict[str, float] = {
    "near_threshold": 0.93,  # dedupe: cosine at which two images become near-identical candidates
    "similar_threshold": 0.90,  # dedupe --similar: cosine for bursts and near-shots
    "tag_threshold": 0.28,  # tag: cosine between an image and a tag's prompts
}

KNOWN: dict[str, dict[str, float]] = {
    "laion/CLIP-ViT-B-32-laion2B-s34B-b79K": {},
    "openai/clip-vit-base-patch32": {},
}

SETTINGS_FILE = "clipsearch.json"


def for_model(model_id: str | None) -> dict[str, float]:
    """Default thresholds for `model_id` (a Hub id or a local folder)."""
    values = dict(DEFAULTS)
    if model_id:
        values.update(KNOWN.get(model_id, {}))
        settings = os.path.join(model_id, SETTINGS_FILE)
        if os.path.isfile(settings):
            with open(settings, encoding="utf-8") as handle:
                values.update({k: float(v) for k, v in json.load(handle).get("thresholds", {}).items()})
    return values
