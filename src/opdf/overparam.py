"""Model surgery: train chosen weights as MPO cores, then merge them back into plain weights.

``overparameterize`` registers a :mod:`torch.nn.utils.parametrize` parametrization on each chosen
``weight``: the module keeps its class, ``forward`` and attribute names, while its trainable
parameters become the cores (``<module>.parametrizations.weight.original0 .. original{n-1}``, the
names :func:`core_param_name` spells and :func:`core_index` reads: nowhere else). No
dense copy of the weight is stored; each forward contracts the cores once (cheapest order) and the
module's own ``forward`` uses the result. ``merge`` contracts once more and puts a plain
``weight`` parameter back, so ``state_dict()`` keys and outputs equal the original model's.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import math
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from opdf.choices import SCHEMES
from opdf.errors import OpdfError
from opdf.mpo import contract, count_params, decompose, mpo_shapes, validate_modes
from opdf.mpo.decompose import as_matrix
from opdf.mpo.shapes import bond_dims, central_index

__all__ = [
    "SCHEMES",
    "MPOParametrization",
    "overparameterize",
    "merge",
    "cores",
    "core_index",
    "core_param_name",
    "module_cores",
    "mpo_modules",
    "accumulate",
    "Accumulation",
    "contract_weight",
    "low_precision_contraction",
    "contraction_follows_autocast",
    "param_report",
    "ParamReport",
    "default_targets",
    "encoder_layers",
    "plan",
]

Shapes = tuple[Sequence[int], Sequence[int]]
LOW_PRECISION = (torch.bfloat16, torch.float16)

#: where torch's parametrize keeps core ``k`` of a weight, inside its module: ``CORE_PREFIX + k``
CORE_PREFIX = "parametrizations.weight.original"
_CORE_NAME = re.compile(r"(?:^|\.)parametrizations\.weight\.original(\d+)$")


def core_param_name(k: int, module: str = "") -> str:
    """The parameter name of core ``k``: ``parametrizations.weight.original{k}`` inside its
    module, ``<module>.parametrizations.weight.original{k}`` in the model when ``module`` is
    given (``named_parameters()`` and ``state_dict()`` keys)."""
    name = f"{CORE_PREFIX}{k}"
    return f"{module}.{name}" if module else name


def core_index(name: str) -> int | None:
    """The core number ``k`` in a parameter name that :func:`core_param_name` spells (with or
    without the module in front), else None: ``core_index(n) is not None`` picks the cores out
    of ``named_parameters()`` or a ``state_dict()``."""
    found = _CORE_NAME.search(name)
    return int(found.group(1)) if found else None


#: set by :func:`low_precision_contraction`: the parametrized weights follow autocast
_FOLLOW_AUTOCAST: ContextVar[bool] = ContextVar("opdf_contraction_follows_autocast", default=False)


@contextlib.contextmanager
def low_precision_contraction() -> Iterator[None]:
    """Inside it, the parametrized weights' contraction follows autocast (bf16 matmuls), an
    opt-in exception to :func:`contract_weight`'s float32 policy (``precision:
    bf16-contraction``, whose runner enters it for the training forwards only).

    Where bf16 matmuls are fast (a CPU with AMX; a GPU, not measured) the float32 chain
    dominates a bf16 step: on an AMX CPU a bf16 contraction is 3.2-3.9x faster and a whole L=3
    step 2.9x faster than float32, against 1.2x with the policy
    (``benchmarks/results/bf16-amx.md``), at 2.6x the weight error of one bf16 rounding (4.4e-3
    relative). ``merge`` and :func:`accumulate` stay float32 inside it, so the deployed student
    does not depend on it."""
    token = _FOLLOW_AUTOCAST.set(True)
    try:
        yield
    finally:
        _FOLLOW_AUTOCAST.reset(token)


def contraction_follows_autocast() -> bool:
    """Whether :func:`low_precision_contraction` is on here (a cache keyed on a forward's
    precision must know)."""
    return _FOLLOW_AUTOCAST.get()


def contract_weight(
    core_list: Sequence[torch.Tensor], weight_shape: Sequence[int], *, follow_autocast: bool = False
) -> torch.Tensor:
    """The dense weight from its cores, contracted in float32 (or wider) whatever autocast says
    (unless ``follow_autocast``: :func:`low_precision_contraction`).

    This is opdf's mixed-precision policy. Under ``torch.autocast(dtype=torch.bfloat16)`` the
    chain of matmuls would run in bf16; measured on BERT-base-width L=3 matrices that gives a
    relative error of 4.4e-3 in ``W`` (2.6x the error of rounding the exact ``W`` to bf16 once)
    was 1.7-1.9x slower than float32 on a CPU without AMX (``benchmarks/bf16_contraction.py``,
    ``benchmarks/results/bf16.md``; with AMX it is faster: the opt-in above). So autocast is
    switched off here, cores stored in bf16/fp16 are upcast for the contraction and the result
    is cast back to their dtype. Under autocast the
    float32 weight then enters ``F.linear`` like any plain float32 weight (cast to bf16 there).
    ``merge`` uses the same path, so the merged weight never depends on the training precision.
    """
    dtype = core_list[0].dtype
    device_type = core_list[0].device.type
    low = dtype in LOW_PRECISION
    off = (
        torch.autocast(device_type, enabled=False)
        if torch.is_autocast_enabled(device_type) and not follow_autocast
        else contextlib.nullcontext()
    )
    with off:
        if low:
            core_list = [c.float() for c in core_list]
        weight = contract(core_list).reshape(tuple(weight_shape))
    return weight.to(dtype) if low else weight


# ----------------------------------------------------------------------------- one class per module


def _own_class(module: nn.Module) -> None:
    """Give a parametrized ``module`` a generated class that no other module shares.

    torch's parametrize swaps a module's class for a generated ``Parametrized<Class>`` that holds
    the ``weight`` property, and a deep copy shares that class with the original. Registering or
    removing a parametrization edits the class, so merging a copy would delete ``weight`` from
    the original too, and the property's cache key (``parametrize.cached()``) names the original
    module. Here the class body is copied and the properties are made afresh for ``module``; the
    new class's ``__deepcopy__`` does the same for every replica.
    """
    if not parametrize.is_parametrized(module):
        return
    cls = type(module)
    names = list(module.parametrizations.keys())
    body = {
        k: v
        for k, v in vars(cls).items()
        if k not in ("__dict__", "__weakref__") and k not in names
    }
    if "_opdf_deepcopy" not in body:  # the copy procedure torch (or the module's class) provides
        body["_opdf_deepcopy"] = body.get("__deepcopy__", getattr(cls, "__deepcopy__", None))
        body["__deepcopy__"] = _deepcopy_with_own_class
    module.__class__ = type(cls.__name__, cls.__bases__, body)
    for name in names:
        parametrize._inject_property(module, name)


def _deepcopy_with_own_class(self: nn.Module, memo: dict) -> nn.Module:
    replica = type(self)._opdf_deepcopy(self, memo)
    _own_class(replica)
    return replica


class MPOParametrization(nn.Module):
    """``weight = contract(cores)``, reshaped to the weight's shape.

    ``right_inverse`` is the decomposition, so ``register_parametrization`` stores the cores (not
    the dense weight) as the module's parameters. ``override`` lets :func:`accumulate` substitute
    one shared contraction for every forward of an optimizer step.
    """

    def __init__(
        self,
        row_modes: Sequence[int],
        col_modes: Sequence[int],
        weight_shape: Sequence[int],
        scheme: str,
        max_bond: int | None = None,
    ) -> None:
        super().__init__()
        self.row_modes = list(row_modes)
        self.col_modes = list(col_modes)
        self.weight_shape = tuple(weight_shape)
        self.scheme = scheme
        self.max_bond = max_bond
        self.override: torch.Tensor | None = None
        self.param_order: list[str] = []  # the module's parameter order, restored by merge()

    @property
    def central_index(self) -> int:
        return central_index(len(self.row_modes))

    def forward(self, *cores: torch.Tensor) -> torch.Tensor:
        if self.override is not None:
            return self.override
        follow = contraction_follows_autocast()
        return contract_weight(cores, self.weight_shape, follow_autocast=follow)

    def right_inverse(self, weight: torch.Tensor) -> list[torch.Tensor]:
        mpo = decompose(weight, self.row_modes, self.col_modes, max_bond=self.max_bond)
        return mpo.cores

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, row_modes={self.row_modes}, col_modes={self.col_modes}"


# ----------------------------------------------------------------------------- target selection


def _is_transformers_model(model: nn.Module) -> bool:
    # A transformers model exists only once transformers.modeling_utils is imported: checking
    # sys.modules spares plain torch models (vision) an import of transformers (seconds).
    modeling = sys.modules.get("transformers.modeling_utils")
    if modeling is None:
        return False
    # a user module that wraps a transformers encoder counts too
    return any(isinstance(m, modeling.PreTrainedModel) for m in model.modules())


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The encoder's layers, ``(dotted name, ModuleList)``, or None if the model has none.

    The one heuristic opdf uses wherever it needs the layers (default targets, the alignment
    pairing, students made of teacher layers, BERT-of-Theseus): a ``ModuleList`` of blocks of one
    type that hold an ``nn.Linear`` (``bert.encoder.layer``, ``mpnet.encoder.layer``,
    ``distilbert.transformer.layer``, also inside a wrapper module). Lists as long as
    ``config.num_hidden_layers`` (when the model has one) come first, then the longest, then the
    shallowest.
    """
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    found = []
    for order, (name, module) in enumerate(model.named_modules()):
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) == 1 and any(
            isinstance(m, nn.Linear | nn.Conv2d) for m in module[0].modules()
        ):
            found.append((len(module) != n, -len(module), name.count("."), order, name))
    if not found:
        return None
    name = min(found)[-1]
    return name, model.get_submodule(name)


