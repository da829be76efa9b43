"""Property and fuzz tests: whatever goes in, only the documented errors come out.

API: ``ConfigError`` / ``OpdfError`` / ``ValueError``. Command line: exit code 0 or 2, and on 2
exactly one ``opdf VERB: error: ...`` line on stderr. CLI calls are in-process (``cli.main``) for
speed; every test has a fixed ``max_examples`` so the file stays well inside a minute.
"""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from torch import nn

import opdf
from opdf.cli import main
from opdf.data import load_text_dataset
from opdf.errors import ConfigError, OpdfError
from opdf.mpo import bond_dims, contract, count_params, decompose, mpo_shapes, validate_modes
from opdf.run.config import apply_overrides, config_from_dict, load_config

SMOKE = Path("configs/smoke-kd.yaml")
BASE = yaml.safe_load(SMOKE.read_text())
FAST = settings(deadline=None, max_examples=60, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])  # fmt: skip


# ------------------------------------------------------------------------------ config values

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["mpo", "svd", "none", "auto", "cpu", "kd", "theseus", "auxiliary", "all",
                     "5e-5", "1e30", "nan", ".inf", "rt-polarity", "tiny-bert", "2020-01-01"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _keys(d: dict, prefix=()) -> list[tuple[str, ...]]:
    out = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _keys(v, (*prefix, k))
    return out


KEYS = _keys(BASE) + [("kd", "ce_weight"), ("kd", "kd_weight"), ("student", "model"),
                      ("align", "layer_map"), ("grad_accum",), ("max_grad_norm",), ("theseus",),
                      ("teacher", "finetune", "max_steps"), ("no_such_key",)]  # fmt: skip


@FAST
@given(changes=st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=4))
def test_random_config_values_give_a_config_or_a_config_error(changes):
    raw = copy.deepcopy(BASE)
    for path, value in changes:
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    try:
        cfg = config_from_dict(raw, base_dir=SMOKE.parent)
    except ConfigError:
        return
    for key in ("lr", "epochs", "batch_size", "max_length"):  # what passes is usable
        value = getattr(cfg, key, None) or getattr(cfg.data, key, None)
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, key


override_text = st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{'.'.join(k)}={v}", st.sampled_from(KEYS),
              st.one_of(st.text(max_size=12), values.map(lambda v: yaml.safe_dump(v).strip()))),
)  # fmt: skip


@FAST
@given(overrides=st.lists(override_text, max_size=4))
@example(overrides=["seed=2020-01-01"])  # YAML reads a date
@example(overrides=["lr=.nan"])
@example(overrides=["data={a: ["])
def test_random_overrides_only_raise_config_errors(overrides):
    with contextlib.suppress(ConfigError):
        config_from_dict(apply_overrides(BASE, overrides), base_dir=SMOKE.parent)


def _cli(capsys, argv) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"opdf {argv[0]}: error: "), err
        assert "Traceback" not in err
    return code, out, err


@FAST
@given(overrides=st.lists(override_text.filter(lambda s: not s.startswith("-")), max_size=3))
def test_cli_random_overrides_exit_0_or_2_with_one_line(overrides, capsys):
    _cli(capsys, ["distill", str(SMOKE), *overrides, "--print-config"])


@FAST
@given(data=st.one_of(st.binary(max_size=300),
                      st.text(max_size=300).map(str.encode),
                      values.map(lambda v: yaml.safe_dump(v).encode())))  # fmt: skip
def test_random_bytes_as_a_config_file(data, tmp_path_factory, capsys):
    path = tmp_path_factory.mktemp("cfg") / "random.yaml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(path)
    _cli(capsys, ["distill", str(path), "--print-config"])


# ------------------------------------------------------------------------------ data files


csv_cell = st.one_of(st.text(max_size=8), st.sampled_from(["", " ", "pos", "neg", "0", "1", "-1",
                                                           "nan", '"', "a,b", "\n"]))  # fmt: skip
csv_text = st.builds(
    lambda header, rows: "\n".join([",".join(header)] + [",".join(r) for r in rows]),
    st.lists(st.sampled_from(["text", "label", "other", ""]), min_size=1, max_size=3),
    st.lists(st.lists(csv_cell, max_size=3), max_size=12),
)


@FAST
@given(data=st.one_of(st.binary(max_size=400), csv_text.map(str.encode)),
       ext=st.sampled_from([".csv", ".tsv", ".jsonl", ".json"]))  # fmt: skip
