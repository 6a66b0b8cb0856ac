"""Index precision and the torch-free image path: ONNX export, int8/bf16 agreement, the measured choice of path
(on made-up processors, never the host's flags), first-run preparation in child processes, fallbacks, fingerprints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch import search
from clipsearch.indexing import fingerprint, images
from clipsearch.indexing.job import IndexOptions, index_folders
from clipsearch.models import cpu, export_cache, prepare
from clipsearch.models import onnx_image as imageencoder
from clipsearch.models.onnx_image import OnnxImageEncoder, load_image_encoder, probe_pixels
from clipsearch.models.torch_encoder import Encoder, ModelError
from clipsearch.options import ImagePrecision
from clipsearch.store import Store

from .conftest import REPO, TINY_MODEL

pytest.importorskip("onnxruntime")

AVX2 = frozenset({"sse4_2", "avx2", "fma"})
BF16 = AVX2 | {"avx512f", "avx512_bf16", "amx_bf16"}
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
    """Each photo in the tiny model's top-5 at `precision` is one that fp32 ranks there too, or ties with fp32's
    fifth within 0.005 (five blue squares score alike at fp32, 0.4765 and 0.4762 fifth and sixth, so either may
    take fifth place)."""
    folder = scene_library[0][0].parent
    tops = {}
    for name in ("fp32", precision):
        with Store.open(tmp_path / f"{name}.db") as store:
            index_folders([folder], store, TINY_MODEL, "cpu", IndexOptions(precision=ImagePrecision(name)))
            tops[name] = [{hit.path: hit.score for hit in search.find(query, store, lambda: encoder, top=20)}
                          for query in QUERIES]
    for query, at_fp32, at_precision in zip(QUERIES, tops["fp32"], tops[precision]):
        fifth = sorted(at_fp32.values(), reverse=True)[4]
        for path in list(at_precision)[:5]:
            assert at_fp32.get(path, -1.0) >= fifth - 0.005, (query, path)


def test_the_processor_flags_are_read_or_injected(monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_CPU_FLAGS", "avx2, avx512_bf16 fma")
    assert cpu.cpu_features() == {"avx2", "avx512_bf16", "fma"} and cpu.native_bf16(cpu.cpu_features())
    monkeypatch.setenv("CLIPSEARCH_CPU_FLAGS", "")
    assert cpu.cpu_features() == frozenset() and not cpu.native_bf16(cpu.cpu_features())
    monkeypatch.delenv("CLIPSEARCH_CPU_FLAGS")
    assert isinstance(cpu.cpu_features(), frozenset)  # this host's, whatever they are: no test depends on them


@pytest.mark.parametrize("features", [AVX2, BF16], ids=["avx2", "bf16-hardware"])
def test_the_fastest_measured_path_wins_and_bf16_only_on_bf16_hardware(features):
    assert cpu.fastest({"int8": 41.0, "fp32": 30.0, "bf16": 12.0}, features) == "int8"
    assert cpu.fastest({"fp32": 30.0, "int8": 22.0}, features) == "fp32"  # int8 is not faster everywhere
    bf16_fastest = {"int8": 20.0, "fp32": 15.0, "bf16": 60.0}
    assert cpu.fastest(bf16_fastest, features) == ("bf16" if features == BF16 else "int8")
    assert cpu.fastest(bf16_fastest, features, graphs_only=True) == "int8"
    assert cpu.fastest({}, features) == "fp32"


def prepared_copy(tmp_path, monkeypatch, **changes) -> Path:
    """The tiny model's exported image tower in a cache of its own, its settings changed by `changes`
    (None removes a key, as in an export made before speeds were recorded)."""
    exported = imageencoder.export_dir(TINY_MODEL)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = imageencoder.export_dir(TINY_MODEL)
    shutil.copytree(exported, folder)
    settings = json.loads((folder / "settings.json").read_text())
    for key, value in changes.items():
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
    (folder / "settings.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.parametrize("features", [AVX2, BF16], ids=["avx2", "bf16-hardware"])
def test_auto_takes_the_recorded_fastest_path(tmp_path, monkeypatch, features):
    """What `auto` loads follows the record; bf16 torch only where it was measured fastest and the processor has
    bf16 hardware. (Before: a processor with bf16 flags got torch bf16 wherever int8 disagreed, unmeasured.)"""
    graph = json.loads((imageencoder.export_dir(TINY_MODEL) / "settings.json").read_text())["auto"]
    prepared_copy(tmp_path, monkeypatch, speed={graph: 500.0, "bf16": 900.0}, fastest="bf16")
    notices: list[str] = []
    chosen = load_image_encoder(TINY_MODEL, "cpu", "auto", notices.append, features=features)
    if features == BF16:
        assert isinstance(chosen, Encoder) and chosen.precision == "bf16"
        assert notices == [f"Image encoder: torch bf16 (measured fastest, images/s: bf16 900, {graph} 500)."]
    else:  # a record made on another processor: the fastest graph
        assert isinstance(chosen, OnnxImageEncoder) and chosen.precision == graph
        assert notices == [f"Image encoder: onnx {graph} (measured fastest, images/s: bf16 900, {graph} 500)."]
    assert imageencoder.describe(TINY_MODEL, features=features).startswith(
        "torch bf16 (measured" if features == BF16 else f"onnx {graph} (measured")

    prepared_copy(tmp_path / "2", monkeypatch, speed={graph: 500.0, "bf16": 100.0}, fastest=graph)
    assert isinstance(load_image_encoder(TINY_MODEL, "cpu", "auto", features=features), OnnxImageEncoder)
    explicit: list[str] = []
    fp32 = load_image_encoder(TINY_MODEL, "cpu", "fp32", explicit.append, features=features)
    assert isinstance(fp32, OnnxImageEncoder) and explicit == ["Image encoder: onnx fp32 (--precision fp32)."]


@pytest.mark.parametrize("features", [AVX2, BF16], ids=["avx2", "bf16-hardware"])
def test_an_export_without_a_speed_record_keeps_its_graph_and_never_guesses_bf16(tmp_path, monkeypatch, features):
    """settings.json written before speeds were measured: `auto` opens its graph, in this process, without torch."""
    folder = prepared_copy(tmp_path, monkeypatch, speed=None, fastest=None)
    graph = json.loads((folder / "settings.json").read_text())["auto"]
    script = textwrap.dedent(f"""
        import sys
        from clipsearch.models.onnx_image import load_image_encoder, probe_pixels
        notes = []
        flags = frozenset({sorted(features)!r})
        chosen = load_image_encoder({TINY_MODEL!r}, "cpu", "auto", notes.append, features=flags)
        chosen.embed_pixels(probe_pixels(chosen.preprocess, 2))
        print(type(chosen).__name__, chosen.precision, "torch" in sys.modules, notes)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split(maxsplit=3)[:3] == ["OnnxImageEncoder", graph, "False"]
    assert "speed not measured" in out.stdout


