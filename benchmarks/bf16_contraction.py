"""bf16 and the MPO contraction: how far a bf16 contraction moves the weight, and what it buys.

Usage::

    python benchmarks/bf16_contraction.py [--threads 2] [--repeats 5] [--steps 3]
        [--out benchmarks/results/bf16.md]

Three measurements, all on this machine's CPU:

- ``error``: each matrix is decomposed at 3 unit modes, its unit-mode cores are perturbed by
  N(0, 1e-3) (a trained chain is no longer exactly the identity), and the weight is contracted in
  float64 (the reference), in float32, and under ``torch.autocast("cpu", dtype=torch.bfloat16)``
  (every matmul of the chain in bf16). Reported: relative Frobenius error and max abs error
  against the reference, next to the error of rounding the exact weight to bf16 once, which any
  bf16 forward incurs when ``F.linear`` casts the weight. Matrices: the six of MiniLM-L6's first
  encoder layer (pretrained, 384 wide, when the asset is installed) and BERT-base-width random
  ones (N(0, 0.02), BERT's init): 768x768, 3072x768, 768x3072.
- ``contraction``: forward + backward of one contraction (BERT-base width, L=3), float32 vs the
  same under bf16 autocast; median of ``--repeats`` after one warm-up.
- ``step``: one AdamW step of a 2-layer BERT-base-width classifier at L=3 on an 8x128 batch:
  float32; bf16 autocast with opdf's policy (contraction in float32,
  :func:`opdf.overparam.contract_weight`); bf16 autocast with the contraction in bf16 too (the
  policy switched off). ``--steps`` timed steps after two warm-up steps, interleaved over two
  rounds; the median is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from pathlib import Path

import torch

import opdf
import opdf.overparam as op
from opdf.mpo import contract, decompose, mpo_shapes
from opdf.report.render import markdown_table, print_and_write


def perturbed_cores(w: torch.Tensor, unit_modes: int = 3, noise: float = 1e-3, seed: int = 0):
    rows, cols = mpo_shapes(*w.shape, unit_modes)
    cores = decompose(w.float(), rows, cols).cores
    g = torch.Generator().manual_seed(seed)
    for k in range(1, len(cores) - 1):
        cores[k] = cores[k] + noise * torch.randn(cores[k].shape, generator=g)
    return cores


def matrices() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    found = []
    try:
        from opdf.models import load_model

        model, _ = load_model("minilm-l6", 2)
        layer = model.bert.encoder.layer[0]
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense", "intermediate.dense", "output.dense"):  # fmt: skip
            w = layer.get_submodule(name).weight.detach()
            found.append((f"MiniLM-L6 layer 0 {name} {tuple(w.shape)}", w))
    except (OSError, ValueError) as exc:  # the asset is optional here
        print(f"MiniLM-L6 not available ({exc}); random matrices only")
    for shape in ((768, 768), (3072, 768), (768, 3072)):
        found.append((f"random N(0, 0.02) {shape}", 0.02 * torch.randn(shape, generator=g)))
    return found


def error_rows() -> list[dict]:
    rows = []
    for name, w in matrices():
        cores = perturbed_cores(w)
        ref = contract([c.double() for c in cores])
        fp32 = contract(cores).double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = contract(cores)
        bf16 = bf16.double()
        rounded = ref.to(torch.bfloat16).double()

        def rel(x, ref=ref):
            return float((x - ref).norm() / ref.norm())

        rows.append({
            "matrix": name, "fp32_rel": rel(fp32), "bf16_rel": rel(bf16),
            "bf16_max_abs": float((bf16 - ref).abs().max()), "round_rel": rel(rounded),
            "weight_rms": float(ref.pow(2).mean().sqrt()),
        })  # fmt: skip
        print(rows[-1])
    return rows


def time_contraction(shape, repeats: int) -> dict:
    w = 0.02 * torch.randn(shape, generator=torch.Generator().manual_seed(1))
    cores = [c.requires_grad_() for c in perturbed_cores(w)]
    out = {}
    for label, ctx in (("fp32", contextlib.nullcontext),
                       ("bf16", lambda: torch.autocast("cpu", dtype=torch.bfloat16))):  # fmt: skip
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            with ctx():
                weight = contract(cores)
            weight.float().sum().backward()
            if i:
                times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times)
    print(shape, out)
    return out


def student():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(num_hidden_layers=2, num_labels=2, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)  # fmt: skip
    model = BertForSequenceClassification(cfg)
    opdf.overparameterize(model, scheme="mpo", unit_modes=3)
    return model.train()


def step_times(steps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 30522, (8, 128), generator=g),
             "labels": torch.randint(0, 2, (8,), generator=g)}  # fmt: skip

    def bf16_contraction() -> contextlib.ExitStack:  # precision: bf16-contraction
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        stack.enter_context(op.low_precision_contraction())
        return stack

    variants = {
        "fp32": contextlib.nullcontext,
        "bf16 autocast, contraction fp32 (opdf's policy)":
            lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        "bf16 autocast, contraction bf16 (`precision: bf16-contraction`)": bf16_contraction,
    }  # fmt: skip
    models = {k: student() for k in variants}
    optims = {k: torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _round in range(2):
        for key, ctx in variants.items():
            model, optim = models[key], optims[key]
            for i in range(2 + steps):
                t0 = time.perf_counter()
                with ctx():
                    loss = model(**batch).loss
                loss.backward()
                optim.step()
                optim.zero_grad(set_to_none=True)
                if i >= 2:
                    times[key].append(time.perf_counter() - t0)
            print(key, times[key])
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def cpu_line() -> str:
    """CPU model and its bf16-relevant instruction sets (bf16 matmul speed depends on them)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("model name")), "unknown CPU")  # fmt: skip
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])  # fmt: skip
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    absent = [f for f in ("avx512_bf16", "amx_bf16") if f not in flags]
    return f"{model} ({', '.join(isa) or 'no AVX-512'}" + (
        f"; absent: {', '.join(absent)})" if absent else ")"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    errors = error_rows()
    chains = {s: time_contraction(s, args.repeats) for s in ((768, 768), (3072, 768))}
    steps = step_times(args.steps)
    cmd = "python benchmarks/bf16_contraction.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "out"
    )
    base_med, base_min = steps["fp32"]
    error_table = markdown_table(
        ["matrix", "fp32 rel", "bf16 rel", "bf16 max abs", "round rel", "bf16 / round",
         "weight rms"],
        [[r["matrix"], f"{r['fp32_rel']:.1e}", f"{r['bf16_rel']:.2e}", f"{r['bf16_max_abs']:.1e}",
          f"{r['round_rel']:.2e}", f"{r['bf16_rel'] / r['round_rel']:.1f}",
          f"{r['weight_rms']:.3f}"] for r in errors],
        pad=False,
    )  # fmt: skip
    chain_table = markdown_table(
        ["weight", "fp32", "bf16 autocast", "bf16 / fp32"],
        [[f"{shape[0]}x{shape[1]}", f"{t['fp32']:.3f}", f"{t['bf16']:.3f}",
          f"{t['bf16'] / t['fp32']:.2f}"] for shape, t in chains.items()],
        pad=False,
    )  # fmt: skip
    step_table = markdown_table(
        ["variant", "median", "fastest", "/ fp32 (median)", "/ fp32 (fastest)"],
        [[key, f"{med:.3f}", f"{fast:.3f}", f"{med / base_med:.2f}", f"{fast / base_min:.2f}"]
         for key, (med, fast) in steps.items()],
        pad=False,
    )  # fmt: skip
    worst = max(r["bf16_rel"] for r in errors)
    lines = [
        "# bf16 and the MPO contraction (L=3)",
        "",
        f"- command: `{cmd}`",
        f"- machine: {platform.machine()}, {cpu_line()}, {torch.get_num_threads()} threads, Python "
        f"{platform.python_version()}, torch {torch.__version__}; bf16 autocast = "
        '`torch.autocast("cpu", dtype=torch.bfloat16)`',
        "",
        "## Error of the contracted weight against a float64 contraction",
        "",
        "Unit-mode cores perturbed by N(0, 1e-3). `round` is the error of rounding the exact "
        "weight to bf16 once (what `F.linear` under autocast does to any float32 weight).",
        "",
        error_table,
        "",
        f"Worst bf16 relative error: {worst:.2e}.",
        "",
        "## Contraction alone, forward + backward (seconds, median)",
        "",
        chain_table,
        "",
        "## One AdamW step, 2-layer BERT-base-width classifier, L=3, 8x128 (seconds)",
        "",
        step_table,
    ]
    print_and_write("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
