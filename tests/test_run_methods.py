"""DBKD and AD-KD through the runner: a student that starts near chance learns (the smoke
fixture is too easy otherwise: a student built from teacher layers starts near 100%), and DBKD's
teacher queries are made once and reused by later runs."""

from __future__ import annotations

import pytest
import torch

from opdf.distill import get_method
from opdf.run import load_config, run_distill


def accuracy(model, cfg) -> float:
    """Test accuracy of a plain model, tokenized as the run tokenizes (the teacher's tokenizer)."""
    from opdf.data import load_text_dataset, make_dataloader
    from opdf.models import load_tokenizer
    from opdf.run.runner import finetune_teacher

    ds = load_text_dataset(cfg.data.name)
    tok = load_tokenizer(finetune_teacher(cfg, progress=False))
    right = total = 0
    was = model.training
    model.eval()
    with torch.no_grad():
        for b in make_dataloader(ds.test, tok, batch_size=64, max_length=cfg.data.max_length):
            labels = b.pop("labels")
            right += int((model(**b).logits.argmax(-1) == labels).sum())
            total += len(labels)
    model.train(was)
    return right / total


def reinitialised(cls, cfg, start):
    """``cls.build_student`` with the encoder layers, pooler and head re-initialised (only the
    embeddings stay the teacher's); appends the built student's test accuracy to ``start``."""
    original = cls.build_student.__func__

    def build(c, teacher, layers=None):
        from opdf.models import find_layer_list

        student = original(c, teacher, layers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            find_layer_list(student)[1].apply(student._init_weights)
            student.bert.pooler.apply(student._init_weights)
            student.classifier.apply(student._init_weights)
        start.append(accuracy(student, cfg))
        return student

    return classmethod(build)


@pytest.mark.parametrize(
    "method, overrides",
    [
        # no gold labels: the teacher's decisions alone teach; DBKD's student starts from the
        # pretrained (random-init) tiny BERT, not the fine-tuned teacher's embeddings, so it
        # trains at the teacher's fine-tune lr
        ("dbkd", ["dbkd.ce_alpha=0", "lr=3e-3"]),
        ("adkd", []),
    ],
)
def test_a_student_that_starts_near_chance_learns(method, overrides, tmp_path, monkeypatch):
    cfg = load_config(
        f"configs/smoke-{method}.yaml",  # MPO student with the alignment loss
        [f"output_dir={tmp_path / 'run'}", "max_steps=36", "eval_every=12",
         "checkpoint_every=1000", *overrides],
    )  # fmt: skip
    start: list[float] = []
    cls = get_method(method)
    monkeypatch.setattr(cls, "build_student", reinitialised(cls, cfg, start))
    summary = run_distill(cfg, progress=False)
    assert len(start) == 1 and start[0] <= 0.7, start  # chance is 0.5 (balanced test split)
    assert summary["overparam"] == "mpo" and summary["align"]
    assert summary["test"]["accuracy"] >= 0.9, summary["test"]


def test_dbkd_teacher_queries_are_made_once_and_reused(tmp_path, monkeypatch):
    from opdf.distill import dbkd

    calls = []
    real = dbkd.query_decisions

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dbkd, "query_decisions", counting)

    def run(*overrides):
        common = ["max_steps=2", "eval_every=2", "dbkd.perturb_seed=9137"]  # a key of its own
        return run_distill(load_config("configs/smoke-dbkd.yaml", [*common, *overrides]),
                           progress=False)  # fmt: skip

    first = run(f"output_dir={tmp_path / 'a'}")
    assert calls == [1]
    before = sorted(p.name for p in dbkd.query_cache_dir().iterdir())
    # another run (other seed, other variant): the same teacher, data and perturbations
    second = run(f"output_dir={tmp_path / 'b'}", "seed=5", "overparam=none", "align.weight=0")
    assert calls == [1]
    assert sorted(p.name for p in dbkd.query_cache_dir().iterdir()) == before
    assert first["steps"] == second["steps"] == 2
    # other perturbation settings are other queries
    run(f"output_dir={tmp_path / 'c'}", "dbkd.n_copies=4")
    assert calls == [1, 1]