def test_without_onnxruntime_index_falls_back_to_torch_fp32_even_on_bf16_hardware(monkeypatch):
    notices: list[str] = []
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    fallback = load_image_encoder(TINY_MODEL, "cpu", "auto", notices.append, features=BF16)
    assert isinstance(fallback, Encoder) and fallback.precision == "fp32"
    assert notices == ["Using torch for the image encoder (onnxruntime is not installed)."]
    assert isinstance(load_image_encoder(TINY_MODEL, "cpu", "bf16", features=AVX2), Encoder)


def test_the_export_times_the_paths_that_agree(tmp_path, monkeypatch, encoder):
    """On bf16 hardware (made up here, so bf16 is emulated and slow) bf16 is timed too; elsewhere it is not.
    Each agreeing graph gets a rate, and the fastest of them is recorded."""
    shared = json.loads((imageencoder.export_dir(TINY_MODEL) / "settings.json").read_text())
    agreeing = {graph for graph in ("fp32", "int8") if shared[f"{graph}_min_cosine"] >= 0.999}
    assert set(shared["speed"]) == agreeing | ({"bf16"} if "bf16" in shared["speed"] else set())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    settings = json.loads((imageencoder.export(encoder, features=BF16) / "settings.json").read_text())
    assert settings["bf16_min_cosine"] >= 0.999
    assert set(settings["speed"]) == agreeing | {"bf16"} and min(settings["speed"].values()) > 0
    assert settings["fastest"] == max(settings["speed"], key=settings["speed"].get)
    graphs = {graph: rate for graph, rate in settings["speed"].items() if graph != "bf16"}
    assert settings["auto"] == max(graphs, key=graphs.get)
    assert sorted(p.name for p in settings_folder(tmp_path).iterdir()) == [
        "image.fp32.onnx", "image.fp32.weights", "image.int8.onnx", "settings.json"]


def settings_folder(tmp_path) -> Path:
    return next((tmp_path / "cache" / "clipsearch" / "image-encoders").glob("*tiny-clip*"))


