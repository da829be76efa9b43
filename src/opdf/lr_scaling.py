r"""Per-core learning rates so that an over-parameterized weight moves like the plain weight.

Why. An over-parameterized weight is a deep linear chain. With one learning rate for every core,
one Adam step moves the merged weight ``W`` further than the same step moves a plain weight: on a
random BERT-base-width layer, 1.15x for "svd" and 1.47 / 1.84 / 2.23 / 2.65x with 1 / 2 / 3 / 4
unit modes (``benchmarks/results/effective-step.md``). So the best learning rate falls as the
scale grows (the paper's Fig. 2b), and a fixed-rate comparison flatters the deeper chain.
``scaling="auto"`` sets one rate per core so that the first step moves ``W`` by the plain amount.

The rule, and what it assumes
-----------------------------
Let ``W`` have ``N`` entries and let ``R`` (``m1 x m2``) be the rearranged matrix the cores factor
(a permutation of ``W``'s entries, so every norm below is the same for ``W`` and ``R``). At the
start, in the symmetric canonical gauge of :mod:`opdf.mpo.decompose`,
``R = A C_1 ... C_L B`` with ``A = U S^1/2``, ``C_k = I_d``, ``B = S^1/2 V^T`` (``s_p`` the
singular values of ``R``, ``L = 0`` for "svd").

1. *Adam's per-entry step.* Adam's first step moves every entry by ``-lr * sign(g)`` (bias-corrected
   ``m / sqrt(v) = g / |g|``); later steps keep about that size per entry. So a plain weight moves
   by RMS ``lr``, and core ``k`` at rate ``eta_k`` moves by the sign matrix ``-eta_k Z_k``.
2. *The chain's Jacobian at initialisation.* To first order (the second-order terms are
   ``O(eta^2 sqrt(d))``, negligible)
   ``dR = dA C..B + A dC_1 ..B + ... + A..C dB = dA B + sum_k A dC_k B + A dB``.
3. *Each core's contribution*, per unit of rate, as an RMS over ``N`` entries. In the canonical
   gauge ``A^T A = B B^T = S``, so the norms are exact for *any* sign pattern:
   ``||Z_A B||^2 = m1 tr S``, ``||A Z_C B||^2 = (tr S)^2``, ``||A Z_B||^2 = m2 tr S``, i.e.
   ``r_A = sqrt(tr S / m2)``, ``r_C = tr S / sqrt(m1 m2)``, ``r_B = sqrt(tr S / m1)``.
   Contributions grow with the weight's scale (``tr S``); a plain weight's does not.
4. *How the contributions add.* Every unit core has the same gradient ``A^T G B^T`` at the start,
   so their updates are identical and add coherently (``rho_CC = 1``). For the other pairs the
   gradient ``G`` of ``R`` is modelled as isotropic Gaussian (the rearrangement scatters a weight
   gradient's row and column structure); the arcsine law for ``E[sign(x) sign(y)]`` then gives
   ``rho_AB = (2/pi) q^2 / (sqrt(m1 m2) tr S)``, ``rho_AC = (2/pi) q / sqrt(m1 tr S)``,
   ``rho_BC = (2/pi) q / sqrt(m2 tr S)``, with ``q = sum_p sqrt(s_p)``.
   With one rate for every core the step ratio is ``sqrt(sum_kl rho_kl r_k r_l)``; on the
   benchmark layer this predicts the measured first step to 1% (:func:`predicted_step`).
5. *The choice.* ``eta_k = lr * lambda / r_k`` with ``lambda = (sum_kl rho_kl)^-1/2``: every
   trainable core contributes the same RMS ``lambda * lr`` (what one common rate would give from a
   *balanced* start, ``S`` split evenly over the cores), and the total is ``lr``.

Weight decay. AdamW's decoupled decay shrinks each core by ``1 - eta_k wd_k``, so ``W`` shrinks by
about ``1 - sum_k eta_k wd_k``: ``K`` times the plain rate under one common setting (``K``
trainable cores). ``auto`` sets ``wd_k = wd * lr / (K eta_k)`` so ``W`` shrinks by ``1 - lr wd``
like a plain weight. Biases and norm weights are never decayed (:data:`NO_DECAY`).

No rebalancing of ``S``. The cores keep their canonical start (identity unit cores, ``U S^1/2`` and
``S^1/2 V^T``): the per-core rates already give every core the share a balanced start would, the
alignment loss compares cores in this gauge, and a re-split would reproduce ``W`` only to rounding.

Other chains (custom ``shapes`` with several real modes, truncated sequential decompositions,
unit modes at an end, or cores already moved by training) have no closed form: there ``r_k`` and
``rho_kl`` are computed for one seeded Gaussian probe gradient (autograd through the contraction,
then ``J_k Z_k = contract(..., Z_k, ...)``, exact because ``W`` is linear in each core), and the
same rule is applied. That costs about ``n + 3`` contractions per weight, once.

Where it stops holding: the correlations of item 4 are a model. Measured with ``auto`` (first
step, per weight): 0.99-1.00 on a random BERT-base layer, 0.88-1.36 on the pretrained MiniLM
student (query and key highest: their cores' updates are more correlated than isotropic), 0.81 on
a toy MLP whose gradient is nearly rank 4. And the rule matches the first step only: later Adam
steps are smaller than ``lr`` per entry and less correlated between cores, and the Jacobian moves
as the cores train (a deep linear chain speeds up as its factors grow). Whether matching the first
step makes the plain learning rate transfer across scales is an empirical question: see the
rt-polarity suite ``benchmarks/suites/rt-polarity-lr-scaling.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from opdf.choices import LR_SCALINGS
from opdf.errors import OpdfError
from opdf.mpo import contract
from opdf.overparam import MPOParametrization, core_param_name, module_cores, mpo_modules

__all__ = [
    "SCALINGS",
    "NO_DECAY",
    "CoreRate",
    "build_groups",
    "core_rates",
    "is_no_decay",
    "lr_groups",
    "predicted_step",
    "split_groups",
]

SCALINGS = LR_SCALINGS
#: parameter-name substrings that are never weight-decayed (as ``transformers`` and the trainer do)
NO_DECAY = ("bias", "LayerNorm", "layer_norm", "layernorm", "norm.weight")
PROBE_SEED = 0


@dataclass(frozen=True)
class CoreRate:
    """The rate of one trainable core, relative to the plain learning rate and weight decay."""

    module: str
    index: int
    name: str
    param: nn.Parameter
    lr_factor: float
    weight_decay_factor: float


@dataclass(frozen=True)
class _Chain:
    """First-step model of one weight: per-unit-rate contributions and their correlations."""

    module: str
    names: list[str]
    params: list[nn.Parameter]
    indices: list[int]  # trainable cores
    contrib: list[float]  # r_k: RMS change of W per unit rate, over W's entries
    corr: list[list[float]]  # rho_kl
    method: str  # "closed form" or "probe"

    def ratio(self, factors: Sequence[float]) -> float:
        """RMS(dW) over the plain weight's, for rates ``factors[k] * lr``."""
        x = [f * r for f, r in zip(factors, self.contrib, strict=True)]
        n = len(x)
        total = sum(self.corr[a][b] * x[a] * x[b] for a in range(n) for b in range(n))
        return math.sqrt(max(total, 0.0))

    def factors(self) -> list[float]:
        """The rule: equal contributions, total equal to the plain step (module docstring, 5)."""
        live = [a for a, r in enumerate(self.contrib) if r > 0.0]
        if not live:
            return [1.0] * len(self.contrib)
        q = sum(self.corr[a][b] for a in live for b in live)
        lam = 1.0 / math.sqrt(q)
        return [lam / r if r > 0.0 else 1.0 for r in self.contrib]


