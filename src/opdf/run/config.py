"""Run configuration: a YAML file, validated in full before any work, plus dotted overrides.

A config is one reported number (torchdistill's rule): method, data, teacher, student, scheme and
training settings. ``load_config(path, overrides)`` returns a :class:`RunConfig`; every problem
(missing file, unknown key, wrong type, bad value, inconsistent combination) raises
:class:`opdf.errors.ConfigError` with the valid choices in the message.

Layout (every key is optional, ``method`` too: it defaults to ``kd``; ``opdf distill CONFIG
--print-config`` prints a config with every default filled in)::

    method: kd                      # a registered method (`opdf methods`); default kd
    seed: 42
    output_dir: runs/kd-mpo
    data: {name: rt-polarity, max_length: 64, max_train_samples: null, max_eval_samples: null}
    teacher: {model: minilm-l6, finetune: {epochs: 3, lr: 5.0e-5, batch_size: 32}}
    student: {model: null, init: null, layers: null}   # null model: teacher layers; init:
                                    # bottom (default) | alternate | uniform | top | [i, ...]
    # student.source: finetuned-teacher | pretrained-teacher | model (default: the method's;
    # student.model alone means model); student.head: copy | new (default: copy for the
    # fine-tuned teacher, else new)
    variant: null                   # base | svd | mpo | opdf: sets the three keys below
    overparam: mpo                  # none | svd | mpo
    precision: fp32                 # fp32 | bf16 (autocast; the MPO contraction stays fp32) |
                                    # bf16-contraction (that too: faster on AMX CPUs)
    unit_modes: 3
    train_cores: all                # all | central | auxiliary: which MPO cores train (the
                                    # others stay as decomposed; an ablation, mpo only)
    align: {weight: 0.0, cores: auxiliary, layer_map: null, normalize: none}
    kd: {temperature: 4.0, alpha: 0.9}     # the section named after the method: its options
    epochs: 3
    max_steps: null
    batch_size: 32
    lr: 5.0e-5
    lr_scaling: none                # none | auto: per-core rates, one step moves each merged
                                    # weight like a plain one (opdf.lr_groups); no-op if plain
    eval_every: 100
    checkpoint_every: 100
    on_nonfinite: stop              # a NaN/inf loss or gradient: stop (exit 3) | skip the step
    log_to: [jsonl]                 # + tensorboard: the same scalars in OUTPUT_DIR/tb ('opdf[tb]')

``variant`` names one of the paper's four columns and presets ``overparam``, ``unit_modes`` and
``align.weight``: ``base`` (none, weight 0), ``svd`` (svd, 0), ``mpo`` (mpo, L = 3, 0), ``opdf``
(mpo, L = 3, 100), so one file per method serves all four (``opdf distill FILE variant=opdf``).
Keys set in the file or by an override keep their value (``variant: opdf`` with ``unit_modes: 2``
or ``align.weight: 10``) but may not contradict the variant: ``variant: base`` with ``overparam:
mpo``, or ``variant: mpo`` with an alignment weight, is an error.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opdf.choices import (
    ALIGN_NORMALIZATIONS,
    DEFAULT_LOG_TO,
    LOG_TARGETS,
    LR_SCALINGS,
    NEUTRAL_KEYS,
    SCHEMES,
    STUDENT_HEADS,
    STUDENT_INITS,
    STUDENT_SOURCES,
    TRAIN_CORES,
    check_core_selection,
    choice,
    positive,
    suggest,
)
from opdf.data import BUILTIN_DATASETS, dataset_names
from opdf.data.vision import VISION_DATASETS, VISION_OPTIONS, is_vision_dataset
from opdf.distill import get_method, method_names, methods
from opdf.errors import ConfigError, OpdfError, yaml_file_error, yaml_problem
from opdf.models import builtin_names
from opdf.models.builtin import model_depth
from opdf.models.student import default_student_layers, init_layers
from opdf.models.vision import is_vision_model, vision_model_names
from opdf.run.typed import build_dataclass

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "bf16-contraction")

#: ``variant:`` presets, the paper's four columns. A key set explicitly (in the file or by an
#: override) replaces the preset's value, but may not contradict what the variant is: its scheme,
#: and whether the alignment loss is on. The OPDF weight is the scale that acts on L_Aux (a mean
#: over core elements, ~4e-3 for MiniLM pairs): 0.01 changed nothing, 100 did
#: (benchmarks/results/rt-polarity-kd).
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {"overparam": "none", "align.weight": 0.0},
    "svd": {"overparam": "svd", "align.weight": 0.0},
    "mpo": {"overparam": "mpo", "unit_modes": 3, "align.weight": 0.0},
    "opdf": {"overparam": "mpo", "unit_modes": 3, "align.weight": 100.0},
}


@dataclass
class DataConfig:
    """Which task to train on (see :func:`opdf.data.load_text_dataset`)."""

    name: str = "rt-polarity"
    max_length: int = positive(128)
    max_train_samples: int | None = positive(None)
    max_eval_samples: int | None = positive(None)
    seed: int = 0
    options: dict = field(default_factory=dict)


@dataclass
class FinetuneConfig:
    """How the teacher is fine-tuned on the task (cached by a hash of these, the model and the
    task: ``data.name``, ``data.options``, ``data.max_length``, and the contents of a local model
    folder or data file). The teacher trains on the full
    train split unless ``max_train_samples`` is set here; ``data.max_train_samples`` subsamples
    only the student's training data."""

    max_train_samples: int | None = positive(None)
    epochs: float = positive(3.0)
    max_steps: int | None = positive(None)
    batch_size: int = positive(32)
    lr: float = positive(5e-5)
    weight_decay: float = positive(0.01, allow_zero=True)
    warmup_ratio: float = positive(0.1, allow_zero=True)
    max_grad_norm: float | None = positive(1.0)
    eval_every: int | None = positive(None)
    seed: int = 0


