"""The effective step: how far one AdamW step moves each merged weight, over the plain weight's.

Usage::

    python benchmarks/effective_step.py [--model bert-base-1layer|minilm-student] [--lr 1e-4]
        [--batch-size 32] [--max-length 64] [--out FILE.md]

For one real batch (rt-polarity train sentences, the MiniLM/BERT-uncased tokenizer, cross-entropy
on the labels) the plain model takes one AdamW step; then, from the same start, each
over-parameterized copy (svd; mpo with 1..4 unit modes) takes the same step with
``opdf.lr_groups(..., scaling="none")`` and with ``"auto"``. Reported per scheme and scale: the
RMS change of every merged encoder weight over the plain model's change of that weight (median,
min and max over the weights), and the ratio ``opdf.lr_scaling.predicted_step`` predicts for
``none``. The models:

* ``bert-base-1layer``: ``transformers.BertConfig(num_hidden_layers=1)`` (hidden 768, FFN 3072,
  12 heads), random init with seed 0, 2 labels: Q, K, V, O 768x768, FFN 3072x768 and 768x3072.
* ``minilm-student``: the bottom 3 layers of the pretrained all-MiniLM-L6-v2 (hidden 384, FFN 1536),
  the student of the rt-polarity configs (trained weights have a larger ``tr S``).

``--time-steps N`` also times ``optimizer.step()`` (fused AdamW, mean of N after one warm-up) for
the plain groups and for ``auto``'s per-core groups at the largest scale.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

import opdf
from opdf.lr_scaling import predicted_step
from opdf.mpo import contract
from opdf.overparam import default_targets
from opdf.report.render import markdown_table, print_and_write

SCALES = [("svd", 0), ("mpo", 1), ("mpo", 2), ("mpo", 3), ("mpo", 4)]


def build_model(name: str) -> torch.nn.Module:
    if name == "bert-base-1layer":
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(0)
        return BertForSequenceClassification(BertConfig(num_hidden_layers=1, num_labels=2))
    if name == "minilm-student":
        from opdf.models import load_model, student_from_teacher

        teacher, _ = load_model("minilm-l6", num_labels=2, seed=0)
        return student_from_teacher(teacher, [0, 1, 2])
    raise SystemExit(f"unknown --model {name!r}")


def real_batch(batch_size: int, max_length: int) -> dict[str, torch.Tensor]:
    """The first ``batch_size`` rt-polarity train sentences, tokenized like the runner does."""
    from opdf.data.movie_reviews import load_movie_reviews
    from opdf.models import load_tokenizer

    train = load_movie_reviews("rt-polarity").train
    tok = load_tokenizer("minilm-l6")
    enc = tok(
        list(train.texts[:batch_size]),
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    return {**enc, "labels": torch.tensor(train.labels[:batch_size])}


def merged(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The current weight of each named module (contracted when over-parameterized)."""
    chains = opdf.cores(model)
    out = {}
    with torch.no_grad():
        for name in names:
            weight = model.get_submodule(name).weight
            if name in chains:
                weight = contract(chains[name]).reshape(weight.shape)
            out[name] = weight.detach().clone()
    return out


def one_step(model, batch, lr: float, scaling: str, names: list[str]) -> dict[str, float]:
    """RMS change of each named weight after one fused AdamW step (weight decay 0)."""
    before = merged(model, names)
    opt = torch.optim.AdamW(opdf.lr_groups(model, lr, scaling=scaling), lr=lr, fused=True)
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    opt.step()
    after = merged(model, names)
    return {n: float((after[n] - before[n]).pow(2).mean().sqrt()) for n in names}


def time_steps(model, batch, lr: float, scaling: str, n: int) -> tuple[float, int]:
    groups = opdf.lr_groups(model, lr, scaling=scaling)
    opt = torch.optim.AdamW(groups, lr=lr, fused=True)
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    opt.step()  # warm-up: allocates the state
    start = time.perf_counter()
    for _ in range(n):
        opt.step()
    return (time.perf_counter() - start) / n, len(groups)


def measure(args) -> tuple[list[dict], list[str]]:
    base = build_model(args.model).train()
    for m in base.modules():  # dropout off: the same function for every copy
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    batch = real_batch(args.batch_size, args.max_length)
    names = default_targets(base)
    plain = one_step(copy.deepcopy(base), batch, args.lr, "none", names)
    rows, timing = [], []
    for scheme, unit_modes in tqdm(SCALES, desc="schemes"):
        model = opdf.overparameterize(copy.deepcopy(base), scheme=scheme, unit_modes=unit_modes)
        predicted = predicted_step(model, "none")
        start = copy.deepcopy(model.state_dict())
        row = {"scheme": scheme, "unit_modes": unit_modes}
        for scaling in ("none", "auto"):
            model.load_state_dict(start)
            moved = one_step(model, batch, args.lr, scaling, names)
            row[scaling] = {n: moved[n] / plain[n] for n in names}
        row["predicted"] = predicted
        rows.append(row)
        if args.time_steps and (scheme, unit_modes) == SCALES[-1]:
            for scaling in ("none", "auto"):
                model.load_state_dict(start)
                sec, groups = time_steps(model, batch, args.lr, scaling, args.time_steps)
                timing.append(
                    f"optimizer.step() at mpo L={unit_modes}, {scaling}: {sec * 1000:.1f} ms "
                    f"({groups} groups, mean of {args.time_steps})"
                )
    return rows, timing


def summary(values: list[float]) -> list[str]:
    """Median, min and max: three cells."""
    return [f"{statistics.median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}"]


def table(rows: list[dict]) -> str:
    heads = ["scheme", "unit modes", "predicted none (median)", "none: median", "min", "max",
             "auto: median", "min", "max"]  # fmt: skip
    cells = [[r["scheme"], str(r["unit_modes"]),
              f"{statistics.median(r['predicted'].values()):.2f}",
              *summary(list(r["none"].values())), *summary(list(r["auto"].values()))]
             for r in rows]  # fmt: skip
    return markdown_table(heads, cells, pad=False)


def per_weight(rows: list[dict]) -> str:
    heads = ["weight", *(f"{r['scheme']} L={r['unit_modes']}" for r in rows)]
    cells = [[n, *(f"{r['none'][n]:.2f} -> {r['auto'][n]:.2f}" for r in rows)]
             for n in rows[0]["none"]]  # fmt: skip
    return markdown_table(heads, cells, pad=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bert-base-1layer")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--time-steps", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the tables as markdown")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows, timing = measure(args)
    text = (
        f"model {args.model}, lr {args.lr}, batch {args.batch_size} x {args.max_length} "
        f"rt-polarity sentences; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}; {time.perf_counter() - t0:.0f} s\n\n"
        f"{table(rows)}\n\nPer weight (none -> auto):\n\n{per_weight(rows)}\n"
    )
    if timing:
        text += "\n" + "\n".join(f"- {t}" for t in timing) + "\n"
    print_and_write(text, args.out)
    worst = max(abs(math.log(v)) for r in rows for v in r["auto"].values())
    print(f"worst auto ratio off 1 by a factor {math.exp(worst):.2f}")


if __name__ == "__main__":
    main()
