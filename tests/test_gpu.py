"""The CUDA path (half precision): same answers as the CPU. Skipped where no GPU is present, as in CI."""

import numpy as np
import pytest

from clipsearch import search
from clipsearch.indexing.job import IndexOptions, index_folders
from clipsearch.models.torch_encoder import Encoder, pick_device
from clipsearch.store import Store

from .conftest import TINY_MODEL

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_is_picked_first_and_runs_in_half_precision():
    assert pick_device() == "cuda"
    encoder = Encoder.load(TINY_MODEL)
    assert encoder.device == "cuda"
    assert next(encoder._model.parameters()).dtype == torch.float16


def test_cuda_index_matches_cpu(scene_library, scene_index, tmp_path):
    gpu = Encoder.load(TINY_MODEL, "cuda")
    with Store.open(tmp_path / "gpu.db") as store:
        report = index_folders([scene_library[0][0].parent], store, encoder=gpu, options=IndexOptions(batch_size=64))
        assert report.encoded == len(scene_library)
        gpu_vectors = {p: store.vector_for_path(p) for p in store.paths()}
    with Store.open(scene_index) as store:
        cpu_vectors = {p: store.vector_for_path(p) for p in store.paths()}
    assert gpu_vectors.keys() == cpu_vectors.keys()
    agreement = np.array([gpu_vectors[p] @ cpu_vectors[p] for p in cpu_vectors])
    assert agreement.min() > 0.99, f"fp16 on GPU vs fp32 on CPU: worst cosine {agreement.min():.4f}"

    with Store.open(tmp_path / "gpu.db") as store:
        gpu_hits = search.find("a red circle", store, lambda: gpu, top=3)
    text = gpu.embed_texts(["a red circle"])
    assert np.isfinite(text).all()
    truth = {str(p): (s.colour, s.shape) for p, s in scene_library}
    assert truth[gpu_hits[0].path] == ("red", "circle")
