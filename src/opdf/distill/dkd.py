"""Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang, CVPR 2022, arXiv 2203.08679).

KD's KL splits into a target-class part and a non-target part, which DKD weights independently:

* TCKD: ``KL(b_t || b_s)`` between the binary distributions ``b = [p_target, 1 - p_target]``
  (temperature-softened probabilities);
* NCKD: ``KL(p~_t || p~_s)`` between the distributions over the non-target classes alone
  (softmax of the logits with the target class removed);

``L = ce_weight * CE(y, s) + min(epoch / warmup, 1) * T^2 * (alpha * TCKD + beta * NCKD)``, each KL
summed over classes and averaged over the batch, with mdistiller's defaults ``T = 4``,
``alpha = 1``, ``beta = 8``, ``warmup = 20`` (epochs, counted from 1 as mdistiller does, so the
first epoch already has weight ``1 / warmup``). ``warmup: 0`` turns the ramp off.

Differences from mdistiller's ``DKD.py``, all numerical only: NCKD is computed on the non-target
logits directly instead of subtracting 1000 from the target logit (the same value: ``exp(-1000)``
is 0 in float32), and TCKD's two probabilities come from log-sum-exps, so a confident teacher
(``p_target`` within 1e-7 of 1) gives no ``log(0)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from opdf.choices import check_fields, positive
from opdf.distill.base import Distiller, model_logits
from opdf.distill.registry import register_method
from opdf.errors import ConfigError


def _binary_log_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``log [p_target, 1 - p_target]`` of ``softmax(logits)``, shape ``(b, 2)``, stably."""
    log_p = F.log_softmax(logits, dim=-1)
    log_target = log_p.gather(1, target[:, None])
    others = log_p.scatter(1, target[:, None], -math.inf)
    return torch.cat([log_target, torch.logsumexp(others, dim=1, keepdim=True)], dim=1)


def _non_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The logits with the target column removed, ``(b, C - 1)``, classes in order."""
    b, c = logits.shape
    keep = torch.ones_like(logits, dtype=torch.bool).scatter_(1, target[:, None], False)
    return logits[keep].view(b, c - 1)


def _kl(log_p_t: torch.Tensor, log_p_s: torch.Tensor) -> torch.Tensor:
    """``sum_c p_t (log p_t - log p_s)``, mean over the batch."""
    return F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(1).mean()


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(TCKD, NCKD)``, each ``T^2 * KL`` summed over classes and averaged over the batch."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student and teacher logits must both be (batch, classes), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape[1] < 2:
        raise ValueError("DKD needs at least 2 classes (it is not defined for regression)")
    s, t = student_logits / temperature, teacher_logits / temperature
    target = target.long().view(-1)
    tckd = _kl(_binary_log_probs(t, target), _binary_log_probs(s, target))
    if s.shape[1] == 2:  # one non-target class: its distribution is the point mass, KL = 0
        nckd = s.sum() * 0.0
    else:
        nckd = _kl(
            F.log_softmax(_non_target(t, target), dim=1),
            F.log_softmax(_non_target(s, target), dim=1),
        )
    return tckd * temperature**2, nckd * temperature**2


def dkd_loss(student_logits, teacher_logits, target, alpha: float = 1.0, beta: float = 8.0,
             temperature: float = 4.0) -> torch.Tensor:  # fmt: skip
    """``alpha * TCKD + beta * NCKD`` (mdistiller's ``dkd_loss``)."""
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


def warmup_factor(step: int, steps_per_epoch: int, warmup: float) -> float:
    """mdistiller's ``min(epoch / warmup, 1)`` with ``epoch`` counted from 1 (``step`` 0-based)."""
    if warmup <= 0:
        return 1.0
    epoch = step // max(1, steps_per_epoch) + 1
    return min(epoch / warmup, 1.0)


@register_method("dkd")
class DKD(Distiller):
    """Decoupled KD (CVPR 2022): CE + warm-up * T^2 * (alpha*TCKD + beta*NCKD), frozen teacher."""

    data_kinds = ("text", "image")

    @dataclass
    class Options:
        temperature: float = positive(4.0)
        alpha: float = positive(1.0, allow_zero=True)
        beta: float = positive(8.0, allow_zero=True)
        ce_weight: float = positive(1.0, allow_zero=True)
        warmup: float = positive(20.0, allow_zero=True)

        def validate(self, cfg=None) -> None:
            check_fields(self, "dkd")

    steps_per_epoch: int = 1

    def on_train_start(self, context) -> None:
        self.steps_per_epoch = max(1, int(context.steps_per_epoch or 1))

    def forward_train(self, batch):
        if self.num_labels < 2:
            raise ConfigError("dkd needs a classification task (it is not defined for regression)")
        logits = model_logits(self.student, batch)
        with torch.no_grad():
            t_logits = self.teacher_logits(batch)
        o = self.options
        tckd, nckd = dkd_terms(logits, t_logits, batch["labels"], o.temperature)
        ramp = warmup_factor(self.step, self.steps_per_epoch, o.warmup)
        losses = {}
        if o.ce_weight:
            losses["ce"] = o.ce_weight * F.cross_entropy(logits, batch["labels"])
        losses["tckd"] = ramp * o.alpha * tckd
        losses["nckd"] = ramp * o.beta * nckd
        return logits, losses

    def on_step_end(self, step: int) -> dict[str, float]:
        return {"dkd_warmup": warmup_factor(step, self.steps_per_epoch, self.options.warmup)}
