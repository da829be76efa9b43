"""Vision models: output shapes, parameter counts, export round trip, merge exactness (Conv2d)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import opdf
from opdf.align import AlignmentLoss, pairing_plan
from opdf.models.vision import (
    ARCHITECTURE_FILE,
    VISION_MODELS,
    build_vision_model,
    is_vision_model,
    load_vision_model,
    save_vision_model,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(VISION_MODELS))
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 28), (3, 32)])
def test_output_shapes(name, channels, size):
    model = build_vision_model(name, 7, channels, size, seed=0).eval()
    with torch.no_grad():
        out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 7) and torch.isfinite(out).all()


# Published sizes for CIFAR-100 (3 channels, 100 classes): mdistiller / CRD tables.
PUBLISHED_M = {"resnet8x4": 1.23, "resnet32x4": 7.43, "resnet20": 0.28, "resnet56": 0.86,
               "resnet110": 1.73, "wrn-40-2": 2.26, "wrn-16-2": 0.70, "wrn-40-1": 0.57}  # fmt: skip


@pytest.mark.parametrize("name", list(PUBLISHED_M))
def test_parameter_counts_match_published_sizes(name):
    got = n_params(build_vision_model(name, 100, 3, 32))
    assert round(got / 1e6, 2) == pytest.approx(PUBLISHED_M[name], abs=0.011)


def test_resnet8_parameter_count_by_hand():
    # 1 input channel, 10 classes; conv weights c_out * c_in * k * k, each BN 2 * c
    stem = 16 * 1 * 9 + 2 * 16
    block1 = 2 * 16 * 16 * 9 + 2 * (2 * 16)
    block2 = 32 * 16 * 9 + 32 * 32 * 9 + 2 * (2 * 32) + 32 * 16 + 2 * 32  # + 1x1 shortcut, BN
    block3 = 64 * 32 * 9 + 64 * 64 * 9 + 2 * (2 * 64) + 64 * 32 + 2 * 64
    fc = 64 * 10 + 10
    assert (
        n_params(build_vision_model("resnet8", 10, 1, 28)) == stem + block1 + block2 + block3 + fc
    )


def test_vit_parameter_count_by_hand():
    d, h, r, c = 64, 4, 7, 10  # width, heads, token grid (28 / 4), classes
    embed = (d // 2) * 1 * 9 + 2 * (d // 2) + d * (d // 2) * 9 + 2 * d
    offsets = r * r  # |dy|, |dx| in 0..r-1
    attn = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + h * offsets
    local = d * 9 + 2 * d
    mlp = 2 * d + (4 * d * d + 4 * d) + (d * 4 * d + d)
    expected = embed + 2 * (attn + local + mlp) + 2 * d + d * c + c
    assert n_params(build_vision_model("vit-d2", 10, 1, 28)) == expected


def test_unknown_names_and_bad_folders(tmp_path):
    with pytest.raises(ValueError, match="unknown vision model 'resnet9'; valid names: resnet8"):
        build_vision_model("resnet9", 10)
    with pytest.raises(FileNotFoundError, match="no architecture.json"):
        load_vision_model(tmp_path)
    (tmp_path / ARCHITECTURE_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not an opdf vision architecture file"):
        load_vision_model(tmp_path)
    assert is_vision_model("resnet8") and is_vision_model(tmp_path)
    assert not is_vision_model("minilm-l6") and not is_vision_model(None)


@pytest.mark.parametrize("name", ["resnet8", "wrn-16-1", "vit-d2"])
def test_save_load_round_trip(name, tmp_path):
    model = build_vision_model(name, 10, 1, 28, seed=3)
    model.train()
    x = torch.randn(4, 1, 28, 28)
    model(x)  # move the BatchNorm statistics away from their initial values
    model.eval()
    with torch.no_grad():
        ref = model(x)
    save_vision_model(model, tmp_path / "m", input={"mean": [0.5], "std": [0.25]})
    spec = json.loads((tmp_path / "m" / ARCHITECTURE_FILE).read_text())
    assert spec["name"] == name and spec["num_classes"] == 10 and spec["input"]["std"] == [0.25]
    loaded = load_vision_model(tmp_path / "m")
    assert not loaded.training and n_params(loaded) == n_params(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)


def test_merge_is_exact_and_exports_a_conv_student(tmp_path):
    """A Conv2d student: MPO cores start as the same function, train, merge to the exact same
    function with the original parameter count, and survive the safetensors round trip."""
    torch.manual_seed(0)
    student = build_vision_model("resnet8", 10, 1, 28, seed=1)
    dense = n_params(student)
    x = torch.randn(8, 1, 28, 28)
    student.eval()
    with torch.no_grad():
        before = student(x)
    opdf.overparameterize(student, scheme="mpo", unit_modes=2)
    names = sorted(opdf.cores(student))
    convs = [n for n, m in student.named_modules() if isinstance(m, nn.Conv2d)]
    assert names == sorted(convs) and "fc" not in names  # every conv, not the classifier
    assert n_params(student) > dense
    with torch.no_grad():
        torch.testing.assert_close(student(x), before, atol=1e-4, rtol=1e-4)
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    for _ in range(3):
        loss = nn.functional.cross_entropy(student(x), torch.arange(8) % 10)
        loss.backward()
        opt.step()
        opt.zero_grad()
    student.eval()
    with torch.no_grad():
        trained = student(x)
    opdf.merge(student)
    assert n_params(student) == dense
    assert not any("parametrizations" in k for k in student.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(student(x), trained, atol=1e-4, rtol=1e-4)
        merged = student(x)
    save_vision_model(student, tmp_path / "student")
    loaded = load_vision_model(tmp_path / "student")
    assert n_params(loaded) == dense
    with torch.no_grad():
        assert torch.equal(loaded(x), merged)
    with pytest.raises(ValueError, match="over-parameterized"):
        over = build_vision_model("resnet8", 10, 1, 28)
        save_vision_model(opdf.overparameterize(over, scheme="svd"), tmp_path / "x")


def test_alignment_pairs_conv_blocks_with_equal_shapes():
    teacher = build_vision_model("resnet20", 10, 1, 28, seed=0).requires_grad_(False)
    student = build_vision_model("resnet8", 10, 1, 28, seed=1)
    # the uniform map pairs student block i with teacher block 3(i+1)-1, the *last* block of a
    # stage: the stage-entry convs and shortcuts have other shapes
    with pytest.raises(opdf.errors.OpdfError, match="no same-shaped teacher cores"):
        pairing_plan(student, teacher)
    _, skipped = pairing_plan(student, teacher, allow_partial=True)
    assert skipped == 4
    # the first block of each stage has the same shapes as the student's: everything pairs
    rows, skipped = pairing_plan(student, teacher, layer_map={0: 0, 1: 3, 2: 6})
    assert skipped == 0 and len(rows) == 9 * 4  # 9 convs, 4 auxiliary cores each at L=3
    opdf.overparameterize(student, scheme="mpo", unit_modes=3)
    align = AlignmentLoss(student, teacher, layer_map={0: 0, 1: 3, 2: 6})
    assert len(align.pairs) == 36 and align.skipped == []
    loss = align()
    loss.backward()
    core = student.blocks[1].conv1.parametrizations.weight
    assert core.original0.grad is not None and core.original2.grad is None  # central core free


def test_vit_student_pairs_every_core_with_a_deeper_vit():
    teacher = build_vision_model("vit-d8", 10, 1, 28).requires_grad_(False)
    student = build_vision_model("vit-d2", 10, 1, 28)
    rows, skipped = pairing_plan(student, teacher)
    assert skipped == 0
    teacher_blocks = {r[1].split(".")[1] for r in rows if r[1].startswith("blocks.")}
    assert teacher_blocks == {"3", "7"}  # 8 -> 2: k(i+1)-1 with k = 4
    roles = {r[0].split(".parametrizations")[0].split(".", 2)[-1] for r in rows}
    assert {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "local_conv.conv"} <= roles
