"""Seconds per optimizer step of distillation methods vs ``kd``, and vs the passes they need.

Usage::

    python benchmarks/method_cost.py [--config configs/rt-polarity-kd-base.yaml]
        [--methods dbkd adkd] [--variants base opdf] [--warmup 3] [--steps 10] [--rounds 2]
        [--set key=value ...] [--out FILE.md]

For each variant (``base``, ``svd``, ``mpo``, ``opdf``: the presets of ``variant:``) and each
method (``kd`` is always measured, as the baseline), a fresh subprocess builds the run exactly as
``opdf distill CONFIG method=M variant=V ...`` would (``opdf.run.runner.build``: cached teacher,
student, over-parameterization, alignment loss) and times ``warmup + steps`` optimizer steps of the
real :class:`Trainer` (``Trainer.train_step``: forward, backward, clipping, the optimizer step).
A method's one-time set-up (``on_train_start``: DBKD's teacher queries, cached on disk after the
first run) is reported apart: the longest is a first run's, the shortest a cached one's.

The **floor** of a method is the same passes written out in bare PyTorch, on the same models
(over-parameterized and aligned as the variant says), the same batches and a fused AdamW of its
own: what the method needs at the least, without the library around it. Floor steps alternate with
the trainer's steps in the same process, so that a shared machine's changing load hits both alike.

* ``kd``: teacher forward (no graph) + student forward and backward.
* ``dbkd``: student forward and backward against fixed targets (its queries are set-up).
* ``adkd``: teacher forward and backward to the embedding output, student forward, its gradient
  with a graph, and the backward through that (double backprop).

Add a floor for a new method to ``FLOORS``. Every timing is a median (and fastest) over the timed
steps of ``--rounds`` interleaved rounds; ratios are taken within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from opdf.report.render import markdown_table

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------- the worker


def load(spec: dict):
    """The run's config: the benchmark's config with the method and the variant switched."""
    from opdf.distill import method_names
    from opdf.run.config import load_config

    method = spec["method"]
    sections = [f"{m}=null" for m in method_names() if m != method]
    # variant= replaces the config's own keys (a dbkd/adkd config says `variant: base`)
    variant = [f"variant={spec['variant']}"]
    total = spec["warmup"] + spec["steps"]
    never = total + 1000
    overrides = [
        f"method={method}", *sections, *variant, f"max_steps={total}", f"eval_every={never}",
        f"checkpoint_every={never}", f"log_every={never}", f"output_dir={spec['output_dir']}",
        "data.max_eval_samples=32",  # the final evaluation is not timed: keep it short
        *spec["set"],
    ]  # fmt: skip
    return load_config(spec["config"], overrides)


def time_method(spec: dict) -> dict:
    """Steps of the real Trainer, each followed by one floor step (when the method has one)."""
    import torch

    from opdf.run.allocator import keep_freed_memory
    from opdf.run.runner import build, prepare_output_dir, settings_from
    from opdf.run.trainer import Trainer, resolve_device

    keep_freed_memory()
    cfg = load(spec)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    prepare_output_dir(out, resume=False, overwrite=True, cfg=cfg)
    d, dataset, tokenizer, align, info = build(cfg, progress=False)
    setup: list[float] = []
    on_start = d.on_train_start

    def timed_start(context):
        t0 = time.perf_counter()
        on_start(context)
        setup.append(time.perf_counter() - t0)

    d.on_train_start = timed_start
    settings = settings_from(cfg)
    trainer = Trainer(d, dataset, tokenizer, settings, out, align=align,
                      device=resolve_device(cfg.device), run_info=info, progress=False,
                      config=cfg)  # fmt: skip
    if align is not None:
        align.to(trainer.device)
    state = trainer._start(resume=False)  # optimizers, on_train_start, train mode
    floor = None if spec["no_floor"] else FLOORS.get(spec["method"])
    if floor is not None:
        opt, _ = trainer.build_optimizer(d.param_groups())  # the run's fused AdamW and groups
        params = [p for g in opt.param_groups for p in g["params"]]
        targets = None
        if spec["method"] == "dbkd":  # its targets, fixed: the queries are set-up
            targets = d.targets.clone()

        def student_step(inputs, loss_fn):
            logits = d.student(**inputs).logits if inputs is not None else None
            loss = loss_fn(logits)
            if align is not None:
                loss = loss + align()
            loss.backward()
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)

    steps, floors = [], []
    for i in range(spec["warmup"] + spec["steps"]):
        t0 = time.perf_counter()
        trainer.train_step(state)
        steps.append(time.perf_counter() - t0)
        if floor is not None:
            batch = trainer.batches.batch(i)
            if targets is not None:
                batch["_target"] = targets[batch["index"]]
            t0 = time.perf_counter()
            floor(d, batch, student_step)
            floors.append(time.perf_counter() - t0)
    w = spec["warmup"]
    return {"times": steps[w:], "floor": floors[w:], "setup": setup[0]}


def _floor_kd(d, batch, student_step):
    import torch

    from opdf.distill.base import model_inputs
    from opdf.distill.kd import kd_loss

    inputs = model_inputs(batch)
    with torch.no_grad():
        t = d.teacher(**inputs).logits
    o = d.options

    def loss(logits):
        ce_w, kd_w = o.weights()
        return ce_w * torch.nn.functional.cross_entropy(logits, batch["labels"]) + kd_w * kd_loss(
            logits, t, o.temperature
        )

    student_step(inputs, loss)


def _floor_dbkd(d, batch, student_step):
    import torch

    from opdf.distill.base import model_inputs
    from opdf.distill.kd import kd_loss

    target = batch["_target"]
    o = d.options

    def loss(logits):
        return o.ce_alpha * torch.nn.functional.cross_entropy(
            logits, batch["labels"]
        ) + o.kd_alpha * kd_loss(logits, o.sigma * target, o.temperature)

    student_step(model_inputs(batch), loss)


def _floor_adkd(d, batch, student_step):
    """Teacher: forward and backward to its embedding output; student: forward with its
    embedding output, gradient with a graph, backward through it."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from opdf.distill.base import model_inputs

    inputs, labels, o = model_inputs(batch), batch["labels"], d.options
    emb_t = d.teacher.bert.embeddings
    box = {}

    def leaf(module, args, out):
        box["e"] = out.detach().requires_grad_(True)
        return box["e"]

    h = emb_t.register_forward_hook(leaf)
    try:
        t_logits = d.teacher(**inputs).logits
    finally:
        h.remove()
    (g_t,) = torch.autograd.grad(F.cross_entropy(t_logits, labels), box["e"])
    ig_t = (g_t * box["e"]).abs()
    if o.topk is not None:
        ig_t = ig_t.topk(o.topk, dim=-1).values
    a_t = F.normalize(ig_t.norm(dim=-1), dim=1)
    t_logits = t_logits.detach()
    with sdpa_kernel(SDPBackend.MATH):
        out = d.student(**inputs, output_hidden_states=True)
    e_s = out.hidden_states[0]
    ce = F.cross_entropy(out.logits, labels)
    (g_s,) = torch.autograd.grad(ce, e_s, create_graph=True)
    a_s = F.normalize((g_s * e_s).norm(dim=-1), dim=1)
    attr = ((a_t - a_s) ** 2).sum() / (a_t != 0).sum()
    p_t = F.softmax(t_logits / o.temperature, -1)
    kd = -(p_t * F.log_softmax(out.logits / o.temperature, -1)).sum(-1).mean()
    student_step(None, lambda _: o.alpha * kd + (1 - o.alpha) * ce + o.beta * attr)


