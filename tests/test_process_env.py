"""The process defaults reach torch: set before its import in the CLI, carried to Ray workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.ray_fleet import worker_env
from peftops.pipeline.env import DEFAULTS

PAGE = 4096
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# With torch's huge-page allocation (THP_MEM_ALLOC_ENABLE) a buffer of 2 MB or more starts on a
# page and is madvised for transparent huge pages; without it torch aligns to 64 bytes (glibc's
# chunk header puts a large buffer 64 bytes into its page). The probe prints each of ten 8 MB
# buffers' offset into its page, and the huge pages a touched 64 MB buffer got.
PROBE = (
    "import json, re, peftops.cli.main, torch; "
    "ts = [torch.empty(2 << 20) for _ in range(10)]; t = torch.ones(16 << 20); "
    "huge = int(re.search(r'AnonHugePages:\\s+(\\d+)', open('/proc/self/smaps_rollup').read()).group(1)); "
    f"print(json.dumps({{'offsets': [t.data_ptr() % {PAGE} for t in ts], 'huge_kb': huge}}))"
)


def _probe(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env_value, on", [(None, True), ("0", False)])
def test_cli_sets_huge_pages_before_torch_is_imported(env_value, on):
    """The CLI's defaults are in the environment before torch's allocator reads them (at
    ``import torch``); a user's explicit value wins."""
    got = _probe(env_value)
    if on:
        assert got["offsets"] == [0] * 10
    else:
        assert all(got["offsets"])
    if THP_MODE.exists() and "[madvise]" in THP_MODE.read_text():
        # the kernel gives huge pages only where asked: the asking is what this default does
        assert (got["huge_kb"] >= 32 << 10) if on else got["huge_kb"] == 0


def test_ray_workers_get_the_process_defaults(monkeypatch):
    """A Ray worker's environment carries the defaults (its torch reads some at import), the
    driver's explicit values over them."""
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")
    env = worker_env()
    assert env["THP_MEM_ALLOC_ENABLE"] == "1"
    assert env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "8"
    assert {k for k in DEFAULTS} <= set(env)
