"""DBKD: decision-based KD (Zhou, Yang, Li, Liu, ACL 2023, arXiv 2306.08909).

The teacher is a black box that returns only its **top-1 decision**. Before training, each
training example is perturbed into ``N = n_copies`` versions (``N - 1`` EDA perturbations and the
original, :mod:`opdf.data.eda`) and the teacher's decisions on them are counted: ``p = c / N``.
Under the paper's noise model the teacher's logits are ``z ~ N(mu, noise_scale^2 I)``, so class
``i`` wins with probability ``P_i(mu) = P(z_i > z_j for all j != i)``; the pseudo-logits are the
``mu`` with ``P(mu) = p``, centred. The student trains on

    L = ce_alpha * CE(y, s) + kd_alpha * T^2 * KL(softmax(sigma * mu / T) || softmax(s / T))

(``KLDivLoss(reduction="batchmean")``, ``--kl_kd``), with the official defaults ``kd_alpha = 0.7``,
``T = 1``, ``sigma = 1``, ``ce_alpha = 1``.

How ``p -> mu`` is solved (``utils/decision2prob.py`` of THUNLP-MT/DBKD-PLM):

* 2 classes: ``P_0 = Phi((mu_0 - mu_1) / (sqrt(2) noise_scale))``, so the gap is the closed form
  ``sqrt(2) noise_scale Phi^-1(p_0)`` (6/4 -> 0.358, 9/1 -> 1.812 for N = 10).
* More classes: ``P_i(mu) = E_t[prod_{j != i} Phi(t + (mu_i - mu_j) / noise_scale)]``, ``t ~
  N(0, 1)``, a one-dimensional integral computed by Gauss-Hermite quadrature (exact to rounding;
  the official code nests ``scipy.integrate.quad``, up to 4 classes), solved by the official
  fixed-point iteration ``mu <- mu + (p - P(mu))`` from ``mu = p``, at most ``solver_rounds`` = 20
  rounds or until ``sum |change| <= solver_tol`` = 1e-3.
* A class with no vote (``p_i = 0``, e.g. a unanimous 10/0) has no finite solution; like the
  official code, the value after the truncated iteration is used (10/0 -> gap 3.10 for 2 classes).

The teacher's decisions are computed once per (teacher weights, tokenizer, training texts,
``max_length``, perturbation settings) and cached in ``<opdf cache>/dbkd/<key>.pt`` (``OPDF_CACHE``,
default ``~/.cache/opdf``): a second run, or a resumed one, only reads them.

**The student's start.** The teacher is a black box that answers with decisions only, so the
student may not read its weights: the official student is a pretrained encoder with a new head
(``bert-base-uncased`` cut to 4 layers, ``BertForSequenceClassification.from_pretrained``).
Here the default is ``student.source: pretrained-teacher`` with ``student.head: new`` (the
config's layers of ``teacher.model`` before its fine-tune: the same model family, as there), or
``student.source: model`` (another pretrained encoder); a config whose student would copy the
fine-tuned teacher (``finetuned-teacher``, or a ``student.model`` that is the teacher's own folder)
is refused. Results before this rule (``benchmarks/results/rt-polarity-methods``, DBKD rows)
started from the fine-tuned teacher's layers and head: a head start the method cannot have.

**Deviation (offline):** EDA's random insertion uses WordNet synonyms, which cannot be installed
here; ``insert_words`` picks a stand-in (a copy of a word of the same sentence, default, or a word
of the training texts), see :mod:`opdf.data.eda`. Synonym replacement is off as in the official
script. Every copy, the original included, is EDA-cleaned (lower case, letters only) as the
official code queries it; ``clean: false`` keeps the raw text. DBKD is for classification only.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import norm

from opdf.choices import at_least, check_fields, choice, each_of, positive
from opdf.data import PaddingCollator, TextSplit, TokenizedSplit
from opdf.data.eda import INSERT_WORDS, OPERATIONS, perturbed_copies
from opdf.distill.base import Distiller, model_inputs
from opdf.distill.kd import kd_loss
from opdf.distill.registry import register_method
from opdf.distill.teacher_cache import digest_tensors
from opdf.errors import ConfigError, OpdfError
from opdf.progress import progress_bar
from opdf.storage import atomic_write_bytes, atomic_write_text, cache_dir

QUADRATURE_NODES = 64  # Gauss-Hermite nodes: P(mu) to ~1e-16 for any gap (tested against quad)
CACHE_VERSION = 1


# ----------------------------------------------------------------------- decisions -> logits


def win_probabilities(
    mu: np.ndarray, noise_scale: float = 1.0, *, quadrature: bool = False
) -> np.ndarray:
    """``P_i(mu)``: the probability that class ``i`` has the largest of logits
    ``z ~ N(mu, noise_scale^2 I)``, for each row of ``mu`` (shape ``(M, K)``). Two classes use the
    closed form unless ``quadrature=True``."""
    mu = np.atleast_2d(np.asarray(mu, dtype=np.float64))
    k = mu.shape[1]
    if k == 2 and not quadrature:
        p0 = norm.cdf((mu[:, 0] - mu[:, 1]) / (math.sqrt(2) * noise_scale))
        return np.stack([p0, 1.0 - p0], axis=1)
    t, w = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
    w = w / math.sqrt(2 * math.pi)
    gaps = (mu[:, :, None] - mu[:, None, :]) / noise_scale  # (M, K, K): mu_i - mu_j
    cdf = norm.cdf(t + gaps[..., None])  # (M, K, K, nodes)
    idx = np.arange(k)
    cdf[:, idx, idx, :] = 1.0  # j == i is not a competitor
    return (cdf.prod(axis=2) * w).sum(axis=-1)


def binary_gap(p0: np.ndarray, noise_scale: float = 1.0) -> np.ndarray:
    """The 2-class closed form: ``mu_0 - mu_1 = sqrt(2) noise_scale Phi^-1(p_0)``."""
    return math.sqrt(2) * noise_scale * norm.ppf(np.asarray(p0, dtype=np.float64))


def solve_pseudo_logits(
    p: np.ndarray,
    noise_scale: float = 1.0,
    *,
    rounds: int = 20,
    tol: float = 1e-3,
    quadrature: bool = False,
) -> np.ndarray:
    """The official fixed-point iteration ``mu <- mu + (p - P(mu))`` from ``mu = p``, per row,
    for at most ``rounds`` rounds or until ``sum |change| <= tol`` (not centred: ``sum(mu) =
    sum(p) = 1`` throughout)."""
    p = np.atleast_2d(np.asarray(p, dtype=np.float64))
    mu = p.copy()
    active = np.arange(len(p))
    for _ in range(rounds):
        if not len(active):
            break
        new = mu[active] + p[active] - win_probabilities(mu[active], noise_scale,
                                                         quadrature=quadrature)  # fmt: skip
        change = np.abs(new - mu[active]).sum(axis=1)
        mu[active] = new
        active = active[change > tol]
    return mu


def pseudo_logits(
    counts: np.ndarray, noise_scale: float = 1.0, *, rounds: int = 20, tol: float = 1e-3
) -> np.ndarray:
    """Centred pseudo-logits (shape ``(M, K)``) from decision counts (each row sums to ``N``):
    the 2-class closed form where it is finite, the fixed-point iteration otherwise (see the
    module docstring). Each distinct count vector is solved once."""
    counts = np.atleast_2d(np.asarray(counts))
    if counts.shape[1] < 2:
        raise ValueError("pseudo_logits needs at least 2 classes")
    rows, inverse = np.unique(counts, axis=0, return_inverse=True)
    p = rows / rows.sum(axis=1, keepdims=True)
    mu = solve_pseudo_logits(p, noise_scale, rounds=rounds, tol=tol)
    if counts.shape[1] == 2:
        inner = (p[:, 0] > 0) & (p[:, 0] < 1)
        gap = binary_gap(p[inner, 0], noise_scale)
        mu[inner] = np.stack([gap / 2, -gap / 2], axis=1)
    mu = mu - mu.mean(axis=1, keepdims=True)
    return mu[inverse.reshape(-1)]


# --------------------------------------------------------------------------- teacher queries


def _digest_tokenizer(tokenizer) -> str:
    """Digest of what maps text to ids (vocabulary, normaliser, ...), not of the truncation and
    padding state that encoding calls leave in a fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = sorted(tokenizer.get_vocab().items())
    text = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(f"{type(tokenizer).__name__}:{text}".encode()).hexdigest()


