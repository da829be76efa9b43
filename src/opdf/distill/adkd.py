"""AD-KD: attribution-driven KD (Wu, Chen, Quan, Wang, Wang, ACL 2023, arXiv 2305.10010).

Besides the logits, the student learns *which tokens* the teacher's decision rests on. Attributions
are integrated gradients at the embedding-layer output ``e`` (word + position + type embeddings
after LayerNorm; baseline 0), an ``m``-step Riemann sum:

    IG(e) = e * (1/m) sum_{k=1..m} dF(k/m e) / d(k/m e)

with ``m = ig_steps`` (default 1, the released scripts' setting: gradient x input). As in the
official code the whole embedding output is scaled by ``k/m`` (a forward hook), and ``F`` is the
task loss with the gold labels (CE, or MSE for regression). Per token ``i``:

* teacher: ``a_t[i] = || top-K_d |IG_t[i, :]| ||_2`` over its ``topk`` largest dimensions
  (``topk: null`` = all, the code's 768 for BERT-base), computed without a graph, teacher in eval;
* student: ``a_s[i] = || IG_s[i, :] ||_2`` over all dimensions, computed with
  ``create_graph=True`` so that the loss backpropagates through the gradient (double backprop);
* both maps L2-normalised over the sequence (padding gets zero gradient, so zero score).

``L_attr = sum_views sum_{b,i} (a_t - a_s)^2 / #{a_t != 0}``, over one (micro-)batch as in the
official code: ``grad_accum`` and the number of processes change how its tokens are weighted.
With more than 2 classes (or ``multi_view: true``) there is one view per class ``c`` with
``F_c = -mean_b log p_c`` (the code's ``saliency_mse_for_multiclass``), and the per-view losses
are summed; with 2 classes both views give the same normalised map, so one view with the task
loss is used. The total loss is

    L = alpha * L_kd + (1 - alpha) * CE(y, s) + beta * L_attr,
    L_kd = -sum_c softmax(t / T)_c log softmax(s / T)_c   (no T^2; MSE(s/T, t/T) for regression)

with the code's defaults ``alpha = 0.8``, ``T = 2``, ``beta = 1`` (its SST-2 script). ``anneal:
true`` is ``kd_anneal``: ``T_e = T + (1 - T) e / (E - 1)`` over the run's epochs ``e = 0..E-1``.

The student's start: the official student is a separately pretrained small BERT
(``--student_model``, e.g. a 6-layer general-distilled BERT) with a new classification head. Here
the default stays the runner's (``student.source: finetuned-teacher``, the fine-tuned teacher's
layers with its head), the start of every committed AD-KD result; ``student.source:
pretrained-teacher`` (new head) or ``model`` gives the official kind of start.

Teacher and student must have the same hidden size (maps are compared token by token; both see
the run's one tokenization). Cost per step: a teacher forward and backward to ``e``, a student
forward, its gradient with a graph, and the backward through both (about 3x a KD step), times
``m`` for ``m > 1``: the ``k = m`` forward (``alpha = 1``) also gives the logits of the KD and CE
terms (the official code runs one more forward for those).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from opdf.choices import at_least, check_fields, positive, unit_interval
from opdf.distill.base import Distiller, model_inputs, task_loss
from opdf.distill.registry import register_method
from opdf.errors import ConfigError, OpdfError
from opdf.models import base_model, resolve_model_dir


def embedding_module(model: nn.Module) -> nn.Module:
    """The embeddings module of a transformers encoder (``model.bert.embeddings``, ...)."""
    emb = getattr(base_model(model), "embeddings", None)
    if not isinstance(emb, nn.Module):
        raise ConfigError(
            f"adkd needs an encoder with an `embeddings` module; {type(model).__name__} has none"
        )
    return emb


class EmbeddingTap:
    """Forward hook on an embeddings module: scales its output by ``alpha`` (the IG path) and
    records it (``output``: what the encoder layers see; ``raw``: before scaling). An output that
    needs no gradient (a frozen teacher) is made a leaf that does, so attributions can be taken."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha
        self.output: torch.Tensor | None = None
        self.raw: torch.Tensor | None = None

    def __call__(self, module, args, output):
        self.raw = output
        out = output * self.alpha if self.alpha != 1.0 else output
        if not out.requires_grad:
            out = out.detach().requires_grad_(True)
        self.output = out
        return out


