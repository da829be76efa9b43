"""Ctrl-C and kill -9 while a checkpoint is being written, in a real `opdf distill` process.

``OPDF_TEST_WRITE_DELAY`` pauses inside each checkpoint's ``torch.save``, so the signal lands
there: on main a SIGINT there printed two chained tracebacks ending in torch's
``inline_container.cc`` error (exit 1), and a SIGKILL left ``.last.pt.<rand>.tmp`` for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opdf.run import checkpoint as ckpt
from opdf.run import load_config
from opdf.run.runner import prepare_output_dir

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke-kd.yaml")
ARGS = ["max_steps=6", "eval_every=2", "checkpoint_every=2", "log_every=1"]


def temporaries(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob(".*.tmp")) if (run / "checkpoints").is_dir() else []


def _ctrl_c_as_at_a_terminal() -> None:
    """In the child: SIGINT back to its default, so that Python turns it into KeyboardInterrupt.
    A suite started in the background (`nohup make test &`) inherits SIGINT ignored, and a
    process that starts with SIGINT ignored rightly keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_and_wait_for_a_write(run: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OPDF_TEST_WRITE_DELAY": "2",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "opdf", "distill", SMOKE, *ARGS, f"output_dir={run}",
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=_ctrl_c_as_at_a_terminal,
    )  # fmt: skip
    deadline = time.time() + 240
    while not temporaries(run):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"no checkpoint write was seen (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    time.sleep(0.3)  # inside torch.save's pause now
    return proc


def test_ctrl_c_during_a_checkpoint_write_finishes_it_and_exits_130_in_one_line(tmp_path):
    run = tmp_path / "run"
    proc = start_and_wait_for_a_write(run)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "inline_container" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1] == "opdf distill: interrupted", err
    assert sum("interrupted" in x for x in lines) == 1
    assert temporaries(run) == []
    found = ckpt.read_latest(run / "checkpoints")  # the write was finished: intact
    best = run / "checkpoints" / ckpt.BEST
    assert found is not None or ckpt.read(best).step > 0


def test_kill_9_during_a_checkpoint_write_leaves_a_temporary_that_the_resume_removes(tmp_path):
    run = tmp_path / "run"
    proc = start_and_wait_for_a_write(run)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    left = temporaries(run)
    assert left, "the kill came after the write"
    cfg = load_config(SMOKE, [*ARGS, f"output_dir={run}"])
    resumable = ckpt.resumable(run / "checkpoints")
    prepare_output_dir(run, resume=resumable, overwrite=not resumable, cfg=cfg)
    assert temporaries(run) == [] and not any(p.exists() for p in left)
