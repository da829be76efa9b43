"""Built-in encoders load offline and equal their sources (real pretrained weights)."""

import json
import time

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from opdf.models import base_model, find_layer_list, load_model, student_from_teacher
from opdf.models.builtin import minilm_l6_dir
from opdf.models.convert_onnx import find_onnx, onnx_hidden_states

pytestmark = pytest.mark.slow

TEXTS = [
    "a gripping, beautifully shot film with one weak act.",
    "Dull.",
    "The over-parameterized student merges back to the original size after training.",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh OPDF_CACHE for this module, so the L3 conversion really runs here once."""
    root = tmp_path_factory.mktemp("opdf-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPDF_CACHE", str(root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield root


def _encode(tok):
    return tok(TEXTS, padding=True, return_tensors="pt")


def test_minilm_l6_equals_the_package_model(cache):
    model, tok = load_model("minilm-l6", num_labels=2)
    assert tok.vocab_size == 30522
    ref = AutoModel.from_pretrained(str(minilm_l6_dir()), local_files_only=True).eval()
    enc = _encode(AutoTokenizer.from_pretrained(str(minilm_l6_dir()), local_files_only=True))
    assert torch.equal(enc["input_ids"], _encode(tok)["input_ids"])
    encoder = base_model(model).eval()
    with torch.no_grad():
        ours = encoder(**enc).last_hidden_state
        theirs = ref(**enc).last_hidden_state
    assert torch.equal(ours, theirs)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    n = sum(p.numel() for p in encoder.parameters())
    assert n == 22_713_216  # encoder with pooler; the 2-label head adds 770
    assert not list(cache.iterdir())  # used from the package folder: nothing prepared


def test_minilm_l3_conversion_matches_onnxruntime_and_is_cached(cache):
    t0 = time.perf_counter()
    model, tok = load_model("minilm-l3", num_labels=2)
    first = time.perf_counter() - t0
    folder = cache / "models" / "minilm-l3"
    info = json.loads((folder / "opdf-prepared.json").read_text())
    assert info["verified"] and info["max_abs_diff_vs_onnxruntime"] < 1e-5
    assert [p.name for p in (cache / "models").iterdir()] == ["minilm-l3"]  # no temp dirs left

    # the converted encoder vs onnxruntime on the ONNX file, with padding in the batch
    enc = _encode(tok)
    with torch.no_grad():
        ours = base_model(model).eval()(**enc).last_hidden_state.numpy()
    ref = onnx_hidden_states(find_onnx(), enc["input_ids"].numpy(), enc["attention_mask"].numpy())
    assert ours.shape == ref.shape == (3, enc["input_ids"].shape[1], 384)
    assert np.abs(ours - ref).max() < 1e-5
    assert model.config.num_hidden_layers == 3
    # 17,241,984 converted + a new 384x384 pooler (the ONNX export has none)
    assert sum(p.numel() for p in base_model(model).parameters()) == 17_389_824

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    again, _ = load_model("minilm-l3", num_labels=2)
    assert time.perf_counter() - t0 < first  # reused from the cache, not converted again
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_tiny_bert_is_deterministic(cache, tmp_path, monkeypatch):
    a, tok = load_model("tiny-bert", num_labels=2, seed=0)
    monkeypatch.setenv("OPDF_CACHE", str(tmp_path))  # prepared again elsewhere: same weights
    b, _ = load_model("tiny-bert", num_labels=2, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    cfg = a.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 4, 4)
    assert tok.vocab_size == 30522


def test_student_of_minilm_l6_reproduces_the_teacher_bottom_layers(cache):
    teacher, tok = load_model("minilm-l6", num_labels=2, seed=0)
    teacher.eval()
    student = student_from_teacher(teacher)  # 6 -> 3
    assert len(find_layer_list(student)[1]) == 3
    enc = _encode(tok)
    with torch.no_grad():
        t = teacher(**enc, output_hidden_states=True).hidden_states
        s = student(**enc, output_hidden_states=True).hidden_states
    assert len(s) == 4
    for k in range(4):
        assert torch.allclose(s[k], t[k], atol=1e-6)
