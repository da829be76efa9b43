"""Metric values against hand-checked cases."""

import math

import numpy as np
import pytest
import torch

from opdf.data.metrics import accuracy, f1_accuracy, get_metric, matthews, pearson_spearman


def test_accuracy_from_ids_logits_and_tensors():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 0.75}
    logits = np.array([[0.1, 0.9], [2.0, 1.0], [0.0, 3.0], [5.0, -1.0]])
    assert accuracy(logits, [1, 0, 0, 0])["accuracy"] == 0.75
    assert accuracy(torch.tensor(logits), torch.tensor([1, 0, 1, 0]))["accuracy"] == 1.0


def test_f1_and_matthews_hand_checked():
    # TP=2, TN=1, FP=1, FN=1: precision = recall = 2/3, F1 = 2/3, accuracy = 3/5,
    # MCC = (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    labels = [1, 1, 0, 0, 1]
    preds = [1, 0, 0, 1, 1]
    r = f1_accuracy(preds, labels)
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["accuracy"] == pytest.approx(0.6)
    assert r["combined"] == pytest.approx((2 / 3 + 0.6) / 2)
    assert matthews(preds, labels)["mcc"] == pytest.approx(1 / 6)
    assert matthews([1, 1, 1, 1], [1, 0, 1, 0])["mcc"] == 0.0  # constant predictor


def test_pearson_spearman_hand_checked():
    # x = 1..4, y = x^2: Pearson = 25 / sqrt(5 * 129), Spearman = 1 (monotone)
    r = pearson_spearman([1.0, 2.0, 3.0, 4.0], [1.0, 4.0, 9.0, 16.0])
    assert r["pearson"] == pytest.approx(25 / math.sqrt(645))
    assert r["spearman"] == pytest.approx(1.0)
    assert r["combined"] == pytest.approx((25 / math.sqrt(645) + 1) / 2)
    # (n, 1) regression output; reversed order -> -1
    assert pearson_spearman(np.array([[3.0], [2.0], [1.0]]), [1, 2, 3])["spearman"] == -1.0
    assert pearson_spearman([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson"] == 0.0  # no NaN


def test_metric_errors_and_registry():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="zero examples"):
        accuracy([], [])
    with pytest.raises(ValueError, match="unknown metric 'bleu'; valid names: accuracy, f1"):
        get_metric("bleu")
    fn, main = get_metric("mcc")
    assert fn is matthews and main == "mcc"