def default_targets(model: nn.Module) -> list[str]:
    """Module names the paper decomposes.

    transformers models: every ``nn.Linear`` inside the repeated encoder blocks (attention
    query/key/value/output and both FFN matrices); embeddings, pooler and classifier stay dense.
    Other models: every ``nn.Linear`` and ``nn.Conv2d`` except the last ``nn.Linear`` (the final
    classifier).
    """
    if _is_transformers_model(model):
        layers = encoder_layers(model)
        if layers is not None:
            prefix = layers[0] + "."
            return [
                name
                for name, module in model.named_modules()
                if name.startswith(prefix) and isinstance(module, nn.Linear)
            ]
    layers = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d) and name
    ]
    linears = [name for name in layers if isinstance(model.get_submodule(name), nn.Linear)]
    if linears:
        layers.remove(linears[-1])
    return layers


def _no_targets(model: nn.Module, targets: Sequence[str] | str | None) -> str:
    """Why no module was selected, in the terms of what the model holds."""
    if isinstance(model, nn.Linear | nn.Conv2d):
        return (f"the model is a bare {type(model).__name__}: opdf over-parameterizes the "
                "weights of a model's submodules; wrap it (nn.Sequential(layer)) and pass "
                "targets=['0']")  # fmt: skip
    if targets is None and _is_transformers_model(model) and encoder_layers(model) is not None:
        return (f"the default targets are the nn.Linear layers inside the encoder blocks "
                f"({encoder_layers(model)[0]}.*), and this model has none there; pass "
                "targets=[...] naming the modules to over-parameterize")  # fmt: skip
    layers = [n for n, m in model.named_modules() if n and isinstance(m, nn.Linear | nn.Conv2d)]
    linears = [n for n in layers if isinstance(model.get_submodule(n), nn.Linear)]
    if targets is None and layers and layers == linears[-1:]:
        return (f"the default targets keep the last nn.Linear ({layers[-1]!r}) dense as the "
                "classifier, and this model has no other nn.Linear/nn.Conv2d; pass "
                f"targets={layers!r} to over-parameterize it too")  # fmt: skip
    return ("no nn.Linear/nn.Conv2d weights to over-parameterize in this model (the default "
            "targets found none); pass targets=[...] naming the modules")  # fmt: skip