@dataclass
class TeacherConfig:
    """``model``: a built-in name or a folder. ``finetune: null`` uses it as is (already tuned).
    ``cache_outputs``: keep a frozen teacher's outputs per training batch on disk
    (:mod:`opdf.distill.teacher_cache`), for the runs that train on the same batches (a suite's
    cells of one seed): their teacher forwards are computed once. Results are unchanged."""

    model: str = "minilm-l6"
    finetune: FinetuneConfig | None = field(default_factory=FinetuneConfig)
    cache_outputs: bool = False


@dataclass
class StudentConfig:
    """``model: null`` builds the student from teacher layers: ``init`` names them (a preset of
    :data:`opdf.choices.STUDENT_INITS` resolved against the teacher's depth for a student of
    ``num_layers`` layers, default half the teacher; or an explicit list), and ``layers`` holds
    the resolved list (settable directly, as before; default the bottom half). ``dropout`` sets
    the rate of every ``torch.nn.Dropout`` in the student (null: the model's own; 0 makes a run
    deterministic in its data order alone, e.g. to compare 1 and N processes).

    ``source`` says whose weights those are (:data:`opdf.choices.STUDENT_SOURCES`):
    ``finetuned-teacher`` (a deep copy of the task-fine-tuned teacher, cut to the layers),
    ``pretrained-teacher`` (the same layers of ``teacher.model`` as it was before the fine-tune)
    or ``model`` (``student.model``, a separately pretrained encoder). ``head``: ``copy`` keeps the
    source's classification head (the modules outside the encoder, e.g. BERT's ``classifier``;
    the pooler belongs to the encoder), ``new`` initialises one (seeded by ``seed``). Null:
    the method's paper default (``Distiller.default_student_source``), ``model`` when
    ``student.model`` is set; ``copy`` for the fine-tuned teacher, else ``new``. Both are
    resolved at load, so ``config.yaml`` holds what the run used."""

    model: str | None = None
    source: str | None = None
    head: str | None = None
    init: str | list[int] | None = None
    num_layers: int | None = positive(None)
    layers: list[int] | None = None
    dropout: float | None = positive(None, allow_zero=True)


