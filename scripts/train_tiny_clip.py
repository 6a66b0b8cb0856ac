"""Train the tiny CLIP model that the tests and `make demo` use, and save it in models/tiny-clip.

No pretrained weights can be downloaded where clipsearch is developed, so the
project makes its own: a transformers `CLIPModel` of a few hundred thousand
parameters, trained contrastively on synthetic scenes (a coloured shape on a
background, see clipsearch/scenes.py) on the CPU in a few minutes. It is saved
with `save_pretrained` (model, CLIP tokenizer, image-processor config), so
clipsearch loads it through exactly the code path of a Hugging Face model.

    python scripts/train_tiny_clip.py [--out models/tiny-clip] [--steps 5000]
    python scripts/train_tiny_clip.py --evaluate      # measure the shipped model only

Prints text-to-image precision@1 and @5 for "a <colour> <shape>" queries,
image-to-label accuracy and image-to-image (similar) accuracy on 600
held-out scenes, JPEG-encoded and decoded through clipsearch's own path.
"""

from __future__ import annotations

import argparse
import functools
import io
import itertools
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # clipsearch_dev: not installed

from clipsearch.indexing import images
from clipsearch_dev import scenes

SEED = 1234
IMAGE_SIZE = 64
PREP = images.Preprocess(shortest_edge=IMAGE_SIZE, crop_height=IMAGE_SIZE, crop_width=IMAGE_SIZE)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SIZES = [(96, 96), (128, 96), (96, 128), (160, 120), (120, 160), (192, 128), (224, 168)]


def all_captions() -> list[str]:
    """Every caption the templates can produce: the tokenizer's training corpus."""
    rng_free = []
    for c, s, b, size in itertools.product(scenes.COLOURS, scenes.SHAPES, scenes.BACKGROUNDS, ("big", "small")):
        for t in scenes._TEMPLATES + scenes._SINGLE_ATTRIBUTE_TEMPLATES:
            rng_free.append(t.format(c=c, s=s, b=b, size=size))
    return rng_free


