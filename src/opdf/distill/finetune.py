"""Plain fine-tuning of one model on its task: how teachers are trained (not a registered method,
since it distils nothing; the runner uses it through the same :class:`Trainer` as every method)."""

from __future__ import annotations

from opdf.distill.base import Distiller, model_logits, task_loss


class FineTune(Distiller):
    """Cross-entropy (MSE for regression) on the labels; no teacher."""

    needs_teacher = False
    name = "finetune"
    data_kinds = ("text", "image")

    def forward_train(self, batch):
        logits = model_logits(self.student, batch)
        return logits, {"ce": task_loss(logits, batch["labels"], self.num_labels)}