def test_random_bytes_as_a_data_file_only_raise_value_errors(data, ext, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / f"random{ext}"
    path.write_bytes(data)
    try:
        ds = load_text_dataset(path)
    except OpdfError as exc:
        assert str(path) in str(exc) or "split(s)" in str(exc), exc
        return
    assert ds.num_labels >= 2 and all(t.strip() for t in ds.train.texts)


# ------------------------------------------------------------------------------ MPO shapes


@st.composite
def factorization(draw, size: int, cores: int) -> list[int]:
    """``cores`` factors of ``size`` (in random order), some of them unit modes."""
    factors, rest = [], size
    for _ in range(cores - 1):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        d = draw(st.sampled_from(divisors))
        factors.append(d)
        rest //= d
    factors.append(rest)
    return draw(st.permutations(factors))


@st.composite
def modes(draw):
    rows = draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12, 16]))
    cols = draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12, 16]))
    cores = draw(st.integers(1, 5))
    return rows, cols, draw(factorization(rows, cores)), draw(factorization(cols, cores))


@FAST
@given(spec=modes(), seed=st.integers(0, 2**16))
def test_random_mode_shapes_and_unit_mode_placements_decompose_exactly(spec, seed):
    rows, cols, row_modes, col_modes = spec
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mpo = decompose(w, row_modes, col_modes)
    assert [tuple(c.shape[1:3]) for c in mpo.cores] == list(zip(row_modes, col_modes, strict=True))
    dims = bond_dims(row_modes, col_modes)
    assert [c.shape[0] for c in mpo.cores] + [1] == dims
    assert sum(c.numel() for c in mpo.cores) == count_params(row_modes, col_modes)
    assert torch.allclose(contract(mpo.cores).reshape(rows, cols), w, atol=1e-9)


@FAST
@given(spec=modes(), seed=st.integers(0, 2**16), scheme=st.sampled_from(["mpo", "svd"]))
def test_random_shapes_on_a_module_keep_its_function_through_merge(spec, seed, scheme):
    rows, cols, row_modes, col_modes = spec
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(cols, rows), nn.Tanh(), nn.Linear(rows, 2))
    x = torch.randn(3, cols)
    want = model(x).detach()
    opdf.overparameterize(model, scheme=scheme, targets=["0"], shapes={"0": (row_modes, col_modes)})
    assert torch.allclose(model(x), want, atol=1e-5)
    snapshot = opdf.merge(copy.deepcopy(model))
    assert torch.allclose(snapshot(x), want, atol=1e-5)
    assert torch.allclose(opdf.merge(model)(x), want, atol=1e-5)


bad_modes = st.lists(st.integers(-3, 40), max_size=6)


@FAST
@given(rows=st.integers(-2, 64), cols=st.integers(-2, 64), row_modes=bad_modes, col_modes=bad_modes,
       unit_modes=st.one_of(st.integers(-2, 6), st.floats(), st.booleans(), st.none()))  # fmt: skip
def test_random_modes_only_raise_documented_errors(rows, cols, row_modes, col_modes, unit_modes):
    for call in (lambda: validate_modes(rows, cols, row_modes, col_modes),
                 lambda: mpo_shapes(rows, cols, unit_modes)):  # fmt: skip
        with contextlib.suppress(ValueError):
            call()
    assume(rows >= 1 and cols >= 1)
    model = nn.Sequential(nn.Linear(cols, rows), nn.Linear(rows, 2))
    try:
        opdf.overparameterize(model, targets=["0"], unit_modes=unit_modes,
                              shapes={"0": (row_modes, col_modes)})  # fmt: skip
    except OpdfError:
        assert not any(True for _ in opdf.overparam.mpo_modules(model))  # nothing half-done
    except Exception as exc:  # pragma: no cover - the assertion below names it
        pytest.fail(f"undocumented {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------ what fuzzing found


def test_config_values_the_fuzzer_found(tmp_path):
    with pytest.raises(ConfigError, match="'seed': datetime.date.* is not an integer"):
        load_config(SMOKE, ["seed=2020-01-01"])  # was a TypeError from a JSON deep copy
    for key in ("lr=.nan", "epochs=.inf", "kd.temperature=.nan"):
        with pytest.raises(ConfigError, match="is not a finite number"):  # was accepted
            load_config(SMOKE, [key])
    assert load_config(SMOKE, ["lr=1e30"]).lr == 1e30  # finite: the run's divergence guard's job
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"method: kd\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=f"{latin}: not a UTF-8 text file"):
        load_config(latin)
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: kd\nseed: [1, 2\nlr: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(broken)
    assert str(exc.value).startswith(f"{broken}, line 3, column 3: not valid YAML (")
    assert "\n" not in str(exc.value)
    # an empty (or comments-only) file would have run every default: a full MiniLM fine-tune
    for text in ("", "# method: kd\n", "{}\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        with pytest.raises(ConfigError, match=f"{empty} is empty \\(or holds only comments\\)"):
            load_config(empty)
    with pytest.raises(ConfigError, match=f"config file '{tmp_path}' is a folder"):
        load_config(tmp_path)  # it exists: not "does not exist"
    hint = r"\(did you mean 'fashion-mnist'\?\).*images fashion-mnist"
    with pytest.raises(ConfigError, match=hint):
        load_config(SMOKE, ["data.name=fashion-mnis"])  # the image datasets were not listed
