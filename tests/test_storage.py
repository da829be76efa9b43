"""opdf.storage: the one home of atomic writes and the cache folder (the ground floor)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from opdf import storage


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "entry.bin"
    storage.atomic_write_bytes(path, lambda f: f.write(b"old"))
    assert path.read_bytes() == b"old"

    def half(f):
        f.write(b"new, half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        storage.atomic_write_bytes(path, half)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["entry.bin"]


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_a_written_file_has_the_permissions_open_would_give(tmp_path, monkeypatch, mask):
    """A model or summary another user (a serving process) must read is not left 0600, as the
    temporary file behind the atomic write was; a restrictive umask is still honoured, and a
    rewrite keeps the mode the file has (as open() does)."""
    monkeypatch.setattr(storage, "_UMASK", mask)  # read once at import: the process's umask
    old = os.umask(mask)
    try:
        storage.atomic_write_text(tmp_path / "summary.json", "{}")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open() gives under the same umask
    finally:
        os.umask(old)
    mode = (tmp_path / "summary.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~mask == plain.stat().st_mode & 0o777
    os.chmod(tmp_path / "summary.json", 0o600)  # the user's own choice survives a rewrite
    storage.atomic_write_text(tmp_path / "summary.json", '{"a": 1}')
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o600


def test_text_and_json_and_before_rename(tmp_path):
    seen = []
    path = tmp_path / "a.json"
    storage.atomic_write_json(path, {"b": 1, "a": [2]})
    assert json.loads(path.read_text()) == {"b": 1, "a": [2]}
    assert path.read_text().endswith("\n") and path.read_text().index(
        '"b"'
    ) < path.read_text().index('"a"')
    storage.atomic_write_bytes(
        path, lambda f: f.write(b"x"), lambda: seen.append(path.read_bytes())
    )
    assert seen == [json.dumps({"b": 1, "a": [2]}, indent=2).encode() + b"\n"]  # old, at the rename
    assert path.read_bytes() == b"x"


def test_a_ctrl_c_inside_a_write_waits_until_the_file_is_whole(tmp_path):
    path = tmp_path / "f"
    # as at a terminal: a suite started in the background (`nohup make test &`) inherits SIGINT
    # ignored, and then the write rightly ignores it too
    old = signal.signal(signal.SIGINT, signal.default_int_handler)

    def write(f):
        os.kill(os.getpid(), signal.SIGINT)  # arrives mid-write
        f.write(b"whole")

    try:
        with pytest.raises(KeyboardInterrupt):
            storage.atomic_write_bytes(path, write)
    finally:
        signal.signal(signal.SIGINT, old)
    assert path.read_bytes() == b"whole"


def test_cache_dir_follows_opdf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPDF_CACHE", str(tmp_path / "c"))
    assert storage.cache_dir() == tmp_path / "c"
    monkeypatch.setenv("OPDF_CACHE", "")
    assert storage.cache_dir() == storage.cache_dir().home() / ".cache" / "opdf"


def test_the_old_homes_name_the_same_functions():
    from opdf.models import cache as models_cache
    from opdf.run import checkpoint

    assert models_cache.cache_dir is storage.cache_dir
    assert models_cache.atomic_dir is storage.atomic_dir
    for name in (
        "atomic_write_bytes",
        "atomic_write_text",
        "atomic_write_json",
        "interrupts_deferred",
    ):
        assert getattr(checkpoint, name) is getattr(storage, name)


def test_storage_imports_nothing_heavy():
    code = (
        "import sys, opdf.storage; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