def _matches(pattern: str, name: str) -> bool:
    if name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _select(model: nn.Module, targets: Sequence[str] | str | None) -> list[str]:
    if targets is None:
        return default_targets(model)
    if isinstance(targets, str):
        targets = [targets]
    candidates = [
        name
        for name, module in model.named_modules()
        if name and isinstance(module, nn.Linear | nn.Conv2d)
    ]
    chosen: list[str] = []
    for pattern in targets:
        hits = [name for name in candidates if _matches(pattern, name)]
        if not hits:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in candidates})
            close = difflib.get_close_matches(pattern, candidates + suffixes, n=6, cutoff=0.4)
            hint = ", ".join(close) if close else ", ".join(candidates[:8])
            raise OpdfError(
                f"target pattern {pattern!r} matches no nn.Linear/nn.Conv2d module; similar "
                f"names: {hint}. Patterns match a full name, a '.'-suffix ('query'), a glob "
                f"('*.attention.*') or a regular expression."
            )
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _shape_for(
    name: str,
    weight: torch.Tensor,
    scheme: str,
    unit_modes: int,
    shapes: Mapping[str, Shapes] | None,
) -> tuple[list[int], list[int]]:
    rows, cols = as_matrix(weight).shape
    for pattern, (row, col) in (shapes or {}).items():
        if _matches(pattern, name):
            try:
                return validate_modes(rows, cols, row, col)
            except ValueError as exc:
                raise OpdfError(f"shapes[{pattern!r}] does not fit {name}: {exc}") from None
    return mpo_shapes(rows, cols, unit_modes if scheme == "mpo" else 0)


