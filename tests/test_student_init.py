"""``student.init``: where a student cut from the teacher starts (presets resolved against the
teacher's depth), how a config records it, and how a suite reuses a finished cell that ran the
same layers under another name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from opdf.bench import run as bench
from opdf.bench.suite import NEW, REUSED, load_suite
from opdf.cli import main
from opdf.errors import ConfigError, OpdfError
from opdf.models.builtin import model_depth
from opdf.models.student import init_layers, student_from_teacher
from opdf.run.config import dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke-kd.yaml"


@pytest.mark.parametrize(
    ("n_teacher", "n_student", "expected"),
    [
        (6, 3, {"bottom": [0, 1, 2], "alternate": [0, 2, 4], "uniform": [1, 3, 5],
                "top": [3, 4, 5]}),
        (12, 6, {"bottom": [0, 1, 2, 3, 4, 5], "alternate": [0, 2, 4, 6, 8, 10],
                 "uniform": [1, 3, 5, 7, 9, 11], "top": [6, 7, 8, 9, 10, 11]}),
        (12, 4, {"bottom": [0, 1, 2, 3], "alternate": [0, 3, 6, 9], "uniform": [2, 5, 8, 11],
                 "top": [8, 9, 10, 11]}),
        (7, 3, {"bottom": [0, 1, 2], "alternate": [0, 2, 4], "uniform": [2, 4, 6],
                "top": [4, 5, 6]}),
    ],
)  # fmt: skip
def test_presets(n_teacher, n_student, expected):
    for init, layers in expected.items():
        assert init_layers(init, n_teacher, n_student) == layers


def test_uniform_is_the_alignment_map_and_the_default_depth_is_half():
    from opdf.align import uniform_layer_map

    for big_n, n in [(6, 3), (12, 6), (12, 4), (8, 2)]:
        assert init_layers("uniform", big_n, n) == list(uniform_layer_map(big_n, n).values())
    assert init_layers("alternate", 6) == [0, 2, 4]  # n_student default: half the teacher


def test_bad_inits_are_refused():
    with pytest.raises(OpdfError, match="unknown student init 'middle'"):
        init_layers("middle", 6, 3)
    with pytest.raises(OpdfError, match="cannot be cut from a teacher of 6"):
        init_layers("bottom", 6, 7)
    with pytest.raises(OpdfError, match="keeps 2 layers, but the student has 3"):
        init_layers([0, 2], 6, 3)


def test_model_depth_reads_config_json_only(tmp_path):
    assert model_depth("minilm-l6") == 6 and model_depth("tiny-bert") == 4
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 9}))
    assert model_depth(str(tmp_path)) == 9  # no weights in the folder: none needed
    with pytest.raises(OpdfError, match="layer count is unknown"):
        model_depth(str(tmp_path / "missing"))


def test_config_resolves_init_into_layers():
    cfg = load_config(SMOKE, ["student.layers=null", "student.init=uniform"])
    assert cfg.student.layers == [1, 3] and cfg.student.init == "uniform"  # tiny-bert: 4 layers
    cfg = load_config(SMOKE, ["student.layers=null", "student.init=top", "student.num_layers=3"])
    assert cfg.student.layers == [1, 2, 3]
    cfg = load_config(SMOKE, ["student.layers=null", "student.init=[3, 0]"])
    assert cfg.student.layers == [3, 0]
    # an init that agrees with the layers is accepted (a saved config.yaml holds both)
    assert load_config(SMOKE, ["student.init=bottom"]).student.layers == [0, 1]
    # the saved config of a run reloads to the same layers
    again = yaml.safe_load(dump_config(cfg))
    assert again["student"]["init"] == [3, 0] and again["student"]["layers"] == [3, 0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["student.init=alternate"],
         r"alternate gives teacher layers \[0, 2\], but student.layers"),
        (["student.layers=null", "student.init=alternat"], "did you mean 'alternate'"),
        (["student.layers=null", "student.init=bottom", "student.num_layers=5"],
         "cannot be cut from a teacher of 4"),
        (["student.layers=null", "student.init=bottom", "student.model=tiny-bert"],
         "set student.model or student.init, not both"),
    ],
)  # fmt: skip
def test_contradictions_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SMOKE, overrides)


def test_image_students_take_no_init():
    with pytest.raises(ConfigError, match="student.init"):
        load_config(ROOT / "configs" / "smoke-vision-kd.yaml", ["student.init=bottom"])


def test_student_weights_are_the_chosen_teacher_layers():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                     intermediate_size=32)  # fmt: skip
    teacher = BertForSequenceClassification(cfg)
    layers = init_layers("uniform", 6, 3)
    student = student_from_teacher(teacher, layers)
    for i, t in enumerate(layers):
        got = student.bert.encoder.layer[i].attention.self.query.weight
        assert torch.equal(got, teacher.bert.encoder.layer[t].attention.self.query.weight)
    assert student.config.opdf_teacher_layers == [1, 3, 5]


def test_a_run_records_its_init_and_the_alignment_map(tmp_path):
    out = tmp_path / "run"
    code = main(["distill", str(SMOKE), "student.layers=null", "student.init=uniform",
                 "max_steps=2", "eval_every=2", "checkpoint_every=2", f"output_dir={out}",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["student_init"] == "uniform" and summary["student_layers"] == [1, 3]
    # the alignment's map stays the uniform pairing, independent of the init
    assert summary["align_layer_map"] == {"0": 1, "1": 3}
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["student"] == {**saved["student"], "init": "uniform", "layers": [1, 3]}


def _write_cell(folder: Path, cfg) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(cfg))
    (folder / "summary.json").write_text('{"main_metric": "accuracy", "test": {"accuracy": 0.5}}')


def test_a_suite_reuses_a_cell_that_ran_the_same_layers_under_another_id(tmp_path):
    path = tmp_path / "init.yaml"
    path.write_text(yaml.safe_dump({
        "name": "init", "config": str(SMOKE),
        "set": {"max_steps": 8, "threads": 1, "student.layers": None},
        "variants": {"base": {"overparam": "none", "align.weight": 0}},
        "grid": {"student.init": ["bottom", "alternate"], "lr": ["1e-3"], "seed": [1]},
        "reuse": ["earlier"],
    }, sort_keys=False))  # fmt: skip
    suite = load_suite(path)
    bottom, alternate = suite.cells()
    assert bottom.id == "base__student.init=bottom__lr=1e-3__seed=1"
    out = tmp_path / "runs" / "init"
    out.mkdir(parents=True)
    # an earlier suite's cell: same run, written as student.layers [0, 1], no init key
    earlier = load_config(SMOKE, ["overparam=none", "align.weight=0", "max_steps=8", "lr=1e-3",
                                  "seed=1"])  # fmt: skip
    saved = yaml.safe_load(dump_config(earlier))
    saved["student"].pop("init"), saved["student"].pop("num_layers")  # an older opdf's file
    folder = tmp_path / "runs" / "earlier" / "base__lr=1e-3__seed=1"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    (folder / "summary.json").write_text('{"main_metric": "accuracy", "test": {"accuracy": 0.5}}')
    planned = bench.plan(suite, suite.cells(), out, threads=None)
    assert [p.status for p in planned] == [REUSED, NEW]
    assert planned[0].reuse_from == folder and planned[0].test == 0.5
    bench.link_reused(planned, out)
    assert (bottom.folder(out) / "summary.json").is_file()
    # a key the earlier cell lacks counts at its default: at another value it is another run
    saved["lr_scaling"] = "auto"
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    bottom.folder(out).unlink()
    assert bench.plan(suite, [bottom], out, threads=None)[0].status == NEW
    saved.pop("lr_scaling")
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    assert bench.plan(suite, [bottom], out, threads=None)[0].status == REUSED


def test_same_run_counts_missing_keys_at_their_default():
    cfg = yaml.safe_load(dump_config(load_config(SMOKE)))
    older = {k: v for k, v in cfg.items() if k != "lr_scaling"}
    assert bench.same_run(older, cfg)
    assert not bench.same_run(older, {**cfg, "lr_scaling": "auto"})
    assert not bench.same_run(cfg, {**cfg, "seed": cfg["seed"] + 1})


def test_inspect_shows_the_init_beside_the_alignment_map(capsys):
    assert main(["inspect", "bert-base-6", "--teacher", "bert-base", "--init", "alternate"]) == 0
    out = capsys.readouterr().out
    assert "student init alternate: teacher layers [0, 2, 4, 6, 8, 10] of 12" in out
    assert "alignment layer map (student:teacher): 0:1, 1:3, 2:5, 3:7, 4:9, 5:11" in out
    assert main(["inspect", "bert-base-6", "--init", "uniform"]) == 2
    assert "--init needs --teacher" in capsys.readouterr().err
    assert main(["inspect", "bert-base-6", "--teacher", "bert-base", "--init", "0,x"]) == 2


def test_a_reused_cell_is_not_stale_next_time_and_a_rerun_never_writes_through_its_link(tmp_path):
    """A cell reused by resolved config is a link to the other suite's folder: the next plan
    sees it done (student.init says how, not what), and --rerun-stale of a reused cell that did
    turn stale removes the link and runs here, leaving the other suite's files alone."""
    path = tmp_path / "init.yaml"
    path.write_text(yaml.safe_dump({
        "name": "init", "config": str(SMOKE),
        "set": {"max_steps": 8, "threads": 1, "student.layers": None},
        "variants": {"base": {"overparam": "none", "align.weight": 0}},
        "grid": {"student.init": ["bottom"], "lr": ["1e-3"], "seed": [1]},
        "reuse": ["earlier"],
    }, sort_keys=False))  # fmt: skip
    suite = load_suite(path)
    (cell,) = suite.cells()
    out = tmp_path / "runs" / "init"
    out.mkdir(parents=True)
    # written by today's opdf: layers [0, 1] with init null
    earlier = load_config(SMOKE, ["overparam=none", "align.weight=0", "max_steps=8", "lr=1e-3",
                                  "seed=1"])  # fmt: skip
    folder = tmp_path / "runs" / "earlier" / "base__lr=1e-3__seed=1"
    _write_cell(folder, earlier)
    bench.link_reused(bench.plan(suite, [cell], out, threads=None), out)
    assert cell.folder(out).is_symlink()
    assert bench.plan(suite, [cell], out, threads=None)[0].status == "done"
    # the other suite's cell changes: stale here; --rerun-stale runs it in this suite
    changed = load_config(SMOKE, ["overparam=none", "align.weight=0", "max_steps=8", "lr=5e-4",
                                  "seed=1"])  # fmt: skip
    (folder / "config.yaml").write_text(dump_config(changed))
    assert bench.plan(suite, [cell], out, threads=None)[0].status == "stale"
    code = main(["bench", str(path), "--out", str(out), "--rerun-stale", "--dry-run"])
    assert code == 0  # a dry run changes nothing
    assert cell.folder(out).is_symlink()
    before = (folder / "summary.json").read_text()
    assert main(["bench", str(path), "--out", str(out), "--rerun-stale"]) == 0
    assert not cell.folder(out).is_symlink() and (cell.folder(out) / "summary.json").is_file()
    assert (folder / "summary.json").read_text() == before  # the other suite's cell untouched


