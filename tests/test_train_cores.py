"""``train_cores``: which MPO cores train. The control for the alignment ablation: does a large
alignment weight help by pulling the auxiliary cores toward the teacher's, or by keeping them from
learning the task (what freezing them does too)?"""

from __future__ import annotations

import pytest
import torch

from opdf.errors import ConfigError
from opdf.overparam import mpo_modules
from opdf.run import checkpoint as ckpt
from opdf.run import load_config, run_distill
from opdf.run.runner import build

COMMON = ["overparam=mpo", "unit_modes=2", "align.weight=0", "max_steps=4", "eval_every=4",
          "checkpoint_every=4"]  # fmt: skip


def cfg_for(tmp_path, *extra):
    return load_config("configs/smoke-kd.yaml", [f"output_dir={tmp_path / 'run'}", *COMMON, *extra])


def core_states(student) -> dict[str, tuple[list[torch.Tensor], int]]:
    out = {}
    for name, module, param in mpo_modules(student):
        originals = module.parametrizations.weight
        cores = [
            getattr(originals, f"original{k}").detach().clone() for k in range(len(param.row_modes))
        ]
        out[name] = (cores, param.central_index)
    return out


@pytest.mark.parametrize("which", ["central", "auxiliary"])
def test_only_the_chosen_cores_train(which, tmp_path):
    cfg = cfg_for(tmp_path, f"train_cores={which}")
    distiller = build(cfg, progress=False)[0]
    start = core_states(distiller.student)
    assert start
    for name, module, param in mpo_modules(distiller.student):
        originals = module.parametrizations.weight
        flags = [
            getattr(originals, f"original{k}").requires_grad for k in range(len(param.row_modes))
        ]
        centre = param.central_index
        assert flags == [(k == centre) == (which == "central") for k in range(len(flags))], name
    summary = run_distill(cfg, progress=False)
    assert summary["train_cores"] == which
    all_cores = run_distill(cfg_for(tmp_path / "all", "train_cores=all"), progress=False)
    assert summary["trainable_params"] < all_cores["trainable_params"]
    assert summary["inference_params"] == all_cores["inference_params"]
    state = ckpt.read_latest(tmp_path / "run" / "checkpoints")[1].modules["student"]
    moved = frozen = 0
    for name, (cores, centre) in start.items():
        for k, core in enumerate(cores):
            after = state[f"{name}.parametrizations.weight.original{k}"]
            trains = (k == centre) == (which == "central")
            if trains:
                moved += not torch.equal(after, core)
            else:
                assert torch.equal(after, core), (name, k)  # frozen: as decomposed
                frozen += 1
    assert frozen > 0 and moved > 0


@pytest.mark.parametrize(
    "extra, match",
    [
        (["overparam=svd", "train_cores=central"], "needs overparam: mpo"),
        (["train_cores=central", "lr_scaling=auto"], "lr_scaling: auto is derived"),
        (["train_cores=central", "align.weight=100"], "the alignment loss would be a constant"),
        (["train_cores=some"], "train_cores"),
    ],
)
def test_train_cores_refuses_what_cannot_work(extra, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        cfg_for(tmp_path, *extra)


def test_central_only_with_the_central_core_aligned_is_allowed(tmp_path):
    cfg = cfg_for(tmp_path, "train_cores=central", "align.weight=100", "align.cores=all")
    assert cfg.train_cores == "central"