# ----------------------------------------------------------------------------- the public calls


@dataclass
class PlanEntry:
    """One weight that would be over-parameterized (used by ``opdf inspect`` and reports)."""

    name: str
    weight_shape: tuple[int, ...]
    row_modes: list[int]
    col_modes: list[int]
    bond_dims: list[int]
    core_params: int
    dense_params: int

    @classmethod
    def build(
        cls,
        name: str,
        weight_shape: Sequence[int],
        row_modes: list[int],
        col_modes: list[int],
        max_bond: int | None,
    ) -> PlanEntry:
        """Everything else follows from the shape and the modes."""
        return cls(
            name=name,
            weight_shape=tuple(weight_shape),
            row_modes=row_modes,
            col_modes=col_modes,
            bond_dims=bond_dims(row_modes, col_modes, max_bond),
            core_params=count_params(row_modes, col_modes, max_bond),
            dense_params=math.prod(weight_shape),
        )


def plan(
    model: nn.Module,
    scheme: str = "mpo",
    unit_modes: int = 3,
    targets: Sequence[str] | str | None = None,
    shapes: Mapping[str, Shapes] | None = None,
    max_bond: int | None = None,
) -> list[PlanEntry]:
    """What :func:`overparameterize` would do, without decomposing anything (a dry run)."""
    _check_scheme(scheme, unit_modes)
    if scheme == "none":
        return []
    entries = []
    names = _select(model, targets)
    if not names and targets is not None and not isinstance(targets, str) and not list(targets):
        raise OpdfError(
            "targets=[] names no module to over-parameterize: pass targets=None for the default "
            "ones (every nn.Linear of the encoder blocks), or name the modules, e.g. "
            "targets=['query', 'value']; to train the plain model use scheme='none'"
        )
    if not names:
        raise OpdfError(_no_targets(model, targets))
    owners: dict[int, str] = {}
    for name in names:
        module = model.get_submodule(name)
        if parametrize.is_parametrized(module, "weight"):
            what = (
                "is already over-parameterized; call opdf.merge(model) first"
                if isinstance(module.parametrizations.weight[0], MPOParametrization)
                else "already has a parametrization on its weight (e.g. weight_norm); remove it "
                "or leave the module out of targets"
            )
            raise OpdfError(f"{name} {what}")
        weight = module.weight
        if id(weight) in owners:
            raise OpdfError(
                f"{name}.weight is the same Parameter as {owners[id(weight)]}.weight (tied "
                "weights); over-parameterizing them would untie them. Leave one of them out of "
                "targets."
            )
        owners[id(weight)] = name
        row, col = _shape_for(name, weight, scheme, unit_modes, shapes)
        entries.append(PlanEntry.build(name, weight.shape, row, col, max_bond))
    return entries


