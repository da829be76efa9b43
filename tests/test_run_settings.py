"""The training settings of a run come from its config by an explicit table: every setting has a
source, every source reaches the setting, and a config field that is not there (renamed) is an
error naming it instead of a silent default."""

from __future__ import annotations

import dataclasses

import pytest

from opdf.errors import OpdfError
from opdf.run import settings
from opdf.run.config import load_config
from opdf.run.settings import RUN_SETTINGS, TrainSettings, settings_from, teacher_settings

# a value for each setting unlike both its TrainSettings default and the smoke config's
CHANGED = {
    "seed": ("seed=1234", 1234),
    "epochs": ("epochs=7.5", 7.5),
    "max_steps": ("max_steps=77", 77),
    "batch_size": ("batch_size=24", 24),
    "grad_accum": ("grad_accum=3", 3),
    "eval_batch_size": ("eval_batch_size=19", 19),
    "max_length": ("data.max_length=33", 33),
    "lr": ("lr=0.00123", 0.00123),
    "lr_scaling": ("lr_scaling=auto", "auto"),
    "weight_decay": ("weight_decay=0.07", 0.07),
    "warmup_ratio": ("warmup_ratio=0.3", 0.3),
    "max_grad_norm": ("max_grad_norm=2.5", 2.5),
    "eval_every": ("eval_every=13", 13),
    "checkpoint_every": ("checkpoint_every=17", 17),
    "log_every": ("log_every=5", 5),
    "on_nonfinite": ("on_nonfinite=skip", "skip"),
    "precision": ("precision=bf16", "bf16"),
    "log_to": ("log_to=[jsonl,tensorboard]", ["jsonl", "tensorboard"]),
}


def test_every_setting_has_a_source_and_every_source_reaches_its_setting():
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    assert set(RUN_SETTINGS) == fields
    assert set(CHANGED) == fields - {"channels_last"}  # the one computed from the data kind
    cfg = load_config("configs/smoke-kd.yaml", [o for o, _ in CHANGED.values()])
    got = settings_from(cfg)
    for name, (_, want) in CHANGED.items():
        assert getattr(got, name) == want, name
        assert getattr(TrainSettings(), name) != want, name  # a change a default would hide
    assert got.channels_last is False
    assert settings_from(load_config("configs/smoke-vision-kd.yaml")).channels_last is True


class Renamed:
    """A run config whose ``grad_accum`` field was renamed: every other field is there."""

    def __init__(self, cfg):
        self._cfg = cfg

    def __getattr__(self, name):
        if name == "grad_accum":
            raise AttributeError(name)
        return getattr(self._cfg, name)


def test_a_renamed_config_field_fails_loudly_naming_it():
    cfg = load_config("configs/smoke-kd.yaml", ["grad_accum=4"])
    with pytest.raises(OpdfError, match=r"TrainSettings\.grad_accum .* 'grad_accum'"):
        settings_from(Renamed(cfg))


def test_a_source_path_that_does_not_exist_fails_loudly(monkeypatch):
    monkeypatch.setitem(RUN_SETTINGS, "max_length", "data.max_len")
    with pytest.raises(OpdfError, match=r"TrainSettings\.max_length .* 'data\.max_len'"):
        settings_from(load_config("configs/smoke-kd.yaml"))


def test_a_setting_without_a_source_or_a_source_without_a_setting_fails(monkeypatch):
    cfg = load_config("configs/smoke-kd.yaml")
    monkeypatch.delitem(RUN_SETTINGS, "warmup_ratio")
    with pytest.raises(OpdfError, match=r"without a source \['warmup_ratio'\]"):
        settings_from(cfg)
    monkeypatch.undo()
    monkeypatch.setitem(settings.RUN_SETTINGS, "warmup", "warmup_ratio")
    with pytest.raises(OpdfError, match=r"sources of no field \['warmup'\]"):
        settings_from(cfg)


def test_the_teacher_fine_tune_takes_its_own_section_and_the_run_wide_keys():
    cfg = load_config(
        "configs/smoke-kd.yaml",
        ["teacher.finetune={epochs: 2, lr: 0.001, batch_size: 8, seed: 5, weight_decay: 0.2}",
         "eval_batch_size=21", "log_every=3", "data.max_length=40", "lr=0.5", "seed=9"],
    )  # fmt: skip
    s = teacher_settings(cfg)
    assert (s.epochs, s.lr, s.batch_size, s.seed, s.weight_decay) == (2, 0.001, 8, 5, 0.2)
    assert (s.eval_batch_size, s.log_every, s.max_length) == (21, 3, 40)