@dataclass
class AlignConfig:
    """The tensor alignment loss between student and teacher auxiliary cores (0 = off)."""

    weight: float = positive(0.0, allow_zero=True)
    cores: str | list[int] = "auxiliary"
    layer_map: dict[int, int] | None = None
    allow_partial: bool = False  # align only the same-shaped cores instead of failing
    normalize: str = choice(*ALIGN_NORMALIZATIONS, default="none")  # none | teacher (relative)


#: keys added after configs were first hashed, left out of the hash at these values so that a
#: config that runs what it ran before keeps its ``config_hash`` (``student.init`` says how the
#: layers were chosen; ``student.layers`` holds them)
UNHASHED_DEFAULTS = (("student", "init", None), ("student", "num_layers", None),
                     ("align", "normalize", "none"))  # fmt: skip


def legacy_start(student: dict) -> tuple[str, str]:
    """``(source, head)`` of a student section written before ``student.source`` and
    ``student.head`` existed: what every run then did (the fine-tuned teacher's layers with its
    head, or ``student.model`` with the head it loads; a pretrained encoder has none)."""
    if student.get("model") is not None:
        return "model", "new"
    return "finetuned-teacher", "copy"


def as_ran(config: dict) -> dict:
    """A copy of a config dict as the run it describes, for comparing a saved run folder with
    today's resolved config (a resume, a suite's finished cells): the legacy start filled in
    (:func:`with_legacy_start`), ``student.layers: null`` as the layers it started from, and no
    ``student.init`` / ``num_layers`` once the layers are known (they say how the layers were
    chosen; ``student.layers`` holds them)."""
    out = with_legacy_start(config)
    student = out.get("student")
    if isinstance(student, dict):
        _fill_default_layers(student, out)
        if student.get("layers") is not None:
            student.pop("init", None)
            student.pop("num_layers", None)
    return out


def with_legacy_start(config: dict) -> dict:
    """A copy of a saved config dict whose student section gains the ``source`` and ``head``
    it ran with when it predates the keys."""
    out = copy.deepcopy(config)
    student = out.get("student")
    if isinstance(student, dict) and (student.get("source") is None or student.get("head") is None):
        source, head = legacy_start(student)
        data = out.get("data") if isinstance(out.get("data"), dict) else {}
        if is_vision_dataset(str(data.get("name", DataConfig.name))):
            head = None  # an image student is student.model, with no head choice
        if student.get("source") is None:
            student["source"] = source
        if student.get("head") is None:
            student["head"] = head if student["source"] == source else None
    return out


def _fill_default_layers(student: dict, config: dict) -> None:
    """``student.layers: null`` on a student cut from the teacher ran the teacher's bottom half
    (then and now): fill in those layers, so that such a cell and one written with
    ``student.init: bottom`` (which saves the resolved list) compare as the same run."""
    if student.get("layers") is not None or student.get("model") is not None:
        return
    if student.get("source") == "model" or student.get("num_layers") is not None:
        return
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    teacher = config.get("teacher") if isinstance(config.get("teacher"), dict) else {}
    if is_vision_dataset(str(data.get("name", DataConfig.name))):
        return
    try:
        depth = model_depth(str(teacher.get("model", TeacherConfig.model)))
    except (OpdfError, OSError, ValueError, AttributeError, TypeError):
        return  # a teacher folder gone (or unreadable) since: compared as written
    student["layers"] = default_student_layers(depth)


def _without_legacy_start(student: dict) -> dict:
    """The student section without ``source``/``head`` when they are the legacy start, so a
    config that runs what it ran before the keys existed keeps its hash."""
    out = dict(student)
    if (out.get("source"), out.get("head")) in ((None, None), legacy_start(out)):
        out.pop("source", None)
        out.pop("head", None)
    return out


def drop_neutral(config: dict) -> dict:
    """A copy of a config dict without :data:`NEUTRAL_KEYS` (for comparing two configs)."""
    return without_keys(config, NEUTRAL_KEYS)


def without_keys(config: dict, keys) -> dict:
    """A copy of a nested config dict without the dotted ``keys`` (absent ones ignored)."""
    out = copy.deepcopy(config)
    for key in keys:
        *parents, last = key.split(".")
        node = out
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


