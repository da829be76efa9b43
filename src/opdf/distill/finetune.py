"""Plain fine-tuning of one model on its task: how teachers are trained (not a registered method,
since it distils nothing; the runner uses it through the same :class:`Trainer` as every method)."""

from __future__ import annotations

from opdf.distill.base import Distiller, model_inputs, task_loss


class FineTune(Distiller):
    """Cross-entropy (MSE for regression) on the labels; no teacher."""

    needs_teacher = False
    name = "finetune"

    def forward_train(self, batch):
        logits = self.student(**model_inputs(batch)).logits
        return logits, {"ce": task_loss(logits, batch["labels"], self.num_labels)}
