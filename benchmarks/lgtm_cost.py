"""Cost of one LGTM step against the passes it needs, and against a KD step, in one process.

Usage::

    python benchmarks/lgtm_cost.py [--variant base|opdf] [--repeats 5] [--warmup 2]
        [--out FILE.md] [key=value config overrides]

Builds the models exactly as ``opdf distill configs/rt-polarity-lgtm.yaml`` does (MiniLM-L6
teacher, 3-layer student; ``opdf``: both over-parameterized at L = 3 with the alignment loss) and
times, round-robin so that the machine's load falls on every line alike (medians over rounds):

* ``lgtm step``: the teacher's update (:meth:`LGTM.teacher_step`, steps 1-5) and the student's KD
  step (step 6), as the trainer runs them;
* ``kd step``: the ``kd`` method's step in the same variant (frozen plain teacher, as
  ``configs/rt-polarity-kd-*.yaml``);
* each pass LGTM needs, alone, with plain module calls: teacher / student forward + backward
  (train and eval mode), forwards without a graph, the optimizer steps. Their sum with LGTM's
  multiplicities (2 teacher fwd+bwd, 3 student fwd+bwd, 2 student forwards, 1 teacher forward,
  2 student AdamW steps (the simulated one and the real one), 1 teacher AdamW step) is the
  floor an implementation cannot go below; the target is ``lgtm step / floor <= 1.2``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from opdf.report.render import markdown_table, print_and_write

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "rt-polarity-lgtm.yaml"
VARIANTS = {"base": [], "opdf": ["overparam=mpo", "unit_modes=3", "align.weight=100"]}


def build(method: str, overrides: list[str]):
    """The run's models and a :class:`Trainer` with the optimizers the method configures."""
    from opdf.run import load_config
    from opdf.run.runner import build as build_run
    from opdf.run.runner import settings_from
    from opdf.run.trainer import Trainer

    # kd on the same models: a frozen, plain teacher, as configs/rt-polarity-kd-*.yaml
    extra = ["lgtm=null", "kd={}"] if method == "kd" else []
    cfg = load_config(CONFIG, [*overrides, f"method={method}", *extra])
    distiller, dataset, tokenizer, align, _ = build_run(cfg, progress=False)
    trainer = Trainer(distiller, dataset, tokenizer, settings_from(cfg), "/tmp/unused", align=align)
    trainer._configure_optimizers()
    return cfg, distiller, align, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=tuple(VARIANTS), default="base")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. threads=1")
    args = parser.parse_args()
    from opdf.distill.base import model_inputs, task_loss
    from opdf.run.allocator import keep_freed_memory

    keep_freed_memory()
    torch.manual_seed(0)
    overrides = [*VARIANTS[args.variant], *args.overrides]
    cfg, lgtm, align, trainer = build("lgtm", overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _, kd, kd_align, kd_trainer = build("kd", overrides)
    clip = cfg.max_grad_norm
    s_opt, t_opt = trainer.optimizers["main"], trainer.optimizers["teacher"]
    kd_opt = kd_trainer.optimizers["main"]
    batch = trainer.batches.batch(0)
    quiz = next(trainer.batches_for("dev", cfg.batch_size, cfg.seed))
    inputs = model_inputs(batch)
    s, t = lgtm.student, lgtm.teacher
    s_params = [p for p in s.parameters() if p.requires_grad]
    t_params = [p for p in t.parameters() if p.requires_grad]

    def student_step(d, opt, al):
        opt.zero_grad(set_to_none=True)
        _, losses = d.forward_train(batch)
        loss = sum(losses.values()) + (al() if al is not None else 0)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                           clip)  # fmt: skip
        opt.step()

    def lgtm_step():
        lgtm.train()
        lgtm.teacher_step(batch, quiz, s_opt, t_opt, clip)
        student_step(lgtm, s_opt, align)

    def kd_step():
        kd.train()
        student_step(kd, kd_opt, kd_align)

    def fwd_bwd(model, train):
        model.train(train)
        loss = task_loss(model(**inputs).logits, batch["labels"], 2)
        torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])

    def fwd(model):
        model.eval()
        with torch.no_grad():
            model(**inputs)

    def opt_step(opt, params):
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)

    cases = {
        "lgtm step": (lgtm_step, None),
        "kd step": (kd_step, None),
        "teacher fwd+bwd, train": (lambda: fwd_bwd(t, True), 1),
        "teacher fwd+bwd, eval": (lambda: fwd_bwd(t, False), 1),
        "teacher forward, no graph": (lambda: fwd(t), 1),
        "student fwd+bwd, train": (lambda: fwd_bwd(s, True), 3),
        "student forward, no graph": (lambda: fwd(s), 2),
        "student AdamW step": (lambda: opt_step(s_opt, s_params), 2),
        "teacher AdamW step": (lambda: opt_step(t_opt, t_params), 1),
    }
    if align is not None:
        cases["alignment loss fwd+bwd"] = (lambda: align().backward(), 1)
    # the optimizer-step cases change the weights: time them on copies of the states
    saved = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in (s, t)]
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.warmup + args.repeats):
        for name, (fn, _) in cases.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if r >= args.warmup:
                times[name].append(dt)
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f}" for n in times
                                             if r >= args.warmup), flush=True)  # fmt: skip
        for m, sd in zip((s, t), saved, strict=True):
            m.load_state_dict(sd)
    med = {name: statistics.median(v) for name, v in times.items()}
    floor = sum(med[n] * k for n, (_, k) in cases.items() if k)
    table = [[name, f"{med[name]:.3f}", str(k) if k else ""] for name, (_, k) in cases.items()]
    table.append(["**floor: sum of LGTM's passes**", f"{floor:.3f}", None])
    lines = [
        f"# LGTM step cost, variant {args.variant}",
        "",
        f"`python benchmarks/lgtm_cost.py --variant {args.variant} --repeats {args.repeats} "
        f"--warmup {args.warmup}{''.join(' ' + o for o in args.overrides)}`",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} thread(s), torch "
        f"{torch.__version__}; batch {cfg.batch_size} x max_length {cfg.data.max_length} "
        "(rt-polarity), MiniLM-L6 teacher, 3-layer student; medians of "
        f"{args.repeats} round-robin rounds after {args.warmup} warm-up rounds.",
        "",
        markdown_table(["what", "s", "times per LGTM step"], table, pad=False),
    ]
    lines += [
        "",
        f"- lgtm step / floor: **{med['lgtm step'] / floor:.2f}** (target <= 1.2)",
        f"- lgtm step / kd step: **{med['lgtm step'] / med['kd step']:.2f}**",
    ]
    print_and_write("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
