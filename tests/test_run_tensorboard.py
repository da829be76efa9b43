"""``log_to: [jsonl, tensorboard]``: the event file, read back, holds metrics.jsonl's numbers
(loss terms, learning rate, L_Aux per module group, dev and test metrics); a resumed run's
events are purged after its checkpoint; a missing tensorboard package is one clear error."""

from __future__ import annotations

import json

import pytest

from opdf.run import load_config, run_distill
from opdf.run.tblog import scalars

pytest.importorskip("tensorboard")

COMMON = ["overparam=mpo", "align.weight=0.01", "max_steps=6", "eval_every=3",
          "checkpoint_every=3", "log_every=2"]  # fmt: skip


def read_events(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files under ``folder``, as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl_scalars(run) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for tag, value in scalars(record).items():
            out.setdefault(tag, []).append((record["step"], value))
    return out


def assert_same(events, expected):
    assert sorted(events) == sorted(expected)
    for tag, points in expected.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points], tag
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_event_file_matches_metrics_jsonl(tmp_path):
    out = tmp_path / "run"
    cfg = load_config("configs/smoke-kd.yaml", [*COMMON, f"output_dir={out}",
                                                "log_to=[jsonl, tensorboard]"])  # fmt: skip
    summary = run_distill(cfg, progress=False)
    events = read_events(out / "tb")
    expected = jsonl_scalars(out)
    assert_same(events, expected)
    # what the issue asks for, by name: every loss term and the sum, the learning rate, L_Aux
    # per module group (the 2-layer student: Q, K, V, O, FFN in and out), dev and test
    for tag in ("train/kd", "train/align", "train/loss", "train/lr", "dev/accuracy",
                "test/accuracy"):  # fmt: skip
        assert tag in events, tag
    groups = sorted(t.removeprefix("train/align/") for t in events if t.startswith("train/align/"))
    assert groups == ["attention-output", "ffn-in", "ffn-out", "key", "query", "value"]
    assert [s for s, _ in events["train/loss"]] == [2, 4, 6]
    assert events["test/accuracy"] == [(6, pytest.approx(summary["test"]["accuracy"]))]
    # every group holds the same number of pairs here, so L_Aux is their plain mean
    for i, (_, total) in enumerate(events["train/align"]):
        shares = [events[f"train/align/{g}"][i][1] for g in groups]
        assert sum(shares) / len(shares) == pytest.approx(total, rel=1e-5)
    assert events["train/lr"][0][1] == pytest.approx(cfg.lr * (1 - 2 / 6))  # linear decay
    # the config keeps the key, and a config without it keeps its hash
    assert "log_to" in (out / "config.yaml").read_text()
    plain = load_config("configs/smoke-kd.yaml", [*COMMON, f"output_dir={out}"])
    assert "log_to" not in plain.to_dict() and plain.hash() == cfg.hash()


