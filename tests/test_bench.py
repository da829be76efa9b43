"""`opdf bench`: suite parsing, cell ids and order, on-disk status, and real runs of smoke cells
(skip-done, resume of an interrupted cell, a failed cell not stopping the others)."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from opdf.bench import launch
from opdf.bench import run as bench
from opdf.bench.launch import copy_suite_file
from opdf.bench.restore import restore_cells
from opdf.bench.suite import BLOCKED, DONE, NEW, RESUME, REUSED, format_value, load_suite
from opdf.cli import main
from opdf.commands import bench as bench_cli
from opdf.errors import ConfigError, OpdfError
from opdf.run.config import dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke-kd.yaml"


def write_suite(path: Path, **data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_suite_a_matches_the_running_study():
    """Ids, run order and overrides of benchmarks/suites/rt-polarity-kd.yaml are those of the
    cells the lead's background script writes (`opdf distill ... seed=S lr=LR ...`)."""
    suite = load_suite(ROOT / "benchmarks/suites/rt-polarity-kd.yaml")
    cells = suite.cells()
    assert len(cells) == 4 * 3 * 5
    assert [c.id for c in cells[:5]] == [
        "base__lr=5e-5__seed=1", "svd__lr=5e-5__seed=1", "mpo__lr=5e-5__seed=1",
        "opdf__lr=5e-5__seed=1", "base__lr=1e-4__seed=1",
    ]  # fmt: skip
    assert {c.value("seed") for c in cells[:12]} == {1}  # whole seeds first
    assert cells[-1].id == "opdf__lr=2e-4__seed=5"
    opdf = next(c for c in cells if c.id == "opdf__lr=5e-5__seed=3")
    lead = ["overparam=mpo", "unit_modes=3", "align.weight=100", "seed=3", "lr=5e-5",
            "data.max_train_samples=2000", "epochs=2", "eval_every=25", "checkpoint_every=25",
            "threads=1", "teacher.cache_outputs=true"]  # fmt: skip
    assert sorted(opdf.overrides) == sorted(lead)
    assert opdf.config == "configs/rt-polarity-kd-base.yaml" or Path(opdf.config).samefile(
        ROOT / "configs/rt-polarity-kd-base.yaml"
    )
    folder = "runs/suites/rt-polarity-kd/opdf__lr=5e-5__seed=3"
    assert str(opdf.folder(suite.default_out())) == folder


