"""`--model` takes any CLIP-family checkpoint: here a SigLIP-shaped one built on the spot (random weights).

The tiny CLIP covers the code path in every other test; this one proves a SigLIP config (fixed
height x width preprocessing, sigmoid-trained towers, text padded to its full length) loads, indexes and
answers queries through the same code, as a multilingual SigLIP checkpoint from the Hub would.
"""

import json
import shutil

import pytest

from .conftest import TINY_MODEL


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    from transformers import AutoTokenizer, SiglipConfig, SiglipModel

    folder = tmp_path_factory.mktemp("tiny-siglip")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # any tokenizer transformers can load will do
        shutil.copy(f"{TINY_MODEL}/{name}", folder / name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = SiglipConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"image_size": 48, "patch_size": 16, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
    )
    SiglipModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "size": {"height": 48, "width": 48}, "resample": 2,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    }))
    return folder


def test_model_accepts_a_siglip_style_checkpoint(tiny_siglip, cli, small_library, tmp_path):
    db = tmp_path / "siglip.db"
    assert cli("index", small_library, "--db", db, "--model", tiny_siglip).exit_code == 0
    info = json.loads(cli("info", "--db", db, "--json").stdout)
    assert info["model"] == str(tiny_siglip) and info["dimensions"] == 32 and info["images"] == 12
    found = cli("find", "ein roter Kreis", "--db", db, "--json", "--top", "3")
    assert found.exit_code == 0 and len(json.loads(found.stdout)) == 3
    assert cli("find", "a red circle", "--db", db, "--model", TINY_MODEL).exit_code == 3, "models never mix"


def test_siglip_preprocessing_is_its_fixed_size(tiny_siglip):
    from clipsearch.models.torch_encoder import Encoder

    encoder = Encoder.load(str(tiny_siglip), "cpu")
    assert (encoder.preprocess.crop_height, encoder.preprocess.crop_width) == (48, 48)
    assert encoder.embed_texts(["a", "a much longer query text"]).shape == (2, 32)
