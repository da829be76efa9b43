"""Config validation: every user mistake is one clear error (exit 2, no traceback) before work."""

from __future__ import annotations

from pathlib import Path

import pytest

from opdf.cli import main
from opdf.errors import ConfigError
from opdf.run.config import load_config, parse_override

SMOKE_KD = "configs/smoke-kd.yaml"
SMOKE_TH = "configs/smoke-theseus.yaml"


def test_smoke_configs_load():
    cfg = load_config(SMOKE_KD)
    assert cfg.method == "kd" and cfg.overparam == "mpo" and cfg.align.weight > 0
    assert cfg.data.name.endswith("configs/data/smoke-sentiment.csv")
    th = load_config(SMOKE_TH)
    assert th.method == "theseus" and th.method_options.scheduler == "linear"


def test_overrides_named_in_the_contract():
    cfg = load_config(
        SMOKE_KD,
        ["output_dir=runs/x", "seed=7", "max_steps=5", "checkpoint_every=2", "overparam=svd",
         "align.weight=0", "kd.temperature=2", "data.max_train_samples=10"],
    )  # fmt: skip
    assert (cfg.output_dir, cfg.seed, cfg.max_steps, cfg.checkpoint_every) == ("runs/x", 7, 5, 2)
    assert cfg.overparam == "svd" and cfg.method_options.temperature == 2.0
    assert cfg.data.max_train_samples == 10


def test_parse_override():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("lr=1e-4") == (["lr"], "1e-4")  # YAML string; coerced to float later
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("seed")


def test_real_configs_all_valid():
    from pathlib import Path

    files = sorted(Path("configs").glob("*.yaml"))
    assert len(files) >= 10
    for f in files:
        load_config(f)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["overparam=mpoo"], "valid choices: none, svd, mpo"),
        (["lrr=3"], "did you mean lr?"),
        (["data.max_lenght=3"], "valid keys in data"),
        (["max_steps=-1"], "must be > 0"),
        (["batch_size=abc"], "is not an integer"),
        (["method=kdd"], "valid choices: adkd, dbkd, dkd, kd, lgtm, theseus, tinyvit"),
        (["overparam=none"], "align.weight > 0 needs an over-parameterized student"),
        (["theseus.scheduler=constant"], "theseus' section but method is 'kd'"),
        (["kd.alpha=2"], "'kd.alpha': 2 must be in [0, 1]"),  # as written, not 2.0
        (["epochs=-1"], "'epochs': -1 must be > 0"),
        (["student.layers=0,1"], "not a list of integers or null (write a list in brackets: [0,1]"),
        (["data.name=no-such-data"], "valid names: text rt-polarity"),
        (["teacher.model=no-such-model"], "built-in model (minilm-l6"),
        (["device=tpu"], "valid choices: auto, cpu, cuda"),
        (["batch_size=10", "grad_accum=3"], "multiple of grad_accum"),
        (["precision=bf16-contraction", "grad_accum=2"], "would train exactly as precision: bf16"),
        (["precision=fp16"], "valid choices: fp32, bf16, bf16-contraction"),
    ],
)
def test_bad_values_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(SMOKE_KD, overrides)


def test_switching_method_from_the_command_line():
    with pytest.raises(ConfigError, match="or override it with 'kd=null'"):
        load_config(SMOKE_KD, ["method=theseus"])
    cfg = load_config(SMOKE_KD, ["method=theseus", "kd=null", "theseus.replacing_rate=0.7"])
    assert cfg.method == "theseus" and cfg.method_options.replacing_rate == 0.7


def test_theseus_traps():
    with pytest.raises(ConfigError, match="steps_for_replacing must be set"):
        load_config(SMOKE_TH, ["theseus.scheduler=constant"])
    with pytest.raises(ConfigError, match="steps_for_replacing must be set"):
        load_config(SMOKE_TH, ["theseus.scheduler=constant", "theseus.steps_for_replacing=0"])
    with pytest.raises(ConfigError, match="linear_k.: 0 must be > 0 or null"):
        load_config(SMOKE_TH, ["theseus.linear_k=0"])
    with pytest.raises(ConfigError, match="valid choices: constant, linear"):
        load_config(SMOKE_TH, ["theseus.scheduler=cosine"])