@dataclass
class RunConfig:
    method: str = "kd"
    seed: int = 42
    output_dir: str = "runs/default"
    variant: str | None = choice(None, *VARIANTS, default=None)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    overparam: str = choice(*SCHEMES, default="none")
    unit_modes: int = positive(3, allow_zero=True)
    train_cores: str = choice(*TRAIN_CORES, default="all")
    align: AlignConfig = field(default_factory=AlignConfig)
    # training
    epochs: float = positive(3.0)
    max_steps: int | None = positive(None)
    batch_size: int = positive(32)
    grad_accum: int = positive(1)
    eval_batch_size: int = positive(128)
    lr: float = positive(5e-5)
    lr_scaling: str = choice(*LR_SCALINGS, default="none")
    weight_decay: float = positive(0.0, allow_zero=True)
    warmup_ratio: float = positive(0.0, allow_zero=True)
    max_grad_norm: float | None = positive(1.0)
    eval_every: int | None = positive(None)
    checkpoint_every: int | None = positive(None)
    log_every: int = positive(10)
    device: str = choice(*DEVICES, default="auto")
    # bf16: forwards under torch.autocast(bfloat16); the MPO contraction, the optimizer state and
    # the merged student stay float32 (opdf.overparam.contract_weight). bf16-contraction: the
    # training contraction in bf16 too (opdf.overparam.low_precision_contraction), faster where
    # bf16 matmuls are (an AMX CPU; a GPU not measured); evaluation and merge stay float32
    precision: str = choice(*PRECISIONS, default="fp32")
    threads: int | None = positive(None)
    on_nonfinite: str = choice("stop", "skip", default="stop")
    # where the metric records go: metrics.jsonl and/or TensorBoard scalars (OUTPUT_DIR/tb)
    log_to: list[str] = field(default_factory=lambda: list(DEFAULT_LOG_TO))
    # method options: the section named after the method (validated by the method's Options)
    method_options: Any = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        opts = d.pop("method_options")
        if d["variant"] is None:  # configs without the key keep their form (and hash)
            del d["variant"]
        if tuple(d["log_to"]) == DEFAULT_LOG_TO:  # the same: configs from before the key
            del d["log_to"]
        d[self.method] = opts
        return d

    def hash(self, exclude: tuple[str, ...] = ("output_dir", "log_to")) -> str:
        d = {k: v for k, v in self.to_dict().items() if k not in exclude}
        if isinstance(d.get("student"), dict):  # the start every run had before the keys
            d["student"] = _without_legacy_start(d["student"])
        for section, key, unset in UNHASHED_DEFAULTS:  # later keys at their defaults
            if isinstance(d.get(section), dict) and d[section].get(key, unset) == unset:
                d[section] = {k: v for k, v in d[section].items() if k != key}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# overrides and loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> ``(["a", "b"], 3)`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} must look like key=value (e.g. seed=1, data.max_length=64)"
        )
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(
            f"override {text!r}: value is not valid YAML ({yaml_problem(e)})"
        ) from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides) -> dict:
    raw = copy.deepcopy(raw)  # not a JSON round trip: YAML also reads dates (seed: 2020-01-01)
    for text in overrides or ():
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(
                    f"override {text!r}: {'.'.join(path[: i + 1])} is {nxt!r}, not a mapping"
                )
            node = nxt
        node[path[-1]] = value
    return raw