def test_configs_keep_the_hash_they_had_before_the_new_keys():
    """student.init / num_layers at null and align.normalize at none leave config_hash as it was
    (the hash of configs/rt-polarity-kd-opdf.yaml before the keys existed); set, they change it."""
    cfg = load_config(ROOT / "configs" / "rt-polarity-kd-opdf.yaml")
    assert cfg.hash() == "8ae349cb22d51eab"
    assert load_config(ROOT / "configs" / "rt-polarity-kd-opdf.yaml",
                       ["align.normalize=teacher"]).hash() != cfg.hash()  # fmt: skip
    assert load_config(ROOT / "configs" / "rt-polarity-kd-opdf.yaml",
                       ["student.init=bottom"]).hash() != cfg.hash()  # fmt: skip


def test_an_explicit_init_list_is_checked_against_the_teacher_at_load():
    for bad in ("[]", "[0,9]", "[-1,0]", "[0,0]"):
        with pytest.raises(ConfigError, match="distinct teacher layers in 0..3"):
            load_config(SMOKE, ["student.layers=null", f"student.init={bad}"])


def test_a_config_made_in_code_gets_its_init_resolved_by_build(tmp_path):
    """run_distill / build on a RunConfig never passed through load_config still starts from
    the init's layers (no silent bottom-half default)."""
    from opdf.run.runner import build

    cfg = load_config(SMOKE, [f"output_dir={tmp_path}"])
    cfg.student.layers, cfg.student.init = None, "uniform"
    *_, info = build(cfg, progress=False)
    assert info["student_layers"] == [1, 3] and info["student_init"] == "uniform"


def test_a_cell_saved_with_null_layers_is_the_same_run_as_init_bottom():
    """Before ``student.init`` a suite could leave ``student.layers: null`` (the teacher's bottom
    half); today's ``student.init: bottom`` saves the resolved list. Same student, same run."""
    cfg = load_config(SMOKE, ["student.init=bottom", "student.layers=null"])
    depth = model_depth(cfg.teacher.model)
    expected = yaml.safe_load(dump_config(cfg))
    assert expected["student"]["layers"] == list(range(depth // 2))
    older = yaml.safe_load(dump_config(load_config(SMOKE, ["student.layers=null"])))
    assert older["student"]["layers"] is None
    older["student"].pop("init"), older["student"].pop("num_layers")
    assert bench.same_run(older, expected) and not bench.config_diff(older, expected)
    other = {**expected, "student": {**expected["student"], "layers": [1, 2][: depth // 2]}}
    assert not bench.same_run(older, other)
    assert bench.config_diff(older, other) == ["student.layers"]