def test_cli_errors_exit_2_without_traceback(capsys, tmp_path):
    cases = [
        (["distill", "configs/nope.yaml"], "does not exist"),
        (["distill", SMOKE_KD, "overparam=mpoo"], "valid choices: none, svd, mpo"),
        (["distill", SMOKE_KD, "nonsense"], "key=value"),
        (["finetune", SMOKE_KD, "teacher.finetune.lr=-1"], "must be > 0"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert err.startswith(f"opdf {argv[0]}: error:")
    # validation happens before any work: no output folder is created
    assert main(["distill", SMOKE_KD, f"output_dir={tmp_path}/run", "lr=x"]) == 2
    assert not (tmp_path / "run").exists()


def test_print_config_shows_defaults(capsys):
    assert main(["distill", SMOKE_KD, "--print-config", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "seed: 3" in out and "temperature: 4.0" in out and "warmup_ratio" in out


def test_precision_and_student_dropout_keys():
    cfg = load_config("configs/smoke-kd.yaml", ["precision=bf16", "student.dropout=0"])
    assert cfg.precision == "bf16" and cfg.student.dropout == 0.0
    assert load_config("configs/smoke-kd.yaml").precision == "fp32"
    with pytest.raises(ConfigError, match="precision.*valid choices: fp32, bf16"):
        load_config("configs/smoke-kd.yaml", ["precision=fp16"])
    with pytest.raises(ConfigError, match="student.dropout.*< 1"):
        load_config("configs/smoke-kd.yaml", ["student.dropout=1.0"])
    with pytest.raises(ConfigError, match="student.dropout"):
        load_config("configs/smoke-kd.yaml", ["student.dropout=-0.1"])


def test_resume_accepts_a_config_written_before_a_key_existed(tmp_path):
    """A run started by an opdf without align.allow_partial (a later key, at its default) still
    resumes; a real difference is still refused."""
    import yaml

    from opdf.run.config import dump_config
    from opdf.run.runner import prepare_output_dir

    cfg = load_config("configs/smoke-kd.yaml", [f"output_dir={tmp_path}"])
    old = yaml.safe_load(dump_config(cfg))
    del old["align"]["allow_partial"]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert prepare_output_dir(tmp_path, resume=True, overwrite=False, cfg=cfg) is True
    old["align"]["weight"] = 0.5
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="differs from the one in .* in align"):
        prepare_output_dir(tmp_path, resume=True, overwrite=False, cfg=cfg)


def test_variant_presets_the_four_columns_and_explicit_keys_tune_them(tmp_path):
    from opdf.run.config import dump_config

    for method in ("dbkd", "adkd"):
        base = load_config(f"configs/rt-polarity-{method}.yaml")
        assert (base.variant, base.overparam, base.align.weight) == ("base", "none", 0.0)
        svd = load_config(f"configs/rt-polarity-{method}.yaml", ["variant=svd"])
        assert (svd.overparam, svd.align.weight) == ("svd", 0.0)
        mpo = load_config(f"configs/rt-polarity-{method}.yaml", ["variant=mpo"])
        assert (mpo.overparam, mpo.unit_modes, mpo.align.weight) == ("mpo", 3, 0.0)
        opdf = load_config(f"configs/rt-polarity-{method}.yaml", ["variant=opdf"])
        assert (opdf.overparam, opdf.unit_modes, opdf.align.weight) == ("mpo", 3, 100.0)
        assert opdf.align.cores == "auxiliary"
    tuned = load_config("configs/rt-polarity-dbkd.yaml",
                        ["variant=opdf", "unit_modes=2", "align.weight=10"])  # fmt: skip
    assert (tuned.overparam, tuned.unit_modes, tuned.align.weight) == ("mpo", 2, 10.0)
    # the resolved config (what a run folder keeps) loads back to the same config
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(tuned))
    assert load_config(saved).to_dict() == tuned.to_dict()
    # configs without the key are written as before (same keys, same hash)
    assert "variant" not in load_config(SMOKE_KD).to_dict()


def test_a_variant_override_replaces_the_files_own_variant_keys(tmp_path):
    # the file says overparam: none (and theseus' file align.weight 0): the override means +OPDF
    opdf = load_config("configs/rt-polarity-kd-base.yaml", ["variant=opdf"])
    assert (opdf.overparam, opdf.unit_modes, opdf.align.weight) == ("mpo", 3, 100.0)
    svd = load_config("configs/rt-polarity-theseus-base.yaml", ["variant=svd"])
    assert (svd.method, svd.overparam, svd.align.weight) == ("theseus", "svd", 0.0)
    base = load_config("configs/rt-polarity-kd-opdf.yaml", ["variant=base"])
    assert (base.overparam, base.align.weight) == ("none", 0.0)
    # other keys of the file stay; a variant written in the file itself is still checked
    assert opdf.lr == load_config("configs/rt-polarity-kd-base.yaml").lr
    own = tmp_path / "own.yaml"
    own.write_text(Path("configs/rt-polarity-kd-base.yaml").read_text() + "variant: svd\n")
    with pytest.raises(ConfigError, match="overparam is 'none', not 'svd'"):
        load_config(own)
    assert load_config(own, ["variant=null"]).variant is None  # null: the file's keys as written


@pytest.mark.parametrize(
    "config, overrides, message",
    [
        ("configs/rt-polarity-kd-base.yaml", ["variant=opdf", "overparam=none"],
         "overparam is 'none', not 'mpo'"),
        ("configs/rt-polarity-dbkd.yaml", ["variant=mpo", "align.weight=1"],
         "no alignment loss"),
        ("configs/rt-polarity-dbkd.yaml", ["variant=opdf", "align.weight=0"],
         "trains with the alignment loss"),
        ("configs/rt-polarity-dbkd.yaml", ["variant=bse"], "did you mean 'base'"),
    ],
)  # fmt: skip
def test_a_variant_contradicted_by_an_explicit_key_is_an_error(config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config, overrides)


def test_a_variant_without_unit_modes_refuses_explicit_unit_modes():
    """On main `variant=svd unit_modes=3` ran an SVD student while config.yaml said 3."""
    for variant in ("svd", "base"):
        with pytest.raises(ConfigError, match=f"variant '{variant}' contradicts .* is 3"):
            load_config("configs/smoke-kd.yaml", [f"variant={variant}", "unit_modes=3"])
    assert load_config("configs/smoke-kd.yaml", ["variant=svd"]).overparam == "svd"
    assert load_config("configs/smoke-kd.yaml", ["variant=mpo", "unit_modes=2"]).unit_modes == 2


def test_an_unknown_key_is_named_as_written_with_a_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config("configs/smoke-kd.yaml", ["kd.temprature=2"])
    assert "unknown config key kd.temprature (did you mean kd.temperature?)" in str(e.value)
    assert "'" not in str(e.value).split(";")[0]


def test_resume_of_a_run_saved_with_null_layers(tmp_path):
    """A run whose config says ``student.layers: null`` (the teacher's bottom half) resumes with
    the same config, and with ``student.init: bottom`` (the same layers, saved resolved); other
    layers are refused."""
    from opdf.run.config import dump_config
    from opdf.run.runner import prepare_output_dir

    def cfg_of(*overrides):
        return load_config("configs/smoke-kd.yaml", [f"output_dir={tmp_path}", *overrides])

    saved = cfg_of("student.layers=null")
    assert saved.student.layers is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "config.yaml").write_text(dump_config(saved))
    assert prepare_output_dir(tmp_path, resume=True, overwrite=False, cfg=saved) is True
    bottom = cfg_of("student.layers=null", "student.init=bottom")
    assert prepare_output_dir(tmp_path, resume=True, overwrite=False, cfg=bottom) is True
    with pytest.raises(ConfigError, match="differs from the one in .* in student"):
        prepare_output_dir(tmp_path, resume=True, overwrite=False, cfg=cfg_of("student.layers=[1]"))
