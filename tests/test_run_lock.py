"""One live run per output folder: a second one refuses; a lock left by a killed run does not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from opdf.errors import OpdfError
from opdf.run.lock import LOCK_FILE, RunLock, RunLockedError, holder

HOLD = """
import sys, time
from opdf.run.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def hold_in_subprocess(folder) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_lock_on_the_same_folder_refuses_even_in_one_process(tmp_path):
    folder = tmp_path / "run"
    with RunLock(folder) as first:
        assert first.held and (folder / LOCK_FILE).is_file()
        assert holder(folder)["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"in use by a live opdf run \\(pid {os.getpid()}"):
            RunLock(folder).acquire()
        assert issubclass(RunLockedError, OpdfError)
    assert not (folder / LOCK_FILE).exists() and holder(folder) is None
    with RunLock(folder):  # free again
        pass


def test_a_live_process_blocks_and_its_sigkill_frees_the_folder(tmp_path):
    folder = tmp_path / "run"
    proc = hold_in_subprocess(folder)
    try:
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}.*wait for it to end"):
            RunLock(folder).acquire()
        assert holder(folder)["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (folder / LOCK_FILE).is_file()  # the killed holder could not remove its file
    assert holder(folder) is None
    deadline = time.time() + 5
    with RunLock(folder) as lock:
        assert lock.held and holder(folder)["pid"] == os.getpid()
    assert time.time() < deadline
