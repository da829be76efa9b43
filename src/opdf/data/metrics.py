"""Task metrics, computed with scikit-learn and scipy (never re-derived by hand).

Every metric function takes ``(preds, labels)`` and returns ``dict[str, float]``. ``preds`` may be
class ids, or logits / scores of shape ``(n, num_labels)`` (the argmax is taken); for regression it
is the predicted value, shape ``(n,)`` or ``(n, 1)``.

Metric names (the keys) are: ``accuracy``, ``f1`` (binary, positive class 1), ``mcc`` (Matthews
correlation), ``pearson``, ``spearman``, and ``combined`` (the mean of the two numbers a task
reports: F1/accuracy for MRPC and QQP, Pearson/Spearman for STS-B, as GLUE does), and ``top1`` /
``top5`` for image classification (:func:`topk_accuracy`, from logits).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from opdf.errors import OpdfError

MetricFn = Callable[[object, object], dict[str, float]]


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def to_class_ids(preds) -> np.ndarray:
    """Class ids from class ids or from ``(n, num_labels)`` logits/probabilities."""
    p = _as_numpy(preds)
    if p.ndim == 2:
        p = p.argmax(axis=1) if p.shape[1] > 1 else p[:, 0]
    return p.astype(np.int64)


def to_values(preds) -> np.ndarray:
    """Regression predictions as a float vector (accepts ``(n,)`` or ``(n, 1)``)."""
    p = _as_numpy(preds).astype(np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1:
        raise ValueError(f"regression predictions must have shape (n,) or (n, 1), got {p.shape}")
    return p


def _check_lengths(p: np.ndarray, y: np.ndarray) -> None:
    if len(p) != len(y):
        raise ValueError(f"got {len(p)} predictions for {len(y)} labels")
    if len(y) == 0:
        raise OpdfError("cannot compute a metric on zero examples")


def accuracy(preds, labels) -> dict[str, float]:
    p, y = to_class_ids(preds), _as_numpy(labels).astype(np.int64)
    _check_lengths(p, y)
    return {"accuracy": float(accuracy_score(y, p))}


def f1_accuracy(preds, labels) -> dict[str, float]:
    """Binary F1 (positive class 1) and accuracy, plus their mean (``combined``)."""
    p, y = to_class_ids(preds), _as_numpy(labels).astype(np.int64)
    _check_lengths(p, y)
    f1 = float(f1_score(y, p, average="binary", pos_label=1, zero_division=0.0))
    acc = float(accuracy_score(y, p))
    return {"f1": f1, "accuracy": acc, "combined": (f1 + acc) / 2}


def matthews(preds, labels) -> dict[str, float]:
    """Matthews correlation (CoLA), plus accuracy for information."""
    p, y = to_class_ids(preds), _as_numpy(labels).astype(np.int64)
    _check_lengths(p, y)
    return {"mcc": float(matthews_corrcoef(y, p)), "accuracy": float(accuracy_score(y, p))}


def pearson_spearman(preds, labels) -> dict[str, float]:
    """Pearson and Spearman correlation (STS-B), plus their mean (``combined``).

    A constant prediction vector has no defined correlation; it scores 0.0 here (not NaN), so that
    checkpoint selection never compares against NaN.
    """
    p, y = to_values(preds), _as_numpy(labels).astype(np.float64)
    _check_lengths(p, y)
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:
        pr = sr = 0.0
    else:
        pr = float(pearsonr(p, y)[0])
        sr = float(spearmanr(p, y)[0])
    return {"pearson": pr, "spearman": sr, "combined": (pr + sr) / 2}


def topk_accuracy(preds, labels, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy for each ``k`` in ``ks`` (keys ``top1``, ``top5``): the label is among the
    ``k`` largest logits. Needs ``(n, num_labels)`` scores; ``k`` larger than the number of
    classes is left out (it would be 1 by construction). Ties are broken by class index."""
    p, y = _as_numpy(preds), _as_numpy(labels).astype(np.int64)
    if p.ndim != 2:
        raise ValueError(f"top-k accuracy needs (n, num_labels) scores, got shape {p.shape}")
    _check_lengths(p, y)
    order = np.argsort(-p, axis=1, kind="stable")
    out = {}
    for k in ks:
        if k <= p.shape[1] and (k == 1 or k < p.shape[1]):
            hit = (order[:, :k] == y[:, None]).any(axis=1)
            out[f"top{k}"] = float(hit.mean())
    return out


#: metric family name -> (function, main metric key)
METRICS: dict[str, tuple[MetricFn, str]] = {
    "accuracy": (accuracy, "accuracy"),
    "topk": (topk_accuracy, "top1"),
    "f1": (f1_accuracy, "f1"),
    "mcc": (matthews, "mcc"),
    "pearson_spearman": (pearson_spearman, "combined"),
}


def get_metric(name: str) -> tuple[MetricFn, str]:
    """``(metric function, main metric key)`` for a metric family name (see :data:`METRICS`)."""
    try:
        return METRICS[name]
    except KeyError:
        raise OpdfError(
            f"unknown metric {name!r}; valid names: {', '.join(sorted(METRICS))}"
        ) from None
