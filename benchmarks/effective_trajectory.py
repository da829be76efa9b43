"""The effective step over a whole run: does matching the first step keep W moving like plain?

Usage::

    python benchmarks/effective_trajectory.py [--steps 126] [--lr 2e-4] [--batch-size 32]
        [--max-length 64] [--every 1,5,10,25,50,100,126] [--out FILE.md]

``benchmarks/effective_step.py`` measures one AdamW step; ``lr_scaling="auto"`` is built to match
it. The rt-polarity suite (``benchmarks/suites/rt-polarity-lr-scaling.yaml``) then finds the auto
students' best learning rate at 2e-4 for every scale, but the plain student's at 4e-4: some factor
of about 2 is left. This script follows the same training the suite runs, step by step, to see
where it comes from. The rt-polarity student (bottom 3 layers of the pretrained all-MiniLM-L6-v2,
dropout off) trains for ``--steps`` AdamW steps (weight decay 0, the runner's schedule: linear
warm-up over 10% of the steps, then linear decay) on the same sequence of real train batches
(seed 0 shuffle, the MiniLM tokenizer), cross-entropy on the labels (the suite distils from a
teacher; the optimizer's geometry, which is what is measured, does not depend on which loss),
from the same start: plain, and svd / mpo 1..4 unit modes with ``lr_scaling`` none and auto.

Reported at each step in ``--every``, per scheme and scaling, the median over the encoder weights
of two ratios to the plain model at the same step:

* *step*: RMS of ``W_t - W_{t-1}`` (this step's move) over the plain model's;
* *total*: RMS of ``W_t - W_0`` (the distance travelled) over the plain model's;
* *function* (``--function``): RMS change of the logits on a fixed probe batch (the first 128 dev
  sentences) since the start, over the plain model's: how far the *model* has moved;
* *top share* (``--function``): the share of ``||W_t - W_0||_F^2`` inside ``W_0``'s top singular
  subspace (``U_k^T (W_t - W_0) V_k``, ``k`` = 10% of the rank), plain and scaled alike, not a
  ratio: where in ``W`` the move goes.

``--scales svd,3`` runs only those scales (``svd`` and unit-mode counts).
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

import opdf
from effective_step import SCALES, build_model, merged
from opdf.overparam import default_targets
from opdf.report.render import markdown_table, print_and_write


def encode(tok, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize like the runner does (truncate, pad to the longest)."""
    return dict(tok(texts, truncation=True, max_length=max_length, padding=True,
                    return_tensors="pt"))  # fmt: skip


def batches(train, tok, steps: int, batch_size: int, max_length: int) -> list[dict]:
    """``steps`` real train batches, drawn epoch by epoch from a seed-0 shuffle."""
    order: list[int] = []
    g = torch.Generator().manual_seed(0)
    while len(order) < steps * batch_size:
        order += torch.randperm(len(train.texts), generator=g).tolist()
    out = []
    for s in range(steps):
        idx = order[s * batch_size : (s + 1) * batch_size]
        enc = encode(tok, [train.texts[i] for i in idx], max_length)
        out.append({**enc, "labels": torch.tensor([train.labels[i] for i in idx])})
    return out


def top_subspace(weights: dict[str, torch.Tensor], share: float = 0.1) -> dict:
    """Each weight's top ``share`` of singular vectors ``(U_k, V_k)``."""
    out = {}
    for n, w in weights.items():
        u, _, vh = torch.linalg.svd(w.double(), full_matrices=False)
        k = max(1, round(share * min(w.shape)))
        out[n] = (u[:, :k], vh[:k].T)
    return out


