"""``student.source`` and ``student.head``: whose weights a student starts from (the fine-tuned
teacher's layers, the same layers of the teacher's pretrained model, or a separate model), each
method's default, the refusals (DBKD never copies the fine-tuned teacher), and that the built
student's tensors are the ones the summary names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from opdf.bench import run as bench
from opdf.cli import main
from opdf.errors import ConfigError
from opdf.run.config import dump_config, load_config, with_legacy_start

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke-kd.yaml"
PLAIN = ["overparam=none", "align.weight=0"]  # the student as built, no MPO cores


def start(cfg) -> tuple[str, str]:
    return cfg.student.source, cfg.student.head


@pytest.mark.parametrize(
    ("path", "overrides", "expected"),
    [
        (SMOKE, [], ("finetuned-teacher", "copy")),  # kd: today's start
        (SMOKE, ["student.head=new"], ("finetuned-teacher", "new")),
        (SMOKE, ["student.source=pretrained-teacher"], ("pretrained-teacher", "new")),
        (SMOKE, ["student.layers=null", "student.model=tiny-bert"], ("model", "new")),
        (ROOT / "configs" / "smoke-dbkd.yaml", [], ("pretrained-teacher", "new")),  # its paper
        (ROOT / "configs" / "rt-polarity-dbkd.yaml", [], ("pretrained-teacher", "new")),
        (ROOT / "configs" / "smoke-theseus.yaml", [], ("finetuned-teacher", "copy")),
        (ROOT / "configs" / "smoke-vision-kd.yaml", [], ("model", None)),
    ],
)
def test_each_method_resolves_its_default_start(path, overrides, expected):
    cfg = load_config(path, overrides)
    assert start(cfg) == expected
    # resolved into the saved config: reloading it gives the same start
    again = yaml.safe_load(dump_config(cfg))
    assert (again["student"]["source"], again["student"]["head"]) == expected


@pytest.mark.parametrize(
    ("path", "overrides", "message"),
    [
        ("smoke-dbkd.yaml", ["student.source=finetuned-teacher"],
         "dbkd: student.source: finetuned-teacher is not allowed .*decisions only.*use "
         "student.source: pretrained-teacher or model"),
        ("smoke-kd.yaml", ["student.source=pretrained-teacher", "student.head=copy"],
         "student.head: copy needs a fine-tuned head"),
        ("smoke-kd.yaml", ["student.source=pretrained-teacher", "teacher.finetune=null"],
         "teacher.finetune is null"),
        ("smoke-kd.yaml", ["student.source=model"], "student.source: model needs student.model"),
        ("smoke-kd.yaml", ["student.layers=null", "student.model=tiny-bert",
                           "student.source=finetuned-teacher"], "set student.source: model"),
        ("smoke-kd.yaml", ["student.source=teacher"], "'student.source': 'teacher' is not valid"),
        ("smoke-theseus.yaml", ["student.source=pretrained-teacher"],
         "theseus: student.source: pretrained-teacher is not allowed"),
        ("smoke-theseus.yaml", ["student.head=new"], "theseus: student.head: new"),
        ("smoke-vision-kd.yaml", ["student.head=new"], "image data"),
    ],
)  # fmt: skip
def test_starts_a_method_cannot_take_are_refused_in_one_line(path, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(ROOT / "configs" / path, overrides)
    assert "\n" not in str(info.value)


def test_dbkd_refuses_the_teacher_folder_as_its_student_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    teacher = str(tmp_path)
    with pytest.raises(ConfigError, match="dbkd: student.model .* is the teacher itself"):
        load_config(ROOT / "configs" / "smoke-dbkd.yaml",
                    [f"teacher.model={teacher}", "teacher.finetune=null", "student.layers=null",
                     "student.source=model", f"student.model={teacher}"])  # fmt: skip


# ------------------------------------------------------------------- weights from the source


def built(overrides):
    """``(student, fine-tuned teacher, summary info)`` of the smoke config with ``overrides``."""
    from opdf.run.runner import build

    cfg = load_config(SMOKE, [*PLAIN, *overrides])
    distiller, _, _, _, info = build(cfg, progress=False)
    return distiller.student, distiller.teacher, info


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def check_layers(student, source_encoder, layers) -> None:
    """The student's embeddings and layer ``i`` are ``source_encoder``'s (an ``AutoModel``)
    embeddings and layer ``layers[i]``, tensor for tensor."""
    assert same(student.bert.embeddings, source_encoder.embeddings)
    assert len(student.bert.encoder.layer) == len(layers)
    for i, t in enumerate(layers):
        assert same(student.bert.encoder.layer[i], source_encoder.encoder.layer[t])


def test_finetuned_teacher_source_copies_the_finetuned_layers_and_head():
    student, teacher, info = built(["student.layers=[1, 3]"])
    assert (info["student_source"], info["student_head"]) == ("finetuned-teacher", "copy")
    check_layers(student, teacher.bert, [1, 3])
    assert same(student.classifier, teacher.classifier)
    assert same(student.bert.pooler, teacher.bert.pooler)


def test_finetuned_teacher_source_with_a_new_head():
    student, teacher, info = built(["student.head=new"])
    assert info["student_head"] == "new"
    check_layers(student, teacher.bert, [0, 1])
    assert same(student.bert.pooler, teacher.bert.pooler)  # the pooler is the encoder's
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.classifier.bias, torch.zeros(2))  # transformers' init
    again, _, _ = built(["student.head=new"])  # seeded by the run's seed
    assert same(again.classifier, student.classifier)


def test_pretrained_teacher_source_cuts_the_model_before_its_finetune():
    from opdf.models import load_encoder

    student, teacher, info = built(["student.source=pretrained-teacher", "student.layers=[0, 2]"])
    assert (info["student_source"], info["student_head"]) == ("pretrained-teacher", "new")
    pretrained = load_encoder("tiny-bert")  # teacher.model as prepared: its pretrained weights
    check_layers(student, pretrained, [0, 2])
    # the fine-tune moved the teacher: the student did not take those weights
    assert not same(student.bert.encoder.layer[0], teacher.bert.encoder.layer[0])
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)


def _folder_with_tokenizer(folder: Path) -> Path:
    from opdf.models import resolve_model_dir

    tiny = resolve_model_dir("tiny-bert")
    for f in tiny.iterdir():
        if f.name.startswith(("vocab", "tokenizer", "special")):
            shutil.copy2(f, folder / f.name)
    return folder


def _small_bert(cls, folder: Path, **kw) -> Path:
    from transformers import BertConfig

    torch.manual_seed(7)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=48, **kw)  # fmt: skip
    cls(config).save_pretrained(str(folder))
    return _folder_with_tokenizer(folder)


def test_model_source_is_the_separate_model(tmp_path):
    from transformers import BertModel

    from opdf.models import load_encoder

    folder = _small_bert(BertModel, tmp_path / "small")
    student, _, info = built(["student.layers=null", f"student.model={folder}"])
    assert (info["student_source"], info["student_head"]) == ("model", "new")
    assert info["student_model"] == str(folder)
    check_layers(student, load_encoder(folder), [0, 1])
    # a pretrained encoder has no head to copy
    with pytest.raises(ConfigError, match="holds no classification head for 2 labels"):
        built(["student.layers=null", f"student.model={folder}", "student.head=copy"])


def test_model_source_copies_or_renews_a_saved_head(tmp_path):
    from transformers import BertForSequenceClassification as Classifier

    folder = _small_bert(Classifier, tmp_path / "tuned", num_labels=2)
    saved = Classifier.from_pretrained(str(folder))
    copied, _, info = built(["student.layers=null", f"student.model={folder}", "student.head=copy"])
    assert info["student_head"] == "copy" and same(copied, saved)
    renewed, _, _ = built(["student.layers=null", f"student.model={folder}"])  # head: new
    assert same(renewed.bert, saved.bert)
    assert not torch.equal(renewed.classifier.weight, saved.classifier.weight)


def test_a_run_records_its_start_in_the_summary(tmp_path):
    import json

    out = tmp_path / "run"
    code = main(["distill", str(SMOKE), "student.source=pretrained-teacher", *PLAIN,
                 "max_steps=1", "eval_every=1", "checkpoint_every=1", f"output_dir={out}",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["student_source"], summary["student_head"]) == ("pretrained-teacher", "new")


# -------------------------------------------------- configs and run folders from before the keys


def test_configs_without_the_keys_keep_their_hash_and_compare_as_the_legacy_start():
    cfg = load_config(SMOKE)
    saved = yaml.safe_load(dump_config(cfg))
    older = {**saved, "student": {k: v for k, v in saved["student"].items()
                                  if k not in ("source", "head")}}  # fmt: skip
    assert with_legacy_start(older) == saved
    assert bench.same_run(older, saved) and not bench.config_diff(older, saved)
    assert load_config(SMOKE, ["student.head=new"]).hash() != cfg.hash()
    # DBKD's start changed: an older DBKD cell (the fine-tuned teacher's layers) is stale
    dbkd = yaml.safe_load(dump_config(load_config(ROOT / "configs" / "smoke-dbkd.yaml")))
    old_dbkd = {**dbkd, "student": {"layers": [0, 1]}}
    assert bench.config_diff(old_dbkd, dbkd) == ["student.head", "student.source"]
    assert not bench.same_run(old_dbkd, dbkd)


def test_inspect_shows_a_methods_start(capsys):
    assert main(["inspect", "bert-base-6", "--method", "dbkd"]) == 0
    out = capsys.readouterr().out
    assert "student start (dbkd): source pretrained-teacher" in out and "head new" in out
    assert main(["inspect", "bert-base-6", "--method", "dbkd", "--source",
                 "finetuned-teacher"]) == 2  # fmt: skip
    assert "not allowed" in capsys.readouterr().err