def _digest_texts(split) -> str:
    h = hashlib.sha256()
    for texts in (split.texts, split.text_pairs or []):
        h.update(json.dumps(list(texts)).encode())
        h.update(b"\0")
    return h.hexdigest()


def query_cache_dir(root: Path | None = None) -> Path:
    """``<root>/dbkd``; ``root`` defaults to the opdf cache (``OPDF_CACHE``, ~/.cache/opdf)."""
    return Path(cache_dir() if root is None else root) / "dbkd"


@torch.no_grad()
def query_decisions(teacher, tokenizer, split, copies_a, copies_b, max_length: int,
                    batch_size: int, progress: bool | None = None) -> np.ndarray:  # fmt: skip
    """The teacher's argmax on every copy: ``(len(split), N)`` class ids."""
    n, n_copies = len(copies_a), len(copies_a[0])
    flat_a = [c for row in copies_a for c in row]
    flat_b = None if copies_b is None else [c for row in copies_b for c in row]
    data = TokenizedSplit(TextSplit(flat_a, [0] * len(flat_a), flat_b), tokenizer, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate = PaddingCollator(pad)
    order = sorted(range(len(data)), key=lambda i: (data.lengths[i], i))  # little padding
    device = next(teacher.parameters()).device
    was = teacher.training
    teacher.eval()
    out = np.empty(len(data), dtype=np.int64)
    try:
        for s in progress_bar(range(0, len(order), batch_size), desc="dbkd: teacher decisions",
                              enabled=progress, leave=False):  # fmt: skip
            idx = order[s : s + batch_size]
            batch = collate([data[i] for i in idx])
            logits = teacher(**{k: v.to(device) for k, v in model_inputs(batch).items()}).logits
            out[idx] = logits.argmax(-1).cpu().numpy()
    finally:
        teacher.train(was)
    return out.reshape(n, n_copies)


def _read_cache(path: Path) -> dict | None:
    """A cache entry, or None when it is absent or unreadable (it is then queried again)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=True)
    except Exception:  # truncated or foreign file: recompute rather than fail the run
        return None
    return saved if isinstance(saved, dict) and "decisions" in saved else None


# ------------------------------------------------------------------------------------ method


@register_method("dbkd")
class DBKD(Distiller):
    """DBKD: CE + KL to pseudo-logits from the teacher's top-1 decisions on perturbed copies."""

    default_student_source = "pretrained-teacher"
    student_sources = ("pretrained-teacher", "model")
    student_source_reason = ("its teacher is a black box that answers with decisions only: the "
                             "student may not copy the fine-tuned teacher's weights")  # fmt: skip

    @classmethod
    def check_student_start(cls, config) -> None:
        super().check_student_start(config)
        s, t = config.student, config.teacher
        if s.source == "model" and t.finetune is None and s.model == t.model:
            raise ConfigError(
                f"dbkd: student.model {s.model!r} is the teacher itself (teacher.finetune is "
                "null), whose weights a decision-based student may not read; give a pretrained "
                "student.model, or student.source: pretrained-teacher with teacher.finetune set"
            )

    @dataclass
    class Options:
        kd_alpha: float = positive(0.7, allow_zero=True)
        ce_alpha: float = positive(1.0, allow_zero=True)
        temperature: float = positive(1.0)
        # scale of the pseudo-logits in the KD target (the code's SIGMA)
        sigma: float = positive(1.0)
        # std of the Gaussian logit noise model (the code's SCALE)
        noise_scale: float = positive(1.0)
        n_copies: int = at_least(10, 1)  # N: N - 1 perturbed copies plus the original
        strength: float = positive(0.1)  # mean EDA strength (drawn per chunk)
        operations: list[str] = each_of(
            *OPERATIONS,
            default_factory=lambda: list(OPERATIONS),
            why="synonym replacement needs WordNet: not offered",
        )
        # WordNet stand-in: sentence | corpus
        insert_words: str = choice(*INSERT_WORDS, default="sentence")
        clean: bool = True
        # sentences per strength draw (datasets.map's batch)
        chunk_size: int = at_least(1000, 1)
        perturb_seed: int = 0
        solver_rounds: int = at_least(20, 1)
        solver_tol: float = positive(1e-3)
        query_batch_size: int = at_least(128, 1)

        def validate(self, cfg=None) -> None:
            check_fields(self, "dbkd")

        def perturbation(self) -> dict:
            """The settings that decide the teacher's decisions (part of the cache key)."""
            keys = ("n_copies", "strength", "operations", "insert_words", "clean", "chunk_size",
                    "perturb_seed")  # fmt: skip
            return {k: getattr(self, k) for k in keys}

    @classmethod
    def check_task(cls, num_labels: int, config) -> None:
        if num_labels < 2:
            raise ConfigError(
                "dbkd needs a classification task (the teacher's decisions are class labels); "
                "this data set is a regression task: use kd, theseus or adkd"
            )

    def __init__(self, student, teacher, options=None, *, num_labels=2):
        super().__init__(student, teacher, options, num_labels=num_labels)
        self.check_task(num_labels, None)
        self.options.validate()
        self.register_buffer("targets", torch.zeros(0, num_labels), persistent=False)
        self.query_info: dict = {}

    # -- queries (once, cached) -----------------------------------------------------------------
    def cache_spec(self, split, tokenizer, max_length: int) -> dict:
        return {
            "version": CACHE_VERSION,
            "teacher": digest_tensors(self.teacher),
            "tokenizer": _digest_tokenizer(tokenizer),
            "texts": _digest_texts(split),
            "n_examples": len(split),
            "max_length": max_length,
            "perturbation": self.options.perturbation(),
        }

    def decisions(self, split, tokenizer, max_length: int, progress: bool | None = None,
                  cache_root: Path | None = None):  # fmt: skip
        """``(len(split), N)`` teacher decisions: read from the cache, or queried and cached."""
        spec = self.cache_spec(split, tokenizer, max_length)
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        path = query_cache_dir(cache_root) / f"{key}.pt"
        saved = _read_cache(path)
        if saved is not None and saved.get("spec") == spec:
            self.query_info = {"cache": str(path), "cached": True, **saved.get("info", {})}
            return saved["decisions"].numpy()
        o = self.options
        t0 = time.perf_counter()
        common = dict(strength=o.strength, operations=o.operations, insert_words=o.insert_words,
                      clean=o.clean, chunk_size=o.chunk_size)  # fmt: skip
        copies_a = perturbed_copies(split.texts, o.n_copies, seed=o.perturb_seed, **common)
        copies_b = None
        if split.text_pairs is not None:  # each sentence perturbed on its own, as officially
            copies_b = perturbed_copies(split.text_pairs, o.n_copies, seed=o.perturb_seed + 1,
                                        **common)  # fmt: skip
        dec = query_decisions(self.teacher, tokenizer, split, copies_a, copies_b, max_length,
                              o.query_batch_size, progress)  # fmt: skip
        original = dec[:, -1]
        info = {
            "queries": int(dec.size),
            "seconds": round(time.perf_counter() - t0, 2),
            "unanimous": float(np.mean((dec == dec[:, :1]).all(axis=1))),
            "original_agrees_with_label": float(np.mean(original == np.asarray(split.labels))),
        }
        try:
            atomic_write_bytes(path, lambda f: torch.save(
                {"spec": spec, "info": info, "decisions": torch.from_numpy(dec.astype(np.int16))},
                f,
            ))  # fmt: skip
            text = json.dumps({"spec": spec, "info": info}, indent=2)  # for people: what is cached
            atomic_write_text(path.with_suffix(".json"), text)
        except OSError as e:  # the decisions are in memory: train on, query again next time
            warnings.warn(
                f"DBKD could not cache its teacher queries in {path} ({e}); this run goes on, "
                "the next one queries the teacher again",
                stacklevel=2,
            )
        self.query_info = {"cache": str(path), "cached": False, **info}
        return dec

    def set_decisions(self, decisions: np.ndarray) -> None:
        """Pseudo-logit targets (centred, before ``sigma``) for each training example."""
        o = self.options
        dec = np.asarray(decisions)
        if dec.min() < 0 or dec.max() >= self.num_labels:
            raise OpdfError(f"dbkd: teacher decisions outside 0..{self.num_labels - 1}")
        counts = np.stack([(dec == c).sum(axis=1) for c in range(self.num_labels)], axis=1)
        mu = pseudo_logits(counts, o.noise_scale, rounds=o.solver_rounds, tol=o.solver_tol)
        device = self.targets.device
        self.targets = torch.as_tensor(mu, dtype=torch.float32, device=device)

    def on_train_start(self, context) -> None:
        tokenizer = getattr(context, "tokenizer", None)
        max_length = getattr(context, "max_length", None)
        if tokenizer is None or max_length is None:
            raise OpdfError("dbkd needs the run's tokenizer and max_length in its TrainContext")
        split = context.dataset.train
        self.set_decisions(self.decisions(split, tokenizer, max_length,
                                          getattr(context, "progress", None),
                                          getattr(context, "cache_dir", None)))  # fmt: skip

    # -- training ----------------------------------------------------------------------------
    def forward_train(self, batch):
        if "index" not in batch:
            raise OpdfError("dbkd: training batches must carry each example's 'index'")
        if not len(self.targets):
            raise OpdfError("dbkd: no teacher decisions yet (on_train_start was not called)")
        o = self.options
        logits = self.student(**model_inputs(batch)).logits
        target = self.targets[batch["index"].to(self.targets.device)].to(logits.device)
        losses = {}
        if o.ce_alpha:
            losses["ce"] = o.ce_alpha * F.cross_entropy(logits, batch["labels"])
        if o.kd_alpha:
            losses["kd"] = o.kd_alpha * kd_loss(logits, o.sigma * target, o.temperature)
        return logits, losses
