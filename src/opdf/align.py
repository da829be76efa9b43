"""The tensor alignment loss ``L_Aux`` (paper Eq. 5): pull student cores toward teacher cores.

``L_Aux = weight * mean over paired cores of MSE(student core, teacher core)``. Pairs join the same
module role (query with query, FFN-in with FFN-in, ...) in paired layers; by default only the
auxiliary cores are aligned and the central core is left free, as the paper says.

Where the published code goes wrong, and what this module does instead:

- It reads cores through ``state_dict()``, which returns detached tensors, so its ``L_Aux`` has no
  gradient at all. Here the loss is built from the live core parameters.
- One script aligns the central core; here ``cores="auxiliary"`` excludes it by default.
- Cores are only comparable in the same gauge and sign convention: both sides come from
  :func:`opdf.mpo.decompose` (symmetric canonical form, sign rule), and identical models give 0.
- A frozen teacher need not run MPO forwards: a plain teacher is decomposed once, with the
  student's modes, into frozen buffers. An over-parameterized teacher (e.g. LGTM, which trains
  its teacher) contributes its live cores, and gets gradients if they require them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from opdf.choices import ALIGN_NORMALIZATIONS, check_core_selection
from opdf.errors import OpdfError
from opdf.mpo import decompose
from opdf.mpo.shapes import bond_dims, central_index
from opdf.overparam import core_param_name, cores, encoder_layers, mpo_modules, plan

__all__ = ["AlignmentLoss", "uniform_layer_map", "pairing_plan"]


def uniform_layer_map(num_teacher_layers: int, num_student_layers: int) -> dict[int, int]:
    """Student layer ``i`` -> teacher layer ``k (i + 1) - 1``, ``k = N / n``.

    12 -> 6 gives 1, 3, 5, 7, 9, 11.

    ``N`` not a multiple of ``n`` is an error: pass an explicit ``layer_map`` instead.
    """
    n, big_n = num_student_layers, num_teacher_layers
    if n < 1 or big_n < 1:
        raise OpdfError(f"layer counts must be >= 1, got teacher {big_n}, student {n}")
    if big_n % n:
        raise OpdfError(
            f"the teacher has {big_n} layers and the student {n}: {big_n} is not a multiple of "
            f"{n}, so there is no uniform layer map. Pass layer_map={{student: teacher, ...}}"
        )
    k = big_n // n
    return {i: k * (i + 1) - 1 for i in range(n)}


@dataclass
class _Spec:
    """One weight as the pairing sees it."""

    name: str
    layer: int | None
    role: str
    weight_shape: tuple[int, ...]
    modes: tuple[list[int], list[int], int | None] | None  # None: plain weight, not decomposed

    def core_shapes(self, modes=None) -> list[tuple[int, ...]]:
        row, col, max_bond = modes or self.modes
        dims = bond_dims(row, col, max_bond)
        return [(dims[k], i, j, dims[k + 1]) for k, (i, j) in enumerate(zip(row, col, strict=True))]


def _layers(model: nn.Module) -> tuple[str | None, int]:
    found = encoder_layers(model)
    return (None, 0) if found is None else (found[0], len(found[1]))


# Module names of the same role in the encoder families transformers ships (BERT/RoBERTa/
# ELECTRA, MPNet, DistilBERT, and the q/k/v/o_proj + fc1/fc2 style), so that e.g. an MPNet
# teacher's ``attention.attn.q`` pairs with a BERT student's ``attention.self.query``.
ROLE_ALIASES = {
    "query": ("attention.self.query", "attention.attn.q", "attention.q_lin", "self_attn.q_proj"),
    "key": ("attention.self.key", "attention.attn.k", "attention.k_lin", "self_attn.k_proj"),
    "value": ("attention.self.value", "attention.attn.v", "attention.v_lin", "self_attn.v_proj"),
    "attention-output": (
        "attention.output.dense",
        "attention.attn.o",
        "attention.out_lin",
        "self_attn.out_proj",
    ),
    "ffn-in": ("intermediate.dense", "ffn.lin1", "fc1"),
    "ffn-out": ("output.dense", "ffn.lin2", "fc2"),
}
_ROLE_OF = {alias: role for role, aliases in ROLE_ALIASES.items() for alias in aliases}


def _locate(name: str, prefix: str | None) -> tuple[int | None, str]:
    """``(layer index, role)``; the role is canonical (``ROLE_ALIASES``) where known."""
    if prefix and name.startswith(prefix + "."):
        index, _, role = name[len(prefix) + 1 :].partition(".")
        if index.isdigit():
            return int(index), _ROLE_OF.get(role, role)
    return None, name


def _specs_live(model: nn.Module) -> list[_Spec]:
    prefix, _ = _layers(model)
    specs = []
    for name, _module, param in mpo_modules(model):
        layer, role = _locate(name, prefix)
        modes = (param.row_modes, param.col_modes, param.max_bond)
        specs.append(_Spec(name, layer, role, param.weight_shape, modes))
    return specs


def _specs_plain(model: nn.Module) -> list[_Spec]:
    """Every Linear/Conv2d of a plain (not over-parameterized) model."""
    prefix, _ = _layers(model)
    specs = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and name:
            layer, role = _locate(name, prefix)
            specs.append(_Spec(name, layer, role, tuple(module.weight.shape), None))
    return specs


def _core_selection(cores_arg, num_cores: int) -> list[int]:
    cores_arg = check_core_selection(cores_arg)
    center = central_index(num_cores)
    if cores_arg == "auxiliary":
        return [k for k in range(num_cores) if k != center]
    if cores_arg == "all":
        return list(range(num_cores))
    picked = []
    for k in cores_arg:
        if not -num_cores <= k < num_cores:
            raise OpdfError(f"core index {k!r} is out of range for {num_cores} cores")
        picked.append(k % num_cores)
    return sorted(set(picked))


@dataclass
class _Pair:
    student: str  # module name
    teacher: str
    index: int  # core index
    shape: tuple[int, ...]
    student_modes: tuple[list[int], list[int], int | None]


def _pair(
    student_specs: list[_Spec],
    teacher_specs: list[_Spec],
    layer_map: Mapping[int, int],
    cores_arg,
    allow_partial: bool,
) -> tuple[list[_Pair], list[str]]:
    by_key = {(s.layer, s.role): s for s in teacher_specs}
    pairs: list[_Pair] = []
    skipped: list[str] = []
    problems: list[str] = []
    for spec in student_specs:
        if spec.layer is not None and spec.layer not in layer_map:
            continue  # an explicit layer_map leaves this layer unaligned
        t_layer = layer_map[spec.layer] if spec.layer is not None else None
        other = by_key.get((t_layer, spec.role))
        shapes = spec.core_shapes()
        if other is None:
            where = f"layer {t_layer}" if t_layer is not None else "the teacher"
            problems.append(f"{spec.name}: no '{spec.role}' module in {where}")
            skipped.append(spec.name)
            continue
        if other.modes is None:  # plain teacher weight: decomposed with the student's modes
            t_shapes = shapes if other.weight_shape == spec.weight_shape else None
        else:
            t_shapes = other.core_shapes() if len(other.modes[0]) == len(shapes) else None
        found = []
        for k in _core_selection(cores_arg, len(shapes)):
            if t_shapes is not None and t_shapes[k] == shapes[k]:
                found.append(_Pair(spec.name, other.name, k, shapes[k], spec.modes))
        wanted = _core_selection(cores_arg, len(shapes))
        if len(found) < len(wanted):
            k = next(k for k in wanted if t_shapes is None or t_shapes[k] != shapes[k])
            theirs = "no core of that count" if t_shapes is None else f"{t_shapes[k]}"
            if other.modes is None and other.weight_shape != spec.weight_shape:
                theirs = "a weight of another shape"
            problems.append(
                f"{spec.name} (weight {spec.weight_shape}) vs {other.name} (weight "
                f"{other.weight_shape}): core {k} {shapes[k]} vs {theirs}"
            )
        if not found:
            skipped.append(spec.name)
        pairs += found
    if problems and not allow_partial:
        shown = problems[0] + (f"; and {len(problems) - 1} more" if len(problems) > 1 else "")
        raise OpdfError(
            f"{len(problems)} student modules have no same-shaped teacher cores: {shown}. A pair "
            "needs the same module role in the mapped teacher layer and equal core shapes (the "
            "same modes, i.e. equal widths). Pass allow_partial=True (config: align.allow_partial; "
            "opdf inspect: --allow-partial) to align only the matching cores, or a layer_map "
            "that pairs layers of equal shapes."
        )
    return pairs, skipped


def _resolve_layer_map(student: nn.Module, teacher: nn.Module, layer_map) -> dict[int, int]:
    _, n = _layers(student)
    _, big_n = _layers(teacher)
    if layer_map is None:
        if n == 0 or big_n == 0:
            return {}
        return uniform_layer_map(big_n, n)
    resolved = {}
    for s, t in dict(layer_map).items():
        s, t = int(s), int(t)
        if not 0 <= s < max(n, 1) or not 0 <= t < max(big_n, 1):
            raise OpdfError(
                f"layer_map entry {s}: {t} is out of range (student has {n} layers, teacher "
                f"{big_n})"
            )
        resolved[s] = t
    return resolved


class AlignmentLoss(nn.Module):
    """``L_Aux`` between an over-parameterized student and a teacher.

    Parameters
    ----------
    student
        A model after :func:`opdf.overparameterize`.
    teacher
        Either over-parameterized with the same scheme (its live cores are used; they receive
        gradients when they require them) or a plain model, whose paired weights are decomposed
        once with the student's modes into frozen buffers.
    layer_map
        ``{student layer: teacher layer}``; default :func:`uniform_layer_map`. Layers left out of
        an explicit map are not aligned.
    cores
        ``"auxiliary"`` (every core but the central one), ``"all"``, or explicit indices.
    weight
        Multiplies the mean MSE.
    normalize
        ``"none"`` (the paper's mean MSE) or ``"teacher"``: each pair's MSE divided by the
        teacher core's mean square, ``||S - T||^2 / ||T||^2``, a relative error. The raw MSE scales
        with the cores' magnitude (about 4e-3 for MiniLM pairs, another value at another width or
        unit-mode count), so a raw weight means something for one student only; the relative one
        is dimensionless.
    allow_partial
        Align only same-shaped cores instead of raising on a mismatch (e.g. teacher width 768,
        student 384); ``.skipped`` lists the modules left out.

    Call it with no arguments: ``loss = task_loss + align()``. Each call also leaves
    ``last_by_group``: the loss per module group (the role: ``query``, ``ffn-in``, ... as in
    :data:`ROLE_ALIASES`; a module outside the encoder's layers is a group of its own), as floats
    with the same weight, for logging. ``groups[n]`` is pair ``n``'s group; the total is the mean
    of the groups weighted by their pair counts.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        layer_map: Mapping[int, int] | None = None,
        cores: str | Sequence[int] = "auxiliary",
        weight: float = 1.0,
        allow_partial: bool = False,
        normalize: str = "none",
    ) -> None:
        super().__init__()
        if normalize not in ALIGN_NORMALIZATIONS:
            raise OpdfError(
                f"normalize must be one of {', '.join(ALIGN_NORMALIZATIONS)}, got {normalize!r}"
            )
        self.normalize = normalize
        student_specs = _specs_live(student)
        if not student_specs:
            raise OpdfError(
                "the student has no over-parameterized weights; call "
                "opdf.overparameterize(student, ...) before building AlignmentLoss"
            )
        if not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0:
            raise OpdfError(f"weight must be a number >= 0, got {weight!r}")
        teacher_live = any(True for _ in mpo_modules(teacher))
        teacher_specs = _specs_live(teacher) if teacher_live else _specs_plain(teacher)
        self.layer_map = _resolve_layer_map(student, teacher, layer_map)
        found, self.skipped = _pair(
            student_specs, teacher_specs, self.layer_map, cores, allow_partial
        )
        if not found:
            raise OpdfError("no same-shaped core pairs between student and teacher")
        self.weight = float(weight)
        self._student = [student]  # a list: keep the models out of this module's parameters
        self._teacher = [teacher]
        self._teacher_live = teacher_live
        self._pairs = found
        self.pairs = [
            (core_param_name(p.index, p.student), core_param_name(p.index, p.teacher))
            for p in found
        ]
        self._index_groups(student)
        self._frozen: dict[tuple[str, int], str] = {}
        if not teacher_live:
            self._check_frozen(teacher)
            self._decompose_teacher(teacher)

    def _index_groups(self, student: nn.Module) -> None:
        """Each pair's module role (``query``, ``ffn-in``, ...), for ``last_by_group``."""
        prefix, _ = _layers(student)
        self.groups = [_locate(p.student, prefix)[1] for p in self._pairs]
        names = list(dict.fromkeys(self.groups))  # first-seen order
        self._group_names = names
        self._group_index = torch.tensor([names.index(g) for g in self.groups])
        self._group_sizes = torch.bincount(self._group_index, minlength=len(names))
        self.last_by_group: dict[str, float] = {}

    def _check_frozen(self, teacher: nn.Module) -> None:
        """A plain teacher is decomposed once: its paired weights must not train."""
        trainable = sorted({p.teacher for p in self._pairs
                            if teacher.get_submodule(p.teacher).weight.requires_grad})  # fmt: skip
        if trainable:
            raise OpdfError(
                f"the teacher is a plain model whose paired weights require grad (e.g. "
                f"{trainable[0]}); a plain teacher is decomposed once into frozen cores, so "
                "its later updates would be ignored. Freeze it (teacher.requires_grad_(False))"
                " or, if it trains (as in LGTM), over-parameterize it with the same scheme so "
                "its live cores are aligned."
            )

    def _decompose_teacher(self, teacher: nn.Module) -> None:
        done: dict[tuple[str, tuple], list[torch.Tensor]] = {}
        for n, p in enumerate(self._pairs):
            row, col, max_bond = p.student_modes
            key = (p.teacher, (tuple(row), tuple(col), max_bond))
            if key not in done:
                w = teacher.get_submodule(p.teacher).weight
                done[key] = decompose(w, row, col, max_bond=max_bond).cores
            buffer = f"teacher_core_{n}"
            self.register_buffer(buffer, done[key][p.index].detach().clone(), persistent=False)
            self._frozen[(p.teacher, n)] = buffer

    def forward(self) -> torch.Tensor:
        student_cores = cores(self._student[0])
        teacher_cores = cores(self._teacher[0]) if self._teacher_live else {}
        terms = []
        for n, p in enumerate(self._pairs):
            if p.student not in student_cores:
                raise OpdfError(
                    f"{p.student} is no longer over-parameterized (merged?); build a new "
                    "AlignmentLoss after over-parameterizing again"
                )
            s = student_cores[p.student][p.index]
            if self._teacher_live:
                t = teacher_cores[p.teacher][p.index]
            else:
                buffer = self._frozen[(p.teacher, n)]
                t = getattr(self, buffer)
                if t.device != s.device:  # the student moved after this loss was built
                    t = t.to(s.device)
                    setattr(self, buffer, t)
            t = t.to(s.dtype)
            term = F.mse_loss(s, t)
            if self.normalize == "teacher":  # the scale only: no gradient into a live teacher
                term = term / t.detach().pow(2).mean().clamp_min(torch.finfo(t.dtype).tiny)
            terms.append(term)
        stacked = torch.stack(terms)
        self._remember_groups(stacked.detach())
        return self.weight * stacked.mean()

    def _remember_groups(self, terms: torch.Tensor) -> None:
        """``last_by_group`` from the pairs' MSEs (one transfer to the host)."""
        index = self._group_index.to(terms.device)
        sums = torch.zeros(len(self._group_names), dtype=terms.dtype, device=terms.device)
        sums.index_add_(0, index, terms)
        means = (sums / self._group_sizes.to(terms.device)).float() * self.weight
        self.last_by_group = dict(zip(self._group_names, means.tolist(), strict=True))

    def extra_repr(self) -> str:
        return (f"pairs={len(self.pairs)}, skipped={len(self.skipped)}, weight={self.weight}, "
                f"normalize={self.normalize}")  # fmt: skip