def config_from_dict(raw: dict, base_dir: Path | None = None) -> RunConfig:
    """Validate a plain mapping into a :class:`RunConfig` (method options included)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)  # apply_variant fills nested keys in: never the caller's dict
    method = raw.get("method", "kd")
    names = method_names()
    if method not in names:
        raise ConfigError(
            f"config key 'method': {method!r} is not a registered method{suggest(method, names)}; "
            f"valid choices: {', '.join(names)}"
        )
    sections = {n: raw.pop(n) for n in names if n in raw}
    for other, section in sections.items():
        # `<other>=null` (e.g. `method=theseus kd=null` on the command line) drops a section
        if other != method and section is not None:
            raise ConfigError(
                f"config has a {other!r} section but method is {method!r}; rename the section "
                f"to {method!r}, remove it, or override it with '{other}=null'"
            )
    cls = get_method(method)
    options = build_dataclass(cls.Options, sections.get(method) or {}, method)
    apply_variant(raw)
    cfg = build_dataclass(RunConfig, raw)
    check_variant(cfg)
    cfg.method_options = options
    _resolve_paths(cfg, base_dir)
    check(cfg)
    return cfg


def _is_set(raw: dict, dotted: str) -> bool:
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def apply_variant(raw: dict) -> None:
    """Fill in the preset keys of ``raw["variant"]`` that ``raw`` does not set (in place)."""
    name = raw.get("variant")
    if name is None:
        return
    if name not in VARIANTS:
        raise ConfigError(
            f"config key 'variant': {name!r} is not valid{suggest(name, VARIANTS)}; valid "
            f"choices: {', '.join(VARIANTS)} (or leave it out and set overparam / unit_modes / "
            "align yourself)"
        )
    if "unit_modes" not in VARIANTS[name] and raw.get("unit_modes") not in (None, 0):
        raise ConfigError(
            f"variant {name!r} contradicts a key set in the config or an override: unit_modes "
            f"is {raw['unit_modes']!r}, but a {name} student has no unit modes. Remove "
            "unit_modes, or choose the variant that means it (mpo, opdf)"
        )
    for key, value in VARIANTS[name].items():
        if _is_set(raw, key):
            continue
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"config key {part!r}: expected a mapping, got {node!r}")
        node[leaf] = value


def check_variant(cfg: RunConfig) -> None:
    """Explicit keys may tune a variant (unit_modes, the alignment weight), not contradict it
    (every preset key that is not explicit has the preset's value)."""
    if cfg.variant is None:
        return
    preset = VARIANTS[cfg.variant]
    aligned = preset["align.weight"] > 0
    wrong = None
    if cfg.overparam != preset["overparam"]:
        wrong = f"overparam is {cfg.overparam!r}, not {preset['overparam']!r}"
    elif (cfg.align.weight > 0) != aligned:
        wrong = (
            f"align.weight is {cfg.align.weight:g}, "
            + ("but this variant trains with the alignment loss (> 0)" if aligned
               else "but this variant has no alignment loss (0)")
        )  # fmt: skip
    if wrong:
        raise ConfigError(
            f"variant {cfg.variant!r} contradicts a key set in the config or an override: "
            f"{wrong}. Remove that key (the variant sets it), or choose the variant that means "
            f"it ({', '.join(VARIANTS)})"
        )


def check_log_to(log_to: list[str]) -> None:
    bad = [t for t in log_to if t not in LOG_TARGETS]
    if bad:
        raise ConfigError(
            f"config key 'log_to': {bad[0]!r} is not valid{suggest(bad[0], LOG_TARGETS)}; "
            f"valid choices: {', '.join(LOG_TARGETS)} (a list, e.g. [jsonl, tensorboard])"
        )
    if not log_to or len(set(log_to)) != len(log_to):
        raise ConfigError(
            f"config key 'log_to': {log_to!r} must name each of {', '.join(LOG_TARGETS)} at most "
            "once, and at least one of them"
        )


def _resolve_paths(cfg: RunConfig, base_dir: Path | None) -> None:
    """Relative data/model paths are taken relative to the config file when they exist there,
    else relative to the working directory (``output_dir`` is always relative to the latter)."""
    if base_dir is None:
        return

    def fix(value: str | None) -> str | None:
        if not value or Path(value).is_absolute():
            return value
        alt = base_dir / value
        return str(alt) if alt.exists() else value

    cfg.data.name = fix(cfg.data.name)
    cfg.teacher.model = fix(cfg.teacher.model)
    cfg.student.model = fix(cfg.student.model)


def check(cfg: RunConfig) -> None:
    """Cross-key rules that single values cannot express."""
    if cfg.student.dropout is not None and not cfg.student.dropout < 1:
        raise ConfigError(f"config key 'student.dropout': {cfg.student.dropout!r} must be < 1")
    if cfg.align.weight > 0 and cfg.overparam == "none":
        raise ConfigError(
            "align.weight > 0 needs an over-parameterized student: set overparam to svd or mpo, "
            "or align.weight to 0"
        )
    try:
        check_core_selection(cfg.align.cores)
    except OpdfError as exc:
        raise ConfigError(f"config key 'align.cores': {exc}") from None
    if cfg.train_cores != "all":
        if cfg.overparam != "mpo":
            raise ConfigError(
                f"train_cores: {cfg.train_cores} needs overparam: mpo (a central core between "
                f"auxiliary ones), not {cfg.overparam!r}; or train_cores: all"
            )
        if cfg.lr_scaling != "none":
            raise ConfigError(
                f"lr_scaling: {cfg.lr_scaling} is derived for every core training; with "
                f"train_cores: {cfg.train_cores} use lr_scaling: none"
            )
        if cfg.train_cores == "central" and cfg.align.weight > 0 and cfg.align.cores == "auxiliary":
            raise ConfigError(
                "train_cores: central freezes the auxiliary cores, the only ones align.cores: "
                "auxiliary aligns: the alignment loss would be a constant; set align.weight to "
                "0, or align.cores to all"
            )
    if cfg.batch_size % cfg.grad_accum:
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be a multiple of grad_accum {cfg.grad_accum} "
            "(batch_size is the batch per optimizer step)"
        )
    if cfg.precision == "bf16-contraction" and cfg.grad_accum > 1:
        raise ConfigError(
            f"precision: bf16-contraction with grad_accum {cfg.grad_accum}: accumulating, opdf "
            "contracts once per optimizer step and always in float32 (opdf.accumulate), so it "
            "would train exactly as precision: bf16; use that, or grad_accum: 1"
        )
    if cfg.student.layers is not None and not cfg.student.layers:
        raise ConfigError("config key 'student.layers': give at least one teacher layer, or null")
    if cfg.student.model is not None and cfg.student.layers is not None:
        raise ConfigError("student.model and student.layers are exclusive: set one of them")
    check_log_to(cfg.log_to)
    _check_sources(cfg)
    resolve_student_start(cfg)
    resolve_student_init(cfg)
    resolve = getattr(cfg.method_options, "resolve", None)
    if resolve is not None:  # the method's run-dependent nulls, filled in a new options object
        cfg.method_options = resolve(cfg)
    validate = getattr(cfg.method_options, "validate", None)
    if validate is not None:
        validate(cfg)


