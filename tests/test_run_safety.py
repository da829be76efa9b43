"""Reliability and safety of runs: checkpoints that run no code, damaged checkpoints detected and
fallen back from, divergence stopped (or skipped), one live run per folder, full disks reported.

Resumed runs are compared with one uninterrupted reference run (8 steps, checkpoints every 2)."""

from __future__ import annotations

import builtins
import errno
import json
import math
import pickle
import warnings

import pytest
import torch
from safetensors.torch import load_file

from opdf import storage
from opdf.cli import main
from opdf.distill.kd import KD
from opdf.errors import DivergedError, OpdfError
from opdf.run import checkpoint as ckpt
from opdf.run import load_config, run_distill
from opdf.run.lock import RunLock

SMOKE = "configs/smoke-kd.yaml"
COMMON = ["max_steps=8", "eval_every=2", "checkpoint_every=2", "log_every=1"]


def cfg_for(out, *extra):
    return load_config(SMOKE, [*COMMON, f"output_dir={out}", *extra])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every resumed one must equal."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_distill(cfg_for(out), progress=False)
    return out


def assert_same_run(a, b):
    wa, wb = (load_file(str(r / "student" / "model.safetensors")) for r in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    assert (sa["dev"], sa["test"], sa["best_step"]) == (sb["dev"], sb["test"], sb["best_step"])


def tiny(step: int) -> ckpt.Checkpoint:
    return ckpt.Checkpoint(step=step, modules={"student": {"w": torch.full((64,), float(step))}},
                           progress={"best": 0.0}, rng=ckpt.rng_state())  # fmt: skip


def cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: torch itself loads it without a word
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------ checksums


def test_two_checkpoints_are_kept_and_checked_against_the_manifest(tmp_path):
    for step in (2, 4, 6):
        ckpt.save(tiny(step), tmp_path / ckpt.LAST, keep_previous=True)
    manifest = json.loads((tmp_path / ckpt.MANIFEST).read_text())
    assert {k: v["step"] for k, v in manifest["files"].items()} == {"last.pt": 6, "previous.pt": 4}
    assert ckpt.read_latest(tmp_path)[1].step == 6
    flip(tmp_path / ckpt.LAST)
    with pytest.raises(ckpt.CheckpointError, match="last.pt is not a readable checkpoint"):
        ckpt.read(tmp_path / ckpt.LAST)
    with pytest.warns(UserWarning, match=r"last.pt is not a readable.*resuming from .*previous.pt"):
        path, found = ckpt.read_latest(tmp_path)
    assert (path.name, found.step) == ("previous.pt", 4)
    cut(tmp_path / ckpt.PREVIOUS)
    with pytest.raises(ckpt.CheckpointError, match="no intact checkpoint.*last.pt.*previous.pt"):
        ckpt.read_latest(tmp_path)


def test_a_kill_between_the_new_file_and_its_manifest_falls_back_to_the_previous(
    tmp_path, monkeypatch
):
    """The manifest is written last: a new last.pt it does not list yet is not trusted."""
    ckpt.save(tiny(2), tmp_path / ckpt.LAST, keep_previous=True)

    def killed(path, obj):
        raise KeyboardInterrupt  # the process dies right after the rename

    monkeypatch.setattr(ckpt, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(tiny(4), tmp_path / ckpt.LAST, keep_previous=True)
    monkeypatch.undo()
    assert ckpt.read(tmp_path / ckpt.LAST, verify=False).step == 4  # complete, but unlisted
    with pytest.warns(UserWarning, match="matches no entry"):
        path, found = ckpt.read_latest(tmp_path)
    assert (path.name, found.step) == ("previous.pt", 2)


def test_rng_and_method_state_are_plain_and_anything_else_is_refused_on_saving(tmp_path):
    ckpt.seed_everything(3)
    state = ckpt.rng_state()
    want = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    ckpt.save(ckpt.Checkpoint(step=1, modules={}, rng=state), tmp_path / "last.pt")
    raw = torch.load(tmp_path / "last.pt", weights_only=True)  # no allow-list needed
    ckpt.set_rng_state(raw["rng"])
    got = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(want[0], got[0]) and want[1:] == got[1:]
    import numpy as np

    bad = ckpt.Checkpoint(step=1, modules={}, method={"queue": np.zeros(3)}, rng=state)
    with pytest.raises(OpdfError, match=r"checkpoint last.pt\['method'\]\['queue'\] is a numpy"):
        ckpt.save(bad, tmp_path / "last.pt")
    assert ckpt.read(tmp_path / "last.pt").step == 1  # the earlier file is untouched


@pytest.mark.parametrize("damage", [cut, flip])
def test_a_damaged_last_checkpoint_falls_back_and_the_run_ends_equal(damage, reference, tmp_path):
    out = tmp_path / "run"
    cfg = cfg_for(out)
    assert run_distill(cfg, progress=False, stop_after_step=6) is None
    damage(out / "checkpoints" / ckpt.LAST)
    with pytest.warns(UserWarning, match=r"last.pt is not a readable.*previous.pt \(step 4\)"):
        summary = run_distill(cfg, resume=True, progress=False)
    assert summary["resumed_from_step"] == 4
    assert_same_run(reference, out)


# ------------------------------------------------------------------------------ no code from files


class Payload:
    """What a booby-trapped checkpoint would hold: unpickling it calls ``open(marker, "w")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def plant(path, obj) -> None:
    """Replace a checkpoint and make the manifest agree, as someone editing the folder would."""
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        torch.save(obj, path)
    manifest = path.parent / ckpt.MANIFEST
    data = json.loads(manifest.read_text())
    data["files"][path.name] = {"sha256": ckpt.file_sha256(path), "size": path.stat().st_size}
    manifest.write_text(json.dumps(data))


def test_a_malicious_pickle_is_refused_without_being_executed(tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    cfg = cfg_for(out)
    assert run_distill(cfg, progress=False, stop_after_step=2) is None
    last = out / "checkpoints" / ckpt.LAST
    real = ckpt.read(last)
    plant(last, {**real.to_dict(), "method": {"x": Payload(marker)}})
    refused = r"refusing to load .*\(here io.open\).*nothing from it was executed"
    with pytest.raises(ckpt.UnsafeCheckpointError, match=refused):
        ckpt.read(last)
    argv = ["distill", SMOKE, *COMMON, f"output_dir={out}", "--no-progress", "--resume"]
    for cmd in (argv, ["merge", str(out), "--which", "last"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "refusing to load" in err and "last.pt" in err
    plant(out / "checkpoints" / ckpt.BEST, Payload(marker))  # a bare object, not even a dict
    assert main(["merge", str(out)]) == 2
    assert "best.pt: it holds Python objects" in capsys.readouterr().err
    # a pickle in the old, non-zip torch format: refused the same way
    plant(last, pickle.dumps({"step": 2, "modules": {}, "x": Payload(marker)}))
    with pytest.raises(ckpt.UnsafeCheckpointError):
        ckpt.read(last)
    assert not marker.exists()


def test_merging_a_damaged_last_checkpoint_points_to_the_intact_best_and_writes_nothing(
    tmp_path, capsys
):
    """`opdf merge --which last` with last.pt and previous.pt damaged advised `--overwrite`
    (which would delete the intact best.pt) and left an empty-looking output folder."""
    out = tmp_path / "run"
    assert run_distill(cfg_for(out), progress=False, stop_after_step=4) is None
    folder = out / "checkpoints"
    flip(folder / ckpt.LAST)
    cut(folder / ckpt.PREVIOUS)
    assert main(["merge", str(out), "--which", "last"]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint to merge from" in err
    assert f"Merge the best checkpoint instead (--which best: {folder / ckpt.BEST})" in err
    assert "--overwrite" not in err and not (out / "merged-last").exists()
    assert main(["merge", str(out)]) == 0  # the advice works
    assert (out / "merged-best" / "model.safetensors").is_file()


def test_models_are_read_from_safetensors_only(tmp_path):
    from opdf.models.hf import load_model

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(OpdfError, match=r"pytorch_model.bin, a pickle.*safetensors only"):
        load_model(folder)


# ------------------------------------------------------------------------------ divergence


def test_lr_1e30_stops_with_exit_3_naming_the_step_and_the_loss_terms(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["distill", SMOKE, "max_steps=8", "lr=1e30", "checkpoint_every=1", "eval_every=100",
            f"output_dir={out}", "--no-progress"]  # fmt: skip
    assert main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("opdf distill: error: step ") and "not finite (" in err
    assert all(f"{term}=" in err for term in ("ce", "kd", "align")), err
    assert not (out / "summary.json").exists()
    # the last good checkpoint is intact: listed in the manifest, before the failing step
    failed = int(err.split("step ")[1].split(":")[0])
    last = ckpt.read(out / "checkpoints" / ckpt.LAST)
    assert last.step == failed - 1 and f"last.pt (step {last.step}) is intact" in err


def nan_at(step: int, monkeypatch) -> None:
    """Inject a NaN into KD's loss at (1-based) ``step``."""
    original = KD.forward_train

    def forward_train(self, batch):
        logits, losses = original(self, batch)
        if self.step + 1 == step:
            losses["kd"] = losses["kd"] * float("nan")
        return logits, losses

    monkeypatch.setattr(KD, "forward_train", forward_train)


def test_an_injected_nan_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    nan_at(5, monkeypatch)
    with pytest.raises(DivergedError, match=r"step 5: the loss is not finite \(ce=.*, kd=nan"):
        run_distill(cfg_for(out), progress=False)
    assert ckpt.read_latest(out / "checkpoints")[1].step == 4
    manifest = json.loads((out / "checkpoints" / ckpt.MANIFEST).read_text())["files"]
    assert (manifest["last.pt"]["step"], manifest["previous.pt"]["step"]) == (4, 2)


def test_skipping_non_finite_steps_counts_them_in_the_summary(tmp_path, monkeypatch):
    out = tmp_path / "run"
    nan_at(3, monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_distill(cfg_for(out, "on_nonfinite=skip"), progress=False)
    assert summary["skipped_steps"] == 1
    assert any("step 3: the loss is not finite" in str(w.message) for w in caught)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert all(math.isfinite(r["loss"]) for r in train if "loss" in r)
    assert [r.get("skipped", 0) for r in train] == [0, 0, 1, 1, 1, 1, 1, 1]


# ------------------------------------------------------------------------------ one run per folder


def test_a_second_run_into_a_locked_folder_refuses_with_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("method: kd\n")  # what --overwrite would delete
    argv = ["distill", SMOKE, *COMMON, f"output_dir={out}", "--no-progress"]
    with RunLock(out):  # a live run
        for flags in ([], ["--overwrite"], ["--resume"]):
            assert main([*argv, *flags]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "in use by a live opdf run" in err, err
    assert (out / "config.yaml").read_text() == "method: kd\n"


# ------------------------------------------------------------------------------ full disks


def test_a_full_disk_while_checkpointing_is_one_error_and_loses_nothing(
    reference, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    real = ckpt.atomic_write_bytes
    calls = {"last": 0}

    def full_disk(path, write, before_rename=None):
        if path.name == ckpt.LAST:
            calls["last"] += 1
            if calls["last"] == 2:  # the step-4 checkpoint: half written, then ENOSPC

                def write_half(f):
                    f.write(b"\0" * 4096)
                    raise OSError(errno.ENOSPC, "No space left on device")

                return real(path, write_half, before_rename)
        return real(path, write, before_rename)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", full_disk)
    argv = ["distill", SMOKE, *COMMON, f"output_dir={out}", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"could not write the checkpoint {out / 'checkpoints' / 'last.pt'}: No space" in err
    assert ckpt.read(out / "checkpoints" / ckpt.LAST).step == 2  # the previous one, intact
    assert not list((out / "checkpoints").glob(".*.tmp"))
    logged = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1] == 4  # results written before the failure are still there
    monkeypatch.undo()  # space freed
    run_distill(cfg_for(out), resume=True, progress=False)
    assert_same_run(reference, out)


def test_a_read_only_folder_is_a_clear_error_for_every_checkpoint_file(tmp_path, monkeypatch):
    ckpt.save(tiny(2), tmp_path / ckpt.BEST)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(storage.tempfile, "mkstemp", read_only)
    for name in (ckpt.BEST, ckpt.LAST):
        with pytest.raises(ckpt.CheckpointWriteError, match=f"{name}: Read-only file system"):
            ckpt.save(tiny(4), tmp_path / name, keep_previous=name == ckpt.LAST)
    monkeypatch.undo()
    assert ckpt.read(tmp_path / ckpt.BEST).step == 2


def test_a_format_2_checkpoint_still_resumes_through_a_small_allow_list(tmp_path):
    """opdf before format 3 stored NumPy's RNG state as an array: read with weights_only=True
    and NumPy's array rebuild allowed, nothing else."""
    import numpy as np

    np.random.seed(5)
    state = {"python": __import__("random").getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "cuda": None}  # fmt: skip
    want = np.random.rand(2)
    torch.save(
        {"format": 2, "step": 3, "modules": {"student": {}}, "rng": state}, tmp_path / "x.pt"
    )
    old = ckpt.read(tmp_path / "x.pt")  # no manifest in this folder: nothing to compare with
    ckpt.set_rng_state(old.rng)
    assert old.step == 3 and np.array_equal(np.random.rand(2), want)


def test_a_key_added_to_opdf_after_a_run_started_does_not_block_its_resume(tmp_path):
    from opdf.run.config import dump_config
    from opdf.run.runner import prepare_output_dir

    cfg = cfg_for(tmp_path / "run")
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    ckpt.save(tiny(2), out / "checkpoints" / ckpt.LAST, keep_previous=True)
    older = "".join(ln for ln in dump_config(cfg).splitlines(True) if "on_nonfinite" not in ln)
    (out / "config.yaml").write_text(older)  # as written before on_nonfinite existed
    assert prepare_output_dir(out, resume=True, overwrite=False, cfg=cfg) is True
    changed = cfg_for(out, "on_nonfinite=skip")  # a real change still refuses
    with pytest.raises(OpdfError, match="differs .* in on_nonfinite"):
        prepare_output_dir(out, resume=True, overwrite=False, cfg=changed)


def test_a_disk_that_fills_inside_torch_save_is_the_same_clear_error(tmp_path, monkeypatch):
    """torch's zip writer swallows the file's OSError and fails later with 'unexpected pos'
    (what a full disk did to a suite cell): the error still names the full disk."""
    ckpt.save(tiny(2), tmp_path / ckpt.LAST)
    real_fdopen = storage.os.fdopen

    class FillsUp:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > 2048:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr(storage.os, "fdopen", lambda fd, mode: FillsUp(real_fdopen(fd, mode)))
    big = tiny(4)
    big.modules["student"] = {"w": torch.zeros(4096)}  # larger than what the disk takes
    with pytest.raises(ckpt.CheckpointWriteError, match="last.pt: No space left on device"):
        ckpt.save(big, tmp_path / ckpt.LAST, keep_previous=True)
    monkeypatch.undo()
    assert ckpt.read(tmp_path / ckpt.LAST).step == 2
    assert not list(tmp_path.glob(".*.tmp"))