def pairing_plan(
    student: nn.Module,
    teacher: nn.Module,
    scheme: str = "mpo",
    unit_modes: int = 3,
    targets=None,
    allow_partial: bool = False,
    layer_map: Mapping[int, int] | None = None,
    cores: str | Sequence[int] = "auxiliary",
) -> tuple[list[tuple[str, str, tuple[int, ...]]], int]:
    """Dry run of the pairing for two plain models (``opdf inspect --teacher``).

    Returns ``[(student core name, teacher core name, core shape)]`` and the number of skipped
    student modules.
    """
    s_prefix, _ = _layers(student)
    t_prefix, _ = _layers(teacher)

    def specs(model: nn.Module, prefix: str | None) -> list[_Spec]:
        out = []
        for e in plan(model, scheme, unit_modes, targets):
            layer, role = _locate(e.name, prefix)
            out.append(_Spec(e.name, layer, role, e.weight_shape, (e.row_modes, e.col_modes, None)))
        return out

    if scheme == "none":
        return [], 0
    found, skipped = _pair(
        specs(student, s_prefix),
        specs(teacher, t_prefix),
        _resolve_layer_map(student, teacher, layer_map),
        cores,
        allow_partial,
    )
    rows = [
        (core_param_name(p.index, p.student), core_param_name(p.index, p.teacher), p.shape)
        for p in found
    ]
    return rows, len(skipped)
