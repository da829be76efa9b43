"""opdf deletes only what it wrote: every output folder gets its marker first (opdf.run.owner), and
a folder holding anything else is refused, naming it, with and without --overwrite: for
``distill``, ``finetune`` (the cached teacher), ``bench`` cells, and over random folder contents."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opdf.cli import main
from opdf.errors import OpdfError
from opdf.run import load_config, owner
from opdf.run.config import dump_config
from opdf.run.runner import prepare_output_dir

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke-kd.yaml")


def cfg_for(out, *extra):
    return load_config(SMOKE, [f"output_dir={out}", *extra])


def opdf_run(out: Path) -> None:
    """A folder as a finished opdf run leaves it (files listed in its marker), without training."""
    assert prepare_output_dir(out, resume=False, overwrite=False, cfg=cfg_for(out)) is False
    (out / "checkpoints").mkdir()
    (out / "student").mkdir()
    for name in ("config.yaml", "summary.json", "metrics.jsonl", "checkpoints/last.pt",
                 "student/model.safetensors"):  # fmt: skip
        (out / name).write_text(name)
    owner.record(out, "config.yaml", "summary.json", "metrics.jsonl", "checkpoints", "student")


def test_the_issue_folder_is_refused_and_its_checkpoint_survives(tmp_path, capsys, monkeypatch):
    """`mkdir -p d/checkpoints; echo w > d/checkpoints/model-epoch9.bin; echo '{}' >
    d/metrics.jsonl; opdf distill ... output_dir=d` emptied d on main."""
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "d"
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "model-epoch9.bin").write_text("w\n")
    (d / "metrics.jsonl").write_text("{}\n")
    for flags in ([], ["--overwrite"]):
        assert main(["distill", SMOKE, "output_dir=d", "--no-progress", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "checkpoints, metrics.jsonl" in err
        assert "opdf did not write" in err
        assert (d / "checkpoints" / "model-epoch9.bin").read_text() == "w\n"
        assert (d / "metrics.jsonl").read_text() == "{}\n"
        assert not (d / owner.MARKER).exists()


def test_any_yaml_named_config_yaml_does_not_make_a_folder_opdfs(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "config.yaml").write_text("lr: 3\n")
    (d / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OpdfError, match="holds config.yaml, notes.txt, which opdf did not"):
            prepare_output_dir(d, resume=False, overwrite=overwrite, cfg=cfg_for(d))
        assert (d / "config.yaml").read_text() == "lr: 3\n" and (d / "notes.txt").exists()


@pytest.mark.parametrize("planted", ["notes.txt", "student/README.md", "checkpoints/mine.pt"])
def test_overwrite_of_an_opdf_run_refuses_while_it_holds_a_users_file(tmp_path, planted):
    run = tmp_path / "run"
    opdf_run(run)
    (run / planted).write_text("the user's")
    with pytest.raises(OpdfError, match=f"holds {planted}, which opdf did not write; nothing"):
        prepare_output_dir(run, resume=False, overwrite=True, cfg=cfg_for(run))
    assert (run / planted).read_text() == "the user's"
    assert (run / "summary.json").exists()  # nothing deleted
    (run / planted).unlink()
    assert prepare_output_dir(run, resume=False, overwrite=True, cfg=cfg_for(run)) is False
    assert [p.name for p in run.iterdir()] == [owner.MARKER]  # a new run's marker only


def test_overwrite_says_which_merged_or_exported_outputs_of_the_old_run_it_removes(tmp_path):
    """`opdf merge` / `opdf export` into the run folder list their output as the run's, so
    --overwrite replaces them with the run: said, not silent (they were asked for separately)."""
    import warnings

    run = tmp_path / "run"
    opdf_run(run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only the run's own files: nothing to say
        assert prepare_output_dir(run, resume=False, overwrite=True, cfg=cfg_for(run)) is False
    opdf_run(run)
    for derived in ("merged-best", "onnx"):
        (run / derived).mkdir()
        (run / derived / "model.safetensors").write_text("merged")
        owner.record(run, derived, derived=True)  # as opdf merge / export list their output
    said = "--overwrite removed the previous run's merged-best/, onnx/ \\(written from it"
    with pytest.warns(UserWarning, match=said):
        assert prepare_output_dir(run, resume=False, overwrite=True, cfg=cfg_for(run)) is False
    assert not (run / "merged-best").exists()


def test_an_output_dir_naming_a_file_is_one_clear_line(tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("mine")
    assert main(["distill", SMOKE, f"output_dir={f}", "--no-progress", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file, not a folder" in err and "Errno" not in err
    assert f.read_text() == "mine"


def test_a_run_folder_of_an_older_opdf_is_still_overwritten_and_resumed(tmp_path):
    """No marker, but a config.yaml with every key opdf writes: opdf's known files are adopted;
    a file of another name is not."""
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "config.yaml").write_text(dump_config(cfg_for(old)))
    (old / "summary.json").write_text(json.dumps({"config_hash": "x", "main_metric": "f1"}))
    (old / "checkpoints" / "last.pt").write_text("x")
    (old / "checkpoints" / "model-epoch9.bin").write_text("mine")
    with pytest.raises(OpdfError, match="holds checkpoints/model-epoch9.bin, which opdf did not"):
        prepare_output_dir(old, resume=False, overwrite=True, cfg=cfg_for(old))
    assert (old / "checkpoints" / "model-epoch9.bin").exists() and (old / "summary.json").exists()
    (old / "checkpoints" / "model-epoch9.bin").unlink()
    assert prepare_output_dir(old, resume=False, overwrite=True, cfg=cfg_for(old)) is False
    assert [p.name for p in old.iterdir()] == [owner.MARKER]


def test_a_killed_writes_temporaries_go_on_start_and_on_resume(tmp_path):
    run = tmp_path / "run"
    opdf_run(run)
    (run / "summary.json").unlink()
    (run / "config.yaml").write_text(dump_config(cfg_for(run)))
    stale = run / "checkpoints" / ".last.pt.k2j8x_q1.tmp"
    stale.write_bytes(b"x" * 100)
    mine = run / "checkpoints" / ".last.pt.notes.tmp"  # not a name opdf's writes use
    mine.write_text("mine")
    assert prepare_output_dir(run, resume=True, overwrite=False, cfg=cfg_for(run)) is True
    assert not stale.exists() and mine.exists()
    stale.write_bytes(b"x")
    mine.unlink()
    prepare_output_dir(run, resume=False, overwrite=True, cfg=cfg_for(run))
    assert not stale.exists()


def test_the_cached_teacher_folder_keeps_a_users_file(tmp_path, capsys, monkeypatch):
    """`opdf finetune --force` (and a cache folder that is no finished teacher) deletes only
    what opdf wrote: a foreign file stops it before any training, named."""
    from opdf.run.runner import teacher_cache_dir

    monkeypatch.setenv("OPDF_CACHE", str(tmp_path / "cache"))  # not the session's teacher
    cfg = cfg_for(tmp_path / "run")
    final = teacher_cache_dir(cfg)
    final.mkdir(parents=True)
    (final / "notes.txt").write_text("mine")
    for flags in (["--force"], []):
        assert main(["finetune", SMOKE, "--no-progress", *flags]) == 2
        err = capsys.readouterr().err
        assert "cached teacher folder" in err and "notes.txt" in err
        assert (final / "notes.txt").read_text() == "mine"
    # an older opdf's cached teacher (no marker, its opdf-finetune.json) is opdf's: --force
    # replaces it, leaving nothing of the old one
    (final / "notes.txt").unlink()
    (final / "student").mkdir()
    (final / "student" / "model.safetensors").write_text("old")
    (final / "opdf-finetune.json").write_text(json.dumps({"cache_key": "k", "main_metric": "f1"}))
    owner.remove_folder(final, "finetune")
    assert not final.exists()


def test_a_bench_cell_with_a_users_file_fails_and_keeps_it(tmp_path):
    from opdf.bench.suite import load_suite

    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump({
        "name": "t", "config": SMOKE, "set": {"max_steps": 2, "threads": 1},
        "variants": {"base": {"overparam": "none", "align.weight": 0}}, "grid": {"seed": [1]},
    }))  # fmt: skip
    suite = load_suite(suite_file)
    from opdf.bench import run as bench

    out = tmp_path / "out"
    planned = bench.plan(suite, suite.cells(), out, threads=None, validate=False)
    (cell,) = planned
    cell.folder.mkdir(parents=True)
    (cell.folder / "config.yaml").write_text("lr: 3\n")  # a user's, named like opdf's
    lines: list[str] = []
    results = bench.run_cells(planned, out, jobs=1, total=1, done_before=0, say=lines.append)
    assert list(results.values()) == [2]
    assert any("FAILED" in x and "opdf did not write" in x for x in lines), lines
    assert (cell.folder / "config.yaml").read_text() == "lr: 3\n"


# ----------------------------------------------------------------- random folder contents

NAMES = ["config.yaml", "summary.json", "metrics.jsonl", "checkpoints", "student", "last.pt",
         "best.pt", "manifest.json", "notes.txt", owner.MARKER, ".last.pt.abc.tmp",
         ".best.pt.a1b2c3d4.tmp", "x"]  # fmt: skip
paths = st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join),
                 max_size=8)  # fmt: skip


def _plant(folder: Path, rels: list[str], text: str) -> dict[str, str]:
    """Write each path as a file (skipping those a planted file or folder blocks)."""
    planted = {}
    for rel in rels:
        path = folder / rel
        if any((folder / p).is_file() for p in _parents(rel)) or path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{text}:{rel}")
        planted[rel] = f"{text}:{rel}"
    return planted


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(ours=paths, theirs=paths, prior_run=st.booleans(), resume=st.booleans(),
       overwrite=st.booleans())  # fmt: skip
def test_opdf_never_removes_a_path_it_did_not_create(tmp_path_factory, ours, theirs, prior_run,
                                                     resume, overwrite):  # fmt: skip
    folder = tmp_path_factory.mktemp("random") / "out"
    if prior_run:  # an opdf run wrote `ours` (listed in its marker) before the user's files
        prepare_output_dir(folder, resume=False, overwrite=False, cfg=cfg_for(folder))
        written = _plant(folder, [p for p in ours if owner.MARKER not in p], "opdf")
        owner.record(folder, *written)
    else:
        folder.mkdir()
    theirs_planted = _plant(folder, theirs, "user")
    if (folder / owner.MARKER).is_file() and not prior_run:
        theirs_planted.pop(owner.MARKER, None)  # checked below: it must be left as it was
        marker_text = (folder / owner.MARKER).read_text()
    else:
        marker_text = None
    with contextlib.suppress(OpdfError, yaml.YAMLError):  # refused: one line on the CLI
        prepare_output_dir(folder, resume=resume and not overwrite, overwrite=overwrite,
                           cfg=cfg_for(folder))  # fmt: skip
    for rel, text in theirs_planted.items():
        parent, _, name = rel.rpartition("/")
        if prior_run and parent in ("", "checkpoints") and owner.TEMPORARY.match(name):
            continue  # the one exception: a name of a write opdf's kill left, in its own folder
        assert (folder / rel).is_file(), f"{rel} (the user's) was removed"
        assert (folder / rel).read_text() == text, f"{rel} (the user's) was replaced"
    if marker_text is not None:
        assert (folder / owner.MARKER).read_text() == marker_text


def test_a_listed_folder_replaced_by_a_link_is_not_followed(tmp_path):
    """A user who replaces opdf's student/ with a link to their own folder keeps that folder's
    files: deleting goes through no link."""
    from opdf.run import owner

    run, mine = tmp_path / "run", tmp_path / "mine"
    owner.claim(run, "distill")
    (run / "student").mkdir()
    (run / "student" / "model.safetensors").write_text("opdf's")
    owner.record(run, "student")
    shutil.rmtree(run / "student")
    mine.mkdir()
    (mine / "model.safetensors").write_text("the user's")
    (run / "student").symlink_to(mine, target_is_directory=True)
    owner.remove_owned(run)
    assert (mine / "model.safetensors").read_text() == "the user's"


def _record_many(folder: str, tag: str, n: int) -> None:
    for i in range(n):
        name = f"{tag}-{i}.txt"
        (Path(folder) / name).write_text("x")
        owner.record(Path(folder), name)


def test_concurrent_records_keep_every_path(tmp_path):
    """A live run and `opdf merge` adding to one marker at once: neither loses the other's paths
    (the marker's read-modify-write holds a lock on the folder)."""
    owner.claim(tmp_path, "distill")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), t, 40)) for t in "abcd"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    listed = set(owner.read(tmp_path)["paths"])
    assert {f"{t}-{i}.txt" for t in "abcd" for i in range(40)} <= listed