FLOORS = {"kd": _floor_kd, "dbkd": _floor_dbkd, "adkd": _floor_adkd}


# --------------------------------------------------------------------------------- the driver


def run(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"worker failed: {spec['method']} {spec['variant']}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/rt-polarity-kd-base.yaml")
    parser.add_argument("--methods", nargs="+", default=["dbkd", "adkd"],
                        help="methods to compare with kd (kd is always measured)")  # fmt: skip
    parser.add_argument("--variants", nargs="+", default=["base", "opdf"],
                        choices=["base", "svd", "mpo", "opdf"])  # fmt: skip
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per process")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved passes")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, e.g. data.max_train_samples=2000 "
                        "threads=1")  # fmt: skip
    parser.add_argument("--no-floor", action="store_true", help="skip the bare-PyTorch floors")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(time_method(spec)))
        return
    if args.warmup < 1 or args.steps < 2 or args.rounds < 1:
        parser.error("--warmup must be >= 1, --steps >= 2, --rounds >= 1")
    methods = ["kd", *[m for m in args.methods if m != "kd"]]
    from opdf.distill import method_names

    unknown = [m for m in methods if m not in method_names()]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; registered: {', '.join(method_names())}")
    results: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory(prefix="method-cost-") as tmp:
        for round_ in range(args.rounds):
            for variant in args.variants:
                for method in methods:
                    spec = {
                        "method": method, "variant": variant, "config": args.config,
                        "set": args.set, "warmup": args.warmup, "steps": args.steps,
                        "no_floor": args.no_floor,
                        "output_dir": f"{tmp}/{method}-{variant}-{round_}",
                    }  # fmt: skip
                    r = run(spec)
                    for kind, times in (("step", r["times"]), ("floor", r["floor"])):
                        seen = results.setdefault((variant, method, kind), {"times": []})
                        seen["times"] += times
                        if times:
                            print(f"round {round_ + 1} {variant:<5} {method:<8} {kind:<5} "
                                  + " ".join(f"{t:.3f}" for t in times), flush=True)  # fmt: skip
                    results[(variant, method, "step")].setdefault("setup", []).append(r["setup"])
    print(report(args, methods, results))


