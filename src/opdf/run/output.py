"""The output folder of a run: created, reused, resumed or overwritten by one policy.

A folder is created with opdf's ownership marker (:mod:`opdf.run.owner`) before anything else; a
non-empty one is reused only to resume (with the same config) or when told to overwrite, and then
only what opdf wrote there is deleted (a folder holding anything else is refused, naming it). The
caller holds the folder's :class:`~opdf.run.lock.RunLock`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import yaml

from opdf.errors import ConfigError, OpdfError
from opdf.run import checkpoint as ckpt
from opdf.run import owner
from opdf.run.config import RunConfig, as_ran, drop_neutral, dump_config
from opdf.run.lock import LOCK_FILE
from opdf.run.metrics_log import METRICS_FILE
from opdf.run.tblog import TB_DIR

CONFIG_FILE = "config.yaml"
# what a run killed before its first checkpoint leaves behind, removed when it restarts
STALE_FILES = (METRICS_FILE, "summary.json", TB_DIR)


def prepare_run_folder(out: Path, cfg: RunConfig, *, resume: bool, overwrite: bool) -> bool:
    """:func:`prepare_output_dir`, then the resolved config written to ``config.yaml``; a run
    without a checkpoint starts from scratch (its stale log and summary removed). Returns True
    when there is a checkpoint to resume from."""
    has_ckpt = prepare_output_dir(out, resume=resume, overwrite=overwrite, cfg=cfg)
    if not has_ckpt:
        # a run killed before its first checkpoint restarts from scratch
        for stale in STALE_FILES:
            if (out / stale).exists():
                owner.remove_owned(out, stale)
    ckpt.atomic_write_text(out / CONFIG_FILE, dump_config(cfg))
    owner.record(out, CONFIG_FILE, METRICS_FILE)  # the log is appended to from now on
    return has_ckpt


def prepare_output_dir(out: Path, *, resume: bool, overwrite: bool, cfg: RunConfig) -> bool:
    """Create ``out`` with opdf's ownership marker (:mod:`opdf.run.owner`) before anything else;
    refuse to reuse a non-empty one unless resuming (same config) or told to overwrite, and then
    delete only what opdf wrote there (a folder holding anything else is refused, naming it).
    Returns True when a checkpoint to resume from exists. The caller holds the folder's
    :class:`~opdf.run.lock.RunLock`."""
    if out.exists() and not out.is_dir():
        raise OpdfError(
            f"output_dir {str(out)!r} is a file, not a folder; set output_dir=... to a folder "
            "(new or an opdf run's)"
        )
    ckpts = out / "checkpoints"
    if resume:
        if not _entries(out) or (owner.read(out) is None and owner.legacy_paths(out) is None):
            raise OpdfError(f"--resume: {out} has no run to resume (no checkpoints/{ckpt.LAST})")
        owner.claim(out, "distill")
        owner.remove_temporaries(out)  # what a kill during a write left
        _check_resume(out, cfg)
        return ckpt.resumable(ckpts)
    owner.claim(out, "distill")  # a folder that is not opdf's is refused here, naming its files
    owner.remove_temporaries(out)
    if _entries(out):
        # a run that failed while starting left only opdf's start-up files (no checkpoint,
        # summary or student): reused without --overwrite
        holds_results = ckpt.resumable(ckpts) or any(
            p.exists() for p in (out / "summary.json", out / "student")
        )
        if holds_results and not overwrite:
            raise OpdfError(
                f"output_dir {str(out)!r} already exists and is not empty; pass --resume to "
                f"continue that run, --overwrite to replace it, or set output_dir=... to a new "
                "folder"
            )
        derived = [f"{p}/" if (out / p).is_dir() else p for p in owner.derived(out)]
        owner.remove_owned(out)  # refuses, deleting nothing, when anything else is there
        if derived:
            warnings.warn(f"--overwrite removed the previous run's {', '.join(derived)} (written "
                          "from it by opdf merge / export) with the run", UserWarning,
                          stacklevel=2)  # fmt: skip
    owner.renew(out, "distill")
    return False


def _entries(out: Path) -> set[str]:
    """What ``out`` holds, besides the lock of the run now starting and opdf's ownership marker."""
    skip = {LOCK_FILE, owner.MARKER}
    return {p.name for p in out.iterdir()} - skip if out.is_dir() else set()


def _with_defaults(old: dict, defaults: dict) -> dict:
    """A saved config read with today's defaults for keys it does not have (keys added to opdf
    after the run started), so that adding a key never blocks a --resume."""
    out = dict(old)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_defaults(out[k], v)
    return out


def _check_resume(out: Path, cfg: RunConfig) -> None:
    """--resume continues the run in ``out`` only: the same config (up to where it writes and
    logs), and not a finished one."""
    saved = out / CONFIG_FILE
    if saved.is_file():
        new = drop_neutral(as_ran(cfg.to_dict()))
        options = type(cfg.method_options)()
        defaults = RunConfig(method=cfg.method, method_options=options).to_dict()
        raw = yaml.safe_load(saved.read_text()) or {}
        if not isinstance(raw, dict):
            raise OpdfError(f"--resume: {saved} is not an opdf run config (not a mapping)")
        old = drop_neutral(as_ran(_with_defaults(raw, defaults)))
        ignored = ("output_dir", "log_to")  # where the run writes and logs changes no result
        diff = sorted(k for k in set(old) | set(new)
                      if k not in ignored and old.get(k) != new.get(k))  # fmt: skip
        if diff:
            raise ConfigError(
                f"--resume: the config differs from the one in {saved} in {', '.join(diff)}; "
                "resume with the same config, or start a new output_dir"
            )
    if (out / "summary.json").is_file():
        raise OpdfError(
            f"{out} holds a finished run (summary.json); nothing to resume. Use --overwrite to "
            "run it again, or another output_dir"
        )