# ----------------------------------------------------------------------------- the analysis


def _trainable(module: nn.Module, param: MPOParametrization) -> tuple[list[int], list[str], list]:
    idx, names, params = [], [], []
    for k, core in enumerate(module_cores(module)):
        if core.requires_grad:
            idx.append(k)
            names.append(core_param_name(k))
            params.append(core)
    return idx, names, params


def _canonical_spectrum(cores: list[torch.Tensor]) -> torch.Tensor | None:
    """``s``, the singular values of ``R``, when the chain is at its canonical start: two
    real-mode end cores, identity unit cores between, ``||A[:, p]|| == ||B[p, :]||``; else None."""
    if len(cores) < 2:
        return None
    sizes = [c.shape[1] * c.shape[2] for c in cores]
    if sizes[0] == 1 or sizes[-1] == 1 or any(s != 1 for s in sizes[1:-1]):
        return None
    d = cores[0].shape[3]
    for c in cores[1:-1]:
        if c.shape[0] != d or c.shape[3] != d:
            return None
        m = c.detach().reshape(d, d)
        if not (torch.all(m.diagonal() == 1) and int(torch.count_nonzero(m)) == d):
            return None
    a2 = cores[0].detach().reshape(-1, d).square().sum(dim=0).double()
    b2 = cores[-1].detach().reshape(d, -1).square().sum(dim=1).double()
    if not torch.allclose(a2, b2, rtol=2e-4, atol=1e-6 * float(a2.max())):
        return None
    return (a2 * b2).sqrt()  # ||A[:, p]|| ||B[p, :]|| = s_p


