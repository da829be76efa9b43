"""keep_freed_memory: freed activations are reused instead of faulted in again (glibc)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys, torch
if {stack}:
    import opdf.run.runner  # as in `opdf distill`: the training stack is loaded when it is called
from opdf.run.allocator import keep_freed_memory
applied = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({settle}):  # settle: the heap grows until a freed block fits the next one
    x = torch.ones(25_000_000)  # 100 MB, like a batch's FFN activations
    del x
before = faults()
for _ in range(4):
    y = torch.ones(25_000_000)
    del y
print(json.dumps({"applied": applied, "faults": faults() - before}))
"""


def probe(env_value: str, *, stack: bool = True, settle: int = 4) -> dict:
    env = {**os.environ, "OPDF_KEEP_FREED_MEMORY": env_value}
    code = PROBE.replace("{stack}", str(stack)).replace("{settle}", str(settle))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    off, on = probe("0"), probe("1")
    assert off["applied"] is False and on["applied"] is True
    # glibc's default maps each 100 MB block afresh and faults it in again (98k 4 KiB pages over
    # four rounds, fewer where transparent huge pages are always on); kept, it is faulted in
    # none once settled (one late page-in at most is tolerated)
    assert off["faults"] > 0
    assert on["faults"] * 3 < off["faults"]


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_a_library_user_calling_it_after_a_bare_import_torch_gets_it_too():
    """Without the training stack the heap takes longer to settle (torch's 64-byte aligned
    100 MB requests do not fit the freed block until a few have coalesced: ~8 rounds here
    against ~3), then the blocks are reused as in a run; glibc's default never settles."""
    off, on = probe("0", stack=False, settle=12), probe("1", stack=False, settle=12)
    assert off["applied"] is False and on["applied"] is True
    assert off["faults"] > 0
    assert on["faults"] * 3 < off["faults"]
