"""The end stage of a run, called by :meth:`opdf.run.trainer.Trainer.finish`: the best student
(``best.pt``) merged into plain layers and checked, the run's ``summary.json`` (what ``opdf
report`` reads), and both written to the output folder as opdf's files.

The Trainer keeps what needs its loop: loading the best weights into its modules, evaluating the
merged student on dev and test, and logging the test record.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from opdf.errors import OpdfError
from opdf.overparam import ParamReport, merge, param_report
from opdf.run import checkpoint as ckpt
from opdf.run import distributed, owner
from opdf.run.distributed import DistEnv
from opdf.run.export import save_student
from opdf.run.metrics_log import METRICS_FILE
from opdf.run.settings import TrainSettings
from opdf.run.state import TrainState


def read_best(path: Path, dist: DistEnv) -> ckpt.Checkpoint | None:
    """``best.pt`` (None when the run saved none): rank 0 reads it, every rank gets it."""
    return distributed.on_main(lambda: ckpt.read(path) if path.exists() else None, dist)


def merge_checked(student) -> ParamReport:
    """Merge ``student``'s cores into plain weights, in place; its :class:`ParamReport` from
    before the merge, whose inference count the merged student must have."""
    report = param_report(student)
    merge(student)
    merged_params = sum(p.numel() for p in student.parameters())
    if merged_params != report.inference_params:  # pragma: no cover - a merge bug
        raise OpdfError(
            f"merged student has {merged_params:,} parameters, expected {report.inference_params:,}"
        )
    return report


def run_summary(state: TrainState, settings: TrainSettings, report: ParamReport, dev: dict,
                test: dict, *, run_info: dict, dataset, world_size: int, device: torch.device,
                total_steps: int, teacher_cache=None) -> dict:  # fmt: skip
    """``summary.json``: the run's identity (``run_info``), parameter counts, the merged best
    student's dev and test metrics, and the run's size, time and memory."""
    return {
        **run_info,
        "train_params": report.total_params,
        "trainable_params": report.train_params,
        "inference_params": report.inference_params,
        "main_metric": dataset.main_metric,
        "dev": dev,
        "test": test,
        "best_step": state.best_step,
        "steps": total_steps,
        "batch_size": settings.batch_size,
        "grad_accum": settings.grad_accum,
        "world_size": world_size,
        "precision": settings.precision,
        "data_sizes": dataset.sizes(),
        "wall_time": round(state.wall_time(), 3),
        "train_time": round(state.train_seconds, 3),
        "seconds_per_step": round(state.train_seconds / max(1, total_steps), 4),
        "resumed_from_step": state.start or None,
        "skipped_steps": state.skipped,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
        "peak_gpu_mb": peak_gpu_mb(device),
        "teacher_cache": teacher_cache.info() if teacher_cache is not None else None,
    }


def write_results(out: Path, student, summary: dict, *, tokenizer=None, dataset=None) -> None:
    """The merged student to ``out/student`` and ``summary.json`` (rank 0), each listed as
    opdf's before it is written."""
    owner.record(out, "student", "summary.json", METRICS_FILE)  # before the writes
    with ckpt.writing(out / "student", "merged student"):
        save_student(student, out / "student", tokenizer=tokenizer, dataset=dataset)
    owner.record(out, "student")  # and what the folder now holds
    with ckpt.writing(out / "summary.json", "run summary"):
        ckpt.atomic_write_json(out / "summary.json", summary)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (for a resumed run: of the process that
    finished it; teacher fine-tuning in the same process counts too). Linux: ``VmHWM`` of
    ``/proc/self/status``, the high-water mark of this program's memory; ``ru_maxrss`` would
    also count the parent's memory at the fork before the exec (``opdf bench``, benchmarks)."""
    import resource  # Unix only: imported where it is needed

    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def peak_gpu_mb(device) -> float | None:
    """Peak memory allocated by torch on a CUDA device, MiB; None elsewhere."""
    if torch.device(device).type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / (1 << 20), 1)
