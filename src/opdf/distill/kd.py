"""Vanilla knowledge distillation (Hinton, Vinyals, Dean 2015, arXiv 1503.02531).

``L = ce_weight * CE(y, s) + kd_weight * T^2 * KL(softmax(t / T) || softmax(s / T))`` with the KL
summed over classes and averaged over the batch (mdistiller's form). By default the weights are a
convex combination, ``ce_weight = 1 - alpha`` and ``kd_weight = alpha``, with mdistiller's code
defaults ``T = 4``, ``alpha = 0.9``. Set ``ce_weight`` and ``kd_weight`` to use independent weights
instead (DBKD's form); the baselines OPDF compares with do not agree on one form (see
``reference/kd-methods.md`` §1), so both are here. Regression tasks (one output) use MSE to the
label and MSE to the teacher's prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from opdf.choices import check_fields, positive, unit_interval
from opdf.distill.base import Distiller, model_logits, task_loss
from opdf.distill.registry import register_method
from opdf.errors import ConfigError


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float):
    """``T^2 * KL(p_t^T || p_s^T)``, summed over classes, mean over the batch."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1).mean()
    return kl * temperature**2


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
              num_labels: int) -> torch.Tensor:  # fmt: skip
    """KD's term toward the teacher: :func:`kd_loss` for classes, MSE to the teacher's prediction
    for regression (``num_labels == 1``, where a softmax over one logit is always 0)."""
    if num_labels == 1:
        return F.mse_loss(student_logits.view(-1), teacher_logits.view(-1))
    return kd_loss(student_logits, teacher_logits, temperature)


@register_method("kd")
class KD(Distiller):
    """Hinton KD: (1-alpha)*CE + alpha*T^2*KL(teacher || student), frozen teacher."""

    data_kinds = ("text", "image")

    @dataclass
    class Options:
        temperature: float = positive(4.0)
        alpha: float = unit_interval(0.9)
        ce_weight: float | None = None
        kd_weight: float | None = None

        def validate(self, cfg=None) -> None:
            check_fields(self, "kd")
            if (self.ce_weight is None) != (self.kd_weight is None):
                raise ConfigError(
                    "kd.ce_weight and kd.kd_weight go together (independent weights); "
                    "set both, or neither to use the convex alpha"
                )

        def weights(self) -> tuple[float, float]:
            if self.ce_weight is not None:
                return self.ce_weight, self.kd_weight
            return 1.0 - self.alpha, self.alpha

    def forward_train(self, batch):
        logits = model_logits(self.student, batch)
        with torch.no_grad():
            t_logits = self.teacher_logits(batch)
        ce_w, kd_w = self.options.weights()
        soft = soft_loss(logits, t_logits, self.options.temperature, self.num_labels)
        losses = {}
        if ce_w:
            losses["ce"] = ce_w * task_loss(logits, batch["labels"], self.num_labels)
        if kd_w:
            losses["kd"] = kd_w * soft
        return logits, losses
