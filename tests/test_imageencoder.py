"""Index precision and the torch-free image path: ONNX export, int8/bf16 agreement, fallbacks, fingerprints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from clipsearch import fingerprint, imageencoder, images, search, textencoder
from clipsearch.encoder import Encoder
from clipsearch.imageencoder import OnnxImageEncoder, load_image_encoder, probe_pixels
from clipsearch.indexer import IndexOptions, index_folders
from clipsearch.options import ImagePrecision
from clipsearch.store import Store

from .conftest import REPO, TINY_MODEL

pytest.importorskip("onnxruntime")

QUERIES = ["a red circle", "a blue square", "a yellow star", "a green triangle", "a purple hexagon", "a white heart"]


def scene_pixels(scene_library, encoder, count=48) -> np.ndarray:
    return np.stack([images.decode_file(path, encoder.preprocess).pixels for path, _ in scene_library[:count]])


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


def test_exported_image_tower_agrees_with_torch(encoder, scene_library):
    folder = imageencoder.export_dir(TINY_MODEL)
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["fp32_min_cosine"] >= 0.999
    assert settings["auto"] == ("int8" if settings["int8_min_cosine"] >= 0.999 else "fp32")

    pixels = scene_pixels(scene_library, encoder)  # real decoded photos, not the probes the export checked
    reference = encoder.embed_pixels(pixels)
    fp32 = OnnxImageEncoder.load(TINY_MODEL, "fp32")
    assert (fp32.dim, fp32.preprocess, fp32.device) == (encoder.dim, encoder.preprocess, "cpu")
    assert min_cosine(fp32.embed_pixels(pixels), reference) >= 0.999
    auto = OnnxImageEncoder.load(TINY_MODEL)
    assert auto.precision == settings["auto"]
    assert min_cosine(auto.embed_pixels(pixels), reference) >= 0.99
    # One image at a time gives what a batch gives.
    single = np.stack([fp32.embed_pixels(pixels[i:i + 1])[0] for i in range(4)])
    assert min_cosine(single, reference[:4]) >= 0.999


def test_bf16_autocast_agrees_with_fp32(encoder, scene_library):
    pixels = scene_pixels(scene_library, encoder)
    bf16 = Encoder.load(TINY_MODEL, "cpu", "bf16")
    assert bf16.precision == "bf16"
    assert min_cosine(bf16.embed_pixels(pixels), encoder.embed_pixels(pixels)) >= 0.999


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_each_precision_gives_the_same_top_results(tmp_path, scene_library, encoder, precision):
    """The tiny model's top-5 for each query holds the same photos at fp32 and at `precision` (in an order that may
    differ among near-equal scores: five blue squares score alike)."""
    folder = scene_library[0][0].parent
    tops = {}
    for name in ("fp32", precision):
        with Store.open(tmp_path / f"{name}.db") as store:
            index_folders([folder], store, TINY_MODEL, "cpu", IndexOptions(precision=ImagePrecision(name)))
            tops[name] = [{hit.path for hit in search.find(query, store, lambda: encoder, top=5)} for query in QUERIES]
    assert tops[precision] == tops["fp32"]


def test_cpu_index_loads_the_onnx_graph_and_falls_back_to_torch(monkeypatch):
    notices: list[str] = []
    chosen = load_image_encoder(TINY_MODEL, "cpu", "auto", notices.append)
    assert isinstance(chosen, OnnxImageEncoder) and not notices
    assert isinstance(load_image_encoder(TINY_MODEL, "cpu", "bf16"), Encoder)

    # A processor with bf16 hardware: auto takes bf16 autocast where the int8 graph disagreed with the model.
    monkeypatch.setattr(imageencoder, "native_bf16", lambda: True)
    exported_auto = json.loads((imageencoder.export_dir(TINY_MODEL) / "settings.json").read_text())["auto"]
    on_bf16_hardware = load_image_encoder(TINY_MODEL, "cpu", "auto")
    if exported_auto == "int8":
        assert isinstance(on_bf16_hardware, OnnxImageEncoder) and on_bf16_hardware.precision == "int8"
    else:
        assert isinstance(on_bf16_hardware, Encoder) and on_bf16_hardware.precision == "bf16"
    assert isinstance(load_image_encoder(TINY_MODEL, "cpu", "fp32"), OnnxImageEncoder)

    monkeypatch.setattr(imageencoder, "native_bf16", lambda: False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    fallback = load_image_encoder(TINY_MODEL, "cpu", "auto", notices.append)
    assert isinstance(fallback, Encoder) and fallback.precision in ("fp32", "bf16")
    assert notices == ["Using torch for the image encoder (onnxruntime is not installed)."]


def test_first_index_exports_once_then_runs_without_torch(tmp_path, small_library):
    """A fresh cache: the first run prepares both encoders with a notice; the next imports no torch at all."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "PYTHONPATH": str(REPO)}
    script = textwrap.dedent(f"""
        import sys
        from clipsearch import Library
        from clipsearch.indexer import Progress
        notes = []
        class Notes(Progress):
            def notice(self, message): notes.append(message)
        with Library({str(tmp_path / "index.db")!r}, model={TINY_MODEL!r}) as lib:
            report = lib.index(sys.argv[1], progress=Notes())
        print(report.encoded, "torch" in sys.modules, notes)
    """)
    first = subprocess.run([sys.executable, "-c", script, str(small_library)], env=env, capture_output=True,
                           text=True, check=True).stdout.strip().split(maxsplit=2)
    assert first[:2] == ["12", "True"] and "Preparing the image encoder" in first[2]
    assert list((tmp_path / "cache" / "clipsearch" / "text-encoders").iterdir())  # the text tower came along
    (small_library / "new.png").write_bytes((small_library / sorted(os.listdir(small_library))[0]).read_bytes())
    Image.new("RGB", (300, 200), (200, 30, 30)).save(small_library / "red.png")
    second = subprocess.run([sys.executable, "-c", script, str(small_library)], env=env, capture_output=True,
                            text=True, check=True).stdout.strip().split(maxsplit=2)
    assert second == ["1", "False", "[]"]