def _closed_form(cores: list[torch.Tensor], s: torch.Tensor, indices: list[int]):
    """Items 3 and 4 of the module docstring, from the spectrum ``s`` of ``R``."""
    n = len(cores)
    m1 = cores[0].shape[1] * cores[0].shape[2]
    m2 = cores[-1].shape[1] * cores[-1].shape[2]
    tr, q = float(s.sum()), float(s.sqrt().sum())
    if tr <= 0.0:
        return [0.0] * len(indices), [[1.0] * len(indices) for _ in indices]
    r = {"A": math.sqrt(tr / m2), "B": math.sqrt(tr / m1), "C": tr / math.sqrt(m1 * m2)}
    two_pi = 2.0 / math.pi
    rho = {
        frozenset("AB"): two_pi * q * q / (math.sqrt(m1 * m2) * tr),
        frozenset("AC"): two_pi * q / math.sqrt(m1 * tr),
        frozenset("BC"): two_pi * q / math.sqrt(m2 * tr),
    }
    roles = ["A" if k == 0 else "B" if k == n - 1 else "C" for k in indices]
    corr = [[1.0 if x == y else rho[frozenset(x + y)] for y in roles] for x in roles]
    return [r[x] for x in roles], corr


def _probe(cores: list[torch.Tensor], indices: list[int]) -> tuple[list, list]:
    """The same quantities for one seeded Gaussian gradient (any chain, any state)."""
    work = [c.detach() for c in cores]
    leaves = [c.clone().requires_grad_(k in indices) for k, c in enumerate(work)]
    with torch.enable_grad():
        w = contract(leaves)
        gen = torch.Generator().manual_seed(PROBE_SEED)
        g = torch.randn(w.shape, generator=gen, dtype=w.dtype).to(w.device)
        grads = torch.autograd.grad(w, [leaves[k] for k in indices], g)
    with torch.no_grad():
        terms = []
        for k, grad in zip(indices, grads, strict=True):
            chain = list(work)
            chain[k] = grad.sign()
            terms.append(contract(chain).reshape(-1).double())
        stacked = torch.stack(terms)
        gram = (stacked @ stacked.T).tolist()
    n_entries = w.numel()
    diag = [gram[a][a] for a in range(len(indices))]
    contrib = [math.sqrt(v / n_entries) for v in diag]
    corr = [
        [
            gram[a][b] / math.sqrt(diag[a] * diag[b]) if diag[a] > 0 and diag[b] > 0 else 0.0
            for b in range(len(indices))
        ]
        for a in range(len(indices))
    ]
    for a in range(len(indices)):
        corr[a][a] = 1.0
    return contrib, corr