def resolve_student_start(cfg: RunConfig) -> None:
    """``student.source`` and ``student.head`` -> their values for this run (in place, idempotent):
    the method's paper default when null, checked against each other, the teacher and the
    method (:meth:`Distiller.check_student_start`, e.g. DBKD refusing the fine-tuned teacher's
    weights). Image students are always ``student.model`` (source ``model``, no head choice)."""
    s = cfg.student
    choices = (("source", s.source, STUDENT_SOURCES), ("head", s.head, STUDENT_HEADS))
    for key, value, valid in choices:
        if value is not None and value not in valid:
            raise ConfigError(
                f"config key 'student.{key}': {value!r} is not valid{suggest(value, valid)}; "
                f"valid choices: {', '.join(valid)}"
            )
    if data_kind(cfg) == "image":
        if s.source not in (None, "model") or s.head is not None:
            raise ConfigError(
                "image data: the student is student.model (a vision architecture or a saved "
                "folder); student.source and student.head apply to text students: remove them"
            )
        s.source = "model"
        return
    method = get_method(cfg.method)
    if s.source is None:
        s.source = "model" if s.model is not None else method.default_student_source
    if s.source == "model" and s.model is None:
        raise ConfigError(
            "student.source: model needs student.model (a built-in name or a model folder); or "
            "use student.source: finetuned-teacher or pretrained-teacher (teacher layers)"
        )
    if s.source != "model" and s.model is not None:
        raise ConfigError(
            f"student.model {s.model!r} is a separate model, but student.source is {s.source} "
            "(teacher layers): drop student.model, or set student.source: model"
        )
    if s.head is None:
        s.head = "copy" if s.source == "finetuned-teacher" else "new"
    if s.source == "pretrained-teacher":
        if s.head == "copy":
            # the pretrained model has no head for the task: load_model would initialise one,
            # and the fine-tuned teacher's head on pretrained layers is a mix no method uses
            raise ConfigError(
                "student.head: copy needs a fine-tuned head, and the pretrained teacher (teacher."
                "model before its fine-tune) has none: use student.head: new, or student.source: "
                "finetuned-teacher"
            )
        if cfg.teacher.finetune is None:
            raise ConfigError(
                "student.source: pretrained-teacher takes teacher.model before its fine-tune, but "
                "teacher.finetune is null (teacher.model is the tuned teacher itself): set "
                "teacher.finetune, or use student.source: model with a pretrained student.model"
            )
    method.check_student_start(cfg)


