"""Performance of opdf in one run: decomposition, training overhead, methods x variants, inference.

Usage::

    python benchmarks/perf.py [--quick] [--unit-modes 3] [--threads N] [--rounds R --warmup W
                              --repeats K] [--steps S] [--out FILE.md]

Every ratio compares numbers measured in this run, on this machine. Sections:

1. Decomposition vs its SVD floor: ``opdf.mpo.decompose`` of the 72 encoder matrices of a
   random-init BERT-base against the bare float64 SVDs of the rearranged matrices it needs
   (``benchmarks/decompose.py``'s functions).
2. Training overhead and merged inference on the paper's 6-layer BERT-base-width student
   (``benchmarks/overhead.py``'s worker, each variant in a fresh process): one AdamW step plain vs
   over-parameterized, the contraction alone (the arithmetic floor), 4 micro-batches with and
   without ``opdf.accumulate``, the peak RSS, and no-grad latency of the merged student against the
   never-touched model.
3. Methods x variants: seconds per step and peak RSS of ``opdf distill`` itself for every method
   config (kd, theseus, and lgtm / dbkd / adkd when their configs exist) x base / +SVD / +MPO /
   +OPDF, the ratio to the method's base variant; the rt-polarity setting of the suites (MiniLM-L6
   teacher -> 3-layer student, batch 32 x 64, 12 steps, on the suites' 2,000-sentence
   subsample, whose DBKD teacher decisions are cached under ``<opdf cache>/dbkd`` by the suites'
   runs, so DBKD does not query the teacher 20,000 times again; the teacher is fine-tuned once and
   cached). Each variant is set as ``variant=<name>`` plus its explicit keys, which every config
   accepts (with or without its own ``variant:`` key). The mean over all steps, the first (AdamW
   state allocation) included; dev/test are cut to 128 sentences each (``data.max_eval_samples``)
   since the final evaluation is not timed. Besides ``/ base``, ``/ kd`` is each method's step
   over kd's in the same variant.

Sizes for a busy machine (the ratios stay measured within one run): ``--rounds``, ``--warmup`` and
``--repeats`` set section 2 (default 2 rounds of 3 warm-up + 3 timed steps), ``--steps`` section 3
(default 12), ``--threads`` every section (default all cores, ``--quick`` 1 as the smoke configs
train; on a machine shared with one-thread jobs, 1 avoids OpenMP threads waiting on each other:
``--quick``'s section 3 took 178 s with 1 thread; with 2, at a higher load, its tiny steps
were 3-45x slower and its ratios meaningless).
The load average at the start and the end is recorded.

``--quick`` (minutes on a busy 2-core machine; checks that the script works, its numbers are not
results): the 12 matrix shapes of two layers (random), a 2-layer 256-wide student for section 2
with 1 warm-up + 1 timed step and 1 round, and the smoke configs (tiny teacher, 4 steps) for
section 3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import decompose as decomposition  # noqa: E402  (benchmarks/decompose.py)
import overhead  # noqa: E402  (benchmarks/overhead.py)
from opdf.report.render import markdown_table, print_and_write  # noqa: E402

VARIANTS = {
    "base": ["variant=base", "overparam=none", "align.weight=0"],
    "svd": ["variant=svd", "overparam=svd", "align.weight=0"],
    "mpo": ["variant=mpo", "overparam=mpo", "unit_modes={L}", "align.weight=0"],
    "opdf": ["variant=opdf", "overparam=mpo", "unit_modes={L}", "align.weight=100"],
}
METHOD_CONFIGS = {
    "full": {
        m: f"configs/rt-polarity-{m}.yaml"
        for m in ("kd-base", "theseus-base", "lgtm", "dbkd", "adkd")
    },  # fmt: skip
    "quick": {m: f"configs/smoke-{m}.yaml" for m in ("kd", "theseus", "lgtm", "dbkd", "adkd")},
}


def variant_overrides(variant: str, unit_modes: int) -> list[str]:
    """The overrides of one of the paper's four columns: ``variant=`` and the keys it presets,
    explicit so that configs that set them (smoke configs: ``overparam: mpo``) are overridden."""
    return [o.format(L=unit_modes) for o in VARIANTS[variant]]


def section_decompose(args) -> list[str]:
    from opdf.mpo import decompose, mpo_shapes

    quick, unit_modes = args.quick, args.unit_modes

    if quick:  # the shapes of two BERT-base layers, without building the 110M model
        import torch

        g = torch.Generator().manual_seed(0)
        shapes = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]
        weights = [(f"w{i}", 0.02 * torch.randn(*s, generator=g)) for i, s in enumerate(shapes * 2)]
    else:
        weights = decomposition.encoder_weights()
    ours = svd = 0.0
    worst = 0.0
    for _name, w in weights:
        row, col = mpo_shapes(*w.shape, unit_modes=unit_modes)
        svd += decomposition.bare_svd(w, row, col)
        start = time.perf_counter()
        mpo = decompose(w, row, col)
        ours += time.perf_counter() - start
        worst = max(worst, float((mpo.to_matrix() - w).norm() / w.norm()))
    return [
        f"## 1. Decomposition ({len(weights)} BERT-base encoder matrices, L={unit_modes})",
        "",
        markdown_table(
            ["what", "seconds"],
            [
                ["opdf.mpo.decompose", f"{ours:.2f}"],
                ["bare float64 SVDs of the rearranged matrices (the floor)", f"{svd:.2f}"],
                ["ratio (target <= 1.2)", f"{ours / svd:.3f}"],
            ],
            pad=False,
        ),
        "",
        f"worst relative reconstruction error: {worst:.1e}",
    ]


def section_overhead(args) -> list[str]:
    quick, unit_modes = args.quick, args.unit_modes
    shape = dict(layers=2, hidden=256, length=32) if quick else {}
    warmup, repeats, rounds = (1, 1, 1) if quick else (3, 3, 2)
    warmup, repeats, rounds = (  # a flag of 0 is a value, not "unset"
        warmup if args.warmup is None else args.warmup,
        repeats if args.repeats is None else args.repeats,
        rounds if args.rounds is None else args.rounds,
    )
    plan = overhead.variants(**({"batch": 8, "micro_batch": 2, "length": 32} if quick else {}))
    base = {"unit_modes": unit_modes, "repeats": repeats, "warmup": warmup,
            "keep_freed_memory": True, **shape}  # fmt: skip
    results: dict[str, dict] = {}
    for r in range(rounds):
        for name, spec in plan.items():
            out = overhead.run({**base, **spec})
            print(f"  round {r + 1} {name}: " + " ".join(f"{t:.3f}" for t in out["times"]),
                  flush=True)  # fmt: skip
            seen = results.setdefault(name, {"times": [], "peak_mib": [], "params": out["params"]})
            seen["times"] += out["times"]
            seen["peak_mib"].append(out["peak_mib"])
    med, best = overhead.checks(results, statistics.median), overhead.checks(results, min)
    names = list(results)
    peak = {n: min(r["peak_mib"]) for n, r in results.items()}
    model = "2 x 256 student (quick)" if quick else "6-layer BERT-base-width student"
    variant_rows = [[n, f"{statistics.median(r['times']):.3f}", f"{min(r['times']):.3f}",
                     f"{peak[n]:.0f}"] for n, r in results.items()]  # fmt: skip
    check_rows = [
        ["step, over-parameterized / plain", f"{med['step']:.3f}", f"{best['step']:.3f}",
         "<= 1.5"],
        ["its floor: (plain + contraction) / plain", f"{med['floor']:.3f}",
         f"{best['floor']:.3f}", None],
        ["overhead per optimizer step with accumulate / one micro-batch step",
         f"{med['acc']:.3f}", f"{best['acc']:.3f}", "<= 1.2"],
        ["the same without accumulate", f"{med['noacc']:.3f}", f"{best['noacc']:.3f}", None],
        ["merged inference latency / never-touched", f"{med['infer']:.3f}",
         f"{best['infer']:.3f}", "<= 1.05"],
        ["peak RSS, over-parameterized / plain", f"{peak[names[1]] / peak[names[0]]:.3f}", None,
         None],
        ["parameters after merge identical",
         str(results[names[-1]]["params"] == results[names[-2]]["params"]), None, "True"],
    ]  # fmt: skip
    lines = [
        f"## 2. Training overhead and merged inference ({model}, L={unit_modes})",
        "",
        f"{warmup} warm-up + {repeats} timed steps per process x {rounds} round(s).",
        "",
        markdown_table(["variant", "median s", "fastest s", "peak RSS (MiB)"], variant_rows,
                       pad=False),
        "",
        markdown_table(["check", "from medians", "from fastest", "target"], check_rows,
                       pad=False),
    ]  # fmt: skip
    return lines


def _distill(config: str, overrides: list[str], out: Path, threads: int) -> dict:
    cmd = [sys.executable, "-m", "opdf", "distill", config, *overrides, f"output_dir={out}",
           f"threads={threads}", "--overwrite", "--no-progress"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"perf: {' '.join(cmd)} failed: {tail}")
    return json.loads((out / "summary.json").read_text())


def section_methods(args) -> list[str]:
    quick, unit_modes = args.quick, args.unit_modes
    configs = {m: c for m, c in METHOD_CONFIGS["quick" if quick else "full"].items()
               if (ROOT / c).is_file()}  # fmt: skip
    steps = args.steps if args.steps is not None else (4 if quick else 12)
    common = [f"max_steps={steps}", f"eval_every={10 * steps}", f"checkpoint_every={10 * steps}",
              f"log_every={steps}"]  # fmt: skip
    if not quick:  # the suites' subsample (DBKD's cached decisions); evaluation is not timed
        common += ["data.max_train_samples=2000", "data.max_eval_samples=128", "batch_size=32"]
    threads = args.threads
    rows = []
    kd_sps: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="opdf-perf-"))
    try:
        for method, config in configs.items():
            base_sps = base_rss = None
            for variant in VARIANTS:
                overrides = variant_overrides(variant, unit_modes) + common
                print(f"  {method} {variant} ...", flush=True)
                s = _distill(config, overrides, tmp / f"{method}-{variant}", threads)
                sps, rss = s["seconds_per_step"], s.get("peak_rss_mb")
                if variant == "base":
                    base_sps, base_rss = sps, rss
                kd_sps.setdefault(variant, sps)  # kd comes first
                memory = [f"{rss:.0f}", f"{rss / base_rss:.2f}"] if rss and base_rss else ["-", "-"]
                rows.append([method, variant, f"{s['train_params'] / 1e6:.2f}M",
                             f"{s['inference_params'] / 1e6:.2f}M", f"{sps:.3f}",
                             f"{sps / base_sps:.2f}", f"{sps / kd_sps[variant]:.2f}",
                             *memory])  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    setting = "smoke configs, tiny teacher (quick)" if quick else \
        "rt-polarity, MiniLM-L6 teacher -> 3-layer student, batch 32 x 64"  # fmt: skip
    return [
        f"## 3. Methods x variants through `opdf distill` ({setting}, {steps} steps, "
        f"{threads} threads)",
        "",
        markdown_table(["method", "variant", "train params", "inference params", "s/step",
                        "/ base", "/ kd", "peak RSS (MiB)", "/ base"], rows, pad=False),
        "",
        "Methods without a config here are not measured: "
        + (", ".join(m for m in METHOD_CONFIGS["quick" if quick else "full"] if m not in configs)
           or "none") + ".",
    ]  # fmt: skip


def overhead_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script runs")
    parser.add_argument("--unit-modes", type=int, default=3)
    parser.add_argument("--threads", type=int, help="threads (default: all cores; --quick: 1)")
    parser.add_argument("--rounds", type=int, help="section 2: rounds (default 2; quick 1)")
    parser.add_argument("--warmup", type=int, help="section 2: warm-up steps (default 3; quick 1)")
    parser.add_argument("--repeats", type=int, help="section 2: timed steps (default 3; quick 1)")
    parser.add_argument("--steps", type=int, help="section 3: steps per run (default 12; quick 4)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["decompose", "overhead",
                        "methods"], help="sections to leave out")  # fmt: skip
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    args = parser.parse_args()
    if args.threads is None:
        args.threads = 1 if args.quick else overhead_threads()
    for n in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # section 2's workers inherit it
        os.environ[n] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    started = time.time()
    load_start = os.getloadavg()
    cmd = "python " + " ".join(["benchmarks/perf.py", *sys.argv[1:]])
    lines = [
        "# opdf performance"
        + (
            " (--quick: a check that the script runs, not results)" if args.quick else ""
        ),  # fmt: skip
        "",
        f"- command: `{cmd}`",
        f"- machine: {platform.machine()}, {overhead_threads()} cores, Python "
        f"{sys.version.split()[0]}, torch {torch.__version__}, {args.threads} thread(s), "
        "no GPU used",
    ]
    sections = {"decompose": section_decompose, "overhead": section_overhead,
                "methods": section_methods}  # fmt: skip
    for name, fn in sections.items():
        if name in args.skip:
            continue
        print(f"{name} ...", flush=True)
        lines += ["", *fn(args)]
    load_end = os.getloadavg()
    lines[4:4] = [
        "- load average (1, 5, 15 min) at the start: "
        + ", ".join(f"{x:.2f}" for x in load_start)
        + "; at the end: " + ", ".join(f"{x:.2f}" for x in load_end),
    ]  # fmt: skip
    lines += ["", f"total wall time: {time.time() - started:.0f} s"]
    print_and_write("\n".join(lines), args.out, newline=True)


if __name__ == "__main__":
    main()