@contextlib.contextmanager
def tapped(model: nn.Module, alpha: float = 1.0):
    """Run ``model`` with an :class:`EmbeddingTap` on its embeddings (removed on exit)."""
    tap = EmbeddingTap(alpha)
    handle = embedding_module(model).register_forward_hook(tap)
    try:
        yield tap
    finally:
        handle.remove()


def _twice_differentiable(needed: bool):
    """Scaled-dot-product attention on its composite ("math") kernel: the fused CPU/GPU kernels
    have no derivative of their backward, which the student's double backprop needs."""
    if not needed:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def attribution_map(ig: torch.Tensor, topk: int | None = None) -> torch.Tensor:
    """Per-token scores ``|| top-k |IG[b, i, :]| ||_2``, L2-normalised over the sequence."""
    if topk is not None and topk < ig.shape[-1]:
        score = ig.abs().topk(topk, dim=-1).values.norm(dim=-1)
    else:
        score = ig.norm(dim=-1)
    return F.normalize(score, p=2, dim=1)


def attribution_loss(teacher_map: torch.Tensor, student_map: torch.Tensor) -> torch.Tensor:
    """``sum (a_t - a_s)^2 / #{a_t != 0}`` (the code's ``L2`` loss)."""
    nonzero = (teacher_map != 0).sum().clamp_min(1)
    return F.mse_loss(student_map, teacher_map, reduction="sum") / nonzero


