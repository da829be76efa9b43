"""Training overhead of over-parameterization, and inference after merge, on CPU.

Usage::

    python benchmarks/overhead.py [--unit-modes 3] [--warmup 3] [--repeats 3] [--rounds 2]
        [--glibc-default] [--out FILE.md]

Model: the paper's student, ``BertForSequenceClassification(BertConfig(num_hidden_layers=6,
num_labels=2))`` (66,956,546 parameters), random init (no download). Every timing runs in a fresh
subprocess (so peak RSS is per variant), runs ``--warmup`` untimed steps, then times ``--repeats``
steps; the whole list of variants runs ``--rounds`` times, interleaved. The first steps of a
process are not training's steady state: the first optimizer step allocates AdamW's state, and the
allocator keeps taking fresh pages from the kernel for two or three more steps (about 800k minor
page faults per step for the over-parameterized model, then almost none), so the default warm-up
is 3 steps. Each variant reports the median and the fastest of its timed steps over all rounds;
ratios are given for both (the median is what a long training run sees, the fastest is what is
left when the shared machine's noise, which only ever adds time, is least). Every variant runs with
``opdf.run.allocator.keep_freed_memory()``, as ``opdf distill`` trains; ``--glibc-default``
leaves the allocator alone. Variants:

- ``step``: one AdamW step on a 32x128 batch, plain vs over-parameterized.
- ``micro``: one optimizer step over 4 micro-batches of 8x128, with and without ``opdf.accumulate``,
  and the single 8x128 step, so the over-parameterization overhead per optimizer step can be
  compared with the overhead of one micro-batch step.
- ``chain``: the contraction alone (every over-parameterized weight contracted from its cores,
  and a gradient pushed back into them): the work over-parameterization adds to any step, whatever
  the batch. ``(plain + chain) / plain`` is the step ratio an implementation with no other
  overhead would reach.
- ``infer``: no-grad forward of 32x128, never-touched model vs over-parameterized-then-merged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from opdf.report.render import markdown_table, print_and_write

VOCAB = 30522


def build(kind: str, unit_modes: int, layers: int = 6, hidden: int = 768):
    """The paper's 6-layer BERT-base-width student (smaller with ``layers``/``hidden``, as
    ``benchmarks/perf.py --quick`` uses it)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    import opdf

    torch.manual_seed(0)
    shape = {} if hidden == 768 else dict(hidden_size=hidden, intermediate_size=4 * hidden,
                                          num_attention_heads=max(1, hidden // 64))  # fmt: skip
    model = BertForSequenceClassification(
        BertConfig(num_hidden_layers=layers, num_labels=2, **shape)
    )
    if kind in ("mpo", "merged"):
        opdf.overparameterize(model, scheme="mpo", unit_modes=unit_modes)
    if kind == "merged":
        opdf.merge(model)
    return model


def batch(n: int, length: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, VOCAB, (n, length), generator=g),
        "labels": torch.randint(0, 2, (n,), generator=g),
    }


def worker(spec: dict) -> dict:
    """Run one variant and return its timings (called in a subprocess)."""
    import torch

    import opdf

    if spec["keep_freed_memory"]:
        from opdf.run.allocator import keep_freed_memory

        keep_freed_memory()
    model = build(spec["kind"], spec["unit_modes"], spec.get("layers", 6), spec.get("hidden", 768))
    length = spec.get("length", 128)
    params = sum(p.numel() for p in model.parameters())
    warmup = spec["warmup"]
    times = []
    if spec["mode"] == "infer":
        model.eval()
        x = batch(spec.get("infer_batch", 32), length, 0)["input_ids"]
        with torch.inference_mode():
            for _ in range(spec["repeats"] + warmup):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    elif spec["mode"] == "chain":
        # the contraction alone: every weight contracted from its cores and a gradient pushed
        # back into them, nothing else (the part of the step that over-parameterization adds)
        from opdf.mpo import contract

        chains = list(opdf.cores(model).values())
        grads = [torch.randn(contract(c).shape) for c in chains]
        for _ in range(spec["repeats"] + warmup):
            start = time.perf_counter()
            torch.autograd.backward([contract(c) for c in chains], grads)
            times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        micro = spec["micro"]
        size = spec["batch"]
        for step in range(spec["repeats"] + warmup):
            batches = [batch(size, length, 100 * step + m) for m in range(micro)]
            start = time.perf_counter()
            ctx = opdf.accumulate(model) if spec.get("accumulate") else contextlib.nullcontext()
            with ctx:
                for b in batches:
                    (model(**b).loss / micro).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    from opdf.run.trainer import peak_rss_mb

    # VmHWM: ru_maxrss would include the parent's memory at fork (benchmarks/perf.py is large)
    peak_mib = peak_rss_mb()
    return {"times": times[warmup:], "peak_mib": peak_mib, "params": params}


def torch_version() -> str:
    import torch

    return torch.__version__


def run(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def variants(batch: int = 32, micro_batch: int = 8, micro: int = 4, length: int = 128) -> dict:
    """The measured variants (name -> worker spec); ``checks`` reads them by these names."""
    b, m = f"{batch}x{length}", f"{micro_batch}x{length}"
    return {
        f"plain {b}": dict(kind="plain", mode="train", batch=batch, micro=1),
        f"mpo {b}": dict(kind="mpo", mode="train", batch=batch, micro=1),
        f"plain {m}": dict(kind="plain", mode="train", batch=micro_batch, micro=1),
        f"mpo {m}": dict(kind="mpo", mode="train", batch=micro_batch, micro=1),
        f"plain {micro}x({m})": dict(kind="plain", mode="train", batch=micro_batch, micro=micro),
        f"mpo {micro}x({m}), no accumulate": dict(
            kind="mpo", mode="train", batch=micro_batch, micro=micro
        ),
        f"mpo {micro}x({m}), opdf.accumulate": dict(
            kind="mpo", mode="train", batch=micro_batch, micro=micro, accumulate=True
        ),
        "contraction only (all cores, fwd+bwd)": dict(kind="mpo", mode="chain"),
        f"infer plain {b}": dict(kind="plain", mode="infer", infer_batch=batch),
        f"infer merged {b}": dict(kind="merged", mode="infer", infer_batch=batch),
    }


def checks(results: dict[str, dict], stat) -> dict[str, float]:
    """The ratios of the variants (``stat``: median or min over each variant's timed steps)."""
    names = list(results)
    step_plain, step_mpo, micro_plain, micro_mpo, acc_plain, noacc, acc, chain, inf_p, inf_m = names

    def t(name: str) -> float:
        return stat(results[name]["times"])

    single = t(micro_mpo) - t(micro_plain)
    return {
        "step": t(step_mpo) / t(step_plain),
        "acc": (t(acc) - t(acc_plain)) / single,
        "noacc": (t(noacc) - t(acc_plain)) / single,
        "infer": t(inf_m) / t(inf_p),
        "floor": (t(step_plain) + t(chain)) / t(step_plain),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unit-modes", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per process")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved passes over variants")
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's malloc as it is (default: opdf.run.allocator.keep_freed_memory() in "
        "every variant, as `opdf distill` and `opdf finetune` do)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    if args.warmup < 1 or args.repeats < 1 or args.rounds < 1:
        parser.error("--warmup, --repeats and --rounds must be >= 1")
    base = {
        "unit_modes": args.unit_modes,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "keep_freed_memory": not args.glibc_default,
    }
    plan = variants()
    results: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for name, spec in plan.items():
            r = run({**base, **spec})
            print(
                f"round {round_ + 1} {name:<34} "
                + " ".join(f"{t:.3f}" for t in r["times"])
                + f" s  peak {r['peak_mib']:6.0f} MiB",
                flush=True,
            )
            seen = results.setdefault(name, {"times": [], "peak_mib": [], "params": r["params"]})
            seen["times"] += r["times"]
            seen["peak_mib"].append(r["peak_mib"])

    med, best = checks(results, statistics.median), checks(results, min)
    peak = {name: min(r["peak_mib"]) for name, r in results.items()}
    names = list(results)
    mem_ratio = peak[names[1]] / peak[names[0]]
    same_params = results[names[-1]]["params"] == results[names[-2]]["params"]

    def row(label: str, key: str, target: str) -> list[str]:
        return [label, f"{med[key]:.3f}", f"{best[key]:.3f}", target]

    variant_rows = [[name, f"{statistics.median(r['times']):.3f}", f"{min(r['times']):.3f}",
                     str(len(r["times"])), f"{peak[name]:.0f}"]
                    for name, r in results.items()]  # fmt: skip
    checks_rows = [
        row("step time, over-parameterized / plain (32x128)", "step", "<= 1.5"),
        row("its arithmetic floor: (plain + contraction only) / plain (32x128)", "floor", ""),
        row(
            "overhead per optimizer step, 4 micro-batches with accumulate / one 8x128 step",
            "acc",
            "<= 1.2",
        ),
        row("the same without accumulate", "noacc", "(grows ~4x)"),
        row("merged inference latency / never-touched model", "infer", "<= 1.05"),
        ["peak memory, over-parameterized / plain (32x128)", f"{mem_ratio:.3f}", None, None],
        ["identical parameter counts after merge", str(same_params), None, "True"],
    ]

    lines = [
        f"# Over-parameterization overhead (6-layer BERT-base-width student, L={args.unit_modes})",
        "",
        f"- command: `python benchmarks/overhead.py --unit-modes {args.unit_modes} "
        f"--warmup {args.warmup} --repeats {args.repeats} --rounds {args.rounds}"
        f"{' --glibc-default' if args.glibc_default else ''}`",
        f"- machine: {platform.machine()}, CPU, Python {sys.version.split()[0]}, torch "
        f"{torch_version()}; {args.warmup} warm-up + {args.repeats} timed steps per process x "
        f"{args.rounds} interleaved rounds, each variant in its own process (peak RSS per "
        "process); fused AdamW for both; glibc malloc "
        + ("as it comes" if args.glibc_default else "keeping freed memory (as `opdf distill`)"),
        "",
        markdown_table(["variant", "median s", "fastest s", "timed steps", "peak RSS (MiB)"],
                       variant_rows, pad=False),
        "",
        markdown_table(["check", "from medians", "from fastest", "target"], checks_rows,
                       pad=False),
    ]  # fmt: skip
    print_and_write("\n".join(lines), args.out, newline=True)


if __name__ == "__main__":
    main()
