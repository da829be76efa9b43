"""The rules on one option, declared on its field (opdf.choices), as every method's Options uses
them: one message format naming the key, the value and the rule; validate() changes nothing."""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import pytest

from opdf.choices import (
    at_least,
    check_fields,
    choice,
    each_of,
    in_range,
    positive,
    unit_interval,
)
from opdf.distill import methods
from opdf.errors import ConfigError
from opdf.run.config import load_config


@dataclasses.dataclass
class Opts:
    rate: float = positive(1.0)
    decay: float = positive(0.0, allow_zero=True)
    weight: float = unit_interval(0.5)
    until: float = in_range(0.5, 0, 1, low_open=True, why="a fraction of training")
    count: int | None = at_least(None, 1, allow_none=True)
    mode: str = choice("fast", "slow", default="fast")
    ops: list[str] = each_of("a", "b", default_factory=lambda: ["a"])


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(rate=0.0), "m.rate: 0.0 must be > 0"),
        (dict(decay=-1.0), "m.decay: -1.0 must be >= 0"),
        (dict(weight=1.5), r"m.weight: 1.5 must be in \[0, 1\]"),
        (dict(until=0.0), r"m.until: 0.0 must be in \(0, 1\] \(a fraction of training\)"),
        (dict(count=0), "m.count: 0 must be >= 1 or null"),
        (dict(mode="fats"), r"m.mode: 'fats' is not valid \(did you mean 'fast'\?\); "
         "valid choices: fast, slow"),
        (dict(ops=[]), "m.ops: \\[\\] is not valid; give a non-empty list of a, b"),
        (dict(ops=["a", "c"]), r"m.ops: \['a', 'c'\] is not valid; give"),
    ],
)  # fmt: skip
def test_each_rule_names_the_key_the_value_and_the_rule(bad, message):
    check_fields(Opts(), "m")  # the defaults pass
    check_fields(Opts(count=3, weight=1.0, until=1.0, decay=0.0), "m")  # the closed ends pass
    with pytest.raises(ConfigError, match=f"^{message}"):
        check_fields(Opts(**bad), "m")


@pytest.mark.parametrize(
    "method, key, value",
    [("kd", "temperature", 0), ("kd", "alpha", 2), ("adkd", "ig_steps", 0), ("adkd", "beta", -1),
     ("dbkd", "n_copies", 0), ("dbkd", "insert_words", "wordnet"), ("dkd", "warmup", -1),
     ("lgtm", "t_alpha_kd", 1.5), ("lgtm", "influence_loss", "both"),
     ("theseus", "replace_until", 0), ("theseus", "scheduler", "cosine"), ("tinyvit", "topk", 0)],
)  # fmt: skip
def test_method_options_declare_their_rules(method, key, value):
    cls = methods()[method]
    cls.Options().validate(None)
    with pytest.raises(ConfigError, match=f"^{method}.{key}: {value!r} "):
        cls.Options(**{key: value}).validate(None)


def test_a_config_key_that_breaks_a_method_rule_names_the_config_key():
    with pytest.raises(ConfigError, match=r"config key 'kd.alpha': 1.5 must be in \[0, 1\]"):
        load_config("configs/smoke-kd.yaml", ["kd.alpha=1.5"])


def test_validate_leaves_the_options_as_they_were_and_resolve_fills_a_copy():
    lgtm = methods()["lgtm"]
    cfg = load_config("configs/smoke-kd.yaml", ["method=lgtm", "kd=null"])
    assert cfg.method_options.init_classifier_to_zero is not None  # resolved by the loader
    assert cfg.method_options.overparam_teacher is not None
    options = lgtm.Options()
    before = copy.deepcopy(options)
    options.validate(cfg)
    assert options == before
    resolved = options.resolve(cfg)
    assert options == before and resolved is not options
    assert resolved.init_classifier_to_zero == (cfg.teacher.finetune is None)
    assert resolved.overparam_teacher == (cfg.align.weight > 0)
    for cls in methods().values():  # every method: validate(cfg) never writes
        opts = cls.Options()
        snapshot = copy.deepcopy(opts)
        validate = getattr(opts, "validate", None)
        if validate is not None:
            with contextlib.suppress(ConfigError):
                validate(cfg)
        assert opts == snapshot, cls.name
