"""The merged student, written where a user loads it: at the end of a run (``OUTPUT_DIR/student``,
:func:`save_student`) and from a run folder's checkpoint (:func:`merge_checkpoint`, ``opdf
merge``), which rebuilds the student from the architecture saved at the start of the run
(:func:`save_architecture`, ``checkpoints/student-architecture``) without the teacher or the data.

A text student is a transformers model saved with ``save_pretrained`` plus its tokenizer; an image
student is ``model.safetensors`` + ``architecture.json`` (:func:`opdf.models.load_vision_model`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from opdf.errors import OpdfError
from opdf.models.hf import SAFE
from opdf.models.quiet import quiet_transformers
from opdf.models.vision import (
    ARCHITECTURE_FILE,
    load_vision_model,
    save_vision_architecture,
    save_vision_model,
)
from opdf.overparam import merge, overparameterize
from opdf.run import checkpoint as ckpt
from opdf.run import owner
from opdf.run.output import CONFIG_FILE

ARCH_DIR = "student-architecture"
CHECKPOINT_FILES = {"best": ckpt.BEST, "last": ckpt.LAST}


def save_student(student, folder: Path, *, tokenizer=None, dataset=None) -> None:
    """The merged ``student`` into ``folder``: a vision model with ``dataset``'s input spec and
    label names, or a transformers model with its ``tokenizer``."""
    if getattr(dataset, "kind", "text") == "image":
        save_vision_model(student, folder, input=dataset.input_spec(),
                          label_names=dataset.label_names)  # fmt: skip
        return
    with quiet_transformers():
        student.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))


def save_architecture(student, tokenizer, folder: Path, dataset=None) -> None:
    """The student's transformers config and tokenizer (for a vision student its
    ``architecture.json``), so that ``opdf merge`` can rebuild the model from a checkpoint without
    the teacher or the data."""
    folder.mkdir(parents=True, exist_ok=True)
    if getattr(student, "vision_spec", None) is not None:
        extra = {} if dataset is None else {"input": dataset.input_spec(),
                                             "label_names": dataset.label_names}  # fmt: skip
        save_vision_architecture(student, folder, **extra)
        return
    with quiet_transformers():
        student.config.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))


def merge_checkpoint(run_dir: str | Path, out_dir: str | Path | None = None, *,
                     which: str = "best", overwrite: bool = False) -> Path:  # fmt: skip
    """A run folder's checkpoint (``best`` or ``last``) -> a merged, plain model (default:
    ``RUN_DIR/merged-<which>``): a transformers model saved with ``save_pretrained``, or for an
    image run ``model.safetensors`` + ``architecture.json`` (:func:`opdf.models.load_vision_model`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise OpdfError(f"{run_dir} {what}; give an opdf run folder (output_dir of a run)")
    if run_dir.name == "checkpoints":
        run_dir = run_dir.parent
    if which not in CHECKPOINT_FILES:
        raise OpdfError(f"which={which!r} is not valid; valid choices: best, last")
    arch = run_dir / "checkpoints" / ARCH_DIR
    image = (arch / ARCHITECTURE_FILE).is_file()
    state_file = _checked_run_files(run_dir, arch, which, image)
    raw = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
    scheme, unit_modes = raw.get("overparam", "none"), int(raw.get("unit_modes", 0))
    out = Path(out_dir) if out_dir is not None else run_dir / f"merged-{which}"
    # read before the output folder exists: a damaged checkpoint leaves no empty folder behind
    if which == "last":  # the newest intact one: last.pt, else previous.pt (with a warning)
        state = ckpt.read_latest(state_file.parent, purpose="merge")[1].modules["student"]
    else:
        state = ckpt.read_modules(state_file)["student"]
    _prepare_merged_folder(run_dir, out, overwrite)
    if image:
        return _merge_vision(arch, state, scheme, unit_modes, out)
    return _merge_text(arch, state, scheme, unit_modes, out)


def _checked_run_files(run_dir: Path, arch: Path, which: str, image: bool) -> Path:
    """The checkpoint file ``which`` names in ``run_dir``, once the run's config, saved
    architecture and that checkpoint are all there (an error naming the missing one if not)."""
    state_file = run_dir / "checkpoints" / CHECKPOINT_FILES[which]
    if which == "last" and not state_file.exists():
        state_file = state_file.with_name(ckpt.PREVIOUS)  # killed while rotating the two
    need_arch = arch / (ARCHITECTURE_FILE if image else "config.json")
    for need in (run_dir / CONFIG_FILE, need_arch, state_file):
        if not need.exists():
            if (run_dir / "summary.json").is_file() and (run_dir / "student").is_dir():
                raise OpdfError(
                    f"{run_dir} is a finished run whose checkpoints were removed ({need} is "
                    f"missing; opdf bench keeps none unless keep_checkpoints: true): its merged "
                    f"student is already in {run_dir / 'student'}; load that folder instead"
                )
            raise OpdfError(
                f"{run_dir} is not an opdf run folder with a {which} checkpoint: {need} is missing"
            )
    return state_file


def _merge_text(arch: Path, state: dict, scheme: str, unit_modes: int, out: Path) -> Path:
    # transformers stays a lazy import: `opdf --help` and image runs never need it
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    with quiet_transformers():
        config = AutoConfig.from_pretrained(str(arch), **SAFE)
        model = AutoModelForSequenceClassification.from_config(config)
        tokenizer = AutoTokenizer.from_pretrained(str(arch), **SAFE)
    if scheme != "none":
        overparameterize(model, scheme=scheme, unit_modes=unit_modes)
    model.load_state_dict(state)
    merge(model)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    _own_merged(arch.parents[1], out)
    return out


def _merge_vision(arch: Path, state: dict, scheme: str, unit_modes: int, out: Path) -> Path:
    model = load_vision_model(arch, weights=False)  # its architecture.json, input spec included
    if scheme != "none":
        overparameterize(model, scheme=scheme, unit_modes=unit_modes)
    model.load_state_dict(state)
    merge(model)
    save_vision_model(model, out)
    _own_merged(arch.parents[1], out)
    return out


def _inside(run_dir: Path, out: Path) -> str | None:
    """``out``'s path relative to the run folder when it lies inside it, else None."""
    out, run_dir = out.resolve(), run_dir.resolve()
    return out.relative_to(run_dir).as_posix() if out.is_relative_to(run_dir) else None


def _prepare_merged_folder(run_dir: Path, out: Path, overwrite: bool) -> None:
    """The output folder, made opdf's before anything is written (``opdf.run.owner``): inside
    the run folder it is listed in the run's marker; elsewhere it gets a marker of its own.
    ``--overwrite`` deletes only what opdf wrote there and refuses, deleting nothing, when
    anything else is in it; a non-empty folder without it is refused as before."""
    rel = _inside(run_dir, out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OpdfError(f"{out} exists and is not empty; pass --overwrite or another --output")
        if rel is not None:
            owner.claim(run_dir, "distill", what="run folder")  # adopts an older run folder
            owner.remove_owned(run_dir, rel, what="--output")
        else:
            owner.claim(out, "merge", what="--output")  # refuses a folder that is not opdf's
            owner.remove_owned(out, what="--output")
            owner.renew(out, "merge")
    elif rel is None:
        owner.claim(out, "merge", what="--output")


def _own_merged(run_dir: Path, out: Path) -> None:
    """What the merge wrote is opdf's: listed in the run's marker when ``out`` is inside the run
    folder, else in ``out``'s own."""
    rel = _inside(run_dir, out)
    if rel is not None:
        owner.record(run_dir, rel, derived=True)
    else:
        owner.record(out, *(p.name for p in out.iterdir() if p.name != owner.MARKER))
