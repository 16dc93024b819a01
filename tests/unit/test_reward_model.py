"""build_reward_model's writer: into the folder, as save_pretrained does."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import extraction_make_model, extraction_make_tokenizer

from skebrm.extraction import EmbeddingExtractor, build_reward_model


def _pairs(n=6):
    return [
        {"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"no {i}"}
        for i in range(n)
    ]


def _backbone():
    return extraction_make_model("llama"), extraction_make_tokenizer()


def test_writes_into_the_folder_and_never_deletes_other_files(tmp_path):
    out = tmp_path / "rm"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        build_reward_model(_backbone(), _pairs(), out, max_length=32)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    build_reward_model(_backbone(), _pairs(), out, max_length=32, overwrite=True)
    assert (out / "notes.txt").read_text() == "my notes"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left
    info = json.loads((out / "skebrm_reward_model.json").read_text())
    assert "model.safetensors" in info["files"] and "notes.txt" not in info["files"]
    ext = EmbeddingExtractor(out, max_length=32).fit()
    res = ext.extract(_pairs())
    w = ext.head_layer_.weight.detach().double().numpy()[0]
    np.testing.assert_allclose(res.rewards, res.embeddings @ w, atol=1e-4)


def test_a_previous_reward_models_stale_files_are_removed(tmp_path):
    out = build_reward_model(_backbone(), _pairs(), tmp_path / "rm", max_length=32)
    # as if a previous save had written a file this one does not (another shard layout)
    info_path = out / "skebrm_reward_model.json"
    info = json.loads(info_path.read_text())
    (out / "model-00002-of-00002.safetensors").write_bytes(b"an old shard")
    info["files"]["model-00002-of-00002.safetensors"] = "0" * 64
    info_path.write_text(json.dumps(info))
    (out / "README.md").write_text("about this model")
    build_reward_model(_backbone(), _pairs(), out, max_length=32, overwrite=True)
    assert not (out / "model-00002-of-00002.safetensors").exists()
    assert (out / "README.md").read_text() == "about this model"
