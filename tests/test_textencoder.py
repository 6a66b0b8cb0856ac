"""The torch-free query path: ONNX text encoder, remembered query vectors, fallbacks, light imports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from clipsearch.models import export_cache
from clipsearch.models import onnx_text as textencoder
from clipsearch.models.onnx_text import AGREEMENT_PROMPTS, OnnxTextEncoder, TextEncoderUnavailable
from clipsearch.models.query import QueryEncoder
from clipsearch.store import Store

from .conftest import TINY_MODEL

pytest.importorskip("onnxruntime")


@pytest.fixture
def exported(exported_text_encoder) -> Path:
    return exported_text_encoder


def test_export_agrees_with_the_torch_text_tower(exported, encoder):
    assert len(AGREEMENT_PROMPTS) >= 50
    reference = encoder.embed_texts(list(AGREEMENT_PROMPTS))
    fp32 = OnnxTextEncoder.load(TINY_MODEL, "fp32").embed_texts(list(AGREEMENT_PROMPTS))
    assert np.min(np.sum(fp32 * reference, axis=1)) >= 0.999
    # One at a time (no padding) gives the same vectors as a padded batch.
    single = np.stack([OnnxTextEncoder.load(TINY_MODEL, "fp32").embed_texts([p])[0] for p in AGREEMENT_PROMPTS[:8]])
    assert np.min(np.sum(single * reference[:8], axis=1)) >= 0.999

    settings = json.loads((exported / "settings.json").read_text())
    assert settings["fp32_min_cosine"] >= 0.999
    # auto takes int8 only when int8 agrees; otherwise it keeps fp32 (the tiny model's int8 does not quite).
    assert settings["auto"] == ("int8" if settings["int8_min_cosine"] >= 0.999 else "fp32")
    auto = OnnxTextEncoder.load(TINY_MODEL)
    assert auto.precision == settings["auto"]
    assert np.min(np.sum(auto.embed_texts(list(AGREEMENT_PROMPTS)) * reference, axis=1)) >= 0.999


def test_tokenizers_library_gives_the_model_tokenizers_ids(exported, encoder):
    ours = OnnxTextEncoder.load(TINY_MODEL, "fp32")._tokenizer
    for prompt in AGREEMENT_PROMPTS:
        theirs = encoder._tokenizer([prompt], truncation=True, max_length=encoder._max_text_tokens())["input_ids"][0]
        assert ours.encode(prompt).ids == list(theirs), prompt


def test_cache_is_keyed_by_the_weights(tmp_path, exported):
    copy = tmp_path / "tiny-copy"
    shutil.copytree(TINY_MODEL, copy)
    assert textencoder.export_dir(str(copy)) != exported  # another model id
    before = textencoder.export_dir(str(copy))
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # retrained weights: a new export
    os.utime(weights, ns=(1, 1))
    assert textencoder.export_dir(str(copy)) != before
    with pytest.raises(TextEncoderUnavailable):
        OnnxTextEncoder.load(str(copy))


def test_hub_models_are_found_in_the_hugging_face_cache_layout(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    repo = hub / "models--org--clip-model"
    blob = "a" * 64
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / blob).write_bytes(b"weights")
    (repo / "snapshots" / "c0ffee").mkdir(parents=True)
    (repo / "snapshots" / "c0ffee" / "model.safetensors").symlink_to(repo / "blobs" / blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert export_cache.model_folder("org/clip-model") == repo / "snapshots" / "c0ffee"
    assert textencoder.export_dir("org/clip-model") is not None
    assert export_cache.model_folder("org/not-downloaded") is None
    assert textencoder.export_dir("org/not-downloaded") is None


def test_query_vectors_are_remembered_and_need_no_model(store, exported, monkeypatch):
    model_id = store.model()[0]
    first = QueryEncoder(store, model_id).embed_texts(["a red circle", "a blue star"])
    assert store.remembered_queries(model_id, "auto", ["a red circle"]).keys() == {"a red circle"}

    def no_model(self):
        raise AssertionError("a remembered query must not load a model")

    monkeypatch.setattr(QueryEncoder, "text_encoder", no_model)
    monkeypatch.setattr(QueryEncoder, "image_encoder", no_model)
    again = QueryEncoder(store, model_id).embed_texts(["a blue star", "a red circle"])
    assert np.allclose(again, first[::-1], atol=1e-6)


def test_a_new_text_starts_loading_the_encoder_in_the_background_and_a_remembered_one_does_not(store, exported):
    model_id = store.model()[0]
    QueryEncoder(store, model_id).embed_texts(["a red circle"])
    remembered = QueryEncoder(store, model_id)
    remembered.start_loading(["a red circle"])
    assert not [t for t in threading.enumerate() if t.name == "clipsearch-text-encoder"]
    assert remembered.models.text is None

    new = QueryEncoder(store, model_id)
    new.start_loading(["a red circle", "a yellow hexagon"])
    for thread in threading.enumerate():
        if thread.name == "clipsearch-text-encoder":
            thread.join(timeout=60)
    assert isinstance(new.models.text, OnnxTextEncoder)  # loaded there: the query below reuses it
    loaded = new.models.text
    vector = new.embed_texts(["a yellow hexagon"])
    assert new.models.text is loaded
    with Store.open(store.path) as again:
        assert np.allclose(vector, QueryEncoder(again, model_id).embed_texts(["a yellow hexagon"]), atol=1e-6)


def test_remembered_queries_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr("clipsearch.store.queries.REMEMBERED_QUERIES", 5)
    with Store.open(tmp_path / "index.db") as store:
        for n in range(12):
            store.remember_queries("m", "auto", {f"query {n}": np.ones(4, np.float32)})
        assert store.db["query_vectors"].count == 5


def test_a_failed_export_falls_back_to_torch_once_and_is_not_retried(store, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cold-cache"))
    calls = []

    def broken_export(encoder, target):
        calls.append(target)
        raise RuntimeError("this model's graph cannot be exported")

    monkeypatch.setattr(textencoder, "_export_graph", broken_export)
    notices: list[str] = []
    model_id = store.model()[0]
    vectors = QueryEncoder(store, model_id, notify=notices.append).embed_texts(["a green square"])
    assert vectors.shape == (1, 64) and abs(float(np.linalg.norm(vectors[0])) - 1) < 1e-4
    assert notices[0].startswith("Preparing the text encoder")
    assert "using torch" in notices[-1] and "cannot be exported" in notices[-1]
    notices.clear()
    QueryEncoder(store, model_id, notify=notices.append).embed_texts(["a purple triangle"])
    assert len(calls) == 1, "a failed export is remembered, not retried on every query"
    assert len(notices) == 1 and "to try again" in notices[0]


def _run_cli(args: list[str], env: dict, block: str = "") -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter; report which heavy modules it imported."""
    script = textwrap.dedent(f"""
        import sys
        {block}
        from clipsearch.cli import app
        try:
            app({args!r}, standalone_mode=False)
        except SystemExit:
            pass
        heavy = sorted(m for m in ("torch", "transformers", "onnxruntime") if m in sys.modules)
        print("IMPORTED=" + ",".join(heavy), file=sys.stderr)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def query_env(store, exported, shared_cache_home) -> dict:
    return {**os.environ, "XDG_CACHE_HOME": str(shared_cache_home), "HF_HUB_OFFLINE": "1",
            "CLIPSEARCH_DB": str(store.path), "COLUMNS": "300"}


def test_text_find_imports_neither_torch_nor_transformers(query_env, scene_library):
    # A text no other test asks (the shared scene index remembers the vectors of texts asked before).
    result = _run_cli(["find", "a red circle on its own", "--top", "3", "--json"], query_env)
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert len(hits) == 3 and "red-circle" in hits[0]["path"]
    assert "IMPORTED=onnxruntime\n" in result.stderr


def test_database_only_commands_import_no_model_library(query_env, scene_library):
    indexed = str(scene_library[0][0])
    for args in (["similar", indexed, "--top", "2"], ["info"], ["tags"], ["find", "--tag", "red"]):
        result = _run_cli(args, query_env)
        assert "IMPORTED=\n" in result.stderr, (args, result.stderr)


def test_without_onnxruntime_a_query_still_works_with_a_notice(query_env):
    block = "sys.modules['onnxruntime'] = None  # as if it were not installed"
    result = _run_cli(["find", "a blue square", "--top", "2", "--json"], query_env, block)
    assert len(json.loads(result.stdout)) == 2
    notices = [line for line in result.stderr.splitlines() if "Fast text encoder" in line]
    assert notices == ["Fast text encoder not available (onnxruntime is not installed); using torch, which is "
                       "slower."]


def test_the_optimised_copy_keeps_its_weights_beside_it_and_gives_the_same_vectors(exported):
    fresh = OnnxTextEncoder.open(exported, TINY_MODEL, "fp32", keep_optimised=False).embed_texts(["a red circle"])
    first = OnnxTextEncoder.load(TINY_MODEL, "fp32").embed_texts(["a red circle"])  # writes the copy if missing
    again = OnnxTextEncoder.load(TINY_MODEL, "fp32").embed_texts(["a red circle"])  # memory-maps its weights
    copies = list(exported.glob("text.fp32.ort*.onnx"))
    assert len(copies) == 1 and list(exported.glob(f"{copies[0].name}.*.weights"))
    assert copies[0].stat().st_size < 100_000  # the graph alone: the weights are in the file beside it
    assert np.allclose(fresh, first, atol=1e-6) and np.allclose(first, again, atol=1e-6)


def test_onnx_sessions_write_nothing_under_the_home_folder(tmp_path, exported):
    """onnxruntime's telemetry is off: a text and an image session run with a fresh HOME leave it empty, where a
    bare `import onnxruntime` writes ~/.cache/Microsoft/DeveloperTools/.onnxruntime/deviceid and a database."""
    from clipsearch.models import onnx_image as imageencoder

    # This process may have set ORT_DISABLE_TELEMETRY; and onnxruntime writes nothing when $CI is set (as in CI),
    # which would make the control run below prove nothing.
    env = {name: value for name, value in os.environ.items()
           if name not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY", "CI")}
    bare, ours = tmp_path / "bare-home", tmp_path / "home"
    bare.mkdir()
    ours.mkdir()
    subprocess.run([sys.executable, "-c", "import onnxruntime"], env={**env, "HOME": str(bare)}, check=True)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from clipsearch.models.onnx_image import OnnxImageEncoder, probe_pixels
        from clipsearch.models.onnx_text import OnnxTextEncoder
        OnnxTextEncoder.open(Path({str(exported)!r}), {TINY_MODEL!r}).embed_texts(["a dog"])
        image = OnnxImageEncoder.open(Path({str(imageencoder.export_dir(TINY_MODEL))!r}), {TINY_MODEL!r})
        image.embed_pixels(probe_pixels(image.preprocess, 2))
    """)
    subprocess.run([sys.executable, "-c", script], env={**env, "HOME": str(ours)}, check=True)
    assert [p.name for p in bare.rglob("*") if p.is_file()], "onnxruntime no longer writes anything: the test is moot"
    assert list(ours.rglob("*")) == []
