"""The on-disk cache of a frozen teacher's outputs (``teacher.cache_outputs``): an entry is read
back only for the same teacher, output kind and batch, and a run that reads its teacher's outputs
trains bitwise as one that computes them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from opdf.bench.run import config_diff
from opdf.distill.teacher_cache import TeacherCache, batch_key
from opdf.overparam import low_precision_contraction
from opdf.run import load_config, run_distill


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 100, (4, 6), generator=g),
        "attention_mask": torch.ones(4, 6, dtype=torch.long),
        "labels": torch.randint(0, 2, (4,), generator=g),
    }


class Counting:
    """``compute`` for :meth:`TeacherCache.get` that counts its calls."""

    def __init__(self, teacher: nn.Module, b: dict):
        self.teacher, self.batch, self.calls = teacher, b, 0

    def __call__(self) -> dict:
        self.calls += 1
        return {"logits": self.teacher(self.batch["input_ids"].float())}


def test_an_entry_is_computed_once_and_read_back_bitwise(tmp_path):
    torch.manual_seed(0)
    teacher = nn.Linear(6, 2)
    cache = TeacherCache(teacher, root=tmp_path)
    b = batch()
    compute = Counting(teacher, b)
    first = cache.get("logits", b, compute)
    second = TeacherCache(teacher, root=tmp_path).get("logits", b, compute)  # another process
    assert compute.calls == 1
    assert torch.equal(first["logits"], second["logits"])
    assert (cache.hits, cache.misses) == (0, 1)
    assert len(list(cache.folder.rglob("*.safetensors"))) == 1
    assert not list(cache.folder.rglob(".*.tmp"))  # written atomically, nothing left behind


def test_another_batch_kind_or_teacher_is_another_entry(tmp_path):
    torch.manual_seed(0)
    teacher = nn.Linear(6, 2)
    b = batch()
    compute = Counting(teacher, b)
    cache = TeacherCache(teacher, root=tmp_path)
    cache.get("logits", b, compute)
    other_labels = {**b, "labels": 1 - b["labels"]}  # AD-KD's maps depend on the gold labels
    assert batch_key("logits", other_labels) != batch_key("logits", b)
    assert batch_key("maps", b) != batch_key("logits", b)
    assert batch_key("logits", {**b, "input_ids": b["input_ids"].int()}) != batch_key("logits", b)
    cache.get("logits", other_labels, compute)
    cache.get("maps", b, compute)
    assert compute.calls == 3
    with torch.no_grad():
        teacher.weight[0, 0] += 1e-3  # another teacher: another folder, nothing read from the old
    moved = TeacherCache(teacher, root=tmp_path)
    assert moved.folder != cache.folder
    moved.get("logits", b, compute)
    assert compute.calls == 4 and moved.misses == 1


def test_bf16_autocast_is_part_of_the_key():
    b = batch()
    plain = batch_key("logits", b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = batch_key("logits", b)
        assert bf16 != plain
        with low_precision_contraction():  # an over-parameterized teacher's bf16 contraction
            assert batch_key("logits", b) not in (plain, bf16)
    with low_precision_contraction():  # no autocast: the contraction stays float32
        assert batch_key("logits", b) == plain


def test_a_torn_entry_is_recomputed_and_replaced(tmp_path):
    torch.manual_seed(0)
    teacher = nn.Linear(6, 2)
    b = batch()
    compute = Counting(teacher, b)
    cache = TeacherCache(teacher, root=tmp_path)
    good = cache.get("logits", b, compute)["logits"]
    (entry,) = cache.folder.rglob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:20])  # a write killed half way (not atomic elsewhere)
    again = cache.get("logits", b, compute)["logits"]
    assert compute.calls == 2 and torch.equal(again, good)
    assert torch.equal(load_file(entry)["logits"], good)  # replaced by an intact one


def test_an_unwritable_cache_warns_once_and_computes(tmp_path):
    torch.manual_seed(0)
    teacher = nn.Linear(6, 2)
    root = tmp_path / "file"
    root.write_text("not a folder")  # every write under it fails
    cache = TeacherCache(teacher, root=root)
    b = batch()
    compute = Counting(teacher, b)
    with pytest.warns(UserWarning, match="cannot write"):
        out = cache.get("logits", b, compute)
    out2 = cache.get("logits", b, compute)  # no second warning: writes are off
    assert compute.calls == 2 and torch.equal(out["logits"], out2["logits"])


def student_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "student" / "model.safetensors")


@pytest.mark.parametrize("method", ["kd", "adkd"])
def test_a_run_reading_its_teacher_from_the_cache_trains_bitwise_as_one_computing_it(
    method, tmp_path
):
    common = ["max_steps=6", "eval_every=3", "checkpoint_every=1000"]
    if method == "kd":  # the over-parameterized student with the alignment loss (OPDF)
        common += ["overparam=mpo", "unit_modes=2", "align.weight=0.01"]

    def run(name: str, *extra: str) -> dict:
        cfg = load_config(f"configs/smoke-{method}.yaml",
                          [f"output_dir={tmp_path / name}", *common, *extra])  # fmt: skip
        return run_distill(cfg, progress=False)

    plain = run("plain")
    cold = run("cold", "teacher.cache_outputs=true")
    warm = run("warm", "teacher.cache_outputs=true")
    other_seed = run("seed", "teacher.cache_outputs=true", "seed=7")
    assert plain["teacher_cache"] is None
    # the teacher's content digest: one fine-tuned teacher, whatever the run's seed or cache
    assert re.fullmatch(r"[0-9a-f]{16}", plain["teacher_digest"])
    assert {s["teacher_digest"] for s in (cold, warm, other_seed)} == {plain["teacher_digest"]}
    assert plain["versions"]["torch"] == torch.__version__ and plain["versions"]["opdf"]
    assert cold["teacher_cache"]["misses"] == 6 and cold["teacher_cache"]["hits"] == 0
    assert warm["teacher_cache"] == {**cold["teacher_cache"], "hits": 6, "misses": 0}
    assert other_seed["teacher_cache"]["misses"] == 6  # another data order: other batches
    for s in (cold, warm):
        assert s["dev"] == plain["dev"] and s["test"] == plain["test"]
    reference = student_tensors(tmp_path / "plain")
    for name in ("cold", "warm"):
        got = student_tensors(tmp_path / name)
        assert got.keys() == reference.keys()
        assert all(torch.equal(got[k], reference[k]) for k in reference), name


def test_a_teacher_that_trains_is_not_cached(tmp_path):
    cfg = load_config("configs/smoke-lgtm.yaml",
                      [f"output_dir={tmp_path / 'run'}", "max_steps=2", "eval_every=2",
                       "teacher.cache_outputs=true"])  # fmt: skip
    with pytest.warns(UserWarning, match="cache_outputs is ignored: lgtm trains its teacher"):
        summary = run_distill(cfg, progress=False)
    assert summary["teacher_cache"] is None


def test_turning_the_cache_on_does_not_make_a_suite_cell_stale():
    saved = {"lr": 1e-4, "teacher": {"model": "tiny-bert", "cache_outputs": False}}
    now = {"lr": 1e-4, "teacher": {"model": "tiny-bert", "cache_outputs": True}}
    assert config_diff(saved, now) == []
    assert config_diff(saved, {**now, "lr": 2e-4}) == ["lr"]


def test_a_run_resumes_with_the_cache_turned_on(tmp_path):
    """A suite that starts setting ``teacher.cache_outputs`` resumes its interrupted cells."""
    common = [f"output_dir={tmp_path / 'run'}", "max_steps=4", "eval_every=2", "checkpoint_every=2"]
    cfg = load_config("configs/smoke-kd.yaml", common)
    assert run_distill(cfg, progress=False, stop_after_step=2) is None
    cached = load_config("configs/smoke-kd.yaml", [*common, "teacher.cache_outputs=true"])
    summary = run_distill(cached, resume=True, progress=False)
    assert summary["resumed_from_step"] == 2
    assert summary["teacher_cache"]["misses"] + summary["teacher_cache"]["hits"] == 2


@pytest.mark.parametrize(("config", "whole"), [("smoke-kd", True), ("smoke-vision-kd", True),
                                               ("smoke-lgtm", False)])  # fmt: skip
def test_the_teacher_digest_is_its_weights_and_absent_where_each_run_seeds_its_head(
    config, whole, tmp_path
):
    """smoke-lgtm's teacher is tiny-bert without a task head (teacher.finetune: null): each run
    gives it a new head from its seed, so no digest would name one teacher."""
    from opdf.run.runner import build

    digests = set()
    for seed in (1, 2):
        cfg = load_config(f"configs/{config}.yaml", [f"output_dir={tmp_path / str(seed)}",
                                                      f"seed={seed}"])  # fmt: skip
        digests.add(build(cfg, progress=False)[-1]["teacher_digest"])
    assert len(digests) == 1
    assert (digests.pop() is not None) == whole
