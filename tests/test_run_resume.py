"""Kill and resume: a resumed run ends with the same student as an uninterrupted one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from opdf.run import load_config, run_distill


def student_weights(run_dir):
    return load_file(str(run_dir / "student" / "model.safetensors"))


def assert_same_student(a, b):
    wa, wb = student_weights(a), student_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa = json.loads((a / "summary.json").read_text())
    sb = json.loads((b / "summary.json").read_text())
    assert (sa["dev"], sa["test"], sa["best_step"]) == (sb["dev"], sb["test"], sb["best_step"])


def assert_same_teacher(a, b):
    """A trainable teacher (LGTM) ends the same too: the final last.pt of both runs."""
    from opdf.run import checkpoint as ckpt

    la, lb = (ckpt.read(run / "checkpoints" / ckpt.LAST) for run in (a, b))
    assert la.modules.keys() == lb.modules.keys()
    for name in la.modules:
        for k, v in la.modules[name].items():
            assert torch.equal(v, lb.modules[name][k]), (name, k)
    for name in la.optimizers:
        assert str(la.optimizers[name]["state"]) == str(lb.optimizers[name]["state"]), name


@pytest.mark.parametrize("method", ["kd", "theseus", "lgtm", "dbkd", "adkd"])
def test_interrupted_then_resumed_equals_uninterrupted(method, tmp_path):
    common = ["max_steps=10", "eval_every=3", "checkpoint_every=4", "log_every=1"]
    cfg_full = load_config(f"configs/smoke-{method}.yaml", [*common, f"output_dir={tmp_path}/a"])
    run_distill(cfg_full, progress=False)
    cfg = load_config(f"configs/smoke-{method}.yaml", [*common, f"output_dir={tmp_path}/b"])
    assert run_distill(cfg, progress=False, stop_after_step=4) is None  # "killed" after step 4
    assert not (tmp_path / "b" / "summary.json").exists()
    summary = run_distill(cfg, resume=True, progress=False)
    assert summary["resumed_from_step"] == 4
    assert_same_student(tmp_path / "a", tmp_path / "b")
    assert_same_teacher(tmp_path / "a", tmp_path / "b")

    # metrics.jsonl has each step once, as in the uninterrupted run, with the same values (LGTM
    # logs its teacher's loss, quiz loss and influence norm: the teacher's path is the same)
    def records(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines]

    a, b = records("a"), records("b")
    assert [(r["step"], r["split"]) for r in b] == [(r["step"], r["split"]) for r in a]
    for ra, rb in zip(a, b, strict=True):
        assert rb.keys() == ra.keys()
        nums = [k for k, v in ra.items() if isinstance(v, float)]
        assert [rb[k] for k in nums] == pytest.approx([ra[k] for k in nums], rel=1e-6)


def test_resume_needs_the_same_config(tmp_path):
    from opdf.errors import ConfigError

    args = ["max_steps=4", "checkpoint_every=2", f"output_dir={tmp_path}/r"]
    run_distill(load_config("configs/smoke-kd.yaml", args), progress=False, stop_after_step=2)
    changed = load_config("configs/smoke-kd.yaml", [*args, "lr=0.5"])
    with pytest.raises(ConfigError, match="differs .* in lr"):
        run_distill(changed, resume=True, progress=False)


@pytest.mark.parametrize("method", ["kd", "lgtm"])
def test_sigkill_then_resume_from_the_cli(method, tmp_path, capsys):
    """A real SIGKILL of `opdf distill` while it trains, then `opdf distill --resume`. While it
    lives, a second run into its folder refuses (--overwrite and --resume too); the lock its
    SIGKILL leaves behind blocks nothing."""
    from opdf.cli import main

    config = f"configs/smoke-{method}.yaml"
    args = [config, "max_steps=16", "eval_every=8", "checkpoint_every=2", "--no-progress"]
    ref = tmp_path / "ref"
    run_distill(load_config(config, [*args[1:4], f"output_dir={ref}"]), progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "opdf", "distill", *args, f"output_dir={out}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    # frozen (SIGSTOP) at its first checkpoint: alive and holding its lock, but no further steps,
    # so the checks below cannot race the run to its end however fast the machine
    proc.send_signal(signal.SIGSTOP)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be stopped (machine too fast)")
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert main(["distill", *args, f"output_dir={out}", *flags]) == 2
        err = capsys.readouterr().err
        assert f"is in use by a live opdf run (pid {proc.pid}" in err, err
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    assert (out / ".opdf.lock").exists()  # left by the killed run
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["output_dir"] == str(out)
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] > 0
    assert_same_student(ref, out)
    assert_same_teacher(ref, out)


def test_resume_keeps_the_running_loss_average_of_the_killed_run(tmp_path):
    # log lines average over 3 steps; the kill at step 4 falls inside the window 4-6
    common = ["max_steps=9", "eval_every=9", "checkpoint_every=4", "log_every=3"]
    run_distill(load_config("configs/smoke-kd.yaml", [*common, f"output_dir={tmp_path}/a"]),
                progress=False)  # fmt: skip
    cfg = load_config("configs/smoke-kd.yaml", [*common, f"output_dir={tmp_path}/b"])
    assert run_distill(cfg, progress=False, stop_after_step=4) is None
    run_distill(cfg, resume=True, progress=False)

    def train_losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["split"] == "train"]

    a, b = train_losses("a"), train_losses("b")
    assert [s for s, _ in b] == [s for s, _ in a] == [3, 6, 9]
    assert [x for _, x in b] == pytest.approx([x for _, x in a], rel=1e-6)


def test_a_best_checkpoint_from_beyond_the_last_checkpoint_is_adopted(tmp_path):
    """Killed after a new best (step 6) but before the next checkpoint (step 8): best.pt already
    overwrote the best as of step 4, so the resumed run must compete against it."""
    from opdf.run import checkpoint as ckpt

    out = tmp_path / "r"
    args = ["max_steps=8", "eval_every=2", "checkpoint_every=4", f"output_dir={out}"]
    cfg = load_config("configs/smoke-kd.yaml", args)
    assert run_distill(cfg, progress=False, stop_after_step=4) is None
    best = out / "checkpoints" / ckpt.BEST
    saved = ckpt.read(best)
    ckpt.save(ckpt.Checkpoint(step=6, modules=saved.modules, score=2.0), best)  # unbeatable
    summary = run_distill(cfg, resume=True, progress=False)
    assert summary["best_step"] == 6
    assert (ckpt.read(best).step, ckpt.read(best).score) == (6, 2.0)