@register_method("adkd")
class ADKD(Distiller):
    """AD-KD: alpha*KD + (1-alpha)*CE + beta*MSE of integrated-gradient token attributions."""

    @dataclass
    class Options:
        alpha: float = unit_interval(0.8)
        temperature: float = positive(2.0)
        beta: float = positive(1.0, allow_zero=True)  # the code's saliency_w
        # teacher dimensions per token; null: all
        topk: int | None = at_least(None, 1, allow_none=True, why="null: all")
        ig_steps: int = at_least(1, 1)
        multi_view: bool | None = None  # null: one view per class when there are > 2 classes
        anneal: bool = False  # kd_anneal: the temperature falls linearly to 1 over the epochs

        def validate(self, cfg=None) -> None:
            check_fields(self, "adkd")

    @classmethod
    def check_task(cls, num_labels: int, config) -> None:
        """A ``student.model`` of another hidden size than the teacher's cannot be compared at the
        embeddings: say so from the two config.json files, before the teacher fine-tune."""
        if config is None or config.student.model is None:
            return
        hidden_t, hidden_s = _hidden_size(config.teacher.model), _hidden_size(config.student.model)
        if hidden_s is not None and hidden_t is not None and hidden_s != hidden_t:
            raise ConfigError(
                f"adkd compares attributions token by token at the embeddings: teacher and "
                f"student need the same hidden size (teacher.model {config.teacher.model!r}: "
                f"{hidden_t}, student.model {config.student.model!r}: {hidden_s}); use "
                f"student.layers, or a student.model of width {hidden_t}"
            )

    def __init__(self, student, teacher, options=None, *, num_labels=2):
        super().__init__(student, teacher, options, num_labels=num_labels)
        self.options.validate()
        hidden_s = getattr(getattr(student, "config", None), "hidden_size", None)
        hidden_t = getattr(getattr(teacher, "config", None), "hidden_size", None)
        if hidden_s is not None and hidden_t is not None and hidden_s != hidden_t:
            raise ConfigError(
                f"adkd compares attributions token by token at the embeddings: teacher and "
                f"student need the same hidden size (teacher {hidden_t}, student {hidden_s})"
            )
        if self.options.topk is not None and hidden_t is not None and self.options.topk > hidden_t:
            raise ConfigError(
                f"adkd.topk {self.options.topk} exceeds the hidden size {hidden_t}; use at most "
                f"{hidden_t}, or null for all dimensions"
            )
        embedding_module(student), embedding_module(teacher)  # fail now, not at step 1
        mv = self.options.multi_view
        self.multi_view = num_labels > 2 if mv is None else bool(mv)
        if self.multi_view and num_labels < 2:
            raise ConfigError("adkd.multi_view needs a classification task")
        self._steps_per_epoch: int | None = None
        self._epochs = 1

    def on_train_start(self, context) -> None:
        if self.options.anneal:  # epochs of this run: e = step // steps_per_epoch
            self._steps_per_epoch = max(1, int(context.steps_per_epoch))
            self._epochs = max(1, math.ceil(context.total_steps / self._steps_per_epoch))

    def temperature(self, step: int | None = None) -> float:
        """``T``, or with ``anneal`` the epoch's ``T_e = T + (1 - T) e / (E - 1)``."""
        t = self.options.temperature
        if not self.options.anneal or self._steps_per_epoch is None or self._epochs < 2:
            return t
        epoch = min((self.step if step is None else step) // self._steps_per_epoch,
                    self._epochs - 1)  # fmt: skip
        return t + (1.0 - t) * epoch / (self._epochs - 1)

    # -- the pieces --------------------------------------------------------------------------
    def view_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """The functions ``F`` whose input gradients are attributed (one per view)."""
        if not self.multi_view:
            return [task_loss(logits, labels, self.num_labels)]
        log_p = F.log_softmax(logits, dim=-1)
        return [-log_p[:, c].mean() for c in range(logits.shape[-1])]

    def kd_term(self, s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature()
        if self.num_labels == 1:
            return F.mse_loss((s_logits / t).view(-1), (t_logits / t).view(-1))
        p_t = F.softmax(t_logits / t, dim=-1)
        return -(p_t * F.log_softmax(s_logits / t, dim=-1)).sum(-1).mean()

    def attributions(self, model: nn.Module, inputs: dict, labels: torch.Tensor, *,
                     create_graph: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:  # fmt: skip
        """``(logits, [IG per view])`` of ``model`` on one batch (``create_graph``: keep the
        graph of the gradients, for the student)."""
        m = self.options.ig_steps
        sums: list[torch.Tensor] = []
        logits = raw = None
        with torch.enable_grad():
            for k in range(1, m + 1):
                with tapped(model, k / m) as tap, _twice_differentiable(create_graph):
                    logits = model(**inputs).logits
                fs = self.view_losses(logits, labels)
                grads = [
                    torch.autograd.grad(f, tap.output, create_graph=create_graph,
                                        retain_graph=create_graph or v < len(fs) - 1)[0]
                    for v, f in enumerate(fs)
                ]  # fmt: skip
                sums = grads if k == 1 else [a + g for a, g in zip(sums, grads, strict=True)]
                raw = tap.raw
        if not create_graph:
            raw = raw.detach()
        return logits, [raw * (g / m) for g in sums]

    def attribution_kind(self) -> str:
        """What, besides the teacher and the batch, decides the teacher's attribution maps (the
        key of their cache entries)."""
        o = self.options
        return (f"adkd-maps:ig_steps={o.ig_steps}:topk={o.topk}:multi_view={self.multi_view}:"
                f"num_labels={self.num_labels}")  # fmt: skip

    def teacher_attributions(self, inputs: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen teacher's logits and attribution map per view (``map0``, ``map1``, ...)."""
        logits, ig = self.attributions(self.teacher, inputs, labels, create_graph=False)
        maps = {f"map{v}": attribution_map(t.detach(), self.options.topk) for v, t in enumerate(ig)}
        return {"logits": logits.detach(), **maps}

    # -- training ----------------------------------------------------------------------------
    def forward_train(self, batch):
        o = self.options
        inputs, labels = model_inputs(batch), batch["labels"]
        losses = {}
        if o.beta:
            compute = functools.partial(self.teacher_attributions, inputs, labels)
            teacher = self.teacher_outputs(self.attribution_kind(), batch, compute)
            t_logits = teacher["logits"]
            t_maps = [teacher[f"map{v}"] for v in range(len(teacher) - 1)]
            logits, s_ig = self.attributions(self.student, inputs, labels, create_graph=True)
            attr = sum(
                attribution_loss(t, attribution_map(s)) for t, s in zip(t_maps, s_ig, strict=True)
            )
        else:  # no attribution term: plain KD + CE
            logits = self.student(**inputs).logits
            with torch.no_grad():
                t_logits = self.teacher_logits(batch)
        if o.alpha < 1:
            losses["ce"] = (1 - o.alpha) * task_loss(logits, labels, self.num_labels)
        if o.alpha > 0:
            losses["kd"] = o.alpha * self.kd_term(logits, t_logits)
        if o.beta:
            losses["attr"] = o.beta * attr
        return logits, losses


def _hidden_size(model: str | None) -> int | None:
    """The ``hidden_size`` in a text model's config.json; None where it cannot be read (the model
    load reports that case itself)."""
    import json

    if model is None:
        return None
    try:
        raw = json.loads((resolve_model_dir(model) / "config.json").read_text())
    except (OSError, ValueError, OpdfError):  # the model load that follows says why
        return None
    size = raw.get("hidden_size")
    return size if isinstance(size, int) else None