def schedule(steps: int, warmup_ratio: float = 0.1):
    """The runner's warm-up then linear decay (``Trainer._schedule``), as a LambdaLR factor."""
    warm = int(warmup_ratio * steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return max(0.0, (steps - step) / max(1, steps - warm))

    return factor


def trajectory(
    model,
    data,
    lr: float,
    scaling: str,
    names: list[str],
    every: set[int],
    probe: dict | None = None,
    top: dict | None = None,
) -> dict:
    """For each step in ``every``: {weight: (RMS step, RMS distance from the start)}, and under
    ``"logits"`` / ``"top"`` the probe logits' RMS move and each weight's top-subspace share."""
    opt = torch.optim.AdamW(
        opdf.lr_groups(model, lr, scaling=scaling), lr=lr, weight_decay=0.0, fused=True
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(len(data)))
    start = merged(model, names)
    logits0 = probe_logits(model, probe) if probe is not None else None
    prev = None
    out = {}
    for t, batch in enumerate(data, start=1):
        if t in every:
            prev = merged(model, names)
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()
        sched.step()
        if t in every:
            now = merged(model, names)
            out[t] = {
                n: (
                    float((now[n] - prev[n]).pow(2).mean().sqrt()),
                    float((now[n] - start[n]).pow(2).mean().sqrt()),
                )
                for n in names
            }
            if probe is not None:
                moved = probe_logits(model, probe) - logits0
                out[t]["logits"] = float(moved.pow(2).mean().sqrt())
            if top is not None:
                shares = []
                for n in names:
                    d = (now[n] - start[n]).double()
                    u, v = top[n]
                    shares.append(float((u.T @ d @ v).pow(2).sum() / d.pow(2).sum()))
                out[t]["top"] = statistics.median(shares)
    return out


@torch.no_grad()
def probe_logits(model, probe: dict) -> torch.Tensor:
    return model(**probe).logits.detach().clone()


def ratios(run: dict, plain: dict) -> dict[int, tuple]:
    """Per recorded step: the medians over the weights of (step, total) over the plain model's,
    the probe logits' move over the plain model's, and the top-subspace share (not a ratio)."""
    out = {}
    for t, moves in run.items():
        weights = [n for n in moves if n not in ("logits", "top")]
        step = [moves[n][0] / plain[t][n][0] for n in weights]
        total = [moves[n][1] / plain[t][n][1] for n in weights]
        fn = moves["logits"] / plain[t]["logits"] if "logits" in moves else float("nan")
        out[t] = (statistics.median(step), statistics.median(total), fn, moves.get("top", math.nan))
    return out


def table(rows: list[tuple[str, dict]], steps: list[int], which: int, fmt: str = ".2f") -> str:
    heads = ["scale", "scaling", *(f"t={t}" for t in steps)]
    cells = [[*label.rsplit(" ", 1), *(f"{r[t][which]:{fmt}}" for t in steps)]
             for label, r in rows]  # fmt: skip
    return markdown_table(heads, cells, pad=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=126, help="126: the suite's 2 epochs")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--every", default="1,5,10,25,50,100,126")
    parser.add_argument("--scales", default="svd,1,2,3,4", help="svd and/or unit-mode counts")
    parser.add_argument(
        "--function",
        action="store_true",
        help="also the probe logits' move and the top-subspace share",
    )
    parser.add_argument("--out", type=Path, help="also write the tables as markdown")
    args = parser.parse_args()
    wanted = {x.strip() for x in args.scales.split(",") if x.strip()}
    scales = [(sc, L) for sc, L in SCALES if (sc == "svd" and "svd" in wanted)
              or (sc == "mpo" and str(L) in wanted)]  # fmt: skip
    if not scales:
        raise SystemExit(f"--scales {args.scales!r} names none of svd, 1, 2, 3, 4")
    every = sorted({int(x) for x in args.every.split(",") if 0 < int(x) <= args.steps})
    if not every:
        raise SystemExit("--every names no step in 1..--steps")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    base = build_model("minilm-student").train()
    for m in base.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    names = default_targets(base)
    from opdf.data.movie_reviews import load_movie_reviews
    from opdf.models import load_tokenizer

    reviews, tok = load_movie_reviews("rt-polarity"), load_tokenizer("minilm-l6")
    data = batches(reviews.train, tok, args.steps, args.batch_size, args.max_length)
    # the probe: the first 128 dev sentences, the fixed inputs on which the model's move is measured
    probe = encode(tok, list(reviews.dev.texts[:128]), args.max_length) if args.function else None
    top = top_subspace(merged(base, names)) if args.function else None
    plain = trajectory(copy.deepcopy(base), data, args.lr, "none", names, set(every), probe, top)
    rows = [("plain none", ratios(plain, plain))] if args.function else []
    for scheme, unit_modes in tqdm(scales, desc="scales"):
        for scaling in ("none", "auto"):
            model = opdf.overparameterize(copy.deepcopy(base), scheme=scheme, unit_modes=unit_modes)
            run = trajectory(model, data, args.lr, scaling, names, set(every), probe, top)
            label = "svd" if scheme == "svd" else f"mpo L={unit_modes}"
            rows.append((f"{label} {scaling}", ratios(run, plain)))
    command = "python " + shlex.join(sys.argv)  # as invoked
    text = (
        f"`{command}`\n\n"
        f"minilm-student, lr {args.lr}, {args.steps} steps of batch {args.batch_size} x "
        f"{args.max_length}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}; {time.perf_counter() - t0:.0f} s\n\n"
        "This step's move, RMS of W_t - W_{t-1} over the plain model's (median over the weights):"
        f"\n\n{table(rows, every, 0)}\n\n"
        "Distance travelled, RMS of W_t - W_0 over the plain model's (median over the weights):"
        f"\n\n{table(rows, every, 1)}\n"
    )
    if args.function:
        text += (
            "\nThe model's move, RMS change of the probe logits since the start over the plain "
            f"model's:\n\n{table(rows, every, 2)}\n\n"
            "Share of ||W_t - W_0||^2 in W_0's top-10% singular subspace (median over the "
            "weights; 1.0 = all of the move there, 0.01 or less for a random direction):"
            f"\n\n{table(rows, every, 3, '.3f')}\n"
        )
    print_and_write(text, args.out)


if __name__ == "__main__":
    main()