@pytest.mark.parametrize(
    "path", sorted((ROOT / "benchmarks/suites").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_committed_suite_resolves(path, tmp_path, capsys):
    """A committed suite is a claim others rerun: it parses, its cell ids are unique, and every
    cell's config loads with its overrides (a typo in a key or a value fails here, not hours
    into a background run), and ``opdf bench --dry-run`` plans it. Cells of configs that do
    not exist yet are the suite's blocked ones."""
    from opdf.cli import main

    assert main(["bench", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    assert "to run" in capsys.readouterr().out
    suite = load_suite(path)
    cells = suite.cells()
    assert cells, f"{path.name}: no cells"
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate cell ids"
    out = suite.default_out()
    for cell in cells:
        if not Path(cell.config).exists():
            continue
        cfg = bench.resolved_config(cell, cell.overrides, cell.folder(out))
        assert str(cfg.output_dir) == str(cell.folder(out))
        for key, value in cell.values:
            if key == "lr":
                assert cfg.lr == pytest.approx(float(value)), cell.id


def test_the_resume_checkpoint_is_the_runs_last_checkpoint():
    from opdf.bench.suite import LAST_CHECKPOINT
    from opdf.run import checkpoint as ckpt

    assert LAST_CHECKPOINT == ("checkpoints", ckpt.LAST)


@pytest.mark.parametrize(
    "value, text",
    [("5e-5", "5e-5"), (5e-5, "5e-05"), (0.0001, "0.0001"), (1, "1"), (1.0, "1.0"),
     (True, "true"), (None, "null"), ([0, 4], "0,4"), ("a/b", "a_b")],
)  # fmt: skip
def test_values_print_as_written(value, text):
    assert format_value(value) == text


def test_config_mapping_variant_config_and_blocked(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(SMOKE.read_text())
    s = write_suite(
        tmp_path / "s.yaml", name="m",
        config={"kd": str(SMOKE), "later": "missing.yaml"},
        variants={"base": {"overparam": "none"}, "opdf": {"align.weight": 1}},
        grid={"seed": [1, 2]},
    )  # fmt: skip
    cells = load_suite(s).cells()
    assert [c.id for c in cells[:4]] == ["kd-base__seed=1", "later-base__seed=1",
                                         "kd-opdf__seed=1", "later-opdf__seed=1"]  # fmt: skip
    assert bench.cell_status(cells[1], tmp_path / "out") == BLOCKED
    assert bench.cell_status(cells[0], tmp_path / "out") == NEW
    v = write_suite(
        tmp_path / "v.yaml", name="v", config=str(SMOKE),
        variants={"a": {}, "b": {"config": "other.yaml", "lr": 0.01}}, grid={"seed": [1]},
    )  # fmt: skip
    a, b = load_suite(v).cells()
    assert Path(a.config).samefile(SMOKE) and Path(b.config).samefile(other)
    assert b.overrides == ("lr=0.01", "seed=1")


def test_a_mapping_variant_value_reaches_the_run_as_written(tmp_path):
    """A variant may set a mapping (rt-polarity-align-target's ``align.layer_map``): the cell's
    override parses back to the same dict, integer keys included, and only the set variant has
    it."""
    s = write_suite(
        tmp_path / "s.yaml", name="maps", config=str(SMOKE),
        variants={"default": {"align.weight": 1},
                  "reversed": {"align.weight": 1, "align.layer_map": {0: 1, 1: 0}}},
        grid={"seed": [1]},
    )  # fmt: skip
    default, reversed_ = load_suite(s).cells()
    assert "align.layer_map={0: 1, 1: 0}" in reversed_.overrides
    assert _config_of(reversed_, tmp_path / "out").align.layer_map == {0: 1, 1: 0}
    assert _config_of(default, tmp_path / "out").align.layer_map is None


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"name": "x", "config": "c.yaml", "grids": {}},
            "unknown suite key 'grids' \\(did you mean 'grid'\\?\\)",
        ),
        ({"name": "x", "config": "c.yaml", "set": {"lr": 1}, "grid": {"lr": [1]}}, "both in set"),
        ({"name": "x", "config": "c.yaml", "grid": {"seed": [1]}, "tune": ["lr"]}, "not a grid"),
        ({"name": "x", "config": "c.yaml", "variants": {"a": {}}, "baseline": "b"}, "not a var"),
        ({"name": "x", "config": "c.yaml", "grid": {"lr": ["a/b", "a_b"]}}, "two cells get"),
        ({"name": "x", "config": "c.yaml", "grid": {"lr": []}}, "non-empty list"),
        ({"name": "x__y", "config": "c.yaml"}, "not a valid name"),
        ({"config": "c.yaml"}, "missing the suite key 'name'"),
        ({"name": "x", "config": "c.yaml", "grid": {"lr": [1]}, "exclude": ["lr=2"]}, "matches no"),
        ({"name": "x", "config": "c.yaml", "grid": {"lr": [1]}, "exclude": ["*"]}, "leaves no"),
        ({"name": "x", "config": "c.yaml", "grid": {"lr": [1]}, "exclude": {"a": 1}}, "patterns"),
    ],
)
def test_bad_suites_fail_with_a_clear_message(tmp_path, data, message):
    path = write_suite(tmp_path / "s.yaml", **data)
    with pytest.raises(ConfigError, match=message):
        load_suite(path).cells()


def test_a_suite_that_is_not_yaml_is_one_line_with_its_place(tmp_path):
    """PyYAML's own text (a snippet with a caret over several lines) was pasted in whole."""
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nconfig: c.yaml\n  variants:\n")
    with pytest.raises(ConfigError) as e:
        load_suite(path)
    assert str(e.value) == f"{path}, line 3, column 11: not valid YAML (mapping values are not "\
                           "allowed here)"  # fmt: skip


def _tiny_suite(tmp_path: Path, **extra) -> Path:
    return write_suite(
        tmp_path / "tiny.yaml", name="tiny", config=str(SMOKE),
        set={"max_steps": 8, "eval_every": 4, "checkpoint_every": 4, "threads": 1},
        variants={"base": {"overparam": "none", "align.weight": 0},
                  "opdf": {"overparam": "mpo", "unit_modes": 2, "align.weight": 100}},
        grid={"lr": ["1e-3"], "seed": [1]}, **extra,
    )  # fmt: skip


def _config_of(cell, out: Path):
    return load_config(cell.config, [*cell.overrides, f"output_dir={cell.folder(out)}"])


def test_stale_and_reused_cells(tmp_path):
    suite = load_suite(_tiny_suite(tmp_path, reuse=["earlier"]))
    base, opdf = suite.cells()
    out = tmp_path / "runs" / "tiny"
    # base: finished here, but with another learning rate than the suite now says
    cfg = load_config(base.config, [*base.overrides, "lr=0.5", f"output_dir={base.folder(out)}"])
    base.folder(out).mkdir(parents=True)
    (base.folder(out) / "config.yaml").write_text(dump_config(cfg))
    (base.folder(out) / "summary.json").write_text("{}")
    # opdf: finished, identically configured, in the sibling suite 'earlier'
    other = tmp_path / "runs" / "earlier" / opdf.id
    other.mkdir(parents=True)
    (other / "config.yaml").write_text(dump_config(_config_of(opdf, tmp_path / "runs/earlier")))
    (other / "summary.json").write_text('{"main_metric": "accuracy", "test": {"accuracy": 0.5}}')
    planned = bench.plan(suite, suite.cells(), out, threads=None)
    assert [(p.status, p.stale_keys) for p in planned] == [("stale", ["lr"]), (REUSED, [])]
    assert planned[1].test == 0.5
    bench.link_reused(planned, out)
    assert opdf.folder(out).is_symlink() and (opdf.folder(out) / "summary.json").is_file()
    # a differently configured cell in the reused suite is not reused
    changed = load_config(opdf.config, [*opdf.overrides, "lr=0.5"])
    (other / "config.yaml").write_text(dump_config(changed))
    opdf.folder(out).unlink()
    assert bench.plan(suite, [opdf], out, threads=None)[0].status == NEW


def _finishes(p) -> list[str]:
    """A cell command that finishes at once: it writes the cell's (empty) summary.json."""
    ok = "import pathlib, sys; p = pathlib.Path(sys.argv[1]); p.mkdir(parents=True); " \
         "(p / 'summary.json').write_text('{}')"  # fmt: skip
    return [sys.executable, "-c", ok, str(p.folder)]


def test_a_failed_cell_is_reported_and_the_others_go_on(tmp_path):
    suite = load_suite(_tiny_suite(tmp_path))
    out = tmp_path / "out"
    planned = bench.plan(suite, suite.cells(), out, threads=None, validate=False)
    lines: list[str] = []

    def command(p):
        if p.cell.variant == "base":
            return [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"]
        return _finishes(p)

    results = bench.run_cells(planned, out, jobs=2, total=2, done_before=0, say=lines.append,
                              command=command)  # fmt: skip
    assert results == {"base__lr=1e-3__seed=1": 3, "opdf__lr=1e-3__seed=1": 0}
    assert any("FAILED base__lr=1e-3__seed=1 (exit 3" in x and "boom" in x for x in lines)
    assert (out / "opdf__lr=1e-3__seed=1" / "summary.json").is_file()


def test_time_left_is_the_mean_cost_of_each_label_over_the_jobs():
    took = {"base": [100.0, 120.0], "opdf": [300.0]}
    assert bench.time_left({}, ["base"], [], jobs=2) is None  # nothing finished: no guess
    # 2 base (110 each) + 1 opdf (300) + the 80 s left of a running opdf, over 2 jobs
    assert bench.time_left(took, ["base", "base", "opdf"], [("opdf", 220.0)], 2) == 300.0
    assert bench.time_left(took, ["svd"], [], 4) == (100 + 120 + 300) / 3  # unseen: mean of all
    assert bench.time_left(took, [], [("base", 500.0)], 2) is None  # overdue: no negative time
    # never less than the longest cell left: a 300 s opdf cell behind two short ones on 4 jobs
    assert bench.time_left(took, ["base", "base", "opdf"], [], 4) == 300.0
    assert [bench.format_duration(x) for x in (40, 720, 12240)] == ["~40 s", "~12 min", "~3.4 h"]


def test_done_lines_say_how_long_the_rest_should_take(tmp_path):
    suite = load_suite(_tiny_suite(tmp_path))
    out = tmp_path / "out"
    planned = bench.plan(suite, suite.cells(), out, threads=None, validate=False)
    lines: list[str] = []

    bench.run_cells(planned, out, jobs=1, total=2, done_before=0, say=lines.append,
                    command=_finishes)  # fmt: skip
    done = [x for x in lines if "] done " in x]
    assert len(done) == 2
    assert re.search(r"\(\d+ s; ~\d+ s left\)$", done[0]), done[0]
    assert done[1].endswith(" s)")  # the last cell: nothing left to estimate


def test_dry_run_lists_cells_and_writes_nothing(tmp_path, capsys):
    path = _tiny_suite(tmp_path)
    out = tmp_path / "out"
    done = out / "base__lr=1e-3__seed=1"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(
        json.dumps(
            {"main_metric": "accuracy", "dev": {"accuracy": 0.75}, "test": {"accuracy": 0.5}}
        )
    )
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["bench", str(path), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "base__lr=1e-3__seed=1  done" in text and "75.00  50.00" in text
    assert "opdf__lr=1e-3__seed=1  new" in text
    assert "done 1, reused 0, to resume 0, to run 1" in text
    assert "next: python -m opdf distill" in text and "--overwrite" in text
    assert sorted(p.name for p in out.rglob("*")) == before
    assert main(["bench", str(path), "--out", str(out), "--dry-run", "--only", "nope*"]) == 2


def test_a_suite_run_at_another_jobs_warns_that_thread_counts_would_mix(
    tmp_path, capsys, monkeypatch
):
    """A suite that does not set ``threads`` gives each cell cores // jobs: a finished cell
    that ran with 2 threads and new cells planned with 1 (--jobs 2 on 2 cores) are named in
    one warning; the same --jobs as before says nothing."""
    path = _tiny_suite(tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["set"]["threads"]
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    done = out / "base__lr=1e-3__seed=1"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"test": {"accuracy": 0.5}, "threads": 2}))
    monkeypatch.setattr(bench, "cores", lambda: 2)

    assert main(["bench", str(path), "--out", str(out), "--dry-run", "--jobs", "1"]) == 0
    assert "warning" not in capsys.readouterr().out
    assert main(["bench", str(path), "--out", str(out), "--dry-run", "--jobs", "2"]) == 0
    text = capsys.readouterr().out
    assert "finished cells ran with 2 thread(s), the cells to start will run with 1" in text
    assert "set `threads: 2` in the suite" in text


def test_excluded_cells_are_not_part_of_the_suite(tmp_path, capsys):
    """A sparse grid: the cells ``exclude`` names are neither listed, run, nor counted, and the
    rest keep their ids and run order."""
    path = _tiny_suite(tmp_path, exclude=["opdf__*seed=2"])
    data = yaml.safe_load(path.read_text())
    data["grid"]["seed"] = [1, 2]
    path.write_text(yaml.safe_dump(data))
    suite = load_suite(path)
    assert [c.id for c in suite.cells()] == [
        "base__lr=1e-3__seed=1", "opdf__lr=1e-3__seed=1", "base__lr=1e-3__seed=2",
    ]  # fmt: skip
    assert [c.order for c in suite.cells()] == [0, 1, 2]
    assert len(suite.grid_cells()) == 4
    out = tmp_path / "out"
    assert main(["bench", str(path), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "3 cells" in text and "opdf__lr=1e-3__seed=2" not in text


def _age(folder: Path, seconds: float) -> None:
    import os
    import time

    t = time.time() - seconds
    for p in [folder, *folder.rglob("*")]:
        os.utime(p, (t, t))


def test_a_cell_something_else_is_writing_is_not_started(tmp_path, capsys):
    path = _tiny_suite(tmp_path)
    out = tmp_path / "out"
    base = load_suite(path).cells()[0]
    base.folder(out).mkdir(parents=True)
    (base.folder(out) / "config.yaml").write_text("method: kd\n")  # just written by someone
    assert main(["bench", str(path), "--out", str(out)]) == 2
    assert "modified in the last 5 minutes" in capsys.readouterr().err
    assert not (out / "suite.yaml").exists()


def test_a_cell_a_live_run_holds_is_left_alone(tmp_path, capsys):
    from opdf.run.lock import RunLock

    path = _tiny_suite(tmp_path)
    suite = load_suite(path)
    out = tmp_path / "out"
    base = suite.cells()[0]
    with RunLock(base.folder(out)):
        planned = bench.plan(suite, suite.cells(), out, threads=None)
        assert [p.status for p in planned] == [bench.RUNNING, NEW]
        assert planned[0].holder["pid"] > 0
        assert main(["bench", str(path), "--out", str(out), "--dry-run"]) == 0
        text = capsys.readouterr().out
        assert "running elsewhere 1" in text and "a live run holds it" in text
    assert bench.plan(suite, [base], out, threads=None)[0].status == NEW


def test_bench_resumes_an_interrupted_cell_runs_the_rest_and_then_nothing(tmp_path, capsys):
    """Real smoke cells, each its own `opdf distill` process."""
    from opdf.run.runner import run_distill

    path = _tiny_suite(tmp_path)
    suite = load_suite(path)
    out = tmp_path / "out"
    base, opdf = suite.cells()
    # base: interrupted after its first checkpoint (step 4 of 8), as a killed run leaves it
    assert run_distill(_config_of(base, out), progress=False, stop_after_step=4) is None
    assert bench.cell_status(base, out) == RESUME
    _age(base.folder(out), 900)  # interrupted minutes ago (a fresh one: see the next test)
    results = tmp_path / "results"
    assert (
        main(["bench", str(path), "--out", str(out), "--jobs", "2", "--export", str(results)]) == 0
    )
    text = capsys.readouterr().out
    assert "resume base__lr=1e-3__seed=1" in text and "start opdf__lr=1e-3__seed=1" in text
    # --export: after each finished cell (the last one holds both)
    exports = [x for x in text.splitlines() if x.startswith("exported ")]
    assert len(exports) == 2 and exports[-1].startswith("exported 2 finished cells")
    assert (results / "tiny" / opdf.id / "summary.json").is_file()
    assert "Paired differences vs base" in (results / "tiny" / "report.md").read_text()
    assert "2/2 cells done" in text
    summaries = {c.id: json.loads((c.folder(out) / "summary.json").read_text())
                 for c in (base, opdf)}  # fmt: skip
    assert summaries[base.id]["resumed_from_step"] == 4
    assert summaries[opdf.id]["resumed_from_step"] is None
    assert summaries[opdf.id]["align"]["weight"] == 100 and summaries[opdf.id]["steps"] == 8
    assert summaries[opdf.id]["peak_rss_mb"] > 50 and summaries[opdf.id]["peak_gpu_mb"] is None
    assert "--resume" in base.log(out).read_text()
    assert (out / "suite.yaml").is_file()
    # rerun: everything is done, nothing starts, nothing is rewritten
    stamp = (opdf.folder(out) / "summary.json").stat().st_mtime_ns
    assert main(["bench", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "done 2, reused 0, to resume 0, to run 0" in text and "start" not in text
    assert (opdf.folder(out) / "summary.json").stat().st_mtime_ns == stamp
    assert all(bench.cell_status(c, out) == DONE for c in (base, opdf))
    # and the report reads the suite folder
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "## Paired differences vs base" in text and "opdf" in text


def test_gpu_suite_runs_tiny_on_cpu(tmp_path, capsys):
    """(e): every cell of the GPU suite validates with --tiny; two of them run."""
    path = ROOT / "benchmarks/suites/gpu-mpnet.yaml"
    out = tmp_path / "gpu-tiny"
    assert main(["bench", str(path), "--tiny", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "8 cells" in text and "to run 8, blocked 0" in text
    only = ["--only", "rt-polarity-opdf__*", "imdb-base__*"]
    assert main(["bench", str(path), "--tiny", "--out", str(out), *only]) == 0
    assert "2/2 cells done" in capsys.readouterr().out
    s = json.loads((out / "rt-polarity-opdf__seed=1" / "summary.json").read_text())
    assert s["align_pairs"] > 0 and s["unit_modes"] == 3 and s["device"] == "cpu"


def test_stopping_the_suite_stops_its_cells_and_remembers_them(tmp_path):
    """Ctrl-C (or SIGTERM, turned into the same stop) while cells run: every running cell gets
    SIGINT and is waited for, the state file names them so that a rerun resumes them at once."""
    import os
    import time

    suite = load_suite(_tiny_suite(tmp_path))
    out = tmp_path / "out"
    planned = bench.plan(suite, suite.cells(), out, threads=None, validate=False)
    pids = tmp_path / "pids"
    pids.mkdir()
    started: list[str] = []

    def command(p):
        touch = f"pathlib.Path({str(pids)!r}, str(os.getpid())).touch()"
        code = f"import os, pathlib, sys, time; {touch}; time.sleep(60)"
        return [sys.executable, "-c", code]

    def say(line):
        started.append(line)
        if len(started) == 2:  # both cells started: the user presses Ctrl-C
            deadline = time.time() + 30
            while len(list(pids.iterdir())) < 2 and time.time() < deadline:
                time.sleep(0.05)
            raise KeyboardInterrupt

    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        bench.run_cells(planned, out, jobs=2, total=2, done_before=0, say=say, command=command)
    assert time.time() - t0 < 40
    for pid in (int(p.name) for p in pids.iterdir()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert bench.read_state(out)["running"] == sorted(c.id for c in suite.cells())


def _writes_summary_and_checkpoint(p):
    """A cell run as opdf writes one (its ownership marker first), plus a file of the user's."""
    listed = ["checkpoints", "checkpoints/last.pt", "summary.json", "student",
              "student/model.safetensors"]  # fmt: skip
    marker = json.dumps({"format": 1, "kind": "distill", "id": "x", "paths": listed})
    code = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
            "(p / 'checkpoints').mkdir(parents=True); "
            f"(p / '.opdf-owner.json').write_text({marker!r}); "
            "(p / 'checkpoints' / 'last.pt').write_text('x'); "
            "(p / 'student').mkdir(); (p / 'student' / 'model.safetensors').write_text('w'); "
            "(p / 'summary.json').write_text('{}'); "
            "(p / 'checkpoints' / 'mine.txt').write_text('the user wrote this')")  # fmt: skip
    return [sys.executable, "-c", code, str(p.folder)]


@pytest.mark.parametrize("keep", [False, True])
def test_a_finished_cell_drops_its_checkpoints_unless_kept(tmp_path, keep):
    suite = load_suite(_tiny_suite(tmp_path))
    out = tmp_path / "out"
    planned = bench.plan(suite, suite.cells(), out, threads=None, validate=False)
    results = bench.run_cells(planned, out, jobs=2, total=2, done_before=0, say=lambda _: None,
                              command=_writes_summary_and_checkpoint, keep_checkpoints=keep,
                              keep_students=keep)  # fmt: skip
    assert set(results.values()) == {0}
    for p in planned:
        assert (p.folder / "summary.json").is_file()  # still done: a report needs no weights
        assert (p.folder / "checkpoints" / "last.pt").is_file() == keep
        assert (p.folder / "student").is_dir() == keep
        assert (p.folder / "checkpoints" / "mine.txt").read_text() == "the user wrote this"


@pytest.mark.parametrize("key, default", [("keep_checkpoints", False), ("keep_students", True)])
def test_keep_keys_are_suite_keys(tmp_path, key, default):
    path = _tiny_suite(tmp_path)
    assert getattr(load_suite(path), key) is default
    path.write_text(path.read_text() + f"{key}: {str(not default).lower()}\n")
    assert getattr(load_suite(path), key) is (not default)
    path.write_text(path.read_text().replace(f"{key}: {str(not default).lower()}", f"{key}: 2"))
    with pytest.raises(ConfigError, match=f"{key}: expected true or false, got 2"):
        load_suite(path)


@pytest.mark.parametrize("word", ["lr='2.5e-5'", "plain", "a b", "it's $HOME", 'say "hi"', ""])
def test_the_next_command_quotes_words_as_a_person_would_and_the_shell_reads_them_back(word):
    quoted = launch.shell_word(word)
    assert shlex.split(quoted) == [word]
    if word == "lr='2.5e-5'":
        assert quoted == "\"lr='2.5e-5'\""


def test_a_resumed_cells_seconds_count_as_its_whole_run():
    assert bench.whole_run_seconds(100.0, {"steps": 600, "resumed_from_step": 300}) == 200.0
    assert bench.whole_run_seconds(100.0, {"steps": 600, "resumed_from_step": 590}) == 400.0
    assert bench.whole_run_seconds(100.0, {"steps": 600, "resumed_from_step": None}) == 100.0
    assert bench.whole_run_seconds(100.0, {}) == 100.0  # an older summary: as measured


def test_the_disk_warning_says_when_the_students_left_will_not_fit():
    mb70 = 70_000_000
    assert bench.disk_warning(mb70, 100, 50e9) is None  # 7 GB of 50 free
    line = bench.disk_warning(mb70, 100, 8e9)  # 7 GB of 8 free: too close
    assert line and "70 MB" in line and "~7.0 GB" in line and "8.0 GB is free" in line
    assert "keep_students: false" in line
    assert bench.disk_warning(mb70, 0, 1e6) is None  # nothing left to run


@pytest.mark.parametrize("keep", [False, True])
def test_a_suite_that_keeps_students_warns_once_before_the_disk_fills(tmp_path, monkeypatch,
                                                                       keep):  # fmt: skip
    suite = load_suite(_tiny_suite(tmp_path))
    out = tmp_path / "out"
    planned = bench.plan(suite, suite.cells(), out, threads=None, validate=False)
    monkeypatch.setattr(bench.shutil, "disk_usage", lambda _: SimpleNamespace(free=1))
    lines: list[str] = []
    bench.run_cells(planned, out, jobs=1, total=2, done_before=0, say=lines.append,
                    command=_writes_summary_and_checkpoint, keep_students=keep)  # fmt: skip
    warned = [x for x in lines if "keeps its merged student/" in x]
    # the first finished cell's 1-byte student, one cell left, 1 byte free: warned, once
    assert len(warned) == (0 if not keep else 1), lines


def test_a_full_disk_starts_no_new_cell(tmp_path):
    suite = load_suite(_tiny_suite(tmp_path))
    out = tmp_path / "out"
    planned = bench.plan(suite, suite.cells(), out, threads=None, validate=False)
    lines: list[str] = []
    full = ("import sys; print('opdf distill: error: could not write the checkpoint last.pt: "
            "No space left on device; ...', file=sys.stderr); sys.exit(2)")  # fmt: skip

    def command(p):
        return [sys.executable, "-c", full]

    results = bench.run_cells(planned, out, jobs=1, total=2, done_before=0, say=lines.append,
                              command=command)  # fmt: skip
    assert list(results) == [planned[0].cell.id]  # the second cell never started
    assert any("the disk is full: 1 cell(s) not started" in x for x in lines)
    assert not planned[1].folder.exists()


@pytest.mark.parametrize(
    "path", sorted((ROOT / "benchmarks/suites").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_committed_suite_has_a_tiny_check_that_plans(path, tmp_path, capsys):
    """The README's `opdf bench <suite> --tiny` works for every committed suite (on main
    rt-polarity-kd's exited 2: no `tiny:` section)."""
    assert load_suite(path).tiny, f"{path.name} has no tiny: section"
    code = main(["bench", str(path), "--tiny", "--dry-run", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "next: python -m opdf distill" in out, out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_the_suites_guide_lists_every_committed_suite():
    guide = (ROOT / "docs" / "guides" / "suites.md").read_text()  # the README's list moved here
    for path in (ROOT / "benchmarks/suites").glob("*.yaml"):
        assert f"| `{path.stem}` |" in guide, path.stem


def test_a_users_suite_yaml_in_the_results_folder_is_never_replaced(tmp_path):
    suite_file = tmp_path / "mine.yaml"
    suite_file.write_text("name: mine\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "suite.yaml").write_text("my notes\n")
    with pytest.raises(OpdfError, match="not a copy opdf bench wrote"):
        copy_suite_file(suite_file, out, tiny=False)
    assert (out / "suite.yaml").read_text() == "my notes\n"
    (out / "suite.yaml").unlink()
    copy_suite_file(suite_file, out, tiny=True)  # its own copies (tiny or not) are refreshed
    copy_suite_file(suite_file, out, tiny=False)
    assert (out / "suite.yaml").read_text().endswith("name: mine\n")


def _export_finished(cell, export: Path, accuracy: float) -> None:
    """``cell`` as `opdf report --export` leaves it: its small files and its log."""
    folder = cell.folder(export)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(_config_of(cell, export)))
    (folder / "metrics.jsonl").write_text('{"step": 8}\n')
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "main_metric": "accuracy",
                "dev": {"accuracy": accuracy},
                "test": {"accuracy": accuracy},
                "threads": 1,
            }
        )  # fmt: skip
    )
    cell.log(export).write_text(f"log of {cell.id}\n")


def test_restore_resumes_a_suite_on_a_fresh_machine_from_its_export(tmp_path, capsys):
    path = _tiny_suite(tmp_path)
    suite = load_suite(path)
    base, opdf = suite.cells()
    export = tmp_path / "results" / "tiny"  # `--export results` writes results/tiny
    for cell, acc in ((base, 0.7), (opdf, 0.8)):
        _export_finished(cell, export, acc)
    out = tmp_path / "fresh"
    restore = ["--out", str(out), "--restore", str(tmp_path / "results")]
    assert main(["bench", str(path), *restore, "--dry-run"]) == 0
    assert f"would restore 2 finished cells from {export}" in capsys.readouterr().out
    assert not out.exists()  # a dry run writes nothing
    assert main(["bench", str(path), *restore]) == 0
    text = capsys.readouterr().out
    assert f"restored 2 finished cells from {export}" in text
    assert "done 2, reused 0, to resume 0, to run 0" in text and "start" not in text
    assert json.loads((opdf.folder(out) / "summary.json").read_text())["test"]["accuracy"] == 0.8
    assert (opdf.folder(out) / "metrics.jsonl").is_file() and "log of" in opdf.log(out).read_text()
    # again: nothing is copied over what is already here
    assert main(["bench", str(path), "--out", str(out), "--restore", str(export)]) == 0
    assert "restored 0 finished cells" in capsys.readouterr().out
    assert "2 already finished here" in restore_cells(suite.cells(), export, out).line(export)


def test_restore_leaves_a_started_run_alone_and_counts_what_the_export_lacks(tmp_path):
    suite = load_suite(_tiny_suite(tmp_path))
    base, opdf = suite.cells()
    export, out = tmp_path / "export", tmp_path / "out"
    _export_finished(base, export, 0.7)
    _export_finished(opdf, export, 0.8)
    (opdf.folder(export) / "summary.json").unlink()  # an export without it is not finished
    started = base.folder(out) / "checkpoints"
    started.mkdir(parents=True)
    (started / "last.pt").write_bytes(b"work the export lacks")
    done = restore_cells(suite.cells(), export, out)
    assert (done.copied, done.busy, done.missing) == ([], [base.id], 1)
    assert not (base.folder(out) / "summary.json").exists()
    assert f"1 left to the run started here ({base.id})" in done.line(export)
    assert "1 not in the export" in done.line(export)
    with pytest.raises(OpdfError, match="not a folder"):
        restore_cells(suite.cells(), tmp_path / "nowhere", out)
    with pytest.raises(OpdfError, match="the results folder itself"):
        restore_cells(suite.cells(), out, out)


def test_a_restored_cell_with_another_config_is_stale(tmp_path):
    suite = load_suite(_tiny_suite(tmp_path))
    base, _ = suite.cells()
    export, out = tmp_path / "export", tmp_path / "out"
    _export_finished(base, export, 0.7)
    cfg = load_config(base.config, [*base.overrides, "lr=0.5"])
    (base.folder(export) / "config.yaml").write_text(dump_config(cfg))
    restore_cells([base], export, out)
    assert [(p.status, p.stale_keys) for p in bench.plan(suite, [base], out, threads=None)] == [
        ("stale", ["lr"])
    ]


def test_export_writes_the_suites_finished_cells_after_each_one_and_when_none_ran(tmp_path, capsys):
    """`--export`: after every finished cell (run_cells' on_done), and once when every cell was
    already done (here: restored), so that the export always holds what has finished."""
    path = _tiny_suite(tmp_path)
    suite = load_suite(path)
    base, opdf = suite.cells()
    out, results = tmp_path / "out", tmp_path / "results"
    planned = bench.plan(suite, suite.cells(), out, threads=None, validate=False)
    seen: list[str] = []
    bench.run_cells(planned, out, jobs=2, total=2, done_before=0, say=lambda _: None,
                    command=_finishes, on_done=lambda p: seen.append(p.cell.id))  # fmt: skip
    assert sorted(seen) == [base.id, opdf.id]
    _export_finished(base, tmp_path / "old" / "tiny", 0.7)
    _export_finished(opdf, tmp_path / "old" / "tiny", 0.8)
    args = ["bench", str(path), "--out", str(tmp_path / "fresh"), "--export", str(results)]
    assert main([*args, "--restore", str(tmp_path / "old")]) == 0
    text = capsys.readouterr().out
    assert f"exported 2 finished cells to {results / 'tiny'}" in text
    assert (results / "tiny" / "report.md").is_file()
    exported = json.loads((results / "tiny" / opdf.id / "summary.json").read_text())
    assert exported["test"]["accuracy"] == 0.8


def test_a_failing_after_cell_step_is_said_and_the_suite_goes_on(tmp_path):
    suite = load_suite(_tiny_suite(tmp_path))
    out = tmp_path / "out"
    planned = bench.plan(suite, suite.cells(), out, threads=None, validate=False)
    lines: list[str] = []

    def broken(p):
        raise RuntimeError("plots fell over")

    results = bench.run_cells(planned, out, jobs=1, total=2, done_before=0, say=lines.append,
                              command=_finishes, on_done=broken)  # fmt: skip
    assert results == {c.cell.id: 0 for c in planned}  # both cells ran
    assert sum("RuntimeError: plots fell over; the suite goes on" in x for x in lines) == 2


def test_restore_finishes_a_restore_cut_short_and_skips_linked_cells(tmp_path):
    suite = load_suite(_tiny_suite(tmp_path))
    base, opdf = suite.cells()
    export, out = tmp_path / "export", tmp_path / "out"
    _export_finished(base, export, 0.7)
    _export_finished(opdf, export, 0.8)
    base.folder(out).mkdir(parents=True)  # a restore cut short: config and metrics only
    (base.folder(out) / "config.yaml").write_text("partial")
    base.log(out).write_text("a failed attempt's log\n")
    elsewhere = tmp_path / "other-suite" / opdf.id  # a reused suite's cell, linked in
    elsewhere.mkdir(parents=True)
    opdf.folder(out).symlink_to(elsewhere)
    done = restore_cells(suite.cells(), export, out)
    assert (done.copied, done.present) == ([base.id], [opdf.id])
    assert (base.folder(out) / "config.yaml").read_text() != "partial"
    assert base.log(out).read_text() == f"log of {base.id}\n"  # the result's own log
    assert not any(elsewhere.iterdir())  # nothing written through the link


def test_tiny_neither_restores_nor_exports_and_an_export_is_not_the_results_folder(tmp_path):
    path = _tiny_suite(tmp_path)
    for flag in ("--restore", "--export"):
        with pytest.raises(OpdfError, match="--tiny .* neither restores nor exports"):
            bench_cli.run(_bench_args(path, tiny=True, **{flag[2:]: str(tmp_path)}))
    out = tmp_path / "runs" / "tiny"
    with pytest.raises(OpdfError, match="that is the results folder itself"):
        bench_cli.run(_bench_args(path, out=str(out), export=str(tmp_path / "runs")))


def test_a_restore_waits_for_no_bench_running_the_suite(tmp_path):
    path = _tiny_suite(tmp_path)
    suite = load_suite(path)
    export, out = tmp_path / "export", tmp_path / "out"
    for cell in suite.cells():
        _export_finished(cell, export / "tiny", 0.7)
    with bench.suite_lock(out), pytest.raises(OpdfError, match="another opdf bench is running"):
        bench_cli.run(_bench_args(path, out=str(out), restore=str(export)))
    assert not any(c.folder(out).exists() for c in suite.cells())  # nothing copied


def _bench_args(path: Path, **given) -> SimpleNamespace:
    args = {"suite": str(path), "jobs": 1, "dry_run": False, "out": None, "tiny": False,
            "only": None, "restore": None, "export": None, "rerun_stale": False,
            "force": False}  # fmt: skip
    return SimpleNamespace(**{**args, **given})