def overparameterize(
    model: nn.Module,
    scheme: str = "mpo",
    unit_modes: int = 3,
    targets: Sequence[str] | str | None = None,
    shapes: Mapping[str, Shapes] | None = None,
    *,
    freeze_central: bool = False,
    train_only_central: bool = False,
    max_bond: int | None = None,
) -> nn.Module:
    """Replace each chosen weight by trainable MPO cores, in place; returns ``model``.

    Parameters
    ----------
    scheme
        ``"mpo"`` (OPDF: ``unit_modes`` unit modes between two balanced factors), ``"svd"`` (the
        paper's baseline: the same two factors, a two-core MPO) or ``"none"`` (no-op).
    unit_modes
        Over-parameterization scale ``L``; each unit mode adds a ``d x d`` core starting at I.
    targets
        Module names or patterns (full name, ``.``-suffix, glob or regex); default: see
        :func:`default_targets`.
    shapes
        ``{pattern: (row_modes, col_modes)}`` overriding the default modes per module.
    freeze_central, train_only_central
        Freeze the central core, or train only it (MPOP-style); bias stays as it was.
    max_bond
        Truncate bonds (lossy); ``None`` keeps the decomposition exact.
    """
    if freeze_central and train_only_central:
        raise OpdfError("freeze_central and train_only_central exclude each other; pick one")
    for entry in plan(model, scheme, unit_modes, targets, shapes, max_bond):
        module = model.get_submodule(entry.name)
        trainable = module.weight.requires_grad
        param = MPOParametrization(
            entry.row_modes, entry.col_modes, entry.weight_shape, scheme, max_bond
        )
        param.param_order = list(module._parameters)
        _own_class(module)  # a parametrization elsewhere on it may live in a class shared by copies
        parametrize.register_parametrization(module, "weight", param, unsafe=True)
        _own_class(module)
        center = param.central_index
        for k, core in enumerate(module_cores(module)):
            if train_only_central:
                core.requires_grad_(trainable and k == center)
            elif freeze_central:
                core.requires_grad_(trainable and k != center)
            else:
                core.requires_grad_(trainable)
    return model


def mpo_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, MPOParametrization]]:
    """``(name, module, parametrization)`` for every over-parameterized weight."""
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            param = module.parametrizations.weight[0]
            if isinstance(param, MPOParametrization):
                yield name, module, param


def module_cores(module: nn.Module) -> list[nn.Parameter]:
    """The cores of one over-parameterized module, in order (live parameters)."""
    param = module.parametrizations.weight[0]
    return [module.get_parameter(core_param_name(k)) for k in range(len(param.row_modes))]