def _chain(name, module, param, indices, names, params) -> _Chain:
    cores = module_cores(module)
    spectrum = _canonical_spectrum(cores)
    if spectrum is not None:
        contrib, corr = _closed_form(cores, spectrum, indices)
        method = "closed form"
    else:
        contrib, corr = _probe(cores, indices)
        method = "probe"
    return _Chain(name, names, params, indices, contrib, corr, method)


def _chains(model: nn.Module) -> list[_Chain]:
    chains = []
    for name, module, param in mpo_modules(model):
        indices, names, params = _trainable(module, param)
        if indices:
            full = [f"{name}.{n}" if name else n for n in names]
            chains.append(_chain(name, module, param, indices, full, params))
    return chains


# ----------------------------------------------------------------------------- the public calls


def core_rates(model: nn.Module, *, estimate: bool = True) -> list[CoreRate]:
    """The ``auto`` rate of every trainable core of ``model`` (empty for a plain model).

    ``lr_factor`` multiplies the plain learning rate, ``weight_decay_factor`` the plain weight
    decay; see the module docstring for the rule. Call it on the model as over-parameterized: at
    the canonical start the closed form costs two core norms per weight; cores moved by training
    (or custom shapes) need the probe, a few contractions per weight.

    ``estimate=False`` gives the same cores with factors of 1: the group layout alone, for an
    optimizer whose saved state (which holds every group's rate) is loaded right after, as in a
    resumed run, so the rates are not recomputed from cores that have moved.
    """
    out = []
    for name, module, param in mpo_modules(model):
        indices, names, params = _trainable(module, param)
        if not indices:
            continue
        full = [f"{name}.{n}" if name else n for n in names]
        if estimate:
            factors = _chain(name, module, param, indices, full, params).factors()
        else:
            factors = [1.0] * len(indices)
        k = len(indices)
        for idx, n, p, f in zip(indices, full, params, factors, strict=True):
            out.append(CoreRate(name, idx, n, p, f, 1.0 / (k * f)))
    return out


def predicted_step(model: nn.Module, scaling: str = "none") -> dict[str, float]:
    """Predicted first-step RMS change of each over-parameterized weight over the plain weight's.

    ``scaling="none"`` (one rate for every core) is the growth the rule removes; ``"auto"`` is 1
    by construction (it checks the arithmetic, not the model: measure that with
    ``benchmarks/effective_step.py``).
    """
    _check_scaling(scaling)
    out = {}
    for chain in _chains(model):
        factors = chain.factors() if scaling == "auto" else [1.0] * len(chain.indices)
        out[chain.module] = chain.ratio(factors)
    return out


def is_no_decay(name: str) -> bool:
    """Biases and normalisation weights are not weight-decayed."""
    return any(token in name for token in NO_DECAY)


def lr_groups(
    model: nn.Module,
    lr: float,
    scaling: str = "auto",
    weight_decay: float = 0.0,
) -> list[dict]:
    """torch.optim parameter groups for ``model``: every trainable parameter exactly once.

    ``scaling="none"``: every parameter at ``lr``, one group, or two when ``weight_decay > 0``
    (biases and norm weights, :data:`NO_DECAY`, are not decayed). ``"auto"``: the same, plus one
    group per trainable MPO core at its own rate and decay (:func:`core_rates`); a plain model
    gets the plain groups. Use with any torch optimizer; the rule is derived for Adam/AdamW::

        opt = torch.optim.AdamW(opdf.lr_groups(student, 2e-4, weight_decay=0.01))

    The group layout depends only on the model's structure, never on the values, so an
    optimizer state saved from these groups loads back into them.
    """
    _check_scaling(scaling)
    if not _is_number(lr) or not lr > 0:
        raise OpdfError(f"lr must be a positive number, got {lr!r}")
    if not _is_number(weight_decay) or not weight_decay >= 0:
        raise OpdfError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    rates = core_rates(model) if scaling == "auto" else []
    return build_groups(model.named_parameters(), lr, weight_decay, rates)


