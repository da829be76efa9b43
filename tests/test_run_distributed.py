"""`torchrun -m opdf distill`: 2 CPU processes (gloo) give the 1-process student, also after a
SIGKILL and `--resume` under torchrun (dropout off, the same global batch of 16)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from opdf.run import load_config, run_distill

ARGS = ["configs/smoke-kd.yaml", "student.dropout=0", "grad_accum=2", "max_steps=12",
        "eval_every=4", "checkpoint_every=2", "log_every=2", "threads=1"]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "opdf", "distill"]  # fmt: skip
TOLERANCE = 1e-4  # max abs weight difference, 1 vs 2 processes


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # OPDF_CACHE: the session's (conftest)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    run_distill(load_config(ARGS[0], [*ARGS[1:], f"output_dir={out}"]), progress=False)
    return out


def max_difference(a, b) -> float:
    wa = load_file(str(a / "student" / "model.safetensors"))
    wb = load_file(str(b / "student" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def torchrun(out, *extra, check=True):
    cmd = [*TORCHRUN, *ARGS, f"output_dir={out}", "--no-progress", *extra]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, check=check,
                          timeout=900)  # fmt: skip


def train_records(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if json.loads(x)["split"] == "train"]


def test_two_processes_give_the_one_process_student(one_process, tmp_path):
    out = tmp_path / "ddp"
    done = torchrun(out)
    printed = json.loads(done.stdout.strip().splitlines()[-1])  # rank 0 alone prints it
    assert printed["world_size"] == 2 and done.stdout.count('"output_dir"') == 1
    assert max_difference(one_process, out) <= TOLERANCE
    summary = json.loads((out / "summary.json").read_text())
    ref = json.loads((one_process / "summary.json").read_text())
    assert summary["world_size"] == 2 and ref["world_size"] == 1
    assert summary["batch_size"] == ref["batch_size"] == 16  # the global batch
    assert summary["best_step"] == ref["best_step"] and summary["dev"] == ref["dev"]
    # the logged losses are the global batch's (both ranks' shares), not rank 0's half
    for a, b in zip(train_records(out), train_records(one_process), strict=True):
        assert a["step"] == b["step"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rank_rngs"]) == 1


def test_killed_two_process_run_resumes_under_torchrun(one_process, tmp_path):
    out = tmp_path / "killed"
    cmd = [*TORCHRUN, *ARGS, f"output_dir={out}", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 600
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run ended before it could be killed (machine too fast)")
    # torchrun starts its workers in sessions of their own: kill the agent and every worker
    agent = psutil.Process(proc.pid)
    workers = agent.children(recursive=True)
    for p in [*workers, agent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(workers, timeout=30)
    assert not (out / "summary.json").exists()
    done = torchrun(out, "--resume")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] and summary["world_size"] == 2, done.stderr[-2000:]
    assert max_difference(one_process, out) <= TOLERANCE
    steps = [r["step"] for r in train_records(out)]
    assert steps == sorted(set(steps)) == [r["step"] for r in train_records(one_process)]


@pytest.mark.parametrize("method", ["dbkd", "adkd"])
def test_dbkd_and_adkd_under_torchrun_give_the_one_process_student(method, tmp_path):
    # the same micro-batches in both (4 examples): AD-KD's attribution loss is normalised per
    # micro-batch (by its count of non-zero teacher scores), as in the official code
    args = [f"configs/smoke-{method}.yaml", "student.dropout=0", "max_steps=6", "eval_every=3",
            "checkpoint_every=3", "log_every=2", "threads=1"]  # fmt: skip
    one = tmp_path / "one"
    run_distill(load_config(args[0], [*args[1:], "grad_accum=4", f"output_dir={one}"]),
                progress=False)  # fmt: skip
    two = tmp_path / "two"
    cmd = [*TORCHRUN, *args, "grad_accum=2", f"output_dir={two}", "--no-progress"]
    subprocess.run(cmd, env=env(), capture_output=True, text=True, check=True, timeout=900)
    assert max_difference(one, two) <= TOLERANCE
