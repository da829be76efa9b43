"""Per-step forward / backward / optimizer times and minor page faults of one training process.

Usage::

    python benchmarks/steady_steps.py --kind {plain,mpo} [--batch 32] [--steps 8]
        [--keep-freed-memory]

The same student and AdamW step as ``overhead.py`` (6-layer BERT-base width, random init, L=3 for
``mpo``), in this process, step after step: it shows how long a process takes to reach its steady
state, where the time of a step goes, and what ``opdf.run.allocator.keep_freed_memory()`` changes.
The last line gives the fastest and the median of the steps after the third.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("plain", "mpo"), required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--unit-modes", type=int, default=3)
    parser.add_argument("--keep-freed-memory", action="store_true")
    args = parser.parse_args()
    if args.steps < 4:
        parser.error("--steps must be >= 4 (the first three are warm-up)")
    if args.keep_freed_memory:
        from opdf.run.allocator import keep_freed_memory

        print("keep_freed_memory:", keep_freed_memory())
    import torch

    from overhead import batch, build

    model = build(args.kind, args.unit_modes).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    totals = []
    for step in range(args.steps):
        b = batch(args.batch, 128, step)
        f0, t0 = faults(), time.perf_counter()
        loss = model(**b).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        totals.append(t3 - t0)
        print(
            f"step {step + 1}: forward {t1 - t0:.3f} s, backward {t2 - t1:.3f} s, "
            f"optimizer {t3 - t2:.3f} s, total {t3 - t0:.3f} s, minor faults {faults() - f0}",
            flush=True,
        )
    steady = totals[3:]
    print(
        f"{args.kind} {args.batch}x128: fastest {min(steady):.3f} s, "
        f"median {statistics.median(steady):.3f} s over steps 4-{args.steps}"
    )


if __name__ == "__main__":
    main()