def report(args, methods, results) -> str:
    import torch

    def stat(key, fn):
        r = results.get(key)
        return fn(r["times"]) if r and r["times"] else None

    def fmt(x, nd=3):
        return "" if x is None else f"{x:.{nd}f}"

    command = "python benchmarks/method_cost.py " + " ".join(sys.argv[1:])
    lines = [
        "# Seconds per optimizer step: methods vs kd, and vs the passes they need",
        "",
        f"- command: `{command}`",
        f"- machine: {platform.machine()}, Python {sys.version.split()[0]}, torch "
        f"{torch.__version__}; {args.warmup} warm-up + {args.steps} timed steps per process x "
        f"{args.rounds} interleaved rounds, each measurement in its own process",
        "",
    ]
    heads = ["variant", "method", "median s/step", "fastest", "vs kd (median)", "vs kd (fastest)",
             "floor median", "step / floor (median)", "step / floor (fastest)",
             "set-up s (longest / shortest)"]  # fmt: skip
    rows = []
    for variant in args.variants:
        kd_med = stat((variant, "kd", "step"), statistics.median)
        kd_min = stat((variant, "kd", "step"), min)
        for method in methods:
            med = stat((variant, method, "step"), statistics.median)
            fast = stat((variant, method, "step"), min)
            fl_med = stat((variant, method, "floor"), statistics.median)
            fl_min = stat((variant, method, "floor"), min)
            setup = results[(variant, method, "step")]["setup"]
            rows.append([variant, method, fmt(med), fmt(fast), fmt(med / kd_med, 2),
                         fmt(fast / kd_min, 2), fmt(fl_med),
                         fmt(med / fl_med if fl_med else None, 2),
                         fmt(fast / fl_min if fl_min else None, 2),
                         f"{fmt(max(setup), 1)} / {fmt(min(setup), 1)}"])  # fmt: skip
    text = "\n".join([*lines, markdown_table(heads, rows, pad=False)])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