def resolve_student_init(cfg: RunConfig) -> None:
    """``student.init`` (a preset or a list) -> ``student.layers``, against the teacher's depth
    read from its config.json; so ``--print-config``, ``config.yaml`` and a suite's cells hold
    the layers a run starts from. A ``layers`` that disagrees with ``init`` is an error."""
    s = cfg.student
    if s.init is None and s.num_layers is None:
        return
    if s.model is not None:
        raise ConfigError(
            "student.init and student.num_layers choose layers of the teacher, but student.model "
            f"{s.model!r} is a separate model: set student.model or student.init, not both"
        )
    if isinstance(s.init, str) and s.init not in STUDENT_INITS:
        raise ConfigError(
            f"config key 'student.init': {s.init!r} is not a preset"
            f"{suggest(s.init, STUDENT_INITS)}; valid: {', '.join(STUDENT_INITS)}, or a list of "
            "teacher layers"
        )
    try:
        if isinstance(s.init, list):
            resolved = init_layers(s.init, 1, s.num_layers)
            depth = model_depth(cfg.teacher.model)
            bad = [i for i in resolved if not 0 <= i < depth]
            if not resolved or bad or len(set(resolved)) != len(resolved):
                raise OpdfError(
                    f"{resolved} must name distinct teacher layers in 0..{depth - 1} (the "
                    f"teacher has {depth}), at least one"
                )
        else:
            n = s.num_layers if s.num_layers is not None else (len(s.layers) if s.layers else None)
            resolved = init_layers(s.init or "bottom", model_depth(cfg.teacher.model), n)
    except OpdfError as e:
        raise ConfigError(f"student.init: {e}") from None
    if s.layers is not None and list(s.layers) != resolved:
        raise ConfigError(
            f"student.init: {s.init} gives teacher layers {resolved}, but student.layers is "
            f"{list(s.layers)}: set one of them (student.layers=null to use the init)"
        )
    s.layers = resolved


def data_kind(cfg: RunConfig) -> str:
    """``"image"`` for an image dataset (:mod:`opdf.data.vision`), else ``"text"``."""
    return "image" if is_vision_dataset(cfg.data.name) else "text"


def _check_sources(cfg: RunConfig) -> None:
    """Unknown dataset names, missing data files and unknown models fail here, before any work."""
    kind = data_kind(cfg)
    if kind not in get_method(cfg.method).data_kinds:
        fits = ", ".join(n for n, c in methods().items() if kind in c.data_kinds)
        raise ConfigError(
            f"method {cfg.method!r} does not work on {kind} data ({cfg.data.name}); methods for "
            f"{kind} data: {fits}"
        )
    if kind == "image":
        _check_image_sources(cfg)
        return
    name = cfg.data.name
    builtin = name.strip().lower() in BUILTIN_DATASETS or name.lower().startswith("glue")
    if not builtin and not Path(name).expanduser().exists():
        names = [*dataset_names(), *VISION_DATASETS]
        raise ConfigError(
            f"config key 'data.name': {name!r} is neither a dataset name nor an existing "
            f"file or folder{suggest(name, names)}; valid names: text "
            f"{', '.join(dataset_names())}; images {', '.join(VISION_DATASETS)}; or a path to a "
            "CSV/TSV/JSONL file or folder "
            "(relative to the config file or the working directory)"
        )
    for key, model in (("teacher.model", cfg.teacher.model), ("student.model", cfg.student.model)):
        if model is None or model in builtin_names():
            continue
        if is_vision_model(model):
            raise ConfigError(
                f"config key {key!r}: {model!r} is an image classifier, but data.name "
                f"{cfg.data.name!r} is text; use an image dataset or a text model"
            )
        if not Path(model).expanduser().is_dir():
            raise ConfigError(
                f"config key {key!r}: {model!r} is neither a built-in model "
                f"({', '.join(builtin_names())}) nor an existing model folder"
            )


