"""Training overhead of over-parameterization, and inference after merge, on CPU.

Usage::

    python benchmarks/overhead.py [--unit-modes 3] [--repeats 2] [--rounds 2] [--out FILE.md]

Model: the paper's student, ``BertForSequenceClassification(BertConfig(num_hidden_layers=6,
num_labels=2))`` (66,956,546 parameters), random init (no download). Every timing runs in a fresh
subprocess (so peak RSS is per variant) and times ``--repeats`` steps after one warm-up step; the
whole list of variants runs ``--rounds`` times, interleaved, and each variant reports its fastest
step (on a shared machine the noise only ever adds time). Variants:

- ``step``: one AdamW step on a 32x128 batch, plain vs over-parameterized.
- ``micro``: one optimizer step over 4 micro-batches of 8x128, with and without ``opdf.accumulate``,
  and the single 8x128 step, so the over-parameterization overhead per optimizer step can be
  compared with the overhead of one micro-batch step.
- ``infer``: no-grad forward of 32x128, never-touched model vs over-parameterized-then-merged.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

VOCAB = 30522


def build(kind: str, unit_modes: int):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    import opdf

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_hidden_layers=6, num_labels=2))
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

    model = build(spec["kind"], spec["unit_modes"])
    params = sum(p.numel() for p in model.parameters())
    times = []
    if spec["mode"] == "infer":
        model.eval()
        x = batch(32, 128, 0)["input_ids"]
        with torch.inference_mode():
            for _ in range(spec["repeats"] + 1):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        micro = spec["micro"]
        size = spec["batch"]
        for step in range(spec["repeats"] + 1):
            batches = [batch(size, 128, 100 * step + m) for m in range(micro)]
            start = time.perf_counter()
            ctx = opdf.accumulate(model) if spec.get("accumulate") else _null()
            with ctx:
                for b in batches:
                    (model(**b).loss / micro).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"best_s": min(times[1:]), "peak_mib": peak_mib, "params": params}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unit-modes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved passes over variants")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    base = {"unit_modes": args.unit_modes, "repeats": args.repeats}
    plan = {
        "plain 32x128": dict(kind="plain", mode="train", batch=32, micro=1),
        "mpo 32x128": dict(kind="mpo", mode="train", batch=32, micro=1),
        "plain 8x128": dict(kind="plain", mode="train", batch=8, micro=1),
        "mpo 8x128": dict(kind="mpo", mode="train", batch=8, micro=1),
        "plain 4x(8x128)": dict(kind="plain", mode="train", batch=8, micro=4),
        "mpo 4x(8x128), no accumulate": dict(kind="mpo", mode="train", batch=8, micro=4),
        "mpo 4x(8x128), opdf.accumulate": dict(
            kind="mpo", mode="train", batch=8, micro=4, accumulate=True
        ),
        "infer plain 32x128": dict(kind="plain", mode="infer"),
        "infer merged 32x128": dict(kind="merged", mode="infer"),
    }
    results: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for name, spec in plan.items():
            r = run({**base, **spec})
            print(
                f"round {round_ + 1} {name:<34} {r['best_s']:8.3f} s  peak {r['peak_mib']:6.0f} MiB"
            )
            if name not in results or r["best_s"] < results[name]["best_s"]:
                results[name] = {
                    **r,
                    "peak_mib": min(r["peak_mib"], results.get(name, r)["peak_mib"]),
                }

    def t(name: str) -> float:
        return results[name]["best_s"]

    step_ratio = t("mpo 32x128") / t("plain 32x128")
    single_over = t("mpo 8x128") - t("plain 8x128")
    acc_over = t("mpo 4x(8x128), opdf.accumulate") - t("plain 4x(8x128)")
    noacc_over = t("mpo 4x(8x128), no accumulate") - t("plain 4x(8x128)")
    mem_ratio = results["mpo 32x128"]["peak_mib"] / results["plain 32x128"]["peak_mib"]
    infer_ratio = t("infer merged 32x128") / t("infer plain 32x128")
    same_params = (
        results["infer merged 32x128"]["params"] == results["infer plain 32x128"]["params"]
    )
    lines = [
        f"# Over-parameterization overhead (6-layer BERT-base-width student, L={args.unit_modes})",
        "",
        f"- command: `python benchmarks/overhead.py --unit-modes {args.unit_modes} "
        f"--repeats {args.repeats} --rounds {args.rounds}`",
        f"- machine: {platform.machine()}, CPU, Python {sys.version.split()[0]}; fastest of "
        f"{args.repeats} steps x {args.rounds} interleaved rounds, each variant in its own "
        "process (peak RSS per process); fused AdamW for both",
        "",
        "| variant | seconds | peak RSS (MiB) |",
        "|---|---|---|",
        *[f"| {name} | {r['best_s']:.3f} | {r['peak_mib']:.0f} |" for name, r in results.items()],
        "",
        "| check | value | target |",
        "|---|---|---|",
        f"| step time, over-parameterized / plain (32x128) | {step_ratio:.3f} | <= 1.5 |",
        f"| overhead per optimizer step, 4 micro-batches with accumulate / one 8x128 step "
        f"| {acc_over / single_over:.3f} | <= 1.2 |",
        f"| the same without accumulate | {noacc_over / single_over:.3f} | (grows ~4x) |",
        f"| peak memory, over-parameterized / plain (32x128) | {mem_ratio:.3f} | |",
        f"| merged inference latency / never-touched model | {infer_ratio:.3f} | <= 1.05 |",
        f"| identical parameter counts after merge | {same_params} | True |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
