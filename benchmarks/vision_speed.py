"""Seconds per training step of a vision model on Fashion-MNIST batches: threads, batch size and
channels_last, to choose how a teacher trains on a 2-core CPU.

Usage::

    python benchmarks/vision_speed.py [--models resnet20 wrn-16-2 resnet8] [--threads 1 2]
        [--batch 64 128 256] [--steps 6] [--out benchmarks/results/vision-speed.md]

Each configuration runs in this process: real Fashion-MNIST training batches (augmented,
normalized, as the runner builds them; digits at 28x28 noise if Fashion-MNIST is absent), forward,
cross-entropy, backward and a fused AdamW step. The first two steps are warm-up; the table gives
the median and the fastest of the rest, images per second, and the implied minutes per epoch of
55,000 images. All configurations of one model are measured round-robin, ``--rounds`` times, so
that a load change on a shared machine hits them alike.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time


def measure(model_name, threads, batch, channels_last, steps, data):
    import torch
    import torch.nn.functional as F

    from opdf.models.vision import build_vision_model

    torch.set_num_threads(threads)
    model = build_vision_model(model_name, 10, 1, 28, seed=0).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    times = []
    for step in range(steps + 2):
        idx = [(step * batch + i) % len(data) for i in range(batch)]
        t0 = time.perf_counter()
        b = data.batch(idx, epoch=0, seed=0)
        x = b["pixel_values"]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), b["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "wrn-16-2", "resnet8"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = parser.parse_args()

    import torch

    from opdf.data.vision import FASHION_MNIST_DIR, ImageBatcher, load_vision_dataset
    from opdf.models.vision import build_vision_model, flops_estimate

    source = "fashion-mnist" if FASHION_MNIST_DIR.is_dir() else "digits"
    ds = load_vision_dataset(source)
    data = ImageBatcher(ds, "train")
    if source == "digits":  # 8x8: pad to 28x28 so the cost matches Fashion-MNIST
        data.images = torch.nn.functional.pad(data.images, (10, 10, 10, 10))
    lines = [
        f"# Vision training step on {source} ({platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads available)",
        "",
        f"`python benchmarks/vision_speed.py --models {' '.join(args.models)} --threads "
        f"{' '.join(map(str, args.threads))} --batch {' '.join(map(str, args.batch))} --steps "
        f"{args.steps} --rounds {args.rounds}`",
        "",
        "| model | MMAC/img | threads | batch | channels_last | median s/step | fastest | img/s "
        "| min/epoch (55k) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for name in args.models:
        macs = flops_estimate(build_vision_model(name, 10, 1, 28), 1, 28) / 1e6
        configs = [(t, b, cl) for t in args.threads for b in args.batch for cl in (False, True)]
        results = {c: [] for c in configs}
        for _ in range(args.rounds):
            for c in configs:
                results[c] += measure(name, *c, args.steps, data)
        for (t, b, cl), times in results.items():
            med = statistics.median(times)
            line = (
                f"| {name} | {macs:.1f} | {t} | {b} | {'yes' if cl else 'no'} | {med:.3f} | "
                f"{min(times):.3f} | {b / med:.0f} | {55000 / (b / med) / 60:.1f} |"
            )
            lines.append(line)
            print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
