"""A run's metric records as TensorBoard scalars (config ``log_to: [jsonl, tensorboard]``).

A record is what the trainer writes to ``metrics.jsonl``: ``{"step": 30, "split": "train",
name: value, ...}``. Every number in it becomes the scalar ``<split>/<name>`` at ``step``: the loss
terms and their sum, the learning rate, the method's own scalars (a replacing rate, a teacher's
loss), ``L_Aux`` and its share per module group (``train/align/query``, ...), every dev
evaluation and the merged student's test metrics. The step itself and flags (dev's ``best``) are
left out, so the event file holds exactly the numbers of ``metrics.jsonl``.

TensorBoard is the logger that works offline. It is an optional dependency
(``pip install 'opdf[tb]'``), imported only when a run asks for it.
"""

from __future__ import annotations

import importlib.util
import numbers
from pathlib import Path

from opdf.errors import OpdfError

__all__ = ["TB_DIR", "TensorBoardLog", "require_tensorboard", "scalars"]

#: the event files' folder inside a run's OUTPUT_DIR
TB_DIR = "tb"
EXTRA = "opdf[tb]"


def require_tensorboard() -> None:
    """Fail early, before any training, when the ``tensorboard`` package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise OpdfError(
            "log_to: tensorboard needs the tensorboard package, which is not installed: "
            f"pip install '{EXTRA}' (or tensorboard itself), or drop tensorboard from log_to"
        )


def scalars(record: dict) -> dict[str, float]:
    """``{"<split>/<name>": value}`` for every number of a metrics record (not ``step``, not
    booleans such as dev's ``best``)."""
    split = record.get("split", "train")
    return {
        f"{split}/{k}": float(v)
        for k, v in record.items()
        if k not in ("step", "split") and isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


class TensorBoardLog:
    """Writes metrics records into ``folder`` (an event file per session of the run).

    ``purge_step``: TensorBoard discards the earlier sessions' events at steps ``>= purge_step``
    (a resumed run: from its checkpoint's step, :class:`opdf.run.metrics_log.MetricsLog`).
    """

    def __init__(self, folder: str | Path, *, purge_step: int | None = None):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        self.writer = SummaryWriter(str(self.folder), purge_step=purge_step)

    def write(self, record: dict) -> None:
        step = int(record["step"])
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        if record.get("split") != "train":  # evaluations are rare and worth keeping at once
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