def test_index_precision_option(cli, small_library, tmp_path):
    db = tmp_path / "index.db"
    result = cli("index", small_library, "--db", db, "--model", TINY_MODEL, "--precision", "fp32", "--quiet")
    assert result.exit_code == 0, result.output
    assert cli("index", small_library, "--db", db, "--precision", "fp64").exit_code == 2


def test_probe_pictures_are_deterministic_and_varied():
    prep = images.Preprocess()
    first, again = probe_pixels(prep), probe_pixels(prep)
    assert first.shape == (24, 224, 224, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert len({float(p.std()) for p in first}) == 24 and first.std(axis=(1, 2, 3)).min() > 5


def test_fingerprints_match_imagehash_phash_and_are_cheap_to_reduce(tmp_path):
    scipy_fftpack = pytest.importorskip("scipy.fftpack")
    rng = np.random.default_rng(5)
    for size in [(120, 90), (504, 378), (378, 504)]:
        smooth = np.asarray(Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize(size))
        image = Image.fromarray(smooth)
        # imagehash's pHash, written out: greyscale, Lanczos to 64x64, 2-D DCT, 16x16 lowest against the median.
        grey = np.asarray(image.convert("L").resize((64, 64), Image.Resampling.LANCZOS), dtype=np.float64)
        low = scipy_fftpack.dct(scipy_fftpack.dct(grey, axis=0), axis=1)[:16, :16]
        reference = np.packbits((low > np.median(low)).flatten()).tobytes()
        phash, colour = fingerprint.fingerprints(image)
        bits = int(fingerprint.hamming(phash, reference))
        assert bits == 0 if min(size) < 256 else bits <= 8  # large pictures are box-reduced first
        assert colour > 4 * fingerprint.GREY_LIMIT
        assert fingerprint.fingerprints(image.convert("L"))[1] < fingerprint.GREY_LIMIT


def test_a_damaged_graph_is_a_clear_error_naming_the_folder(monkeypatch, tmp_path, encoder):
    from clipsearch.encoder import ModelError

    exported = imageencoder.export_dir(TINY_MODEL)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    copy = imageencoder.export_dir(TINY_MODEL)
    shutil.copytree(exported, copy)
    for graph in copy.glob("image.fp32*.onnx"):
        graph.write_bytes(b"not a graph")
    damaged = OnnxImageEncoder.load(TINY_MODEL, "fp32")  # returns at once: the session is made in the background
    with pytest.raises(ModelError, match="Delete that folder"):
        damaged.embed_pixels(probe_pixels(encoder.preprocess, 2))


def test_an_image_tower_the_exporter_cannot_handle_falls_back_to_torch_once(monkeypatch, tmp_path, small_library):
    """An exporter error never fails `index`: torch indexes, and the failure is remembered, not retried."""
    from clipsearch import Library
    from clipsearch.indexer import Progress

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls: list[str] = []

    def broken_export(encoder, target):
        calls.append(str(target))
        raise RuntimeError("Unsupported: an operator this exporter does not know")

    monkeypatch.setattr(imageencoder, "_export_graph", broken_export)
    notes: list[str] = []

    class Notes(Progress):
        def notice(self, message: str) -> None:
            notes.append(message)

    for run, db in enumerate(("first.db", "second.db")):
        with Library(tmp_path / db, model=TINY_MODEL) as library:
            assert library.index(small_library, progress=Notes()).encoded == 12
        assert "export failed: RuntimeError: Unsupported" in notes[-1] and notes[-1].startswith("Using torch")
        assert ("to try again" in notes[-1]) == (run == 1)
    assert len(calls) == 1
    assert textencoder.failure_marker(imageencoder.export_dir(TINY_MODEL)).exists()
