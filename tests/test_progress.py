"""Progress bars: a live bar on a terminal, a line per 10% or per minute in a log."""

from __future__ import annotations

import io
import re

import pytest
from tqdm import tqdm as tqdm_std

from opdf import progress
from opdf.progress import LogProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_ten_percent_not_every_update():
    log = io.StringIO()
    bar = progress_bar(total=1000, desc="train", file=log, mininterval=0, miniters=1)
    assert isinstance(bar, LogProgress)
    for i in range(1000):
        bar.update(1)
        if i % 7 == 0:
            bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    # the start, each 10% (100, 200, ..., 1000); close adds nothing when 100% was just shown
    assert len(lines) == 11, lines
    assert lines[0].startswith("train:   0%") and "0/1000" in lines[0]
    assert [int(re.search(r"(\d+)/1000", ln).group(1)) for ln in lines[1:]] == [
        100 * k for k in range(1, 11)
    ]
    assert "loss=" in lines[-1]


def test_a_log_gets_a_line_per_minute_between_the_percent_steps(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress, "_now", lambda: clock[0])
    log = io.StringIO()
    bar = progress_bar(total=10_000, desc="slow", file=log, mininterval=0, miniters=1)
    for _ in range(30):  # 30 updates, 61 s apart: 0.3% of the total
        clock[0] += 61
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 31  # the start and one per minute; not one per update within a minute

    log = io.StringIO()
    bar = progress_bar(total=10_000, desc="fast", file=log, mininterval=0, miniters=1)
    for _ in range(30):
        clock[0] += 1
        bar.update(1)
    bar.close()
    assert len(log.getvalue().splitlines()) == 2  # the start and the final state


def test_unknown_total_and_an_unfinished_bar_still_end_with_their_state():
    log = io.StringIO()
    with progress_bar(desc="stream", file=log, mininterval=0) as bar:
        bar.update(5)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("stream: 5")


def test_a_terminal_gets_tqdms_live_bar_and_disabled_writes_nothing():
    tty = Terminal()
    bar = progress_bar(total=3, desc="live", file=tty, mininterval=0)
    assert not isinstance(bar, LogProgress) and isinstance(bar, tqdm_std)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert "\r" in tty.getvalue()  # redrawn in place

    log = io.StringIO()
    bar = progress_bar(range(4), enabled=False, file=log)
    assert list(bar) == [0, 1, 2, 3]
    bar.close()
    assert log.getvalue() == ""


@pytest.mark.parametrize("module", ["opdf.run.trainer", "opdf.distill.dbkd",
                                    "opdf.distill.tinyvit"])  # fmt: skip
def test_every_progress_bar_in_the_package_comes_from_the_one_home(module):
    import importlib
    import inspect

    source = inspect.getsource(importlib.import_module(module))
    assert "tqdm(" not in source and "progress_bar(" in source


def test_a_training_run_logs_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    from opdf.cli import main

    argv = ["distill", "configs/smoke-kd.yaml", f"output_dir={tmp_path / 'kd'}", "max_steps=4",
            "eval_every=2", "checkpoint_every=4"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err  # pytest's capture: not a terminal
    assert "\r" not in err
    steps = [ln for ln in err.splitlines() if re.search(r"\d+/4 \[", ln)]
    assert steps and "4/4" in steps[-1], err