@pytest.mark.parametrize("flags", ["sse4_2 avx2", "avx2 avx512_bf16 amx_bf16"])
def test_first_index_prepares_in_child_processes_and_never_imports_torch(tmp_path, small_library, flags):
    """A fresh cache: the first run prepares both encoders in child processes, saying each step, and the index
    process imports no torch, then or on the next run, on a processor with bf16 hardware (made up) or without."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "PYTHONPATH": str(REPO), "CLIPSEARCH_CPU_FLAGS": flags}
    script = textwrap.dedent(f"""
        import sys
        from clipsearch import Library
        from clipsearch.indexing.job import Progress
        notes = []
        class Notes(Progress):
            def notice(self, message): notes.append(message)
        with Library({str(tmp_path / "index.db")!r}, model={TINY_MODEL!r}) as lib:
            report = lib.index(sys.argv[1], progress=Notes())
        print(report.encoded, "torch" in sys.modules, notes)
    """)
    first = subprocess.run([sys.executable, "-c", script, str(small_library)], env=env, capture_output=True,
                           text=True, check=True).stdout.strip().split(maxsplit=2)
    assert first[:2] == ["12", "False"]
    for step in ("image encoder (once): exporting", "image encoder (once): quantising",
                 "image encoder (once): checking and timing", "text encoder (once): exporting", "Image encoder: onnx"):
        assert step in first[2]
    assert list((tmp_path / "cache" / "clipsearch" / "text-encoders").glob("*/text.int8.onnx"))  # came along
    settings = json.loads(next((tmp_path / "cache" / "clipsearch" / "image-encoders").glob("*/settings.json"))
                          .read_text())
    assert ("bf16" in settings["speed"]) == ("avx512_bf16" in flags)
    (small_library / "new.png").write_bytes((small_library / sorted(os.listdir(small_library))[0]).read_bytes())
    Image.new("RGB", (300, 200), (200, 30, 30)).save(small_library / "red.png")
    second = subprocess.run([sys.executable, "-c", script, str(small_library)], env=env, capture_output=True,
                            text=True, check=True).stdout.strip().split(maxsplit=2)
    assert second[:2] == ["1", "False"] and "Image encoder: onnx" in second[2]


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
    from clipsearch.models.torch_encoder import ModelError

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
    from clipsearch.indexing.job import Progress

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls: list[str] = []

    def broken_export(encoder, target):
        calls.append(str(target))
        raise RuntimeError("Unsupported: an operator this exporter does not know")

    monkeypatch.setattr(imageencoder, "_export_graph", broken_export)
    monkeypatch.setattr(prepare, "run_step", prepare.step)  # the steps in this process, where the patch applies
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
    assert export_cache.failure_marker(imageencoder.export_dir(TINY_MODEL)).exists()


def test_a_failing_preparation_step_is_reported_from_its_child_process(tmp_path):
    notes: list[str] = []
    with pytest.raises(ModelError, match="does not exist or is not a complete model"):
        prepare.run_step("fetch", "image", str(tmp_path / "no-model-here"), None, notes.append)
    (tmp_path / "work").mkdir()
    with pytest.raises(export_cache.ExportFailed, match=r"FileNotFoundError: .*settings\.json"):
        prepare.run_step("check", "image", TINY_MODEL, tmp_path / "work", notes.append)
    assert notes == ["Preparing the image encoder (once): checking and timing..."]


@pytest.mark.parametrize("ending", ["echo 'Traceback (most recent call last):' >&2; echo KeyboardInterrupt >&2; exit 1",
                                    "kill -INT $$"])
def test_ctrl_c_in_a_preparation_step_interrupts_and_is_not_a_failed_export(tmp_path, monkeypatch, ending):
    """Ctrl-C reaches the step's child too: dying of it, or exiting 1 with KeyboardInterrupt as its last words
    (as torch's exporter did in a terminal), is the person stopping the run, not an export to record as failed."""
    child = tmp_path / "python"
    child.write_text(f"#!/bin/sh\n{ending}\n")
    child.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(child))
    with pytest.raises(KeyboardInterrupt):
        prepare.run_step("torch", "image", TINY_MODEL, tmp_path, lambda note: None)


def test_info_says_which_image_encoder_index_takes(cli, small_library, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_CPU_FLAGS", "sse4_2 avx2")
    db = tmp_path / "index.db"
    assert cli("index", small_library, "--db", db, "--model", TINY_MODEL, "--quiet").exit_code == 0
    graph = json.loads((imageencoder.export_dir(TINY_MODEL) / "settings.json").read_text())["auto"]
    info = json.loads(cli("info", "--db", db, "--json").stdout)
    assert f"onnx {graph} (measured fastest, images/s: {graph} " in info["image_encoder"]