def _check_image_sources(cfg: RunConfig) -> None:
    """Image data: both models are vision models (a built-in name or a folder with an
    ``architecture.json``), the student is named, and a built-in teacher gets trained."""
    unknown = sorted(set(cfg.data.options) - set(VISION_OPTIONS))
    if unknown:
        raise ConfigError(
            f"config key 'data.options': unknown option(s) {', '.join(unknown)} for image data "
            f"{cfg.data.name!r}; valid options: {', '.join(VISION_OPTIONS)}"
        )
    names = ", ".join(vision_model_names())
    cut = (cfg.student.layers, cfg.student.init, cfg.student.num_layers)
    if any(v is not None for v in cut) or cfg.student.model is None:
        raise ConfigError(
            "image data: set student.model to a vision model (one of "
            f"{names}, or a folder saved by opdf); student.layers, student.init and "
            "student.num_layers apply to text encoders cut from the teacher"
        )
    for key, model in (("teacher.model", cfg.teacher.model), ("student.model", cfg.student.model)):
        if not is_vision_model(model):
            raise ConfigError(
                f"config key {key!r}: {model!r} is not a vision model for image data "
                f"{cfg.data.name!r}; valid names: {names}, or a folder with an architecture.json"
            )
    if cfg.teacher.finetune is None and not Path(cfg.teacher.model).expanduser().is_dir():
        raise ConfigError(
            f"teacher.model {cfg.teacher.model!r} is an architecture without trained weights: "
            "keep teacher.finetune (it trains the teacher from scratch, cached) or give a folder "
            "of a trained model"
        )


def load_config(path: str | Path, overrides=()) -> RunConfig:
    """Read, override and validate a YAML config file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder; give a YAML config file (e.g. "
                          "configs/smoke-kd.yaml)")  # fmt: skip
    if not path.is_file():
        hint = ""
        configs = Path("configs")
        if configs.is_dir():
            names = sorted(p.name for p in configs.glob("*.yaml"))
            hint = f"; configs in ./configs: {', '.join(names)}" if names else ""
        raise ConfigError(f"config file {str(path)!r} does not exist{hint}")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start}): {e.reason}") from None
    except yaml.YAMLError as e:
        raise yaml_file_error(path, e) from None
    if raw is None or raw == {}:  # empty, comments only or `{}`: never a run of every default
        raise ConfigError(f"{path} is empty (or holds only comments); a config says at least "
                          "its method, data and teacher (see configs/smoke-kd.yaml)")  # fmt: skip
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    raw = apply_overrides(drop_variant_keys(raw, overrides), overrides)
    return config_from_dict(raw, base_dir=path.parent)


def drop_variant_keys(raw: dict, overrides) -> dict:
    """A ``variant=`` override replaces the file's own variant keys (``overparam``, ``unit_modes``,
    ``align.weight``): ``opdf distill rt-polarity-theseus-base.yaml variant=svd`` means +SVD even
    though the file says ``overparam: none``. Keys given as overrides still tune it or contradict
    it (:func:`check_variant`)."""
    named = [value for key, value in map(parse_override, overrides or ()) if key == ["variant"]]
    if not named or named[-1] is None:
        return raw
    return without_keys(raw, {k for preset in VARIANTS.values() for k in preset})


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