def build_tokenizer() -> CLIPTokenizer:
    """A byte-level BPE in CLIP's format: every byte is a token, caption words are whole tokens."""
    template = CLIPTokenizer()  # borrow CLIP's normaliser and pre-tokeniser
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    bpe.normalizer = template.backend_tokenizer.normalizer
    bpe.pre_tokenizer = template.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>", show_progress=False,
    )
    bpe.train_from_iterator(all_captions() * 3, trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [a + "</w>" for a in alphabet]
    tokens += [t for t in sorted(trained["vocab"], key=trained["vocab"].get) if t not in set(tokens)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # last, as in CLIP
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=24)


ATTRIBUTE_KINDS = (
    ("colour", tuple(scenes.COLOURS)),
    ("shape", scenes.SHAPES),
    ("background", tuple(scenes.BACKGROUNDS)),
    ("size", ("big", "small")),
)


@functools.cache
def caption_code(text: str) -> tuple[int, ...]:
    """What a caption claims, one index per attribute kind; -1 where it says nothing."""
    words = set(text.split())
    return tuple(next((i for i, name in enumerate(names) if name in words), -1) for _, names in ATTRIBUTE_KINDS)


def scene_code(scene: scenes.Scene) -> tuple[int, ...]:
    values = (scene.colour, scene.shape, scene.background, scene.size_word)
    return tuple(names.index(v) for (_, names), v in zip(ATTRIBUTE_KINDS, values))


def caption_truth(batch_scenes: list[scenes.Scene], texts: list[str]) -> torch.Tensor:
    """truth[i, j] = 1 when caption j is true of image i."""
    images_ = np.array([scene_code(s) for s in batch_scenes])[:, None, :]
    claims = np.array([caption_code(t) for t in texts])[None, :, :]
    return torch.from_numpy(((claims == -1) | (claims == images_)).all(-1).astype(np.float32))


def render_dataset(count: int, seed: int) -> tuple[np.ndarray, list[scenes.Scene]]:
    """Scenes at assorted sizes, JPEG-encoded and decoded through clipsearch's own path."""
    rng = random.Random(seed)
    pixels = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    drawn = []
    for i in range(count):
        scene = scenes.random_scene(rng, *rng.choice(SIZES))
        buffer = io.BytesIO()
        scenes.draw(scene).save(buffer, format="JPEG", quality=rng.randint(70, 95))
        pixels[i] = images.decode(buffer.getvalue(), PREP).pixels
        drawn.append(scene)
    return pixels, drawn


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cheap photometric jitter: brightness and contrast, per image."""
    x = pixels.astype(np.float32)
    gain = rng.uniform(0.85, 1.15, size=(len(x), 1, 1, 1))
    bias = rng.uniform(-15, 15, size=(len(x), 1, 1, 1))
    return np.clip(x * gain + bias, 0, 255).astype(np.uint8)


def make_model(tokenizer: CLIPTokenizer) -> CLIPModel:
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=24,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=IMAGE_SIZE, patch_size=16, hidden_size=128, intermediate_size=256,
            num_hidden_layers=4, num_attention_heads=4,
        ),
        projection_dim=64,
    )
    return CLIPModel(config)


def embed_texts(model: CLIPModel, tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    out = model.get_text_features(**batch).pooler_output
    return torch.nn.functional.normalize(out, dim=-1)


def embed_pixels(model: CLIPModel, pixels: np.ndarray) -> torch.Tensor:
    out = model.get_image_features(pixel_values=to_tensor(pixels)).pooler_output
    return torch.nn.functional.normalize(out, dim=-1)


@torch.no_grad()
def evaluate(model: CLIPModel, tokenizer: CLIPTokenizer, pixels: np.ndarray,
             drawn: list[scenes.Scene]) -> dict[str, float]:
    """Text-to-image precision@1 for "a <colour> <shape>" queries, over a held-out gallery."""
    model.eval()
    image_vectors = torch.cat([embed_pixels(model, pixels[i:i + 256]) for i in range(0, len(pixels), 256)])
    labels = [s.label for s in drawn]
    present = sorted(set(labels))
    text_vectors = embed_texts(model, tokenizer, [f"a {label}" for label in present])
    top = (text_vectors @ image_vectors.T).topk(5, dim=1).indices
    p_at_1 = sum(labels[top[q, 0]] == label for q, label in enumerate(present)) / len(present)
    p_at_5 = sum(sum(labels[i] == label for i in top[q]) / 5 for q, label in enumerate(present)) / len(present)
    # Image-to-label accuracy: does each image's best caption name its colour and shape?
    all_labels = [f"{c} {s}" for c, s in itertools.product(scenes.COLOURS, scenes.SHAPES)]
    label_vectors = embed_texts(model, tokenizer, [f"a {label}" for label in all_labels])
    best = (image_vectors @ label_vectors.T).argmax(dim=1)
    image_accuracy = sum(all_labels[b] == labels[i] for i, b in enumerate(best)) / len(labels)
    # Image-to-image: is each image's nearest other image the same coloured shape? (`clipsearch similar`)
    neighbours = (image_vectors @ image_vectors.T).fill_diagonal_(-2).argmax(dim=1)
    similar_accuracy = sum(labels[n] == labels[i] for i, n in enumerate(neighbours)) / len(labels)
    model.train()
    return {"text_to_image_p@1": p_at_1, "text_to_image_p@5": p_at_5, "image_to_label_acc": image_accuracy,
            "similar_top1_acc": similar_accuracy}


def train(steps: int, batch_size: int, train_count: int, out: Path) -> dict[str, float]:
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    np_rng = np.random.default_rng(SEED)
    started = time.perf_counter()
    tokenizer = build_tokenizer()
    train_pixels, train_scenes = render_dataset(train_count, seed=SEED)
    test_pixels, test_scenes = render_dataset(600, seed=SEED + 1)
    print(f"rendered {train_count} training and 600 held-out scenes in {time.perf_counter() - started:.0f}s")

    model = make_model(tokenizer)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(1, steps + 1):
        index = np_rng.choice(train_count, size=batch_size, replace=False)
        batch_scenes = [train_scenes[i] for i in index]
        texts = [scenes.caption(s, rng) for s in batch_scenes]
        image_vectors = embed_pixels(model, augment(train_pixels[index], np_rng))
        text_vectors = embed_texts(model, tokenizer, texts)
        # Several captions in a batch can be true of one image ("a red circle" for
        # every red circle): all of them are positives, not just the diagonal.
        truth = caption_truth(batch_scenes, texts)
        logits = model.logit_scale.exp().clamp(max=100) * image_vectors @ text_vectors.T
        loss_images = -(truth / truth.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
        loss_texts = -(truth / truth.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
        # Images of the same coloured shape should also be near each other, so that
        # `clipsearch similar` finds the same concept (real CLIP gets this from scale).
        same = torch.from_numpy(np.array([[a.label == b.label for b in batch_scenes] for a in batch_scenes]))
        same.fill_diagonal_(False)
        image_logits = (image_vectors @ image_vectors.T * 20).masked_fill(torch.eye(len(index), dtype=torch.bool), -1e4)
        has_pair = same.any(1)
        loss_pairs = -((same.float() / same.sum(1, keepdim=True).clamp(min=1)) * image_logits.log_softmax(1)).sum(1)
        loss_pairs = loss_pairs[has_pair].mean()
        loss = (loss_images + loss_texts) / 2 + 0.5 * loss_pairs
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 500 == 0 or step == steps:
            metrics = evaluate(model, tokenizer, test_pixels, test_scenes)
            print(f"step {step:5d}  loss {loss.item():.3f}  " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items())
                  + f"  ({time.perf_counter() - started:.0f}s)", flush=True)

    metrics = evaluate(model, tokenizer, test_pixels, test_scenes)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(MEAN), image_std=list(STD), resample=Image.Resampling.BICUBIC,
    ).save_pretrained(out)
    parameters = sum(p.numel() for p in model.parameters())
    size_kb = sum(f.stat().st_size for f in out.iterdir()) / 1024
    print(f"saved {out}: {parameters:,} parameters, {size_kb:.0f} KiB on disk, "
          f"trained in {time.perf_counter() - started:.0f}s")
    print("held-out: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models" / "tiny-clip")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-count", type=int, default=16000)
    parser.add_argument("--evaluate", action="store_true", help="Only measure the saved model in --out.")
    args = parser.parse_args()
    if args.evaluate:
        from transformers import AutoTokenizer

        model = CLIPModel.from_pretrained(args.out)
        tokenizer = AutoTokenizer.from_pretrained(args.out)
        test_pixels, test_scenes = render_dataset(600, seed=SEED + 1)
        metrics = evaluate(model, tokenizer, test_pixels, test_scenes)
        print(f"{args.out}: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return
    train(args.steps, args.batch_size, args.train_count, args.out)


if __name__ == "__main__":
    main()
