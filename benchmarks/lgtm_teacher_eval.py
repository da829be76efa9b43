"""Dev and test metrics of an LGTM run's jointly trained teacher (at the end, from ``last.pt``).

Usage::

    python benchmarks/lgtm_teacher_eval.py RUN_DIR [RUN_DIR ...]

LGTM trains its teacher from the pretrained model (heads zeroed), so its accuracy at the end says
how much of the task the teacher learned in the run's budget; ``summary.json`` scores the
student only. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def teacher_metrics(run_dir: Path) -> dict:
    from opdf.distill import FineTune
    from opdf.run import checkpoint as ckpt
    from opdf.run import load_config
    from opdf.run.runner import build, settings_from
    from opdf.run.trainer import Trainer

    cfg = load_config(run_dir / "config.yaml", [f"output_dir={run_dir}"])
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    distiller, dataset, tokenizer, _, _ = build(cfg, progress=False)
    last = ckpt.read(run_dir / "checkpoints" / ckpt.LAST)
    distiller.teacher.load_state_dict(last.modules["teacher"])
    judge = FineTune(distiller.teacher, None, num_labels=dataset.num_labels)
    trainer = Trainer(judge, dataset, tokenizer, settings_from(cfg), run_dir / "unused")
    return {"run": str(run_dir), "step": last.step, "teacher_dev": trainer.evaluate("dev"),
            "teacher_test": trainer.evaluate("test")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    for run in parser.parse_args().runs:
        print(json.dumps(teacher_metrics(run)), flush=True)


if __name__ == "__main__":
    main()