def cores(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Module name -> its cores in order (live parameters)."""
    return {name: module_cores(module) for name, module, param in mpo_modules(model)}


def merge(model: nn.Module) -> nn.Module:
    """Contract every over-parameterized weight into a plain ``weight`` parameter, in place.

    Idempotent. Afterwards the model is a stock PyTorch / transformers model: same class, same
    ``state_dict()`` keys, same outputs, and ``save_pretrained`` needs no opdf to load.
    """
    for _name, module, param in list(mpo_modules(model)):
        core_list = module_cores(module)
        trainable = any(c.requires_grad for c in core_list)
        with torch.no_grad():
            weight = contract_weight(core_list, param.weight_shape).clone()
        param.override = nn.Parameter(weight, requires_grad=True)
        _own_class(module)  # removal edits the class: never one that another model uses
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        plain = module.weight
        if "weight" in module._buffers:  # pragma: no cover - defensive, torch registers a Parameter
            del module._buffers["weight"]
        module.weight = nn.Parameter(plain.detach(), requires_grad=trainable)
        # keep state_dict() key order identical to the original model ("weight" before "bias")
        order = [k for k in param.param_order if k in module._parameters]
        rest = [k for k in module._parameters if k not in order]
        module._parameters = {k: module._parameters[k] for k in order + rest}
    return model


class _Carry(torch.autograd.Function):
    """A zero whose backward sends ``out * grads[k]`` into ``weights[k]`` (see ``carry``)."""

    @staticmethod
    def forward(ctx, grads, ran, *weights):  # noqa: D102 - autograd protocol
        ctx.grads, ctx.ran = grads, ran
        return weights[0].new_zeros(())

    @staticmethod
    def backward(ctx, out):  # noqa: D102 - autograd protocol
        ctx.ran.append(True)
        return (None, None, *[out * g for g in ctx.grads])


class Accumulation:
    """What ``with opdf.accumulate(model) as acc`` yields: :meth:`carry` for the last
    micro-batch when a single backward must carry every gradient (DistributedDataParallel)."""

    def __init__(self, model: nn.Module, held: list) -> None:
        self.model = model
        self._held = held
        self._carried = False
        self._ran: list[bool] = []  # appended to by _Carry.backward
        self._misused = False  # optimizer.step() or a zero_grad() was called inside the block
        # parameter id -> (the parameter, its gradient's version) once it got a gradient here
        self._graded: dict[int, tuple[nn.Parameter, int]] = {}

    def _check_not_zeroed(self, p: nn.Parameter | None = None) -> None:
        """Refuse a ``zero_grad()`` inside the block after a backward: it would drop the earlier
        micro-batches' gradients of every parameter but the cores, whose held gradient keeps
        them. Checked as each backward reaches a parameter (``p``) and at the block's exit (every
        parameter; there a gradient zeroed in place, ``set_to_none=False``, is not seen)."""
        if p is None:
            watched = list(self._graded.values())
        else:
            watched = [self._graded[id(p)]] if id(p) in self._graded else []
        for param, version in watched:
            grad = param.grad
            if grad is None or (p is not None and grad._version != version):
                self._misused = True
                raise OpdfError(
                    "zero_grad() inside `with opdf.accumulate(model):` after a backward would "
                    "drop the earlier micro-batches' gradients of every parameter but the MPO "
                    "cores: call zero_grad() before the block or after optimizer.step()"
                )

    def _watch(self) -> list:
        """Hooks on each trainable parameter but the cores (those get their gradient at the
        exit): before a backward accumulates into it, its gradient must be the one the last
        backward left; after, note that gradient."""
        cores = {id(c) for _, module, _ in mpo_modules(self.model) for c in module_cores(module)}
        handles = []
        for p in self.model.parameters():
            if p.requires_grad and id(p) not in cores:
                handles.append(p.register_hook(lambda _grad, p=p: self._check_not_zeroed(p)))
                handles.append(p.register_post_accumulate_grad_hook(self._note))
        return handles

    def _note(self, p: torch.Tensor) -> None:
        self._graded[id(p)] = (p, p.grad._version)

    def carry(self) -> torch.Tensor:
        """Call just before the last micro-batch's forward; add the result to its loss.

        From here on the forwards use the live contraction, and the returned zero carries the
        gradient of the earlier micro-batches, so the last micro-batch's backward runs the one
        contraction backward and every core gets its whole gradient in that backward. That is
        what DDP needs: run the earlier micro-batches under ``ddp.no_sync()`` and the last one
        synced, and the cores' gradients are all-reduced once, in the usual backward (nothing
        happens at the end of the block)::

            with opdf.accumulate(model) as acc:
                for i, batch in enumerate(micro_batches):
                    last = i == len(micro_batches) - 1
                    extra = acc.carry() if last else 0.0
                    with contextlib.nullcontext() if last else ddp.no_sync():
                        (loss_fn(ddp(**batch)) / len(micro_batches) + extra).backward()

        With ``find_unused_parameters=True``, add it inside the DDP-wrapped forward.
        """
        if self._carried:
            raise OpdfError("Accumulation.carry() may be called once per accumulate block")
        self._carried = True
        weights, grads = [], []
        for param, weight, leaf in self._held:
            param.override = weight  # live: this forward's backward runs the contraction's
            if weight.requires_grad and leaf.grad is not None:
                weights.append(weight)
                grads.append(leaf.grad)
        if not weights:
            return torch.zeros(())
        return _Carry.apply(tuple(grads), self._ran, *weights)


def _refuse_step_inside(model: nn.Module, acc: Accumulation):
    """A global optimizer pre-step hook (removed at the block's exit) that refuses a step of any
    optimizer holding one of ``model``'s parameters."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    ids = {id(p) for p in model.parameters()}

    def hook(optimizer, args, kwargs):
        if any(id(p) in ids for g in optimizer.param_groups for p in g["params"]):
            acc._misused = True
            raise OpdfError(
                "optimizer.step() inside `with opdf.accumulate(model):` would move every "
                "parameter but the MPO cores, whose gradients arrive when the block ends: call "
                "optimizer.step() (and optimizer.zero_grad()) after the block"
            )

    return register_optimizer_step_pre_hook(hook)


@contextlib.contextmanager
def accumulate(model: nn.Module) -> Iterator[Accumulation]:
    """Gradient accumulation with one contraction per optimizer step.

    Inside the block each over-parameterized weight is contracted once; every micro-batch forward
    uses that weight and every backward accumulates into its gradient. On a clean exit the summed
    gradient flows back through the one contraction into the cores, so the cores' ``.grad`` equal
    plain accumulation while the contraction cost no longer grows with the number of
    micro-batches::

        with opdf.accumulate(model):
            for batch in micro_batches:
                (loss_fn(model(**batch)) / len(micro_batches)).backward()
        optimizer.step()

    Under DistributedDataParallel use :meth:`Accumulation.carry` instead, so that the cores'
    gradients arrive in the last micro-batch's (synced) backward rather than after it.

    ``optimizer.step()`` inside the block is an error (:class:`~opdf.errors.OpdfError`) for an
    optimizer holding any of ``model``'s parameters: the cores' gradients are not there yet, so
    it would move every parameter but the cores. So is ``zero_grad()`` after a backward inside
    the block, wherever it falls (between micro-batches, between a forward and its backward, at
    the end): it would drop the earlier micro-batches' gradients of every parameter but the
    cores. Refused at the next backward, or at the exit (where only ``set_to_none=True``, the
    default, is seen). Such a block delivers no gradient at its exit (none to leak into the next
    step). ``zero_grad()`` before the block's first backward is fine. Under DDP the refusal is
    per rank: a misuse on one rank only leaves the others waiting in their all-reduce.
    """
    held = []
    for _name, module, param in mpo_modules(model):
        if param.override is not None:
            raise OpdfError("opdf.accumulate() blocks cannot be nested on the same model")
        weight = contract_weight(module_cores(module), param.weight_shape)
        leaf = weight.detach().requires_grad_(weight.requires_grad)
        param.override = leaf
        held.append((param, weight, leaf))
    acc = Accumulation(model, held)
    refuse = _refuse_step_inside(model, acc) if held else None
    watches = acc._watch() if held else []
    try:
        yield acc
        if held and not acc._misused:
            acc._check_not_zeroed()  # after the last backward
    finally:
        if refuse is not None:
            refuse.remove()
        for handle in watches:
            handle.remove()
        # Like plain accumulation, micro-batches finished before an exception keep their gradient
        # (also when carry() was taken but its backward never ran); not after a misplaced step.
        for param, _weight, _leaf in held:
            param.override = None
        if not acc._ran and not acc._misused:
            pairs = [
                (w, leaf.grad) for _, w, leaf in held if w.requires_grad and leaf.grad is not None
            ]
            if pairs:
                torch.autograd.backward([w for w, _ in pairs], [g for _, g in pairs])


# ----------------------------------------------------------------------------- reporting


@dataclass
class ParamReport:
    """Parameter counts now (training) and after :func:`merge` (inference)."""

    total_params: int
    train_params: int
    inference_params: int
    modules: list[PlanEntry] = field(default_factory=list)

    @classmethod
    def from_plan(cls, model: nn.Module, entries: Sequence[PlanEntry]) -> ParamReport:
        """The counts ``model`` (plain) would have after :func:`overparameterize` per ``entries``
        (a :func:`plan`): a dry run's report, with no decomposition."""
        added = sum(e.core_params - e.dense_params for e in entries)
        total = sum(p.numel() for p in model.parameters())
        train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        trained = sum(
            e.core_params - e.dense_params
            for e in entries
            if model.get_submodule(e.name).weight.requires_grad
        )
        return cls(total + added, train + trained, total, list(entries))

    def __str__(self) -> str:
        """A table of the over-parameterized modules, then the counts (``opdf inspect``)."""
        rows = [
            f"{'module':<48} {'weight':>12} {'row modes':>18} {'col modes':>18} "
            f"{'bond dims':>28} {'cores':>11} {'dense':>10}"
        ]
        for e in self.modules:
            rows.append(
                f"{e.name:<48} {'x'.join(map(str, e.weight_shape)):>12} "
                f"{str(e.row_modes):>18} {str(e.col_modes):>18} {_short(e.bond_dims):>28} "
                f"{e.core_params:>11,} {e.dense_params:>10,}"
            )
        rows += [
            f"over-parameterized modules: {len(self.modules)}",
            f"train params:     {self.total_params:,}",
            f"trainable params: {self.train_params:,}",
            f"inference params: {self.inference_params:,}",
        ]
        return "\n".join(rows)


def _short(dims: list[int]) -> str:
    text = str(dims)
    return text if len(text) <= 28 else text[:25] + "..."


def param_report(model: nn.Module) -> ParamReport:
    """Counts for ``model`` as it is now; works on plain and over-parameterized models."""
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    entries = [
        PlanEntry.build(name, p.weight_shape, p.row_modes, p.col_modes, p.max_bond)
        for name, _module, p in mpo_modules(model)
    ]
    added = sum(e.core_params - e.dense_params for e in entries)
    return ParamReport(total, train, total - added, entries)


def _check_scheme(scheme: str, unit_modes: int) -> None:
    if scheme not in SCHEMES:
        raise OpdfError(f"unknown scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
    if not isinstance(unit_modes, int) or isinstance(unit_modes, bool) or unit_modes < 0:
        raise OpdfError(f"unit_modes must be an integer >= 0, got {unit_modes!r}")