def build_groups(
    named: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    rates: Iterable[CoreRate] = (),
    split_no_decay: bool | None = None,
) -> list[dict]:
    """Groups for ``named`` parameters; cores listed in ``rates`` get their own groups.

    ``split_no_decay`` (default: only when ``weight_decay > 0``) puts biases and norm weights in a
    group of their own at weight decay 0. Parameters that do not require grad are left out. The
    layout is :func:`split_groups`'s for one group of the named parameters at ``lr``.
    """
    split = weight_decay > 0 if split_no_decay is None else split_no_decay
    params: list[nn.Parameter] = []
    names: list[str] = []
    seen: set[int] = set()
    for name, p in named:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append(p)
            names.append(name)
    group = {"params": params, "names": names, "lr": lr}
    return split_groups([group], weight_decay, rates, no_decay=is_no_decay if split else None)


def split_groups(
    groups: Iterable[Mapping],
    weight_decay: float,
    rates: Iterable[CoreRate] = (),
    *,
    lr: float | None = None,
    no_decay: Callable[[str], bool] | None = is_no_decay,
    keep_empty: bool = False,
) -> list[dict]:
    """The one optimizer-group layout of opdf: :func:`lr_groups`, the runner's optimizer
    (:mod:`opdf.run.optim`) and ``OpdfTrainer(lr_scaling="auto")`` all build their groups here.

    ``groups`` are ``param_groups``-style dicts: ``params``, optional ``names`` (one per
    parameter, for the no-decay test), optional ``lr`` and ``weight_decay`` (default
    ``weight_decay``), and any other keys, which are kept (e.g. a method's teacher group at its
    own rate). Each group becomes its decayed parameters at the group's weight decay, then its
    ``no_decay(name)`` ones (biases and norm weights by default, :func:`is_no_decay`) at 0
    (``no_decay=None``: no split). An empty one is left out unless ``keep_empty`` (a saved
    optimizer state loads only into the layout it was saved from).

    After all of them comes one group per MPO core listed in ``rates`` (:func:`core_rates`), a
    group's decayed cores first: its group's rate (``lr`` when the group has none) times the
    core's ``lr_factor``, and the decay the core would otherwise have had times its
    ``weight_decay_factor``. Parameters are taken as given (no ``requires_grad`` filter); the
    layout depends on the model's structure only, never on the values.
    """
    by_id = {id(r.param): r for r in rates}
    plain: list[dict] = []
    cores: list[dict] = []
    for g in groups:
        extra = {k: v for k, v in g.items() if k not in ("params", "names", "weight_decay")}
        wd = g.get("weight_decay", weight_decay)
        names = g.get("names") or [""] * len(g["params"])
        decayed: list[nn.Parameter] = []
        undecayed: list[nn.Parameter] = []
        for name, p in zip(names, g["params"], strict=True):
            (undecayed if no_decay is not None and no_decay(name) else decayed).append(p)
        parts = [(decayed, wd)] if no_decay is None else [(decayed, wd), (undecayed, 0.0)]
        for params, part_wd in parts:
            rest = [p for p in params if id(p) not in by_id]
            if rest or keep_empty:
                plain.append({**extra, "params": rest, "weight_decay": part_wd})
            cores += _core_groups(params, by_id, extra, g.get("lr", lr), part_wd)
    return plain + cores


def _core_groups(params, by_id: dict, extra: dict, lr: float | None, wd: float) -> list[dict]:
    """One group per core of ``params`` found in ``by_id``, at its factors of ``lr`` and ``wd``."""
    out = []
    for p in params:
        rate = by_id.get(id(p))
        if rate is None:
            continue
        if lr is None:
            raise OpdfError(f"core {rate.name}: its group has no lr; give split_groups an lr")
        out.append({**extra, "params": [p], "lr": lr * rate.lr_factor,
                    "weight_decay": wd * rate.weight_decay_factor})  # fmt: skip
    return out


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_scaling(scaling: str) -> None:
    if scaling not in SCALINGS:
        raise OpdfError(f"unknown lr scaling {scaling!r}; choose one of: {', '.join(SCALINGS)}")