def test_resumed_run_purges_the_killed_sessions_events(tmp_path):
    out = tmp_path / "run"
    overrides = [*COMMON, f"output_dir={out}", "log_to=[tensorboard, jsonl]", "log_every=1"]
    cfg = load_config("configs/smoke-kd.yaml", overrides)
    assert run_distill(cfg, progress=False, stop_after_step=3) is None
    # a killed session wrote on past its checkpoint (step 3): records and events of step 4
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "split": "train", "loss": 123.0}) + "\n")
    from opdf.run.tblog import TensorBoardLog

    stray = TensorBoardLog(out / "tb")
    stray.write({"step": 4, "split": "train", "loss": 123.0})
    stray.close()
    run_distill(cfg, resume=True, progress=False)
    events = read_events(out / "tb")
    assert_same(events, jsonl_scalars(out))
    assert [s for s, _ in events["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert 123.0 not in [v for _, v in events["train/loss"]]


def test_a_resume_at_the_last_step_holds_one_test_scalar(tmp_path, monkeypatch):
    """Killed after the final checkpoint and the test record, before the results were saved:
    the resumed session evaluates test again; TensorBoard holds it once, as metrics.jsonl does."""
    from opdf.run import trainer

    out = tmp_path / "run"
    overrides = [*COMMON, f"output_dir={out}", "log_to=[tensorboard, jsonl]"]
    cfg = load_config("configs/smoke-kd.yaml", overrides)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(trainer, "write_results", killed)
        with pytest.raises(KeyboardInterrupt):
            run_distill(cfg, progress=False)
    assert "test/accuracy" in read_events(out / "tb")  # the killed session's
    summary = run_distill(cfg, resume=True, progress=False)
    events = read_events(out / "tb")
    assert_same(events, jsonl_scalars(out))
    assert events["test/accuracy"] == [(6, pytest.approx(summary["test"]["accuracy"]))]
    assert [s for s, _ in events["train/loss"]] == [2, 4, 6]  # step 6's train record kept once


def test_tensorboard_only_writes_no_jsonl(tmp_path):
    out = tmp_path / "run"
    cfg = load_config("configs/smoke-kd.yaml", [*COMMON, f"output_dir={out}", "max_steps=2",
                                                "log_to=[tensorboard]"])  # fmt: skip
    run_distill(cfg, progress=False)
    assert not (out / "metrics.jsonl").exists()
    assert "train/loss" in read_events(out / "tb")


@pytest.mark.parametrize(
    ("value", "message"),
    [("[jsonl, tensorbord]", "did you mean 'tensorboard'"), ("[]", "at least one"),
     ("[jsonl, jsonl]", "at most once"), ("tensorboard", "is not a list")],
)  # fmt: skip
def test_log_to_errors(value, message):
    from opdf.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config("configs/smoke-kd.yaml", [f"log_to={value}"])


def test_missing_tensorboard_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    from opdf.cli import main

    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "tensorboard" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    argv = ["distill", "configs/smoke-kd.yaml", f"output_dir={tmp_path / 'r'}",
            "log_to=[jsonl,tensorboard]", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'opdf[tb]'" in err, err
    assert not (tmp_path / "r").exists()  # failed before anything was written


def make_suite(folder):
    """A finished two-variant, two-seed suite folder (summaries only)."""
    import yaml

    folder.mkdir(parents=True)
    (folder / "suite.yaml").write_text(yaml.safe_dump({
        "name": "tb", "config": "unused.yaml", "grid": {"seed": [1, 2]},
        "variants": {"base": {"overparam": "none"}, "mpo": {"overparam": "mpo"}},
    }))  # fmt: skip
    for variant in ("base", "mpo"):
        for seed in (1, 2):
            cell = folder / f"{variant}__seed={seed}"
            cell.mkdir()
            (cell / "summary.json").write_text(json.dumps({
                "method": "kd", "overparam": variant.replace("base", "none"), "seed": seed,
                "unit_modes": 3, "align": None, "main_metric": "accuracy", "steps": 6,
                "dev": {"accuracy": 0.5 + seed / 10}, "test": {"accuracy": 0.4 + seed / 10},
                "train_params": 10, "inference_params": 10, "seconds_per_step": 1.0,
            }))  # fmt: skip
            (cell / "config.yaml").write_text(f"seed: {seed}\n")
    return folder


def test_suite_report_points_at_the_cells_event_files(tmp_path, capsys):
    from opdf.cli import main
    from opdf.run.tblog import TensorBoardLog

    folder = make_suite(tmp_path / "s")
    assert main(["report", str(folder)]) == 0
    assert "tensorboard" not in capsys.readouterr().out  # no cell logged to TensorBoard
    for cell in ("base__seed=1", "mpo__seed=2"):
        log = TensorBoardLog(folder / cell / "tb")
        log.write({"step": 1, "split": "train", "loss": 0.5})
        log.close()
    assert main(["report", str(folder)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith(f"tensorboard --logdir {folder}") and "2 of 4 finished cells" in last
    assert main(["report", str(folder), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert "tensorboard" not in out and f"--logdir {folder}" in err
